//! Spans and field names shared by every part of the crate.
//!
//! - `grpctunnel.tunnel`: `tunnel_id`, `direction` (`forward`/`reverse`),
//!   `role` (`client`/`server`: tunnel client or tunnel server), `revision`
//!   (recorded once negotiated), `peer` (the network peer's address, when
//!   known).
//! - `grpctunnel.stream`, a child of its tunnel's span: `stream_id`, `method`.
//!
//! Events: `debug` for tunnel and stream open/close (with `code` on close),
//! protocol errors (`error`) and flow-control stalls; `trace` per frame
//! (`frame`, `stream_id`, `len`); `warn` only for a fallback to revision 0.

use std::net::SocketAddr;

use tracing::{field, Span};

use crate::{engine::stats, info::Direction, wire::settings::Revision};

/// Which end of the tunnel a span belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// Sends calls through the tunnel.
    Client,
    /// Answers calls that come through the tunnel.
    Server,
}

/// The span of one tunnel.
pub(crate) fn tunnel_span(direction: Direction, role: Role, peer: Option<SocketAddr>) -> Span {
    let span = tracing::debug_span!(
        "grpctunnel.tunnel",
        tunnel_id = stats::next_tunnel_id(),
        direction = %direction,
        role = match role {
            Role::Client => "client",
            Role::Server => "server",
        },
        revision = field::Empty,
        peer = field::Empty,
    );
    if let Some(peer) = peer {
        span.record("peer", field::display(peer));
    }
    span
}

/// Records the negotiated revision on a tunnel span.
pub(crate) fn record_revision(span: &Span, revision: Revision) {
    span.record("revision", field::display(revision));
}

/// The span of one tunneled stream, a child of `tunnel`.
pub(crate) fn stream_span(tunnel: &Span, stream_id: i64, method: &str) -> Span {
    tracing::debug_span!(parent: tunnel, "grpctunnel.stream", stream_id, method)
}

/// The network peer's address from a request's extensions, when the server
/// recorded it (tonic's `TcpConnectInfo`).
pub(crate) fn peer_addr(ext: &http::Extensions) -> Option<SocketAddr> {
    #[cfg(feature = "transport")]
    if let Some(info) = ext.get::<tonic::transport::server::TcpConnectInfo>() {
        return info.remote_addr();
    }
    let _ = ext;
    None
}
