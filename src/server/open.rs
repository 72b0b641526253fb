//! Accepting an opening RPC: negotiation, response headers and the engines.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use futures_util::future::{ready, Ready};
use tracing::{debug, Instrument};

use crate::{
    inbound::Inbound,
    info::Direction,
    negotiate::{self, Options, Revision},
    pb,
    server::{
        dispatch::Dispatch,
        tunnel::{Ending, ServerTunnel, TunnelContext},
    },
    stats::{Counters, Meter},
    stream::server_frame,
    trace::{self, Role},
    writer::{Core, Writer},
};

/// `OpenTunnel` as a tonic streaming service: the network server is the
/// tunnel server.
pub(crate) struct OpenTunnel {
    /// The frames of the request body (tonic decodes an empty one).
    pub(crate) inbound: Option<Inbound<pb::ClientToServer>>,
    pub(crate) opts: Options,
    pub(crate) shutdown: CancellationToken,
    pub(crate) grace: Duration,
    pub(crate) counters: Arc<Counters>,
    pub(crate) dispatch: Dispatch,
    pub(crate) extensions: http::Extensions,
    pub(crate) headers: http::HeaderMap,
}

impl tonic::server::StreamingService<pb::ClientToServer> for OpenTunnel {
    type Response = pb::ServerToClient;
    type ResponseStream = Writer<pb::ServerToClient>;
    type Future = Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(
        &mut self,
        _request: tonic::Request<tonic::Streaming<pb::ClientToServer>>,
    ) -> Self::Future {
        let Some(inbound) = self.inbound.take() else {
            return ready(Err(tonic::Status::internal("opening RPC served twice")));
        };
        let negotiated = self.opts.advertises() && negotiate::peer_advertises(&self.headers);
        let (core, writer, gone) = Core::new(Meter::tunnel(Some(self.counters.clone())));
        if negotiated {
            // P-11: Settings is the first ServerToClient frame.
            core.send_control(server_frame(
                -1,
                pb::server_to_client::Frame::Settings(self.opts.settings()),
            ));
        }
        let peer = trace::peer_addr(&self.extensions);
        let cx = TunnelContext {
            opts: self.opts,
            dispatch: self.dispatch.clone(),
            extensions: std::mem::take(&mut self.extensions),
            metadata: Arc::new(std::mem::take(&mut self.headers)),
            direction: Direction::Forward,
        };
        let span = trace::tunnel_span(Direction::Forward, Role::Server, peer);
        trace::record_revision(
            &span,
            if negotiated {
                self.opts.max_revision
            } else {
                Revision::Zero
            },
        );
        let tunnel = ServerTunnel::new(cx, core.clone(), gone, inbound)
            .with_shutdown(self.shutdown.clone(), self.grace);
        tokio::spawn(
            async move {
                debug!("tunnel open");
                let (ending, _inbound) = tunnel.run().await;
                let status = match ending {
                    // P-67: the client's end of input ends the RPC with OK.
                    Ending::Closed | Ending::Drained | Ending::Aborted => None,
                    // The opening RPC broke (an undecodable frame, say): it
                    // ends with that status, not OK (P-6, P-22).
                    Ending::Broken(status) => Some(status),
                    // P-22: a fatal error ends the RPC with UNKNOWN and its text.
                    Ending::Protocol(text) => Some(tonic::Status::unknown(text)),
                };
                debug!("tunnel closed");
                core.meter.tunnel_closed();
                core.finish(status);
            }
            .instrument(span),
        );
        ready(Ok(negotiate::opening_response(&self.opts, writer)))
    }
}
