//! [`TunnelChannelBuilder`]: options, and opening a forward tunnel.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use tracing::Instrument;

use crate::{
    client::{start::start_client, TunnelChannel},
    engine::{
        open,
        stats::{Counters, Meter},
        trace::{self, Role},
        writer::Core,
    },
    error::{BoxError, Error},
    info::Direction,
    wire::settings::Options,
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
    crate::engine::open::opening_options!();

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
            let dialed = open::dial(transport, &self.opts, self.metadata.clone(), writer).await?;
            start_client(
                core,
                gone,
                dialed.inbound,
                dialed.negotiated,
                dialed.extended,
                self.opts,
                Direction::Forward,
            )
            .await
        }
        .instrument(span)
        .await
    }
}

impl fmt::Debug for TunnelChannelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelChannelBuilder")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}
