//! Accepting `OpenReverseTunnel` on the network server: the network server
//! becomes the tunnel client, and the tunnel joins a registry once ready.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use futures_util::future::{ready, Ready};
use tracing::{debug, Instrument};

use crate::{
    client::start_client,
    inbound::Inbound,
    info::Direction,
    negotiate::{self, Options},
    pb,
    reverse::registry::Acceptor,
    stats::{Counters, Meter},
    trace::{self, Role},
    writer::{Core, Writer},
};

/// `OpenReverseTunnel` as a tonic streaming service. Its request stream
/// carries `ServerToClient` frames and its response `ClientToServer` (P-1).
pub(crate) struct OpenReverseTunnel {
    /// The frames of the request body (tonic decodes an empty one).
    pub(crate) inbound: Option<Inbound<pb::ServerToClient>>,
    pub(crate) opts: Options,
    pub(crate) shutdown: CancellationToken,
    pub(crate) grace: Duration,
    pub(crate) counters: Arc<Counters>,
    pub(crate) acceptor: Arc<dyn Acceptor>,
    pub(crate) extensions: http::Extensions,
    pub(crate) headers: http::HeaderMap,
}

impl tonic::server::StreamingService<pb::ServerToClient> for OpenReverseTunnel {
    type Response = pb::ClientToServer;
    type ResponseStream = Writer<pb::ClientToServer>;
    type Future = Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(
        &mut self,
        _request: tonic::Request<tonic::Streaming<pb::ServerToClient>>,
    ) -> Self::Future {
        let Some(inbound) = self.inbound.take() else {
            return ready(Err(tonic::Status::internal("opening RPC served twice")));
        };
        let negotiated = self.opts.advertises() && negotiate::peer_advertises(&self.headers);
        let (core, writer, gone) = Core::new(Meter::tunnel(Some(self.counters.clone())));
        let opts = self.opts;
        let acceptor = self.acceptor.clone();
        let extensions = std::mem::take(&mut self.extensions);
        let headers = std::mem::take(&mut self.headers);
        let shutdown = self.shutdown.clone();
        let grace = self.grace;
        let span = trace::tunnel_span(
            Direction::Reverse,
            Role::Client,
            trace::peer_addr(&extensions),
        );
        tokio::spawn(
            async move {
                // P-13, P-73: published only once Settings (if negotiated) arrived.
                match start_client(core, gone, inbound, negotiated, opts, Direction::Reverse).await
                {
                    Ok(channel) => {
                        acceptor.accept(headers, extensions, channel.clone());
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
        ready(Ok(negotiate::opening_response(&self.opts, writer)))
    }
}
