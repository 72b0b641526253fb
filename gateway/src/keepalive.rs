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
