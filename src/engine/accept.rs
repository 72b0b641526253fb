//! Accepting a tunnel as the network server: the one acceptor that both
//! opening RPCs share (`OpenTunnel`, where the network server becomes the
//! tunnel server, and `OpenReverseTunnel`, where it becomes the tunnel
//! client).
//!
//! [`accept`] takes the opening RPC's frames straight from the HTTP body
//! (see [`inbound`](super::inbound)), answers with the negotiation header
//! when both ends offer it (P-9, P-10), and hands the tunnel to the role that
//! runs it; the role's [`Writer`] becomes the response stream.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::{ready, Ready};
use tokio::sync::mpsc;

use crate::{
    engine::{
        inbound::Inbound,
        open::Opening,
        stats::{Counters, Meter},
        writer::{Core, Writer},
    },
    error::BoxError,
    wire::{
        codec::TunnelCodec,
        settings::{self, Options},
    },
};

/// An accepted opening RPC. `C` is the frame type the network client sends;
/// the network server writes `C::Answer` frames through `core`.
pub(crate) struct Accepted<C: Opening> {
    pub(crate) core: Arc<Core<C::Answer>>,
    /// IDs of streams the writer is done with (for the reader's table).
    pub(crate) gone: mpsc::UnboundedReceiver<i64>,
    /// The network client's frames.
    pub(crate) inbound: Inbound<C>,
    /// Whether both ends offered negotiation (P-10).
    pub(crate) negotiated: bool,
    /// Whether both ends carry `-bin` values as base64.
    pub(crate) extended: bool,
    /// The opening RPC's request headers.
    pub(crate) headers: http::HeaderMap,
    /// The opening RPC's request extensions.
    pub(crate) extensions: http::Extensions,
    /// The opening RPC's scheme and authority, when its URI has them.
    pub(crate) authority: Option<(http::uri::Scheme, http::uri::Authority)>,
}

/// Serves the opening RPC `req` on the network server, handing the tunnel
/// to `start`, which must not block (it spawns what runs the tunnel).
pub(crate) async fn accept<C, B, S>(
    req: http::Request<B>,
    opts: Options,
    counters: Arc<Counters>,
    start: S,
) -> http::Response<tonic::body::Body>
where
    C: Opening,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    S: FnOnce(Accepted<C>) + Send + 'static,
{
    let (req, inbound) = Inbound::split_request(req, opts.max_frame_size());
    let authority = req.uri().authority().cloned().map(|authority| {
        let scheme = req
            .uri()
            .scheme()
            .cloned()
            .unwrap_or(http::uri::Scheme::HTTP);
        (scheme, authority)
    });
    let service = Accept {
        authority,
        inbound: Some(inbound),
        opts,
        counters,
        headers: req.headers().clone(),
        extensions: req.extensions().clone(),
        start: Some(start),
    };
    tonic::server::Grpc::new(TunnelCodec::<C::Answer, C>::default())
        .max_encoding_message_size(usize::MAX)
        .streaming(service, req)
        .await
}

struct Accept<C, S> {
    authority: Option<(http::uri::Scheme, http::uri::Authority)>,
    inbound: Option<Inbound<C>>,
    opts: Options,
    counters: Arc<Counters>,
    headers: http::HeaderMap,
    extensions: http::Extensions,
    start: Option<S>,
}

impl<C, S> tonic::server::StreamingService<C> for Accept<C, S>
where
    C: Opening,
    S: FnOnce(Accepted<C>) + Send + 'static,
{
    type Response = C::Answer;
    type ResponseStream = Writer<C::Answer>;
    type Future = Ready<Result<tonic::Response<Self::ResponseStream>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<tonic::Streaming<C>>) -> Self::Future {
        let (Some(inbound), Some(start)) = (self.inbound.take(), self.start.take()) else {
            return ready(Err(tonic::Status::internal("opening RPC served twice")));
        };
        let negotiated = self.opts.advertises() && settings::peer_advertises(&self.headers);
        let extended = settings::offers_extended_metadata(&self.headers);
        let (core, writer, gone) = Core::new(Meter::tunnel(Some(self.counters.clone())));
        start(Accepted {
            core,
            gone,
            inbound,
            negotiated,
            extended,
            headers: std::mem::take(&mut self.headers),
            extensions: std::mem::take(&mut self.extensions),
            authority: self.authority.take(),
        });
        ready(Ok(settings::opening_response(&self.opts, extended, writer)))
    }
}
