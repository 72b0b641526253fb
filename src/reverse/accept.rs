//! Accepting `OpenReverseTunnel` on the network server: the network server
//! becomes the tunnel client, and the tunnel joins a registry once ready.
//! The registry plugs into the server as its
//! [`ReverseAcceptor`](crate::server::ReverseAcceptor).

use std::{hash::Hash, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::{
    client::start_client,
    engine::{
        accept::Accepted,
        trace::{self, Role},
    },
    info::Direction,
    pb,
    reverse::ReverseTunnelRegistry,
    server::{RelayFuture, ReverseAcceptor, TunnelLayer},
    wire::settings::Options,
};

impl TunnelLayer {
    /// Accepts reverse tunnels (`OpenReverseTunnel`) and publishes each one
    /// in `registry` once it is ready. Without this, reverse tunnels are
    /// refused with `UNIMPLEMENTED` `reverse tunnels not supported` (P-18).
    pub fn reverse<K>(self, registry: ReverseTunnelRegistry<K>) -> Self
    where
        K: Clone + Eq + Hash + Send + Sync + 'static,
    {
        self.reverse_acceptor(Arc::new(Acceptor(registry)))
    }
}

/// A registry as the server's reverse acceptor.
struct Acceptor<K>(ReverseTunnelRegistry<K>);

impl<K> ReverseAcceptor for Acceptor<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    fn admit_relay(&self, headers: &http::HeaderMap) -> Result<(), tonic::Status> {
        #[cfg(feature = "cluster")]
        return crate::reverse::cluster::check_relay_tunnel(&self.0, headers);
        #[cfg(not(feature = "cluster"))]
        {
            let _ = headers;
            Err(tonic::Status::unauthenticated(
                "relay tunnel refused: this server is not in a cluster",
            ))
        }
    }

    fn relay(&self, req: http::Request<tonic::body::Body>) -> RelayFuture {
        #[cfg(feature = "cluster")]
        return match self.0.relayed(req) {
            Ok(through_layer) => through_layer,
            Err(req) => Box::pin(crate::reverse::cluster::receive(self.0.clone(), req)),
        };
        #[cfg(not(feature = "cluster"))]
        {
            drop(req);
            Box::pin(std::future::ready(
                tonic::Status::unauthenticated(
                    "relayed call refused: this server is not in a cluster",
                )
                .into_http(),
            ))
        }
    }

    fn admit(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<(), tonic::Status> {
        self.0.admit(headers, extensions)
    }

    fn accept(
        &self,
        tunnel: Accepted<pb::ServerToClient>,
        opts: Options,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let peer = trace::peer_addr(&tunnel.extensions);
        let span = trace::tunnel_span(Direction::Reverse, Role::Client, peer);
        let registry = self.0.clone();
        // Counted from before the agent sees the answer to its opening RPC
        // (so it may think itself connected already), until it is
        // published or failed: calls for its key wait for it meanwhile.
        let opening = Opening::new(
            registry.clone(),
            registry.key_of(&tunnel.headers, &tunnel.extensions),
        );
        tokio::spawn(
            async move {
                // P-13, P-73: published only once Settings (if negotiated) arrived.
                let Accepted {
                    core,
                    gone,
                    inbound,
                    negotiated,
                    extended,
                    headers,
                    extensions,
                    ..
                } = tunnel;
                let direction = Direction::Reverse;
                let started =
                    start_client(core, gone, inbound, negotiated, extended, opts, direction).await;
                match started {
                    Ok(channel) => {
                        registry.add(headers, extensions, channel.clone());
                        drop(opening);
                        tokio::select! {
                            _ = channel.closed() => {}
                            () = shutdown.cancelled() => channel.shutdown(grace).await,
                        }
                    }
                    Err(err) => debug!(error = %err.chain(), "reverse tunnel failed to start"),
                }
            }
            .instrument(span),
        );
    }
}

/// One tunnel opening: counted until dropped (after it joined the
/// registry, or failed); dropping it wakes the calls waiting on it.
struct Opening<K: Clone + Eq + Hash + Send + Sync + 'static> {
    registry: ReverseTunnelRegistry<K>,
    key: K,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Opening<K> {
    /// Counts a tunnel of `key` as opening until the guard drops.
    fn new(registry: ReverseTunnelRegistry<K>, key: K) -> Self {
        registry.openings().add(&key);
        Self { registry, key }
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Drop for Opening<K> {
    fn drop(&mut self) {
        self.registry.openings().remove(&self.key);
        // Waiters look again: at the tunnel, or at no opening left.
        self.registry.wake_waiters(&self.key);
    }
}
