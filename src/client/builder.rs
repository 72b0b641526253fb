//! [`TunnelChannelBuilder`]: options, and opening a forward tunnel.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use futures_core::Stream as FuturesStream;
use futures_util::StreamExt;
use tracing::{debug, warn, Instrument};

use crate::{
    client::{channel::Shared, task::Reader, TunnelChannel},
    error::{BoxError, Error},
    info::Direction,
    negotiate::{self, Options, Revision},
    pb::{self, tunnel_service_client::TunnelServiceClient},
    stats::{Counters, Meter},
    trace::{self, Role},
    writer::Core,
};

/// Builds a [`TunnelChannel`]: protocol options and opening metadata.
///
/// ```no_run
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// use grpctunnel::TunnelChannel;
///
/// let transport = tonic::transport::Endpoint::from_static("http://127.0.0.1:50051")
///     .connect()
///     .await?;
/// let tunnel = TunnelChannel::builder()
///     .metadata("x-agent-id", "agent-7")
///     .open(transport)
///     .await?;
/// // `tunnel` is now a channel for any generated client.
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use]
pub struct TunnelChannelBuilder {
    opts: Options,
    metadata: http::HeaderMap,
    counters: Option<Arc<Counters>>,
}

impl Default for TunnelChannelBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TunnelChannelBuilder {
    crate::negotiate::opening_options!();

    /// Default options: revision one when the server offers it, a
    /// 1 MiB receive window per stream, 4 MiB maximum received message.
    pub fn new() -> Self {
        Self {
            opts: Options::default(),
            metadata: http::HeaderMap::new(),
            counters: None,
        }
    }

    /// Also counts this tunnel into `counters` (shared by several tunnels,
    /// say, for a process-wide figure). Each channel has its own counters
    /// too: [`TunnelChannel::stats`].
    pub fn counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = Some(counters);
        self
    }

    /// Opens a forward tunnel (`OpenTunnel`) over `transport`: any tonic
    /// transport, such as a `tonic::transport::Channel` or another
    /// [`TunnelChannel`] (tunnels nest).
    ///
    /// Returns once the tunnel is usable: the server's response headers
    /// have arrived and, when both sides negotiated, its `Settings`.
    ///
    /// # Errors
    ///
    /// If the opening RPC fails (for example `UNIMPLEMENTED` from a server
    /// without tunnels, or `UNAUTHENTICATED` from an auth layer: see
    /// [`Error::status`]), or the server's first frame is not valid
    /// `Settings` (P-14).
    pub async fn open<T>(self, transport: T) -> Result<TunnelChannel, Error>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    {
        let span = trace::tunnel_span(Direction::Forward, Role::Client, None);
        async move {
            let (core, writer, gone) = Core::new(Meter::tunnel(self.counters.clone()));
            let mut req = tonic::Request::new(writer.filter_map(|r| async move { r.ok() }));
            *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(self.metadata.clone());
            if self.opts.advertises() {
                req.metadata_mut().insert(
                    negotiate::NEGOTIATE_HEADER,
                    tonic::metadata::MetadataValue::from_static(negotiate::NEGOTIATE_ON),
                );
            }
            let (transport, body) = negotiate::OpeningTransport::new(transport);
            // Received frames bypass tonic's decoder (see `crate::inbound`).
            let mut client =
                TunnelServiceClient::new(transport).max_encoding_message_size(usize::MAX);
            let resp = client.open_tunnel(req).await.map_err(Error::closed)?;
            let negotiated =
                self.opts.advertises() && negotiate::peer_advertises(resp.metadata().as_ref());
            let inbound = body.take_response(self.opts.max_frame_size())?;
            start_client(
                core,
                writer_gone(gone),
                inbound,
                negotiated,
                self.opts,
                Direction::Forward,
            )
            .await
        }
        .instrument(span)
        .await
    }
}

fn writer_gone(
    gone: tokio::sync::mpsc::UnboundedReceiver<i64>,
) -> tokio::sync::mpsc::UnboundedReceiver<i64> {
    gone
}

/// Starts the client engine on an opened tunnel: validates `Settings` when
/// negotiated (P-13, P-14), then spawns the reader.
pub(crate) async fn start_client<S>(
    core: Arc<Core<pb::ClientToServer>>,
    gone: tokio::sync::mpsc::UnboundedReceiver<i64>,
    mut inbound: S,
    negotiated: bool,
    opts: Options,
    direction: Direction,
) -> Result<TunnelChannel, Error>
where
    S: FuturesStream<Item = Result<pb::ServerToClient, tonic::Status>> + Unpin + Send + 'static,
{
    let (revision, send_window) = if negotiated {
        let first = match inbound.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(status)) => {
                core.finish(None);
                return Err(Error::negotiation(status));
            }
            None => {
                core.finish(None);
                return Err(Error::negotiation(tonic::Status::unavailable(
                    "failed to read settings from server: tunnel ended",
                )));
            }
        };
        match negotiate::accept_settings(first, &opts) {
            Ok(chosen) => chosen,
            Err(text) => {
                core.finish(None);
                core.meter.protocol_error();
                core.meter.tunnel_closed();
                return Err(Error::protocol(text));
            }
        }
    } else {
        if opts.advertises() {
            warn!("peer did not negotiate: using protocol revision 0");
        }
        (Revision::Zero, 0)
    };
    let span = tracing::Span::current();
    trace::record_revision(&span, revision);
    debug!(%revision, "tunnel open");
    let (shared, register) = Shared::new(core, opts, revision, send_window, direction, span);
    let reader = Reader::new(shared.clone(), inbound, register, gone);
    tokio::spawn(reader.run().in_current_span());
    Ok(TunnelChannel::from_shared(shared))
}

impl fmt::Debug for TunnelChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelChannelBuilder")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}
