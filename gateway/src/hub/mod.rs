//! `grpctunnel hub`: accepts agents' reverse tunnels and serves plain gRPC
//! (and forward tunnels) to callers on the same port, routing each call to
//! an agent by key.

pub(crate) mod accept;
pub(crate) mod admission;
pub(crate) mod key_policy;
pub(crate) mod quota;
pub(crate) mod relayed_in;
pub(crate) mod reload;
pub(crate) mod revoke;
pub(crate) mod route;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use clap::Args;
use grpctunnel::{ReverseTunnelRegistry, TunnelLayer};
use tokio_util::sync::CancellationToken;
use tower::Layer;

use crate::{
    admission::Auth,
    auth::Live,
    metrics,
    reload::{CredentialSource, Loaded},
    route::{Local, RouteByKey, RouteConfig},
    shutdown_signal, Failure,
};

/// `grpctunnel hub` flags.
#[derive(Debug, Args)]
pub(crate) struct HubArgs {
    /// Address to listen on for agents and callers. Beyond loopback the hub
    /// needs TLS (`--tls-cert`, `--tls-key`) and caller credentials
    /// (`[[caller]]` in the config): nothing listens there unauthenticated.
    #[arg(long, default_value = "127.0.0.1:8443", env = "GRPCTUNNEL_LISTEN")]
    listen: SocketAddr,
    /// Config file (TOML): the agents' and callers' credentials and the keys
    /// each may use; any flag may be set there too, in snake_case
    /// (`max_message_size = 10485760`). Flags and variables win over it.
    #[arg(long, env = "GRPCTUNNEL_CONFIG")]
    config: Option<PathBuf>,
    /// Request header that names the agent a call is for (and the key an
    /// agent registers).
    #[arg(long, default_value = "grpctunnel-key", env = "GRPCTUNNEL_KEY_HEADER")]
    key_header: String,
    /// Route calls for `<key>.<suffix>` (their `:authority`) to agent
    /// `<key>` when they carry no key header, e.g. `hub.example`.
    #[arg(long, env = "GRPCTUNNEL_AUTHORITY_SUFFIX")]
    authority_suffix: Option<String>,
    /// TLS certificate chain (PEM) of the hub.
    #[arg(long, requires = "tls_key", env = "GRPCTUNNEL_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the hub.
    #[arg(long, requires = "tls_cert", env = "GRPCTUNNEL_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) of agents' and callers' client certificates: clients may
    /// then present a certificate (mTLS), which `cert_sha256` in hub.toml
    /// binds to keys.
    #[arg(long, requires = "tls_cert", env = "GRPCTUNNEL_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// Admin address: Prometheus `/metrics`, `/healthz`, the admin API
    /// (`grpctunnel agents`, ...) and the dashboard at `/`. None by
    /// default. On loopback it is open; beyond loopback it takes TLS (the
    /// hub's `--tls-cert`) and an `[[admin]]` credential of the config on
    /// every request.
    #[arg(long, env = "GRPCTUNNEL_ADMIN")]
    admin: Option<SocketAddr>,
    /// With an admin port beyond loopback: `/metrics` and `/healthz` need
    /// no credential (for a Prometheus and a load balancer that have
    /// none). The admin API and dashboard still do.
    #[arg(long, env = "GRPCTUNNEL_ADMIN_OPEN_METRICS")]
    admin_open_metrics: bool,
    /// Write one line per call (caller, key, method, status, duration,
    /// bytes, peer, where it went or came from) to `stderr` (in the log,
    /// as `--log-format` says) or to a file (JSON lines, appended). Off by
    /// default.
    #[arg(long, value_name = "stderr|PATH", env = "GRPCTUNNEL_ACCESS_LOG")]
    access_log: Option<String>,
    /// Export a span per call (OpenTelemetry, OTLP/gRPC) to this collector,
    /// e.g. `http://127.0.0.1:4317`, continuing callers' W3C `traceparent`.
    #[arg(long, value_name = "URL", env = "GRPCTUNNEL_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Largest message, in bytes, a tunnel carries either way (callers'
    /// requests to agents, their answers). The agents need the same.
    #[arg(long, default_value_t = grpctunnel::DEFAULT_MAX_MESSAGE_SIZE, env = "GRPCTUNNEL_MAX_MESSAGE_SIZE")]
    max_message_size: usize,
    /// Most agent tunnels open at once; more are refused with
    /// `RESOURCE_EXHAUSTED`.
    #[arg(long, default_value_t = grpctunnel::reverse::DEFAULT_MAX_REVERSE_TUNNELS, env = "GRPCTUNNEL_MAX_TUNNELS")]
    max_tunnels: usize,
    /// Most agent tunnels open at once for one key (tunnels still
    /// opening count).
    #[arg(long, default_value_t = grpctunnel::reverse::DEFAULT_MAX_REVERSE_TUNNELS_PER_KEY, env = "GRPCTUNNEL_MAX_TUNNELS_PER_KEY")]
    max_tunnels_per_key: usize,
    /// Most tunnels one credential holds at once, opening or open (an
    /// agent's reverse tunnels, a caller's forward tunnels), unless its
    /// entry in the config says `max_tunnels`: one credential cannot take
    /// `--max-tunnels` from the others.
    #[arg(
        long,
        default_value_t = 100,
        env = "GRPCTUNNEL_MAX_TUNNELS_PER_CREDENTIAL"
    )]
    max_tunnels_per_credential: usize,
    /// How long, in seconds, a tunnel may take to send its `Settings`
    /// after its opening RPC is answered; then it is ended
    /// (`DEADLINE_EXCEEDED`) and its place freed.
    #[arg(
        long,
        default_value = "10",
        value_name = "SECONDS",
        env = "GRPCTUNNEL_SETTINGS_TIMEOUT"
    )]
    settings_timeout: f64,
    /// Most calls in flight at once for each caller credential (`max_calls`
    /// in its `[[caller]]` wins); more are refused with
    /// `RESOURCE_EXHAUSTED`. Default: no limit.
    #[arg(long, env = "GRPCTUNNEL_MAX_CALLS_PER_CALLER")]
    max_calls_per_caller: Option<usize>,
    /// Longest a call with `grpctunnel-wait: true` waits for an agent of
    /// its key (its own deadline may end it sooner); then it fails
    /// `UNAVAILABLE`.
    #[arg(
        long,
        default_value_t = 30,
        value_name = "SECONDS",
        env = "GRPCTUNNEL_MAX_WAIT"
    )]
    max_wait: u64,
    /// Most calls waiting for an agent at once; more are refused with
    /// `RESOURCE_EXHAUSTED`.
    #[arg(long, default_value_t = 10_000, env = "GRPCTUNNEL_MAX_WAITERS")]
    max_waiters: usize,
    /// Seconds a new connection has, from its accept, to finish its TLS
    /// handshake and send the HTTP/2 preface (plaintext: the preface); one
    /// that has not is closed, and counted in
    /// `grpctunnel_limit_hits_total{limit="handshake_timeout"}`. 1 to 3600.
    #[arg(
        long,
        default_value_t = 10,
        value_name = "SECONDS",
        value_parser = clap::value_parser!(u64).range(1..=3600),
        env = "GRPCTUNNEL_HANDSHAKE_TIMEOUT"
    )]
    handshake_timeout: u64,
    /// Most connections open at once (agents', callers', other hubs', and
    /// those still in their handshake); one more is accepted and closed at
    /// once, and counted (`limit="max_connections"`). Those open keep
    /// working. The open-file limit must be above it.
    #[arg(
        long,
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..),
        env = "GRPCTUNNEL_MAX_CONNECTIONS"
    )]
    max_connections: u64,
    /// Most HTTP/2 streams (calls, tunnels) a connection may have open at
    /// once: the limit the hub announces in its SETTINGS; a client queues
    /// calls beyond it, and a stream opened past it is refused
    /// (`REFUSED_STREAM`). Calls inside a tunnel are not streams of the
    /// connection: the tunnel bounds those.
    #[arg(
        long,
        default_value_t = 1_000,
        value_parser = clap::value_parser!(u32).range(1..),
        env = "GRPCTUNNEL_MAX_STREAMS_PER_CONNECTION"
    )]
    max_streams_per_connection: u32,
    /// Most `grpc.health.v1.Health/Watch` calls open at once (the hub's own
    /// health service needs no credential); one more is refused with
    /// `RESOURCE_EXHAUSTED` and counted (`limit="max_health_watches"`).
    #[arg(long, default_value_t = 100, env = "GRPCTUNNEL_MAX_HEALTH_WATCHES")]
    max_health_watches: usize,
    /// Share one key space with other hubs through this Redis/Valkey store
    /// (`redis://host:6379`, `rediss://host:6380` over TLS, or a replicated
    /// store's Sentinels and master name,
    /// `redis+sentinel://s1:26379,s2:26379,s3:26379/mymaster`): any hub then
    /// routes any key, relaying a call to the hub its agent is connected
    /// to. Needs `--advertise` and `--cluster-secret-file`. Its password
    /// belongs in `--cluster-password-file`, not in the URL (the URL is
    /// logged, with any password in it masked).
    #[arg(long, requires_all = ["advertise", "cluster_secret_file"], env = "GRPCTUNNEL_CLUSTER")]
    cluster: Option<String>,
    /// File holding the store's password (its `requirepass`, or the
    /// password of the URL's user name).
    #[arg(long, requires = "cluster", env = "GRPCTUNNEL_CLUSTER_PASSWORD_FILE")]
    cluster_password_file: Option<String>,
    /// CA certificate (PEM) of the store's certificate, for a `rediss://`
    /// store; without it the system's roots are used.
    #[arg(long, requires = "cluster", env = "GRPCTUNNEL_CLUSTER_STORE_CA")]
    cluster_store_ca: Option<PathBuf>,
    /// The URL other hubs dial to relay calls to this one
    /// (`https://hub-2.internal:8443`).
    #[arg(long, env = "GRPCTUNNEL_ADVERTISE")]
    advertise: Option<String>,
    /// File holding the secret every hub of the cluster shares (at least
    /// 32 bytes; `grpctunnel token` or `openssl rand -base64 32` make one).
    /// It is never sent: hubs prove membership with MACs made with it, on
    /// relay tunnels, relayed calls and their entries in the store.
    #[arg(long, env = "GRPCTUNNEL_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<String>,
    /// Dial only these hubs (their `--advertise` URLs, comma-separated):
    /// entries in the store for any other address are ignored. Default:
    /// any hub whose entry is sealed with the cluster secret and whose URL
    /// has this hub's scheme.
    #[arg(long, value_delimiter = ',', env = "GRPCTUNNEL_CLUSTER_PEERS")]
    cluster_peers: Vec<String>,
    /// How long, in seconds, a hub's proof on a relayed call or relay
    /// tunnel is accepted: a captured one is refused once older. Hubs'
    /// clocks must agree to within it.
    #[arg(
        long,
        default_value = "30",
        value_name = "SECONDS",
        env = "GRPCTUNNEL_CLUSTER_RELAY_WINDOW"
    )]
    cluster_relay_window: f64,
    /// How long, in seconds, the store keeps a dead hub's keys: the longest
    /// a key stays unreachable after its hub dies.
    #[arg(
        long,
        default_value = "10",
        value_name = "SECONDS",
        env = "GRPCTUNNEL_CLUSTER_TTL"
    )]
    cluster_ttl: f64,
    /// CA certificate (PEM) of the other hubs' certificates, for an
    /// `https://` `--advertise`; without it the system's roots are used.
    #[arg(long, env = "GRPCTUNNEL_CLUSTER_CA")]
    cluster_ca: Option<PathBuf>,
    /// How this hub relays calls to another: `tunnel` (one forward tunnel
    /// per hub, each call a stream in it) or `grpc` (each call its own
    /// HTTP/2 stream). A hub takes both.
    #[arg(
        long,
        value_enum,
        default_value = "tunnel",
        value_name = "HOW",
        env = "GRPCTUNNEL_CLUSTER_RELAY"
    )]
    cluster_relay: RelayOver,
    #[command(flatten)]
    keepalive: crate::keepalive::KeepaliveArgs,
    #[command(flatten)]
    secret_files: crate::config::SecretFiles,
    /// How long calls in flight may run after SIGTERM.
    #[arg(
        long,
        default_value = "10",
        value_name = "SECONDS",
        env = "GRPCTUNNEL_DRAIN"
    )]
    drain: u64,
}

/// Runs the hub until SIGTERM or Ctrl-C.
pub(crate) async fn run(args: HubArgs) -> Result<(), Failure> {
    let tls = tls_config(&args)?;
    let key_header = http::HeaderName::from_bytes(args.key_header.to_ascii_lowercase().as_bytes())
        .map_err(|e| Failure::Usage(format!("--key-header {:?}: {e}", args.key_header)))?;
    let source = CredentialSource {
        config: args.config.clone(),
        max_calls_per_caller: args.max_calls_per_caller,
        secret_files: args.secret_files,
        client_ca: args.client_ca.is_some(),
        public: !args.listen.ip().is_loopback(),
        tls: tls.is_some(),
        listen: args.listen,
    };
    let Loaded {
        agents,
        callers,
        admins,
        config,
    } = source.load()?;
    let (agents, callers, admins) = (Live::new(agents), Live::new(callers), Live::new(admins));

    let listener = listen(args.listen)
        .map_err(|e| Failure::Run(format!("cannot listen on {}: {e}", args.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Failure::Run(format!("listener: {e}")))?;
    // This hub, as admin rows and access-log lines name it.
    let name = args.advertise.clone().unwrap_or_else(|| addr.to_string());
    let access_log = args
        .access_log
        .as_deref()
        .map(|dest| crate::access_log::AccessLog::open(dest, &name))
        .transpose()?;
    let tracer = args
        .otlp_endpoint
        .as_deref()
        .map(|url| crate::trace::Tracing::to(url, "grpctunnel-hub"))
        .transpose()?;
    let header = key_header.clone();
    let registry = ReverseTunnelRegistry::with_key(move |headers, _| {
        headers
            .get(&header)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    })
    .with_limits(args.max_tunnels, args.max_tunnels_per_key);
    let cluster = cluster(&args)?;
    let registry = match cluster.clone() {
        Some(cluster) => registry.cluster(cluster),
        None => registry,
    };
    let labels =
        crate::metrics::Labels::new(config.agents.iter().flat_map(|a| a.keys.iter().cloned()));
    // Calls other hubs relay here get their access-log lines and spans
    // too.
    let registry = if access_log.is_some() || tracer.is_some() {
        registry.relayed_through(crate::relayed_in::RelayedInLayer {
            log: access_log.clone(),
            tracing: tracer.clone(),
            labels: labels.clone(),
        })
    } else {
        registry
    };
    if !(args.settings_timeout.is_finite() && args.settings_timeout > 0.0) {
        return Err(Failure::Usage(
            "--settings-timeout: more than 0 seconds".into(),
        ));
    }
    let settings_timeout = Duration::from_secs_f64(args.settings_timeout);
    let drain = CancellationToken::new();
    // The layer's own cap counts agents' tunnels and callers' forward
    // tunnels: room for --max-tunnels agents plus as many callers.
    let tunnels = TunnelLayer::new()
        .max_tunnels((args.max_tunnels as u64).saturating_mul(2))
        .max_message_size(args.max_message_size)
        .limits(grpctunnel::Limits::new().settings_timeout(settings_timeout))
        .reverse(registry.clone())
        .shutdown_token(drain.clone())
        .shutdown_grace(Duration::from_secs(args.drain));
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let local: Local = tower::util::BoxCloneSyncService::new(tower::ServiceExt::<
        http::Request<axum::body::Body>,
    >::map_response(
        health,
        |r: http::Response<tonic::body::Body>| r.map(axum::body::Body::new),
    ));
    tokio::spawn(log_agents(registry.subscribe()));
    let admin_registry = registry.clone();
    let route = RouteByKey::new(
        registry,
        local,
        RouteConfig {
            key_header: key_header.clone(),
            authority_suffix: args.authority_suffix,
            callers: callers.clone(),
            max_message_size: args.max_message_size,
            max_wait: Duration::from_secs(args.max_wait),
            max_waiters: args.max_waiters,
            max_health_watches: args.max_health_watches,
            labels: labels.clone(),
            access_log,
            tracing: tracer.clone(),
        },
    );
    let forward = std::sync::Arc::new(crate::revoke::OpenForward::default());
    crate::reload::on_sighup(
        source,
        crate::reload::InForce {
            agents: agents.clone(),
            callers: callers.clone(),
            admins: admins.clone(),
            registry: admin_registry.clone(),
            key_header: key_header.clone(),
            forward: forward.clone(),
            labels: labels.clone(),
        },
    )?;
    let quota = crate::quota::TunnelQuota::new(args.max_tunnels_per_credential);
    tokio::spawn(crate::key_policy::enforce(
        admin_registry.clone(),
        admin_registry.subscribe(),
    ));
    let metrics_handle = metrics::install()?;
    let draining = Arc::new(AtomicBool::new(false));
    let stopped = CancellationToken::new();
    // The admin API: on the admin port, and in a cluster to the other
    // hubs' proved `ListAgents`.
    let mut api = crate::admin::AdminApi::new(
        admin_registry.clone(),
        name,
        labels.clone(),
        draining.clone(),
        health_reporter.clone(),
        Duration::from_secs(args.drain),
    );
    if let Some(cluster) = &cluster {
        api = api.in_cluster(cluster.clone());
    }

    let service = tower::util::MapRequestLayer::new(crate::accept::tcp_info).layer(
        crate::admin::MemberAdmin::new(
            Auth::new(
                tunnels.layer(route),
                agents,
                callers,
                key_header,
                quota,
                admin_registry.clone(),
                forward,
            ),
            api.clone(),
            cluster.clone(),
            admins.clone(),
        ),
    );
    if let Some(admin) = args.admin {
        // Beyond loopback: TLS, and an [[admin]] credential on every
        // request (admin/access.rs).
        let guarded = if admin.ip().is_loopback() {
            None
        } else if admins.get().is_empty() || tls.is_none() {
            return Err(Failure::Usage(format!(
                "refusing to serve the admin port on {admin} without TLS (--tls-cert, --tls-key) and [[admin]] credentials in the config; or use a loopback address"
            )));
        } else {
            Some(crate::admin::access::AdminAccess {
                admins: admins.clone(),
                open_metrics: args.admin_open_metrics,
            })
        };
        let admin_listener = tokio::net::TcpListener::bind(admin)
            .await
            .map_err(|e| Failure::Run(format!("cannot listen on {admin}: {e}")))?;
        let admin_addr = admin_listener
            .local_addr()
            .map_err(|e| Failure::Run(format!("admin listener: {e}")))?;
        tracing::info!(addr = %admin_addr, "admin port listening");
        println!("ADMIN {admin_addr}");
        let stop = stopped.clone().cancelled_owned();
        let app = metrics::admin_router(metrics_handle, admin_registry, cluster, draining.clone())
            .merge(crate::admin::router(api));
        match (guarded, &tls) {
            (Some(access), Some(tls)) => {
                tokio::spawn(crate::admin::access::serve_tls(
                    admin_listener,
                    tls.clone(),
                    access.guard(app),
                    stop,
                ));
            }
            _ => {
                tokio::spawn(metrics::serve_plain(admin_listener, app, stop));
            }
        }
    }
    tracing::info!(%addr, "hub listening");
    // For scripts and tests: the address actually bound (port 0 picks one).
    println!("LISTENING {addr}");
    let drain_flag = draining.clone();
    let signalled = CancellationToken::new();
    let on_signal = signalled.clone();
    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("draining");
        drain_flag.store(true, Ordering::Relaxed);
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        on_signal.cancel();
        drain.cancel();
    };
    // tonic's server: HTTP/2, graceful shutdown; the hub's stack is its
    // only route. Connections come bounded (count, handshake time) and,
    // with TLS, already through their handshake.
    let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(service));
    let router = crate::keepalive::server(
        tonic::transport::Server::builder(),
        args.keepalive.keepalive,
    )
    .max_concurrent_streams(args.max_streams_per_connection)
    .add_routes(routes);
    let limits = crate::accept::ConnectionLimits {
        // More than a semaphore holds is no limit at all.
        max_connections: usize::try_from(args.max_connections)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS),
        handshake_timeout: Duration::from_secs(args.handshake_timeout),
    };
    let serving = match tls {
        Some(tls) => futures_util::future::Either::Left(
            router
                .serve_with_incoming_shutdown(crate::accept::tls(listener, limits, tls), shutdown),
        ),
        None => futures_util::future::Either::Right(
            router.serve_with_incoming_shutdown(crate::accept::plain(listener, limits), shutdown),
        ),
    };
    // Tunnels end within --drain of the signal; a call that holds the
    // connection otherwise (a health watch) does not hold the hub past it.
    let bound = Duration::from_secs(args.drain) + Duration::from_secs(1);
    let deadline = async move {
        signalled.cancelled().await;
        tokio::time::sleep(bound).await;
    };
    tokio::select! {
        served = serving => served.map_err(|e| Failure::Run(format!("serving: {e}")))?,
        () = deadline => tracing::warn!("drain bound reached: closing the connections still open"),
    }
    stopped.cancel();
    if let Some(tracer) = &tracer {
        tracer.shutdown();
    }
    tracing::info!("hub stopped");
    Ok(())
}

/// Connections the kernel may hold for the hub before it accepts them
/// (capped by `net.core.somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// The hub's listening socket, with a backlog of [`LISTEN_BACKLOG`]: the
/// default (128) overflows when many agents reconnect at once, and a
/// connection dropped from a full queue costs its client a SYN retry (a
/// second or more), or with SYN cookies is one the client thinks open
/// and the hub never sees.
fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own bind: a restarted hub rebinds at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Logs each agent tunnel as it joins and leaves the registry (with why
/// it ended), until the registry is gone.
async fn log_agents(mut events: grpctunnel::reverse::TunnelEvents<String>) {
    use futures_util::StreamExt;
    use grpctunnel::TunnelEvent;
    while let Some(event) = events.next().await {
        match event {
            TunnelEvent::Opened(t) => {
                let peer = t.remote_addr().map(|a| a.to_string()).unwrap_or_default();
                tracing::info!(key = %t.key(), tunnel = t.id(), %peer, "agent connected");
            }
            TunnelEvent::Closed(t) => {
                let why = t
                    .channel()
                    .terminal_error()
                    .map(|e| e.chain())
                    .unwrap_or_default();
                tracing::info!(key = %t.key(), tunnel = t.id(), %why, "agent disconnected");
            }
            TunnelEvent::Lagged(n) => {
                tracing::warn!(missed = n, "agent log fell behind the registry");
            }
            _ => {}
        }
    }
}

/// `url` with any password in it masked, for logs and errors.
fn masked(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

/// The shortest cluster secret taken: 32 bytes, the HMAC-SHA256 key size.
const MIN_CLUSTER_SECRET: usize = 32;

/// `--cluster-relay`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum RelayOver {
    Tunnel,
    Grpc,
}

/// The cluster this hub joins, with `--cluster`.
fn cluster(args: &HubArgs) -> Result<Option<grpctunnel::cluster::Cluster>, Failure> {
    let (Some(url), Some(advertise), Some(secret)) =
        (&args.cluster, &args.advertise, &args.cluster_secret_file)
    else {
        return Ok(None);
    };
    let secret = args.secret_files.read(secret)?;
    if secret.len() < MIN_CLUSTER_SECRET {
        return Err(Failure::Usage(format!(
            "the cluster secret is {} bytes; give at least {MIN_CLUSTER_SECRET} (e.g. `openssl rand -base64 32`)",
            secret.len()
        )));
    }
    if !(args.cluster_relay_window.is_finite() && args.cluster_relay_window >= 1.0) {
        return Err(Failure::Usage(
            "--cluster-relay-window: at least 1 second".into(),
        ));
    }
    if let Some(peer) = args
        .cluster_peers
        .iter()
        .find(|p| !(p.starts_with("http://") || p.starts_with("https://")))
    {
        return Err(Failure::Usage(format!(
            "--cluster-peers {peer:?}: give URLs as the hubs advertise them"
        )));
    }
    if !(advertise.starts_with("http://") || advertise.starts_with("https://")) {
        return Err(Failure::Usage(format!(
            "--advertise {advertise:?}: give a URL, http:// or https://"
        )));
    }
    if !(args.cluster_ttl.is_finite() && args.cluster_ttl >= 0.3) {
        return Err(Failure::Usage("--cluster-ttl: at least 0.3 seconds".into()));
    }
    let shown = masked(url);
    let mut store = grpctunnel::cluster::RedisDirectory::options();
    if let Some(file) = &args.cluster_password_file {
        store = store.password(args.secret_files.read(file)?);
    }
    if let Some(path) = &args.cluster_store_ca {
        let pem = std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
        store = store.ca_certificate(pem);
    }
    let directory = store
        .open(url)
        .map_err(|e| Failure::Usage(format!("--cluster {shown}: {e}")))?;
    let ca = match &args.cluster_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?,
        ),
        None => None,
    };
    // Peer hubs are pinged at least once a TTL: a hub the network cut off
    // silently is found (its relay tunnel closes, and it is skipped while
    // unreachable) as soon as the store would drop it, not after
    // `--keepalive`.
    let keepalive = match args.keepalive.keepalive {
        0 => 0,
        secs => secs.min((args.cluster_ttl.ceil() as u64).max(1)),
    };
    tracing::info!(store = %shown, %advertise, "joining the cluster");
    let mut cluster = grpctunnel::cluster::Cluster::new(directory, advertise.clone(), secret)
        .ttl(Duration::from_secs_f64(args.cluster_ttl))
        .relay_window(Duration::from_secs_f64(args.cluster_relay_window))
        .max_message_size(args.max_message_size)
        .relay_over(match args.cluster_relay {
            RelayOver::Tunnel => grpctunnel::cluster::RelayTransport::Tunnel,
            RelayOver::Grpc => grpctunnel::cluster::RelayTransport::Grpc,
        })
        .connect_with(move |url| {
            let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?
                .connect_timeout(Duration::from_secs(2));
            let endpoint = crate::keepalive::client(endpoint, keepalive);
            if !url.starts_with("https://") {
                return Ok(endpoint);
            }
            let tls = match &ca {
                Some(pem) => tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                None => tonic::transport::ClientTlsConfig::new().with_native_roots(),
            };
            Ok(endpoint.tls_config(tls)?)
        });
    if !args.cluster_peers.is_empty() {
        let mut peers = args.cluster_peers.clone();
        peers.push(advertise.clone());
        cluster = cluster.peers(peers);
    }
    Ok(Some(cluster))
}

/// The hub's TLS, when `--tls-cert` and `--tls-key` are given.
fn tls_config(args: &HubArgs) -> Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>, Failure> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let read = |path: &PathBuf| {
        std::fs::read(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
    };
    // Optional: callers and token agents connect without a certificate.
    let ca = args.client_ca.as_ref().map(read).transpose()?;
    crate::accept::server_config(&read(cert)?, &read(key)?, ca.as_deref())
        .map(Some)
        .map_err(|e| Failure::Usage(format!("TLS: {e}")))
}

#[cfg(test)]
mod tests {
    use super::masked;

    #[test]
    fn store_urls_are_shown_without_their_password() {
        assert_eq!(masked("redis://10.0.0.2:6379/0"), "redis://10.0.0.2:6379/0");
        assert_eq!(
            masked("redis://:hunter2@10.0.0.2:6379"),
            "redis://:***@10.0.0.2:6379"
        );
        assert_eq!(
            masked("rediss://hub:p@ss:w@rd@store:6380/1?protocol=3"),
            "rediss://hub:***@store:6380/1?protocol=3"
        );
        assert_eq!(
            masked("redis+sentinel://:hunter2@s1:26379,s2:26379/mymaster"),
            "redis+sentinel://:***@s1:26379,s2:26379/mymaster"
        );
        assert_eq!(masked("hunter2@store"), "(not a URL)");
    }
}
