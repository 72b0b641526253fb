//! Refused credentials, logged and counted: each refusal names the peer it
//! came from, and the log is rate-limited, so that a flood of bad
//! credentials costs the operator a few lines a second, not the disk.
//!
//! At most [`PER_SECOND`] refusals are logged each second; the rest are
//! counted (`grpctunnel_auth_failures_total` counts them all) and their
//! number is logged with the next refusal logged after the second.

use std::net::SocketAddr;

use crate::log_budget::{LogBudget, PER_SECOND};

/// The budget of refusal lines.
static BUDGET: LogBudget = LogBudget::new();

/// The peer address of a request (or of the opening RPC of the tunnel it
/// came through), plain or TLS.
pub(crate) fn peer(extensions: &http::Extensions) -> Option<SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    if let Some(info) = extensions.get::<TcpConnectInfo>() {
        return info.remote_addr();
    }
    let tls = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?;
    tls.get_ref().remote_addr()
}

/// Counts a refusal (`who`: `agent` or `caller`; `reason`: the metric's
/// label) and logs it, naming the peer, within the rate limit.
pub(crate) fn refused(
    extensions: &http::Extensions,
    who: &'static str,
    reason: &'static str,
    key: &str,
    text: &str,
) {
    crate::metrics::auth_failure(who, reason);
    let Some(suppressed) = BUDGET.admit() else {
        return;
    };
    let peer = peer(extensions).map(|a| a.to_string()).unwrap_or_default();
    if suppressed > 0 {
        tracing::warn!(
            %peer, who, reason, key, suppressed,
            "{text} ({suppressed} more refusals were not logged, beyond {PER_SECOND} a second)"
        );
    } else {
        tracing::warn!(%peer, who, reason, key, "{text}");
    }
}
