//! Authentication on the hub, by bearer token (`authorization: Bearer
//! <token>`), each token bound to keys:
//!
//! - an agent opening `OpenReverseTunnel` must present a token bound to the
//!   key it claims in the key header; a refused claim never reaches the
//!   registry;
//! - when the config lists callers, a call (or a caller's `OpenTunnel`,
//!   whose tunneled calls then carry the caller's identity) must present a
//!   token bound to the key it calls.
//!
//! Unknown tokens get `UNAUTHENTICATED`, keys a token is not bound to
//! `PERMISSION_DENIED`; both are logged and counted.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use tower::Service;

/// Tokens and the keys each may use.
#[derive(Debug, Default)]
pub(crate) struct Credentials {
    keys_by_token: HashMap<String, Arc<HashSet<String>>>,
    /// By the SHA-256 (lowercase hex) of a client certificate's DER.
    keys_by_cert: HashMap<String, Arc<HashSet<String>>>,
}

/// The keys an authenticated caller may use (a request extension; a forward
/// tunnel copies it into every call it carries).
#[derive(Debug, Clone)]
pub(crate) struct CallerKeys(Arc<HashSet<String>>);

impl CallerKeys {
    fn allows(&self, key: &str) -> bool {
        self.0.contains(key) || self.0.contains("*")
    }
}

impl Credentials {
    pub(crate) fn insert(&mut self, token: String, keys: impl IntoIterator<Item = String>) {
        let entry = self.keys_by_token.entry(token).or_default();
        Arc::make_mut(entry).extend(keys);
    }

    pub(crate) fn insert_cert(&mut self, sha256: &str, keys: impl IntoIterator<Item = String>) {
        let entry = self
            .keys_by_cert
            .entry(sha256.trim().to_ascii_lowercase().replace(':', ""))
            .or_default();
        Arc::make_mut(entry).extend(keys);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys_by_token.is_empty() && self.keys_by_cert.is_empty()
    }

    pub(crate) fn has_certs(&self) -> bool {
        !self.keys_by_cert.is_empty()
    }

    /// The keys of the client certificate the connection presented (mTLS).
    fn cert_keys(&self, extensions: &http::Extensions) -> Option<CallerKeys> {
        use sha2::Digest;
        let info =
            extensions.get::<tonic::transport::server::TlsConnectInfo<
                tonic::transport::server::TcpConnectInfo,
            >>()?;
        let certs = info.peer_certs()?;
        let leaf = certs.first()?;
        let sha: String = sha2::Sha256::digest(leaf.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        self.keys_by_cert
            .get(&sha)
            .map(|keys| CallerKeys(keys.clone()))
    }

    /// The keys of the request's bearer token; an unknown or missing token
    /// is `UNAUTHENTICATED`, logged with `what` it was for, and counted.
    fn keys(
        &self,
        headers: &http::HeaderMap,
        who: &'static str,
        what: &str,
    ) -> Result<CallerKeys, tonic::Status> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token.and_then(|t| self.keys_by_token.get(t)) {
            Some(keys) => Ok(CallerKeys(keys.clone())),
            None => {
                tracing::warn!(who, what, "{who} refused: unknown or missing bearer token");
                crate::metrics::auth_failure(who, "unknown_token");
                Err(tonic::Status::unauthenticated(
                    "unknown or missing bearer token",
                ))
            }
        }
    }

    /// Whether an agent's opening RPC may register the key it claims.
    fn check_agent(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        key_header: &http::HeaderName,
    ) -> Result<(), tonic::Status> {
        let key = headers
            .get(key_header)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!("missing {key_header} header"))
            })?;
        let keys = match self.cert_keys(extensions) {
            Some(keys) => keys,
            None => self.keys(headers, "agent", key)?,
        };
        if !keys.0.contains(key) {
            tracing::warn!(
                key,
                "agent refused: its credential is not bound to this key"
            );
            crate::metrics::auth_failure("agent", "key_not_bound");
            return Err(tonic::Status::permission_denied(format!(
                "this credential may not register key {key:?}"
            )));
        }
        Ok(())
    }

    /// Whether a call may reach `key`: by the identity its forward tunnel
    /// carries, or else by its own bearer token.
    pub(crate) fn check_call(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
        key: &str,
    ) -> Result<(), tonic::Status> {
        let keys = match extensions.get::<CallerKeys>() {
            Some(keys) => keys.clone(),
            None => self.keys(headers, "caller", key)?,
        };
        if keys.allows(key) {
            return Ok(());
        }
        tracing::warn!(
            key,
            "call refused: the caller's credential is not bound to this key"
        );
        crate::metrics::auth_failure("caller", "key_not_bound");
        Err(tonic::Status::permission_denied(format!(
            "this credential may not call key {key:?}"
        )))
    }
}

/// Checks credentials on the opening RPCs, in front of the tunnel service.
#[derive(Debug, Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    agents: Arc<Credentials>,
    /// `None`: callers need no credential.
    callers: Option<Arc<Credentials>>,
    key_header: http::HeaderName,
}

impl<S> Auth<S> {
    pub(crate) fn new(
        inner: S,
        agents: Arc<Credentials>,
        callers: Option<Arc<Credentials>>,
        key_header: http::HeaderName,
    ) -> Self {
        Self {
            inner,
            agents,
            callers,
            key_header,
        }
    }
}

const OPEN_REVERSE_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenReverseTunnel";
const OPEN_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenTunnel";

impl<S> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<http::Response<Body>, Infallible>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let refused = match req.uri().path() {
            OPEN_REVERSE_TUNNEL => self
                .agents
                .check_agent(req.headers(), req.extensions(), &self.key_header)
                .err(),
            OPEN_TUNNEL => match &self.callers {
                // The caller's keys ride along with each tunneled call.
                Some(callers) => match callers.keys(req.headers(), "caller", "a forward tunnel") {
                    Ok(keys) => {
                        req.extensions_mut().insert(keys);
                        None
                    }
                    Err(status) => Some(status),
                },
                None => None,
            },
            _ => None,
        };
        match refused {
            Some(status) => {
                futures_util::future::Either::Left(std::future::ready(Ok(status.into_http())))
            }
            None => futures_util::future::Either::Right(self.inner.call(req)),
        }
    }
}
