//! The state of one tunnel client, shared by its channel's clones, its
//! calls and its reader task: stream IDs, the active-call count, the
//! terminal error.

use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::{
    engine::{stream::Stream, writer::Core},
    error::Error,
    info::Direction,
    pb,
    wire::{
        frame::client_frame,
        metadata::Mapping,
        settings::{Options, Revision},
    },
};

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
    /// Cancelled once the tunnel is over on the wire: the peer ended the
    /// opening RPC after our end of it, or it broke.
    pub(crate) flushed: CancellationToken,
    pub(crate) closed_notify: Notify,
    pub(crate) idle: Notify,
    pub(crate) alloc: Mutex<Alloc>,
    pub(crate) register: mpsc::UnboundedSender<Arc<Stream<pb::ClientToServer>>>,
    pub(crate) terminal: OnceLock<Error>,
    /// Runs once, when the tunnel ends (a registry removes the tunnel).
    pub(crate) on_close: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    pub(crate) revision: Revision,
    /// The peer's receive window per stream (from `Settings`).
    pub(crate) send_window: u32,
    /// How `-bin` metadata crosses this tunnel.
    pub(crate) bin: Mapping,
    pub(crate) direction: Direction,
    /// The tunnel's span, parent of its streams' spans.
    pub(crate) span: tracing::Span,
    /// Calls in a row the peer failed at once with a server error (see
    /// `reverse::outlier`); an answered call resets it.
    pub(crate) failures: std::sync::atomic::AtomicU32,
}

pub(crate) struct Alloc {
    next_id: i64,
    closed: bool,
    pub(crate) draining: bool,
    /// Calls whose guard is alive.
    pub(crate) active: usize,
}

impl Shared {
    pub(crate) fn new(
        core: Arc<Core<pb::ClientToServer>>,
        opts: Options,
        revision: Revision,
        send_window: u32,
        bin: Mapping,
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
            flushed: CancellationToken::new(),
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
            bin,
            send_window,
            direction,
            span,
            failures: std::sync::atomic::AtomicU32::new(0),
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

    pub(crate) fn lock_alloc(&self) -> std::sync::MutexGuard<'_, Alloc> {
        self.alloc.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn close(&self) {
        self.set_terminal(Error::closed_locally());
        self.shutdown.notify_one();
    }

    pub(crate) fn terminal(&self) -> Option<&Error> {
        self.terminal.get()
    }

    /// Allocates the next stream ID and queues its `new_stream`, as one step
    /// with respect to other stream creations (P-20).
    pub(crate) fn open_stream(
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
