//! [`TunnelChannel`]: a cheap-to-clone `tower::Service` that carries calls
//! over one tunnel.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, Instrument};

use crate::{
    client::{
        call::{CallGuard, Pump},
        future::ResponseFuture,
    },
    error::{BoxError, Error},
    info::Direction,
    metadata,
    negotiate::{Options, Revision},
    pb,
    stream::{client_frame, Stream},
    writer::Core,
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

/// Owned by every clone and every call; the tunnel closes when the last one
/// is dropped.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// State of one tunnel client, shared with its reader task.
pub(crate) struct Shared {
    pub(crate) core: Arc<Core<pb::ClientToServer>>,
    pub(crate) opts: Options,
    pub(crate) shutdown: Notify,
    closed_notify: Notify,
    idle: Notify,
    alloc: Mutex<Alloc>,
    register: mpsc::UnboundedSender<Arc<Stream<pb::ClientToServer>>>,
    terminal: OnceLock<Error>,
    /// Runs once, when the tunnel ends (a registry removes the tunnel).
    on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    revision: Revision,
    /// The peer's receive window per stream (from `Settings`).
    send_window: u32,
    direction: Direction,
    /// The tunnel's span, parent of its streams' spans.
    span: tracing::Span,
}

struct Alloc {
    next_id: i64,
    closed: bool,
    draining: bool,
    /// Calls whose guard is alive.
    active: usize,
}

impl Shared {
    pub(crate) fn new(
        core: Arc<Core<pb::ClientToServer>>,
        opts: Options,
        revision: Revision,
        send_window: u32,
        direction: Direction,
        span: tracing::Span,
    ) -> (
        Arc<Self>,
        mpsc::UnboundedReceiver<Arc<Stream<pb::ClientToServer>>>,
    ) {
        let (register, register_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Self {
            core,
            opts,
            shutdown: Notify::new(),
            closed_notify: Notify::new(),
            alloc: Mutex::new(Alloc {
                next_id: 1,
                closed: false,
                draining: false,
                active: 0,
            }),
            idle: Notify::new(),
            register,
            terminal: OnceLock::new(),
            on_close: Mutex::new(None),
            revision,
            send_window,
            direction,
            span,
        });
        (shared, register_rx)
    }

    /// Marks the tunnel dead; no stream is created after this returns.
    pub(crate) fn set_terminal(&self, err: Error) {
        let _ = self.terminal.set(err);
        self.lock_alloc().closed = true;
        let hook = self
            .on_close
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(hook) = hook {
            hook();
        }
        self.closed_notify.notify_waiters();
    }

    fn lock_alloc(&self) -> std::sync::MutexGuard<'_, Alloc> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn close(&self) {
        self.set_terminal(Error::closed_locally());
        self.shutdown.notify_one();
    }

    fn terminal(&self) -> Option<&Error> {
        self.terminal.get()
    }

    /// Allocates the next stream ID and queues its `new_stream`, as one step
    /// with respect to other stream creations (P-20).
    fn open_stream(
        &self,
        method: String,
        headers: pb::Metadata,
    ) -> Result<Arc<Stream<pb::ClientToServer>>, tonic::Status> {
        let flow = self.revision.is_flow_controlled();
        let recv_window = self.opts.initial_window_size;
        let mut alloc = self.lock_alloc();
        if alloc.closed {
            return Err(self.closed_status());
        }
        if alloc.draining {
            return Err(tonic::Status::unavailable("tunnel is shutting down"));
        }
        if alloc.active >= self.opts.max_concurrent_streams {
            return Err(tonic::Status::resource_exhausted(format!(
                "too many concurrent calls on this tunnel (max {})",
                self.opts.max_concurrent_streams
            )));
        }
        let id = alloc.next_id;
        if id == i64::MAX {
            return Err(tonic::Status::unavailable(
                "all stream IDs exhausted (must create a new channel)",
            ));
        }
        alloc.next_id += 1;
        alloc.active += 1;
        let stream = Stream::new(
            id,
            self.core.clone(),
            flow.then_some(self.send_window),
            flow.then_some(recv_window),
        );
        if self.register.send(stream.clone()).is_err() {
            return Err(self.closed_status());
        }
        let frame = pb::client_to_server::Frame::NewStream(pb::NewStream {
            method_name: method,
            request_headers: Some(headers),
            initial_window_size: recv_window,
            protocol_revision: self.revision.to_pb() as i32,
        });
        self.core.send_control(client_frame(id, frame));
        Ok(stream)
    }

    /// A call's guard is gone.
    pub(crate) fn call_done(&self) {
        let mut alloc = self.lock_alloc();
        alloc.active = alloc.active.saturating_sub(1);
        if alloc.active == 0 {
            self.idle.notify_waiters();
        }
    }

    fn closed_status(&self) -> tonic::Status {
        match self.terminal() {
            Some(err) => err.to_status(),
            None => tonic::Status::unavailable("tunnel closed"),
        }
    }
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
        let mut headers = metadata::headers_to_metadata(&parts.headers)?;
        let timeout = parts
            .headers
            .get_all("grpc-timeout")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(metadata::parse_grpc_timeout);
        if let Some(timeout) = timeout {
            headers.md.insert(
                "grpc-timeout".to_owned(),
                pb::metadata::Values {
                    val: vec![metadata::encode_grpc_timeout(timeout)],
                },
            );
        }
        let method = parts.uri.path().to_owned();
        let stream = shared.open_stream(method, headers)?;
        let span = crate::trace::stream_span(&shared.span, stream.id(), parts.uri.path());
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
