//! The calls other replicas relay to this one, as a tower service that an
//! application may wrap ([`ReverseTunnelRegistry::relayed_through`]): to
//! count them, log them, trace them, as it does its own callers' calls.

use std::convert::Infallible;

use tower::{util::BoxCloneSyncService, Layer, Service, ServiceExt};

use crate::reverse::ReverseTunnelRegistry;

/// The calls other replicas relay to this one: what
/// [`ReverseTunnelRegistry::relayed_through`] wraps. A request carries the
/// relay headers as it arrived ([`RELAY_KEY_HEADER`](crate::cluster::RELAY_KEY_HEADER),
/// [`RELAY_FROM_HEADER`](crate::cluster::RELAY_FROM_HEADER), and for a call
/// relayed as plain gRPC its proof); the service checks the proof, then
/// serves the call from a local tunnel of its key. The response is marked
/// with [`ServedBy`](crate::reverse::ServedBy).
pub type RelayedCalls = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

impl ReverseTunnelRegistry<String> {
    /// Passes the calls other replicas relay here (as plain gRPC calls or
    /// in relay tunnels) through `layer` before they are checked and
    /// served: the hook for an application's metrics, access logs or
    /// traces of relayed calls, which never reach its own service.
    ///
    /// Call it after [`cluster`](Self::cluster); outside a cluster no call
    /// is relayed here and the layer is not used.
    ///
    /// # Panics
    ///
    /// If a layer was given already.
    #[track_caller]
    pub fn relayed_through<L>(self, layer: L) -> Self
    where
        L: Layer<RelayedCalls>,
        L::Service: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        <L::Service as Service<http::Request<tonic::body::Body>>>::Future: Send + 'static,
    {
        let Some(link) = self.cluster_link() else {
            return self;
        };
        let weak = self.downgrade();
        let served = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let registry = weak.upgrade();
            async move {
                Ok::<_, Infallible>(match registry {
                    Some(registry) => super::receive(registry, req).await,
                    None => tonic::Status::unavailable("this server is shutting down").into_http(),
                })
            }
        });
        let wrapped = BoxCloneSyncService::new(layer.layer(BoxCloneSyncService::new(served)));
        if link.relayed.set(wrapped).is_err() {
            panic!("relayed calls already go through a layer");
        }
        self
    }
}

impl<K> ReverseTunnelRegistry<K>
where
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
{
    /// Serves a relayed call through the application's layer; the
    /// request back when there is none.
    #[allow(clippy::result_large_err)]
    pub(crate) fn relayed(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> Result<crate::server::RelayFuture, http::Request<tonic::body::Body>> {
        let Some(service) = self.cluster_link().and_then(|l| l.relayed.get()) else {
            return Err(req);
        };
        let service = service.clone();
        Ok(Box::pin(async move {
            match service.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }))
    }
}
