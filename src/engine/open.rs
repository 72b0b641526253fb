//! Opening a tunnel as the network client: the one opener that forward
//! tunnel clients (`TunnelChannelBuilder`) and reverse tunnel servers
//! (`ReverseTunnelServer`) share, and the options both take.
//!
//! [`dial`] sends the opening RPC with the frames of a [`Writer`] as its
//! request stream, offers negotiation (P-8), waits for the response headers
//! and hands back the response body as an [`Inbound`] frame stream. The
//! transport is wrapped in an [`OpeningTransport`], which turns a non-gRPC
//! HTTP answer into a status and takes the body before tonic sees it.

use bytes::Bytes;

use crate::{
    engine::{
        inbound::{BodySlot, Inbound},
        writer::Writer,
    },
    error::{BoxError, Error},
    pb,
    wire::{
        codec::TunnelCodec,
        frame::OutFrame,
        settings::{self, Options},
        status::http_status_to_grpc,
    },
};

/// One of the two opening RPCs, by the frames its network client sends.
pub(crate) trait Opening: OutFrame + prost::Message + Default {
    /// The frames the network server answers with.
    type Answer: OutFrame + prost::Message + Default;
    /// The method's name, `TunnelService`'s `OpenTunnel` or
    /// `OpenReverseTunnel`.
    const METHOD: &'static str;
}

impl Opening for pb::ClientToServer {
    type Answer = pb::ServerToClient;
    const METHOD: &'static str = "OpenTunnel";
}

impl Opening for pb::ServerToClient {
    type Answer = pb::ClientToServer;
    const METHOD: &'static str = "OpenReverseTunnel";
}

/// `grpctunnel.v1.TunnelService`.
pub(crate) const SERVICE: &str = "grpctunnel.v1.TunnelService";

/// An opening RPC whose response headers arrived.
pub(crate) struct Dialed<In> {
    /// Whether both ends offered negotiation (P-10).
    pub(crate) negotiated: bool,
    /// Whether the network server agreed to carry `-bin` values as base64.
    pub(crate) extended: bool,
    /// The peer's frames.
    pub(crate) inbound: Inbound<In>,
    /// The response's extensions.
    pub(crate) extensions: http::Extensions,
}

/// Opens a tunnel on `transport`: the opening RPC `Out::METHOD` with
/// `metadata` (plus the negotiation header when `opts` offers it) and the
/// frames of `writer` as its request stream.
///
/// # Errors
///
/// A closed [`Error`] with the status the RPC failed with before its
/// response headers (the transport's, or the network server's).
pub(crate) async fn dial<T, Out>(
    transport: T,
    opts: &Options,
    mut metadata: http::HeaderMap,
    writer: Writer<Out>,
) -> Result<Dialed<Out::Answer>, Error>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    Out: Opening,
{
    if opts.advertises() {
        metadata.insert(
            settings::NEGOTIATE_HEADER,
            http::HeaderValue::from_static(settings::NEGOTIATE_ON),
        );
    }
    metadata.insert(
        settings::EXTENSIONS_HEADER,
        http::HeaderValue::from_static(settings::EXTENDED_METADATA),
    );
    let mut req = tonic::Request::new(futures_util::StreamExt::filter_map(writer, |r| {
        std::future::ready(r.ok())
    }));
    *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(metadata);
    req.extensions_mut()
        .insert(tonic::GrpcMethod::new(SERVICE, Out::METHOD));
    let (transport, body) = OpeningTransport::new(transport);
    let mut grpc = tonic::client::Grpc::new(transport).max_encoding_message_size(usize::MAX);
    grpc.ready().await.map_err(|e| {
        Error::closed(tonic::Status::unknown(format!(
            "Service was not ready: {}",
            e.into()
        )))
    })?;
    let path = http::uri::PathAndQuery::from_maybe_shared(format!("/{SERVICE}/{}", Out::METHOD))
        .map_err(|e| Error::closed(tonic::Status::internal(e.to_string())))?;
    let codec = TunnelCodec::<Out, Out::Answer>::default();
    let resp = grpc
        .streaming(req, path, codec)
        .await
        .map_err(Error::closed)?;
    let negotiated = opts.advertises() && settings::peer_advertises(resp.metadata().as_ref());
    let extended = settings::offers_extended_metadata(resp.metadata().as_ref());
    let inbound = body.take_response(opts.max_frame_size())?;
    let (_, _, extensions) = resp.into_parts();
    Ok(Dialed {
        negotiated,
        extended,
        inbound,
        extensions,
    })
}

/// The transport of an opening RPC. A non-gRPC HTTP answer (a 401 from an
/// auth layer, a 404 from a proxy) becomes a gRPC status in the headers, so
/// that opening fails with it at once instead of looking like a peer that
/// did not negotiate. The response body goes to `body`, to be decoded by
/// [`Inbound`]; tonic gets an empty one.
#[derive(Debug, Clone)]
pub(crate) struct OpeningTransport<T> {
    inner: T,
    body: BodySlot,
}

impl<T> OpeningTransport<T> {
    /// `transport` for one opening RPC, and where its response body goes.
    pub(crate) fn new(transport: T) -> (Self, BodySlot) {
        let body = BodySlot::default();
        let this = Self {
            inner: transport,
            body: body.clone(),
        };
        (this, body)
    }
}

impl<T> tower_service::Service<http::Request<tonic::body::Body>> for OpeningTransport<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError>,
{
    type Response = http::Response<http_body_util::Empty<bytes::Bytes>>;
    type Error = T::Error;
    type Future = Opened<T::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Opened {
            inner: self.inner.call(req),
            body: Some(self.body.clone()),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of an [`OpeningTransport`], on its way.
    pub(crate) struct Opened<F> {
        #[pin]
        inner: F,
        body: Option<BodySlot>,
    }
}

impl<F, B, E> std::future::Future for Opened<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<http_body_util::Empty<bytes::Bytes>>, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let (parts, body) = http_answer_to_status(resp).into_parts();
        if let Some(slot) = this.body.take() {
            slot.put(tonic::body::Body::new(body));
        }
        std::task::Poll::Ready(Ok(http::Response::from_parts(
            parts,
            http_body_util::Empty::new(),
        )))
    }
}

fn http_answer_to_status<B>(mut resp: http::Response<B>) -> http::Response<B> {
    if resp.status() == http::StatusCode::OK || resp.headers().contains_key("grpc-status") {
        return resp;
    }
    let status = http_status_to_grpc(resp.status());
    *resp.status_mut() = http::StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert("grpc-status", http::HeaderValue::from(status.code() as i32));
    if let Ok(message) = http::HeaderValue::from_str(status.message()) {
        headers.insert("grpc-message", message);
    }
    resp
}

/// The options every end that opens a tunnel takes (a `TunnelChannelBuilder`
/// and a `ReverseTunnelServer`): written once, for types with `opts:
/// Options` and `metadata: http::HeaderMap` fields.
macro_rules! opening_options {
    () => {
        /// Receive window advertised for each stream (revision one).
        /// Default: [`DEFAULT_INITIAL_WINDOW_SIZE`](crate::DEFAULT_INITIAL_WINDOW_SIZE).
        ///
        /// # Panics
        ///
        /// If `size` is 0: a peer would then never send data (P-81).
        #[track_caller]
        pub fn initial_window_size(mut self, size: u32) -> Self {
            assert!(size > 0, "initial_window_size must be greater than 0");
            self.opts.initial_window_size = size;
            self
        }

        /// Resource limits; see [`Limits`](crate::Limits) for what each one does.
        pub fn limits(mut self, limits: crate::Limits) -> Self {
            limits.apply(&mut self.opts);
            self
        }

        /// Largest message received; a larger one fails its call with
        /// `RESOURCE_EXHAUSTED`. Default: 4 MiB.
        pub fn max_message_size(mut self, size: usize) -> Self {
            self.opts.max_message_size = size;
            self
        }

        /// Highest protocol revision offered. `Revision::Zero` turns
        /// negotiation off (no `grpctunnel-negotiate` header), as a
        /// revision-zero peer does; useful for tests. Default: `Revision::One`.
        pub fn max_revision(mut self, revision: crate::Revision) -> Self {
            self.opts.set_max_revision(revision);
            self
        }

        /// Negotiates, but offers only revision zero: no flow control. This
        /// is what the Go reference's `WithDisableFlowControl` does, and the
        /// way to test a peer's handling of a negotiated revision-zero
        /// tunnel. [`max_revision`](Self::max_revision) with
        /// `Revision::Zero` instead does not negotiate at all.
        pub fn disable_flow_control(mut self) -> Self {
            self.opts.disable_flow_control();
            self
        }

        /// What happens to a `-bin` metadata value that is not valid UTF-8
        /// when the peer can only carry raw bytes (the Go reference); see
        /// [`BinaryMetadata`](crate::BinaryMetadata). Default: `Drop`.
        pub fn binary_metadata(mut self, policy: crate::BinaryMetadata) -> Self {
            self.opts.binary_metadata = policy;
            self
        }

        /// Adds a request header to the opening RPC (an agent ID that the
        /// network server turns into an affinity key, a token it checks once
        /// per tunnel).
        ///
        /// # Panics
        ///
        /// If the name or value is not valid HTTP header text.
        #[track_caller]
        pub fn metadata(mut self, key: &str, value: &str) -> Self {
            crate::wire::settings::append_metadata(&mut self.metadata, key, value);
            self
        }
    };
}

pub(crate) use opening_options;
