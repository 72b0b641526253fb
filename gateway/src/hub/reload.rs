//! Where the hub's credentials come from, and how they change while it
//! runs: on SIGHUP the hub reads its config file again.
//!
//! - A config that loads and passes every check the hub makes at start is
//!   put in force at once: new credentials work for the next request.
//! - Agents whose tunnels the new credentials no longer admit (token gone,
//!   or no longer bound to the key) have those tunnels closed, each logged
//!   with its key, tunnel and why; their calls in flight fail, nothing
//!   else is touched.
//! - A call in a caller's forward tunnel is checked against the
//!   credentials of the moment, so a revoked caller's tunnel can call
//!   nothing more (`UNAUTHENTICATED`).
//! - A config that does not load or pass is refused, logged as an error,
//!   and the old credentials stay.
//!
//! Only credentials are reloaded; flags set in the file take a restart.

use std::path::PathBuf;

use grpctunnel::ReverseTunnelRegistry;

use crate::{
    auth::{Credentials, Grant, Live},
    config::{HubConfig, SecretFiles},
    Failure,
};

/// How to build the hub's credential tables from its config file, with the
/// checks the hub makes at start.
#[derive(Debug, Clone)]
pub(crate) struct CredentialSource {
    pub(crate) config: Option<PathBuf>,
    pub(crate) max_calls_per_caller: Option<usize>,
    pub(crate) secret_files: SecretFiles,
    /// `--client-ca` is set (certificate credentials need it).
    pub(crate) client_ca: bool,
    /// The hub listens beyond loopback, where callers must authenticate
    /// (over TLS).
    pub(crate) public: bool,
    pub(crate) tls: bool,
    pub(crate) listen: std::net::SocketAddr,
}

/// The tables of one load: agents, callers, and the config they came from.
pub(crate) struct Loaded {
    pub(crate) agents: Credentials,
    pub(crate) callers: Credentials,
    pub(crate) admins: Credentials,
    pub(crate) config: HubConfig,
}

impl CredentialSource {
    /// Reads the config and builds its tables, or says why it cannot.
    pub(crate) fn load(&self) -> Result<Loaded, Failure> {
        let config = match &self.config {
            Some(path) => HubConfig::load(path)?,
            None => HubConfig::default(),
        };
        let agents = self.table("agent", &config.agents, None)?;
        let callers = self.table("caller", &config.callers, self.max_calls_per_caller)?;
        let admins = self.table("admin", &config.admins, None)?;
        if (agents.has_certs() || callers.has_certs() || admins.has_certs()) && !self.client_ca {
            return Err(Failure::Usage(
                "credentials bound to client certificates need --client-ca (mTLS)".into(),
            ));
        }
        if agents.is_empty() {
            return Err(Failure::Usage(
                "no agent may connect: give a --config with at least one [[agent]] (token and keys)"
                    .into(),
            ));
        }
        if self.public && (!self.tls || callers.is_empty()) {
            return Err(Failure::Usage(format!(
                "refusing to listen on {} without TLS (--tls-cert, --tls-key) and caller credentials ([[caller]] in the config); or listen on a loopback address",
                self.listen
            )));
        }
        Ok(Loaded {
            agents,
            callers,
            admins,
            config,
        })
    }

    fn table(
        &self,
        what: &str,
        list: &[crate::config::Credential],
        max_calls: Option<usize>,
    ) -> Result<Credentials, Failure> {
        let mut out = Credentials::default();
        for (i, c) in list.iter().enumerate() {
            let name = c
                .name
                .clone()
                .unwrap_or_else(|| format!("{what}-{}", i + 1));
            let name = http::HeaderValue::try_from(name)
                .map_err(|e| Failure::Usage(format!("{what} name: {e}")))?;
            let grant = Grant::new(name, c.keys.iter().cloned(), c.max_calls.or(max_calls))
                .forward_credential(c.forward_credential)
                .max_tunnels(c.max_tunnels)
                .key_policy(c.key_policy);
            match (c.token(self.secret_files)?, &c.cert_sha256) {
                (Some(token), _) if token.len() < MIN_TOKEN => {
                    return Err(Failure::Usage(format!(
                        "{what} credential {}: its token is {} bytes; give at least {MIN_TOKEN} (e.g. `openssl rand -base64 24`)",
                        i + 1,
                        token.len()
                    )))
                }
                (Some(token), _) => out.insert(token, grant),
                (None, Some(sha)) => out.insert_cert(sha, grant),
                (None, None) => unreachable!("checked by HubConfig::load"),
            }
        }
        Ok(out)
    }
}

/// The shortest bearer token taken: 16 bytes (128 bits if random), beyond
/// guessing.
const MIN_TOKEN: usize = 16;

/// What a reload changes in the running hub.
pub(crate) struct InForce {
    pub(crate) agents: Live,
    pub(crate) callers: Live,
    /// Operators' credentials: a reload that drops one refuses it at once.
    pub(crate) admins: Live,
    /// Agents' tunnels, closed when their credential no longer admits them.
    pub(crate) registry: ReverseTunnelRegistry<String>,
    pub(crate) key_header: http::HeaderName,
    /// Callers' forward tunnels, ended when their credential is revoked.
    pub(crate) forward: std::sync::Arc<crate::revoke::OpenForward>,
    /// Metric labels: the keys agents may register.
    pub(crate) labels: crate::metrics::Labels,
}

/// Starts reloading the credentials on each SIGHUP, until the process
/// ends. The handler is in place when this returns (SIGHUP's default
/// action ends the process, so it must be before the hub says it listens).
pub(crate) fn on_sighup(source: CredentialSource, live: InForce) -> Result<(), Failure> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = signal(SignalKind::hangup())
            .map_err(|e| Failure::Run(format!("cannot listen for SIGHUP: {e}")))?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                reload(&source, &live);
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (source, live);
    }
    Ok(())
}

/// One reload: the new credentials in force, or the old kept.
fn reload(source: &CredentialSource, live: &InForce) {
    let InForce {
        agents,
        callers,
        admins,
        registry,
        key_header,
        forward,
        labels,
    } = live;
    let loaded = match source.load() {
        Ok(loaded) => loaded,
        Err(Failure::Usage(error) | Failure::Run(error)) => {
            tracing::error!(%error, "config reload refused: the credentials in force stay");
            return;
        }
    };
    agents.set(loaded.agents);
    callers.set(loaded.callers);
    admins.set(loaded.admins);
    labels.set_keys(
        loaded
            .config
            .agents
            .iter()
            .flat_map(|a| a.keys.iter().cloned()),
    );
    let now = agents.get();
    let mut ended = 0;
    for tunnel in registry.tunnels() {
        if let Err(status) = now.check_agent(tunnel.metadata(), tunnel.extensions(), key_header) {
            tracing::warn!(
                key = %tunnel.key(),
                tunnel = tunnel.id(),
                why = %status.message(),
                "agent tunnel closed: its credential no longer admits it"
            );
            tunnel.channel().close();
            ended += 1;
        }
    }
    // Callers' forward tunnels whose credential is gone (with no caller
    // listed any more, none needs one).
    let callers_now = callers.get();
    let forward_ended = if callers_now.is_empty() {
        0
    } else {
        forward.revoke(|id| callers_now.knows(id))
    };
    tracing::info!(
        agent_tunnels_closed = ended,
        forward_tunnels_closed = forward_ended,
        "config reloaded"
    );
}
