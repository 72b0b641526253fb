//! [`TunnelChannel`]: a cheap-to-clone `tower::Service` that carries calls
//! over one tunnel.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use tracing::{debug, Instrument};

use crate::{
    client::{
        call::{CallGuard, Pump},
        future::ResponseFuture,
        shared::{Handle, Shared},
    },
    engine::trace,
    error::{BoxError, Error},
    info::Direction,
    pb,
    wire::{metadata, settings::Revision, timeout},
};

/// A channel that sends every call through one tunnel.
///
/// `TunnelChannel` is a `tower::Service<http::Request<B>>`, so it can be
/// given to any tonic-generated client (`EchoClient::new(channel)`) and
/// wrapped in tower middleware. Cloning it is cheap: all clones share the
/// one tunnel, and calls on them are multiplexed as tunneled streams, like
/// calls on one HTTP/2 connection share it.
///
/// # Lifetime
///
/// The tunnel stays open while a clone of the channel, or a call made on it,
/// is alive. When the last clone is dropped and no call is in flight, the
/// tunnel is closed: the opening RPC is half-closed and the peer ends it.
/// [`close`](Self::close) closes it at once, failing calls in flight with
/// `UNAVAILABLE`. When the peer or the transport ends the tunnel, calls in
/// flight fail with `UNAVAILABLE` (the message says why) and
/// later calls fail the same way; [`terminal_error`](Self::terminal_error)
/// tells why it ended.
///
/// # Deadlines
///
/// A call's `grpc-timeout` (as set by `tonic::Request::set_timeout`) is
/// enforced here: when it passes, the call fails with `DEADLINE_EXCEEDED`
/// and a `cancel` frame is sent. The timeout is also passed to the tunnel
/// server, which honours it too.
///
/// # Cancellation
///
/// Dropping the response future or the response body before the call ended
/// sends `cancel` for its stream, which cancels the handler on the other side.
#[derive(Clone)]
pub struct TunnelChannel {
    handle: Arc<Handle>,
}

impl TunnelChannel {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        Self {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Starts building a channel; see [`TunnelChannelBuilder`](crate::TunnelChannelBuilder).
    pub fn builder() -> crate::TunnelChannelBuilder {
        crate::TunnelChannelBuilder::new()
    }

    /// The protocol revision negotiated for this tunnel.
    pub fn revision(&self) -> Revision {
        self.handle.shared.revision
    }

    /// Forward (`OpenTunnel`) or reverse (`OpenReverseTunnel`).
    pub fn direction(&self) -> Direction {
        self.handle.shared.direction
    }

    /// Closes the tunnel now: calls in flight fail with `UNAVAILABLE`, and
    /// the opening RPC is ended.
    pub fn close(&self) {
        self.handle.shared.close();
    }

    /// Closes the tunnel gracefully: new calls fail at once with
    /// `UNAVAILABLE`, calls in flight may finish for up to `grace`, then the
    /// tunnel is closed as by [`close`](Self::close).
    ///
    /// Resolves once the close is on the wire: the peer has seen the end of
    /// the opening RPC (the last `close_stream` frames and, on the network
    /// server of a reverse tunnel, the RPC's trailers) and ended its side,
    /// or a second `grace` has passed. A program may exit right after
    /// without the peer seeing a broken connection.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        let shared = &self.handle.shared;
        shared.lock_alloc().draining = true;
        let idle = async {
            loop {
                let notified = shared.idle.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.lock_alloc().active == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(grace, idle).await;
        shared.close();
        let _ = tokio::time::timeout(grace, shared.flushed.cancelled()).await;
    }

    /// Runs `hook` once when the tunnel ends, before anyone waiting in
    /// [`closed`](Self::closed) wakes up; at once if it has ended already.
    pub(crate) fn on_close(&self, hook: impl FnOnce() + Send + 'static) {
        let shared = &self.handle.shared;
        {
            let mut slot = shared.on_close.lock().unwrap_or_else(|p| p.into_inner());
            if shared.terminal().is_none() {
                *slot = Some(Box::new(hook));
                return;
            }
        }
        hook();
    }

    /// Calls in a row the peer failed at once with a server error
    /// (`UNKNOWN`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`), since the last
    /// answered call or [`take_failures`](Self::take_failures).
    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.handle
            .shared
            .failures
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts counting failures in a row afresh.
    pub(crate) fn take_failures(&self) {
        self.handle
            .shared
            .failures
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    /// Calls in flight (whose response, or response body, is still alive).
    pub fn active_calls(&self) -> usize {
        self.handle.shared.lock_alloc().active
    }

    /// A snapshot of this tunnel's counters.
    pub fn stats(&self) -> crate::Stats {
        self.handle.shared.core.meter.counters().snapshot()
    }

    /// Whether the tunnel has ended.
    pub fn is_closed(&self) -> bool {
        self.handle.shared.terminal().is_some()
    }

    /// Why the tunnel ended, once it has.
    pub fn terminal_error(&self) -> Option<Error> {
        self.handle.shared.terminal().cloned()
    }

    /// Waits until the tunnel has ended and returns why.
    pub async fn closed(&self) -> Error {
        let shared = &self.handle.shared;
        loop {
            let notified = shared.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(err) = shared.terminal() {
                return err.clone();
            }
            notified.await;
        }
    }

    fn start_call<B>(&self, req: http::Request<B>) -> Result<ResponseFuture, tonic::Status>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let shared = &self.handle.shared;
        let (parts, body) = req.into_parts();
        let mut dropped = Vec::new();
        let mut headers = metadata::headers_to_metadata(&parts.headers, shared.bin, &mut dropped)?;
        shared.core.meter.metadata_dropped(&dropped);
        let timeout = timeout::grpc_timeout(&parts.headers);
        if let Some(timeout) = timeout {
            headers.md.insert(
                "grpc-timeout".to_owned(),
                pb::metadata::Values {
                    val: vec![timeout::encode_grpc_timeout(timeout)],
                },
            );
        }
        let method = parts.uri.path().to_owned();
        let stream = shared.open_stream(method, headers)?;
        let span = trace::stream_span(&shared.span, stream.id(), parts.uri.path());
        debug!(parent: &span, "stream opened");
        let guard = CallGuard::new(stream.clone(), self.handle.clone());
        let max_send = if shared.revision == Revision::Zero {
            i32::MAX as usize
        } else {
            u32::MAX as usize
        };
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut pump = Pump::new(stream, body, max_send, deadline);
        // A body that is all there already (a unary request, say) is moved
        // now, without a task. Otherwise the task polls the pump again at
        // once, with its own waker, so nothing waits on the no-op one.
        let pumped = span.in_scope(|| {
            Pin::new(&mut pump)
                .poll(&mut Context::from_waker(Waker::noop()))
                .is_ready()
        });
        if !pumped {
            tokio::spawn(pump.instrument(span));
        }
        Ok(ResponseFuture::waiting(guard))
    }
}

impl<B> tower_service::Service<http::Request<B>> for TunnelChannel
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<crate::client::ResponseBody>;
    type Error = Error;
    type Future = ResponseFuture;

    /// Always ready: a call on a closed tunnel fails with `UNAVAILABLE` (the
    /// status gRPC callers and retry policies expect); tonic would report a
    /// readiness error as `UNKNOWN`.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        match self.start_call(req) {
            Ok(fut) => fut,
            Err(status) => ResponseFuture::failed(status),
        }
    }
}

impl fmt::Debug for TunnelChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = &self.handle.shared;
        f.debug_struct("TunnelChannel")
            .field("direction", &shared.direction)
            .field("revision", &shared.revision)
            .field("closed", &shared.terminal().is_some())
            .finish()
    }
}
