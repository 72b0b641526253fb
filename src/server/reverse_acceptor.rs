//! The hook through which reverse tunnels plug into the server: a
//! [`TunnelLayer`](crate::TunnelLayer) answers `OpenReverseTunnel` only when
//! it holds a [`ReverseAcceptor`] (the `reverse` module's registry is one),
//! so the server never depends on how reverse tunnels are kept.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{engine::accept::Accepted, pb, wire::settings::Options};

/// Takes the reverse tunnels a network server accepts.
pub(crate) trait ReverseAcceptor: Send + Sync + 'static {
    /// Checks, before anything is answered, that a tunnel with these opening
    /// headers may open (limits, keys); the error is the RPC's status.
    fn admit(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<(), tonic::Status>;

    /// Starts the tunnel client on an accepted `OpenReverseTunnel`, with the
    /// layer's `opts`, and keeps the tunnel; `shutdown` starts a graceful
    /// close bounded by `grace`. Must not block (it spawns).
    fn accept(
        &self,
        tunnel: Accepted<pb::ServerToClient>,
        opts: Options,
        shutdown: CancellationToken,
        grace: Duration,
    );
}
