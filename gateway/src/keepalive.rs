//! HTTP/2 keepalive (`--keepalive`): pings that find a connection a NAT
//! or load balancer dropped without a word, on the hub's server side and
//! on the agent's and peer hubs' client side. The tunnel protocol has no
//! ping of its own; a silently dead connection would otherwise hold its
//! tunnel (and the calls sent into it) until TCP gives up, many minutes
//! later.

use std::time::Duration;

use tonic::transport::{Endpoint, Server};

/// `--keepalive`, a flag of both hub and agent.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct KeepaliveArgs {
    /// Seconds between HTTP/2 pings on each connection (the hub's agents,
    /// callers and peer hubs; the agent's hubs). A connection whose ping
    /// goes unanswered within as long again is closed, so one that a NAT or
    /// load balancer dropped without a word is found (and an agent dials
    /// again). 0: no pings.
    #[arg(
        long,
        default_value_t = 30,
        value_name = "SECONDS",
        env = "GRPCTUNNEL_KEEPALIVE"
    )]
    pub(crate) keepalive: u64,
}

/// Pings every `secs` seconds, also while no call is open, and drops the
/// connection when one goes unanswered for as long; 0 leaves `endpoint`
/// as it is.
pub(crate) fn client(endpoint: Endpoint, secs: u64) -> Endpoint {
    if secs == 0 {
        return endpoint;
    }
    let every = Duration::from_secs(secs);
    endpoint
        .http2_keep_alive_interval(every)
        .keep_alive_timeout(every)
        .keep_alive_while_idle(true)
}

/// The same for every connection `server` accepts.
pub(crate) fn server(server: Server, secs: u64) -> Server {
    if secs == 0 {
        return server;
    }
    let every = Duration::from_secs(secs);
    server
        .http2_keepalive_interval(Some(every))
        .http2_keepalive_timeout(Some(every))
}

/// Default of the agent's `--upstream-keepalive`: gRPC servers take pings
/// more often than every 5 minutes, with no data sent between them, as
/// abuse and close the connection (grpc-go's and grpc-java's default
/// enforcement), so pings toward a server we do not configure are no
/// more frequent than that.
pub(crate) const UPSTREAM_DEFAULT_SECS: u64 = 300;

/// Longest wait for the answer to a ping toward the upstream: gRPC's own
/// default keepalive timeout.
const UPSTREAM_MAX_WAIT: Duration = Duration::from_secs(20);

/// The agent's pings toward its upstream: sent every `every` while calls
/// are open on the connection (never while it is idle, which gRPC servers
/// also refuse); a ping unanswered within `wait` closes the connection and
/// fails its calls `UNAVAILABLE` rather than leaving them to their
/// deadlines (or forever, for calls without one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamPings {
    pub(crate) every: Duration,
    pub(crate) wait: Duration,
}

impl UpstreamPings {
    /// Pings every `secs` seconds, waiting as long again for the answer
    /// (at most 20 s); 0: none.
    pub(crate) fn every_secs(secs: u64) -> Option<Self> {
        (secs > 0).then(|| {
            let every = Duration::from_secs(secs);
            Self {
                every,
                wait: every.min(UPSTREAM_MAX_WAIT),
            }
        })
    }

    /// The same pings on a tonic `Channel`'s connection (an `https://`
    /// upstream): hyper's keepalive, which pings only while streams are
    /// open unless told otherwise.
    pub(crate) fn on(pings: Option<Self>, endpoint: Endpoint) -> Endpoint {
        match pings {
            Some(pings) => endpoint
                .http2_keep_alive_interval(pings.every)
                .keep_alive_timeout(pings.wait),
            None => endpoint,
        }
    }
}
