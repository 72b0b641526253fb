//! Authentication on the hub, by client certificate (mTLS, its SHA-256) or
//! bearer token (`authorization: Bearer <token>`), each bound to keys:
//!
//! - an agent opening `OpenReverseTunnel` must present a credential bound
//!   to the key it claims in the key header; a refused claim never reaches
//!   the registry;
//! - when the config lists callers, a call (or a caller's `OpenTunnel`,
//!   whose tunneled calls then carry the caller's identity) must present a
//!   credential bound to the key it calls, and stay within the caller's
//!   limit of calls in flight (`max_calls`).
//!
//! Unknown credentials get `UNAUTHENTICATED`, keys a credential is not
//! bound to `PERMISSION_DENIED`, calls beyond a caller's limit
//! `RESOURCE_EXHAUSTED`; all are logged and counted.
//!
//! Credentials stay at the edge: a call admitted by a caller credential
//! leaves the hub without its `authorization` header (unless that caller
//! has `forward_credential = true`) and with `grpctunnel-caller: <name>`,
//! which the hub sets itself; a `grpctunnel-caller` a call brings is
//! always removed, so nobody can claim another caller's name upstream.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{config::KeyPolicy, limit::CallPermit};

/// Tokens and certificates, and what each may do.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    /// By the SHA-256 of the token: a lookup compares digests, whose bytes
    /// a caller cannot steer, so how long it takes says nothing about the
    /// tokens (a map of the tokens themselves compares their bytes, and
    /// stops at the first that differs); and the tokens are not kept.
    by_token: HashMap<[u8; 32], Arc<Grant>>,
    /// By the SHA-256 (lowercase hex) of a client certificate's DER.
    by_cert: HashMap<String, Arc<Grant>>,
}

/// What one credential may do: the keys it may use and, for a caller, how
/// many calls it may have in flight at once.
#[derive(Debug)]
pub(crate) struct Grant {
    keys: HashSet<String>,
    /// Permits for the caller's calls in flight; `None`: no limit.
    calls: Option<(Arc<tokio::sync::Semaphore>, usize)>,
    /// Who this is, as the upstream is told (`grpctunnel-caller`).
    name: http::HeaderValue,
    /// The caller's `authorization` goes on to the upstream.
    forward_credential: bool,
    /// Most tunnels it may hold at once (`None`: the hub's default).
    max_tunnels: Option<usize>,
    /// For an agent: what another agent of its key meets.
    key_policy: KeyPolicy,
}

impl Grant {
    /// A grant to `name` of `keys`, with at most `max_calls` calls in
    /// flight.
    pub(crate) fn new(
        name: http::HeaderValue,
        keys: impl IntoIterator<Item = String>,
        max_calls: Option<usize>,
    ) -> Self {
        Self {
            keys: keys.into_iter().collect(),
            calls: max_calls.map(|n| (Arc::new(tokio::sync::Semaphore::new(n)), n)),
            name,
            forward_credential: false,
            max_tunnels: None,
            key_policy: KeyPolicy::Share,
        }
    }

    /// What another agent of this agent's keys meets.
    pub(crate) fn key_policy(mut self, policy: KeyPolicy) -> Self {
        self.key_policy = policy;
        self
    }

    /// At most `max` tunnels at once (`None`: the hub's default).
    pub(crate) fn max_tunnels(mut self, max: Option<usize>) -> Self {
        self.max_tunnels = max;
        self
    }

    /// The caller's own `authorization` header goes on to the upstream.
    pub(crate) fn forward_credential(mut self, forward: bool) -> Self {
        self.forward_credential = forward;
        self
    }
}

/// The SHA-256 (lowercase hex) of a certificate's DER, as `cert_sha256`
/// in hub.toml names it.
pub(crate) fn sha256_hex(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SHA-256 of a token.
fn digest(token: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// A relay tunnel's (or relayed call's) proof of cluster membership,
/// checked by the tunnel layer; and a relayed call's key.
pub(crate) use grpctunnel::cluster::{RELAY_AUTH_HEADER, RELAY_KEY_HEADER};

/// Header the hub sets on each call it admitted by a caller credential:
/// the caller's name from the config.
pub(crate) const CALLER_HEADER: &str = "grpctunnel-caller";

/// Which credential a request presented: the key of its grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum CredentialId {
    /// A bearer token, by its SHA-256.
    Token([u8; 32]),
    /// A client certificate, by its SHA-256 (lowercase hex).
    Cert(String),
}

/// The grant of an authenticated caller (a request extension; a forward
/// tunnel copies it into every call it carries), and which credential it
/// came from, so that a call in a forward tunnel is checked again against
/// the credentials of the moment (a reload may have revoked or rebound
/// it since the tunnel opened).
#[derive(Debug, Clone)]
pub(crate) struct CallerKeys(Arc<Grant>, CredentialId);

impl CallerKeys {
    /// Which credential this is.
    pub(crate) fn credential(&self) -> &CredentialId {
        &self.1
    }

    /// Who this is: the credential's `name` in the config, or its place
    /// there (`agent-2`).
    pub(crate) fn name(&self) -> &str {
        self.0.name.to_str().unwrap_or_default()
    }

    /// The most tunnels this credential may hold (`None`: the default).
    pub(crate) fn max_tunnels(&self) -> Option<usize> {
        self.0.max_tunnels
    }

    /// The key policy of an agent's credential.
    pub(crate) fn key_policy(&self) -> KeyPolicy {
        self.0.key_policy
    }

    fn allows(&self, key: &str) -> bool {
        self.0.keys.contains(key) || self.0.keys.contains("*")
    }
}

/// The credentials in force, replaced as a whole when the hub reloads its
/// config (SIGHUP); each check reads the table of the moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Live(Arc<std::sync::RwLock<Arc<Credentials>>>);

impl Live {
    pub(crate) fn new(credentials: Credentials) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Arc::new(credentials))))
    }

    /// The credentials in force now.
    pub(crate) fn get(&self) -> Arc<Credentials> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Puts `credentials` in force for every check from now on.
    pub(crate) fn set(&self, credentials: Credentials) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(credentials);
    }
}

/// A call the caller credentials admitted.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Counts the call against its caller's limit until dropped.
    pub(crate) permit: CallPermit,
    caller: CallerKeys,
}

impl Admitted {
    /// What the call's headers become before it leaves the hub: the
    /// credential the hub checked removed (unless the caller forwards it),
    /// and the caller named in `grpctunnel-caller`.
    pub(crate) fn edge_headers(&self, headers: &mut http::HeaderMap) {
        let grant = &self.caller.0;
        if !grant.forward_credential {
            headers.remove(http::header::AUTHORIZATION);
        }
        headers.insert(CALLER_HEADER, grant.name.clone());
    }
}

impl Credentials {
    /// Grants `grant` to the bearer token `token` (a token listed twice
    /// gets the later grant).
    pub(crate) fn insert(&mut self, token: String, grant: Grant) {
        self.by_token.insert(digest(&token), Arc::new(grant));
    }

    /// Grants `grant` to the client certificate whose SHA-256 is `sha256`.
    pub(crate) fn insert_cert(&mut self, sha256: &str, grant: Grant) {
        self.by_cert.insert(
            sha256.trim().to_ascii_lowercase().replace(':', ""),
            Arc::new(grant),
        );
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.by_token.is_empty() && self.by_cert.is_empty()
    }

    pub(crate) fn has_certs(&self) -> bool {
        !self.by_cert.is_empty()
    }

    /// The grant of the client certificate the connection presented (mTLS).
    fn cert_grant(&self, extensions: &http::Extensions) -> Option<CallerKeys> {
        let sha = Self::peer_cert_sha256(extensions)?;
        let grant = self.by_cert.get(&sha)?.clone();
        Some(CallerKeys(grant, CredentialId::Cert(sha)))
    }

    /// The name of the credential presented: a bearer `token`, or a client
    /// certificate whose SHA-256 (lowercase hex) is `cert`.
    pub(crate) fn name_of(&self, token: Option<&str>, cert: Option<&str>) -> Option<String> {
        let grant = match (cert.and_then(|sha| self.by_cert.get(sha)), token) {
            (Some(grant), _) => grant,
            (None, Some(token)) => self.by_token.get(&digest(token))?,
            (None, None) => return None,
        };
        Some(grant.name.to_str().unwrap_or_default().to_owned())
    }

    /// The SHA-256 (lowercase hex) of the leaf client certificate in
    /// `extensions` (tonic's TLS connect info), if any.
    pub(crate) fn peer_cert_sha256(extensions: &http::Extensions) -> Option<String> {
        let info =
            extensions.get::<tonic::transport::server::TlsConnectInfo<
                tonic::transport::server::TcpConnectInfo,
            >>()?;
        Some(sha256_hex(info.peer_certs()?.first()?.as_ref()))
    }

    /// Whether `id` still has a grant in these credentials.
    pub(crate) fn knows(&self, id: &CredentialId) -> bool {
        self.current(id).is_some()
    }

    /// The grant of `id` in these credentials, if it still has one.
    fn current(&self, id: &CredentialId) -> Option<CallerKeys> {
        let grant = match id {
            CredentialId::Token(digest) => self.by_token.get(digest),
            CredentialId::Cert(sha) => self.by_cert.get(sha),
        }?;
        Some(CallerKeys(grant.clone(), id.clone()))
    }

    /// The grant of the request's client certificate, or else of its
    /// bearer token; neither known is `UNAUTHENTICATED`, logged with `what`
    /// it was for, and counted.
    pub(crate) fn grant(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        who: &'static str,
        what: &str,
    ) -> Result<CallerKeys, tonic::Status> {
        if let Some(grant) = self.cert_grant(extensions) {
            return Ok(grant);
        }
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let id = token.map(|t| CredentialId::Token(digest(t)));
        match id.and_then(|id| self.current(&id)) {
            Some(grant) => Ok(grant),
            None => {
                let text = format!("{who} refused: unknown or missing credential");
                crate::refusals::refused(extensions, who, "unknown_token", what, &text);
                Err(tonic::Status::unauthenticated(
                    "unknown or missing credential (bearer token or client certificate)",
                ))
            }
        }
    }

    /// Whether an agent's opening RPC may register the key it claims; its
    /// grant if so.
    pub(crate) fn check_agent(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        key_header: &http::HeaderName,
    ) -> Result<CallerKeys, tonic::Status> {
        let key = headers
            .get(key_header)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!("missing {key_header} header"))
            })?;
        let grant = self.grant(headers, extensions, "agent", key)?;
        if !grant.0.keys.contains(key) {
            crate::refusals::refused(
                extensions,
                "agent",
                "key_not_bound",
                key,
                "agent refused: its credential is not bound to this key",
            );
            return Err(tonic::Status::permission_denied(format!(
                "this credential may not register key {key:?}"
            )));
        }
        Ok(grant)
    }

    /// Whether a call may reach `key`, by the identity its forward tunnel
    /// carries or else its own credential, and within its caller's limit of
    /// calls in flight (`RESOURCE_EXHAUSTED` beyond it). The permit counts
    /// the call until dropped.
    pub(crate) fn check_call(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        key: &str,
    ) -> Result<Admitted, tonic::Status> {
        let grant = match extensions.get::<CallerKeys>() {
            // A forward tunnel's caller, as the credentials are now.
            Some(opened) => self.current(&opened.1).ok_or_else(|| {
                crate::refusals::refused(
                    extensions,
                    "caller",
                    "revoked",
                    key,
                    "call refused: its forward tunnel's credential was revoked",
                );
                tonic::Status::unauthenticated(
                    "the credential this forward tunnel opened with was revoked",
                )
            })?,
            None => self.grant(headers, extensions, "caller", key)?,
        };
        if !grant.allows(key) {
            crate::refusals::refused(
                extensions,
                "caller",
                "key_not_bound",
                key,
                "call refused: the caller's credential is not bound to this key",
            );
            return Err(tonic::Status::permission_denied(format!(
                "this credential may not call key {key:?}"
            )));
        }
        let Some((calls, max)) = &grant.0.calls else {
            return Ok(Admitted {
                permit: CallPermit::unlimited(),
                caller: grant,
            });
        };
        match calls.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admitted {
                permit: CallPermit::counted(permit),
                caller: grant,
            }),
            Err(_) => {
                crate::refusals::refused(
                    extensions,
                    "caller",
                    "too_many_calls",
                    key,
                    &format!("call refused: the caller has its {max} calls in flight"),
                );
                Err(tonic::Status::resource_exhausted(format!(
                    "this caller already has {max} calls in flight (its max_calls)"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_digest_and_not_kept() {
        let mut creds = Credentials::default();
        let name = http::HeaderValue::from_static("a");
        creds.insert(
            "t0ken-of-agent-a".into(),
            Grant::new(name, ["k".into()], None),
        );
        let bearer = |t: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {t}").parse().expect("ascii"),
            );
            h
        };
        let ext = http::Extensions::new();
        assert!(creds
            .grant(&bearer("t0ken-of-agent-a"), &ext, "agent", "k")
            .is_ok());
        for wrong in [
            "t0ken-of-agent-",
            "t0ken-of-agent-b",
            "",
            "T0KEN-OF-AGENT-A",
        ] {
            let err = creds
                .grant(&bearer(wrong), &ext, "agent", "k")
                .expect_err(wrong);
            assert_eq!(err.code(), tonic::Code::Unauthenticated);
        }
        assert!(!format!("{creds:?}").contains("t0ken"), "{creds:?}");
    }
}
