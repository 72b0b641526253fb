//! The hook through which reverse tunnels plug into the server: a
//! [`TunnelLayer`](crate::TunnelLayer) answers `OpenReverseTunnel` only when
//! it holds a [`ReverseAcceptor`] (the `reverse` module's registry is one),
//! so the server never depends on how reverse tunnels are kept.

use std::{future::Future, pin::Pin, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{engine::accept::Accepted, pb, wire::settings::Options};

/// Header of a call one replica of a cluster relays to another, and of the
/// tunnel it relays calls in: a proof of membership in the cluster. A
/// request carrying it goes to the acceptor's
/// [`relay`](ReverseAcceptor::relay), never to the inner service.
pub(crate) const RELAY_AUTH_HEADER: &str = "grpctunnel-relay-auth";

/// In the extensions of a call that came in a relay tunnel, whose opening
/// the acceptor admitted ([`admit_relay`](ReverseAcceptor::admit_relay)):
/// the call needs no proof of its own. Only the server sets it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InRelayTunnel;

/// Header of a relayed call: the key whose tunnels serve it.
#[cfg(feature = "cluster")]
pub(crate) const RELAY_KEY_HEADER: &str = "grpctunnel-relay-key";

/// The response of a relayed call.
pub(crate) type RelayFuture =
    Pin<Box<dyn Future<Output = http::Response<tonic::body::Body>> + Send>>;

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

    /// Serves a call another replica relayed here (it carries
    /// [`RELAY_AUTH_HEADER`]): checks it and sends it through a local
    /// tunnel; the answer is the call's response, a refusal a status.
    fn relay(&self, req: http::Request<tonic::body::Body>) -> RelayFuture;

    /// Checks the opening headers of a forward tunnel another replica opens
    /// to relay calls through (it carries [`RELAY_AUTH_HEADER`]); each
    /// call in it then goes to [`relay`](Self::relay).
    fn admit_relay(&self, headers: &http::HeaderMap) -> Result<(), tonic::Status>;
}
