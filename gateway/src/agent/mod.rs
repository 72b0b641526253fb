//! `grpctunnel agent`: dials a hub, opens a reverse tunnel (reopened with
//! backoff whenever it drops) and forwards every call that arrives through
//! it to the upstream gRPC server, whatever its service and method: a
//! transparent proxy, so the upstream may be written in any language.

pub(crate) mod admin;
mod h2_streams;
mod upstream;

use admin::AgentMetrics;
use clap::Args;
use grpctunnel::ReverseTunnelServer;
use tonic::transport::Endpoint;

use crate::{
    admin::ping::{AgentPing, AGENT_ADMIN_PREFIX},
    compression::inflate_response,
    limit::{CallLimit, Held},
    metrics::CallRecord,
    shutdown_signal,
    trace::{call_attributes, Tracing},
    Failure,
};

/// `grpctunnel agent` flags.
#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// Config file (TOML) setting any of these flags, in snake_case
    /// (`key = "plant-7"`, `hub = ["https://a:8443"]`). Flags and
    /// variables win over it.
    #[arg(long, env = "GRPCTUNNEL_CONFIG")]
    config: Option<std::path::PathBuf>,
    /// The hub to dial: `https://hub.example:8443`, or `http://` on
    /// loopback. Repeat it (or separate with commas) to stay connected to
    /// several hubs at once.
    #[arg(long, required = true, value_delimiter = ',', env = "GRPCTUNNEL_HUB")]
    hub: Vec<String>,
    /// Tunnels to keep open to each hub (calls are shared among them).
    #[arg(long, default_value_t = 1, env = "GRPCTUNNEL_TUNNELS")]
    tunnels: usize,
    /// CA certificate (PEM) that signed the hub's certificate; without it an
    /// `https://` hub is checked against the system's roots.
    #[arg(long, env = "GRPCTUNNEL_CA_FILE")]
    ca_file: Option<String>,
    /// The key callers use to reach this agent's upstream.
    #[arg(long, env = "GRPCTUNNEL_KEY")]
    key: String,
    /// File holding the bearer token the hub knows this agent by (or use a
    /// client certificate: `--tls-cert`, `--tls-key`).
    #[arg(
        long,
        required_unless_present = "tls_cert",
        env = "GRPCTUNNEL_TOKEN_FILE"
    )]
    token_file: Option<String>,
    /// Client certificate (PEM) to present to an `https://` hub (mTLS); the
    /// hub binds its SHA-256 to keys.
    #[arg(long, requires = "tls_key", env = "GRPCTUNNEL_TLS_CERT")]
    tls_cert: Option<String>,
    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, requires = "tls_cert", env = "GRPCTUNNEL_TLS_KEY")]
    tls_key: Option<String>,
    /// The private gRPC server to forward calls to, e.g.
    /// `http://127.0.0.1:50051`, or `https://` for TLS.
    #[arg(long, env = "GRPCTUNNEL_UPSTREAM")]
    upstream: String,
    /// CA certificate (PEM) of an `https://` upstream; without it the
    /// system's roots are used.
    #[arg(long, env = "GRPCTUNNEL_UPSTREAM_CA_FILE")]
    upstream_ca_file: Option<String>,
    /// Allow an `http://` upstream beyond loopback: callers' calls and
    /// their metadata then cross that network in the clear.
    #[arg(long, env = "GRPCTUNNEL_PLAINTEXT_UPSTREAM")]
    plaintext_upstream: bool,
    /// Seconds between HTTP/2 pings to the upstream while calls are open
    /// on its connection (none while it is idle). A ping unanswered within
    /// as long again (at most 20 s) closes the connection: its calls fail
    /// `UNAVAILABLE` instead of waiting out their deadlines on an upstream
    /// that vanished without a word, and the next call dials again. The
    /// default, 300, is as often as gRPC servers accept pings by default
    /// (more often, with no data between, they close the connection). 0: no
    /// pings.
    #[arg(
        long,
        default_value_t = crate::keepalive::UPSTREAM_DEFAULT_SECS,
        value_name = "SECONDS",
        env = "GRPCTUNNEL_UPSTREAM_KEEPALIVE"
    )]
    upstream_keepalive: u64,
    /// Ask the upstream for gzip-compressed responses (for an upstream across
    /// a slow link). The agent inflates them before they enter the tunnel,
    /// which carries no compressed message; the hub compresses again toward
    /// callers that accept gzip. A gzip response is inflated either way.
    #[arg(long, env = "GRPCTUNNEL_UPSTREAM_ACCEPT_GZIP")]
    upstream_accept_gzip: bool,
    /// Most calls in flight at once through this agent; more are refused
    /// with `RESOURCE_EXHAUSTED` before they reach the upstream. Default:
    /// no limit.
    #[arg(long, env = "GRPCTUNNEL_MAX_CALLS")]
    max_calls: Option<usize>,
    /// Request header that names the key (the hub's `--key-header`).
    #[arg(long, default_value = "grpctunnel-key", env = "GRPCTUNNEL_KEY_HEADER")]
    key_header: String,
    /// Largest message, in bytes, the tunnel carries either way (the hub
    /// needs the same).
    #[arg(long, default_value_t = grpctunnel::DEFAULT_MAX_MESSAGE_SIZE, env = "GRPCTUNNEL_MAX_MESSAGE_SIZE")]
    max_message_size: usize,
    #[command(flatten)]
    keepalive: crate::keepalive::KeepaliveArgs,
    #[command(flatten)]
    secret_files: crate::config::SecretFiles,
    /// Only these services (`pkg.Service`) or methods (`pkg.Service/Method`)
    /// may be called through the hub; others get `PERMISSION_DENIED`.
    /// Repeat it, or separate with commas. Default: everything.
    #[arg(long, value_delimiter = ',', env = "GRPCTUNNEL_ALLOW")]
    allow: Vec<String>,
    /// Export a span per call (OpenTelemetry, OTLP/gRPC) to this collector,
    /// e.g. `http://127.0.0.1:4317`: a child of the hub's span, and the
    /// parent the upstream receives in `traceparent`.
    #[arg(long, value_name = "URL", env = "GRPCTUNNEL_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Serve Prometheus `/metrics` (tunnels open per hub; the calls hubs
    /// sent by method and status, their latency and bytes) and `/healthz`
    /// (200 while a tunnel to some hub is open, else 503) on this
    /// loopback address.
    #[arg(long, env = "GRPCTUNNEL_AGENT_ADMIN")]
    admin: Option<std::net::SocketAddr>,
}

impl AgentArgs {
    /// The HTTP/2 connections this agent keeps to its hubs: each is driven
    /// by one task, so more threads than this find little to do.
    pub(crate) fn connections(&self) -> usize {
        self.tunnels.saturating_mul(self.hub.len())
    }
}

/// Whether a call to `path` (`/pkg.Service/Method`) is allowed. With an
/// allow-list, only a canonical path can be ([`canonical`]): the list
/// matches names, and an upstream that reads `/a.Svc/../b.Secret/Get` as
/// `/b.Secret/Get` must never get such a path from a caller.
fn allowed(allow: &[String], path: &str) -> bool {
    if allow.is_empty() {
        return true;
    }
    let Some((service, _)) = canonical(path) else {
        return false;
    };
    let method = &path[1..];
    allow.iter().any(|a| a == method || a == service)
}

/// The service and method of a canonical gRPC path, `/pkg.Service/Method`:
/// exactly two names, of ASCII letters, digits and `_` (and `.` in the
/// service, not at either end), so no `..`, `//`, `%`, `?` or anything an
/// HTTP stack could decode or normalise.
fn canonical(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let name = |s: &str, dots: bool| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'))
    };
    let service_ok = name(service, true)
        && !service.starts_with('.')
        && !service.ends_with('.')
        && !service.contains("..");
    (service_ok && name(method, false)).then_some((service, method))
}

/// Runs the agent until SIGTERM or Ctrl-C.
pub(crate) async fn run(args: AgentArgs) -> Result<(), Failure> {
    let files = args.secret_files;
    let token = args
        .token_file
        .as_deref()
        .map(|f| files.read(f))
        .transpose()?;
    let identity = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            let read = |path: &str| {
                std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read {path}: {e}")))
            };
            Some(tonic::transport::Identity::from_pem(
                read(cert)?,
                read(key)?,
            ))
        }
        _ => None,
    };
    let upstream = Endpoint::from_shared(args.upstream.clone())
        .map_err(|e| Failure::Usage(format!("--upstream {:?}: {e}", args.upstream)))?;
    let upstream = if upstream.uri().scheme_str() == Some("https") {
        with_tls(
            upstream,
            args.upstream_ca_file.as_deref(),
            "--upstream-ca-file",
            None,
        )?
    } else if is_loopback(upstream.uri()) || args.plaintext_upstream {
        upstream
    } else {
        return Err(Failure::Usage(format!(
            "refusing to send callers' calls and metadata to {} in the clear: use https:// (with --upstream-ca-file), or say --plaintext-upstream",
            args.upstream
        )));
    };
    let pings = crate::keepalive::UpstreamPings::every_secs(args.upstream_keepalive);
    let upstream = crate::keepalive::UpstreamPings::on(pings, upstream);
    let uri = upstream.uri().clone();
    let upstream = upstream.connect_lazy();
    // The pings' health checks go through the Channel either way.
    let pinged = upstream.clone();
    let upstream = upstream::Upstream::new(&uri, upstream, pings);
    let mut hubs = Vec::new();
    for hub in &args.hub {
        hubs.push((
            hub.clone(),
            crate::keepalive::client(
                hub_endpoint(hub, args.ca_file.as_deref(), identity.clone())?,
                args.keepalive.keepalive,
            )
            .connect_lazy(),
        ));
    }
    if args.tunnels == 0 {
        return Err(Failure::Usage("--tunnels must be at least 1".into()));
    }
    // Every call goes to the upstream as it came: any service, any method.
    let allow = std::sync::Arc::new(args.allow.clone());
    let max_message_size = args.max_message_size;
    let accept = http::HeaderValue::from_static(if args.upstream_accept_gzip {
        "gzip"
    } else {
        "identity"
    });
    let limit = CallLimit::new(args.max_calls);
    let observed = match args.admin {
        Some(addr) => Some(AgentMetrics::serve(addr, &args.key).await?),
        None => None,
    };
    let metered = observed.clone();
    let tracer = args
        .otlp_endpoint
        .as_deref()
        .map(|url| Tracing::to(url, "grpctunnel-agent"))
        .transpose()?;
    let tracing = tracer.clone();
    // A span's record, when there is no admin port to count calls for.
    let unmetered = crate::metrics::Labels::new([args.key.clone()]);
    let key = args.key.clone();
    // The hub's pings (`grpctunnel ping`) are answered here, not upstream.
    let pings = AgentPing::new(pinged).server();
    let proxy = tower::service_fn(move |mut req: http::Request<tonic::body::Body>| {
        let upstream = upstream.clone();
        let pings = pings.clone();
        let allow = allow.clone();
        let permit = limit.acquire();
        req.headers_mut()
            .insert("grpc-accept-encoding", accept.clone());
        let span = tracing.as_ref().map(|t| {
            let attributes = call_attributes(req.uri().path(), &key);
            t.start("grpctunnel.agent", req.headers_mut(), attributes)
        });
        let (req, record) = match (&metered, span) {
            (Some(metrics), span) => {
                let (req, mut record) = metrics.start(req);
                if let Some(span) = span {
                    record.trace(span);
                }
                (req, Some(record))
            }
            (None, Some(span)) => {
                let mut record = CallRecord::unmetered(&unmetered, &key, req.uri().path());
                record.trace(span);
                (req, Some(record))
            }
            (None, None) => (req, None),
        };
        let served = async move {
            if req.uri().path().starts_with(AGENT_ADMIN_PREFIX) {
                let resp = tower::ServiceExt::oneshot(pings, req)
                    .await
                    .unwrap_or_else(|never| match never {});
                return resp;
            }
            if !allowed(&allow, req.uri().path()) {
                let path = req.uri().path().to_owned();
                let why = if canonical(&path).is_some() {
                    "may not be called through this agent"
                } else {
                    "is not a canonical gRPC path (/pkg.Service/Method), which an agent with --allow refuses"
                };
                tracing::warn!(%path, "call refused: {why}");
                return tonic::Status::permission_denied(format!("{path:?} {why}")).into_http();
            }
            let permit = match permit {
                Ok(permit) => permit,
                Err(status) => return status.into_http(),
            };
            let resp = inflate_response(upstream.call(req).await, max_message_size);
            resp.map(|body| tonic::body::Body::new(Held::new(body, permit)))
        };
        async move {
            let resp = served.await;
            Ok::<_, std::convert::Infallible>(match record {
                Some(record) => AgentMetrics::finish(resp, record),
                None => resp,
            })
        }
    });
    let authorization = token.map(|token| format!("Bearer {token}"));
    // `metadata` panics on text that is not a valid header: check first.
    let valid = http::HeaderName::from_bytes(args.key_header.as_bytes()).is_ok()
        && http::HeaderValue::from_str(&args.key).is_ok()
        && authorization
            .as_deref()
            .is_none_or(|a| http::HeaderValue::from_str(a).is_ok());
    if !valid {
        return Err(Failure::Usage(
            "--key, --key-header or the token is not valid header text".into(),
        ));
    }
    // One name for every tunnel of this process: a hub's key policy tells
    // another agent of the key from this one's own tunnels.
    let instance = crate::key_policy::new_instance();
    let mut agent = ReverseTunnelServer::new(proxy)
        .max_message_size(args.max_message_size)
        .metadata(&args.key_header.to_ascii_lowercase(), &args.key)
        .metadata(crate::key_policy::INSTANCE_HEADER, &instance)
        // For the hub's admin API (`grpctunnel agents`).
        .metadata(
            crate::session::AGENT_VERSION_HEADER,
            env!("CARGO_PKG_VERSION"),
        );
    if let Some(authorization) = &authorization {
        agent = agent.metadata("authorization", authorization);
    }
    // Each tunnel to each hub is kept open on its own; each logs its
    // state changes.
    let mut connections = Vec::new();
    let mut reports = tokio::task::JoinSet::new();
    for (hub, endpoint) in hubs {
        for _ in 0..args.tunnels {
            let connection = std::sync::Arc::new(agent.keep_connected(endpoint.clone()));
            reports.spawn(report(
                connection.clone(),
                args.key.clone(),
                hub.clone(),
                observed.clone(),
            ));
            connections.push(connection);
        }
    }
    // Until a signal, or until every hub's operator said not to reconnect.
    let signal = shutdown_signal();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            () = &mut signal => break,
            Some(_) = reports.join_next() => {
                if reports.is_empty() {
                    tracing::warn!("no hub left to serve: every tunnel was disconnected by its hub's operator");
                    break;
                }
            }
        }
    }
    tracing::info!("stopping");
    for connection in &connections {
        connection.stop();
    }
    for connection in &connections {
        connection.wait_until(|s| s.stopped).await;
    }
    reports.abort_all();
    if let Some(tracer) = &tracer {
        tracer.shutdown();
    }
    Ok(())
}

/// Whether a tunnel's end is a hub operator's disconnect that says not to
/// reconnect (`grpctunnel disconnect` without `--reconnect`).
fn told_to_stay_away(error: &grpctunnel::Error) -> bool {
    error.status().is_some_and(|status| {
        status
            .metadata()
            .get(crate::session::RECONNECT_HEADER)
            .is_some_and(|v| v == "false")
    })
}

/// Logs a tunnel's state changes; returns when its hub's operator
/// disconnected it for good (it is stopped then).
async fn report(
    connection: std::sync::Arc<grpctunnel::reverse::KeepConnected>,
    key: String,
    hub: String,
    metrics: Option<AgentMetrics>,
) {
    let mut state = connection.watch();
    let mut connected = false;
    while state.changed().await.is_ok() {
        let now = state.borrow().clone();
        if now.connected != connected {
            connected = now.connected;
            if let Some(metrics) = &metrics {
                metrics.tunnel(&hub, connected);
            }
            if connected {
                tracing::info!(%key, %hub, "tunnel open");
            } else if now.last_error.as_ref().is_some_and(told_to_stay_away) {
                connection.stop();
                let error = now
                    .last_error
                    .as_ref()
                    .and_then(grpctunnel::Error::status)
                    .map(|s| s.message().to_owned())
                    .unwrap_or_default();
                tracing::warn!(%key, %hub, %error, "tunnel closed by the hub's operator; not dialing this hub again");
                return;
            } else {
                let error = now
                    .last_error
                    .as_ref()
                    .map(grpctunnel::Error::chain)
                    .unwrap_or_default();
                tracing::warn!(%key, %hub, %error, "tunnel down; reconnecting");
            }
        } else if let Some(err) = &now.last_error {
            let error = err.chain();
            tracing::warn!(%key, %hub, %error, attempts = now.attempts, "cannot open the tunnel; retrying");
        }
    }
}

/// Whether `uri` names this machine: `localhost` or a loopback address.
fn is_loopback(uri: &http::Uri) -> bool {
    match uri.host() {
        Some("localhost") => true,
        Some(host) => host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// The hub's endpoint: TLS for `https://` (the hub's CA, or the system's
/// roots); plaintext `http://` only to a loopback hub.
fn hub_endpoint(
    hub: &str,
    ca_file: Option<&str>,
    identity: Option<tonic::transport::Identity>,
) -> Result<Endpoint, Failure> {
    let endpoint = Endpoint::from_shared(hub.to_owned())
        .map_err(|e| Failure::Usage(format!("--hub {hub:?}: {e}")))?;
    let uri = endpoint.uri().clone();
    if uri.scheme_str() != Some("https") {
        if !is_loopback(&uri) {
            return Err(Failure::Usage(format!(
                "refusing to send the token to {hub} in the clear: use https://"
            )));
        }
        return Ok(endpoint);
    }
    with_tls(endpoint, ca_file, "--ca-file", identity)
}

/// `endpoint` over TLS, trusting the CA in `ca_file` (named by `flag` in
/// errors) or the system's roots.
fn with_tls(
    endpoint: Endpoint,
    ca_file: Option<&str>,
    flag: &str,
    identity: Option<tonic::transport::Identity>,
) -> Result<Endpoint, Failure> {
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let tls = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("cannot read {flag} {path}: {e}")))?;
            tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
        }
        None => tls.with_native_roots(),
    };
    endpoint
        .tls_config(tls)
        .map_err(|e| Failure::Usage(format!("TLS: {e}")))
}

#[cfg(test)]
mod tests {
    use super::allowed;

    #[test]
    fn allow_list_matches_services_and_methods() {
        let allow = vec!["a.Svc".to_owned(), "b.Other/Get".to_owned()];
        assert!(allowed(&allow, "/a.Svc/Anything"));
        assert!(allowed(&allow, "/b.Other/Get"));
        assert!(!allowed(&allow, "/b.Other/Put"));
        assert!(!allowed(&allow, "/a.SvcX/Get"));
        assert!(allowed(&[], "/any.Thing/At/All"));
        for path in [
            "/a.Svc/../b.Other/Put",
            "/a.Svc//Get",
            "/a.Svc/Get%2F..",
            "/a.Svc/Get?x",
            "/a..Svc/Get",
            "/a.Svc/",
            "a.Svc/Get",
            "/a.Svc/Get/More",
        ] {
            assert!(!allowed(&allow, path), "{path}");
        }
    }
}
