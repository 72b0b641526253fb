//! The tunnel's writer: one ordered output per tunnel, fair between streams.
//!
//! The writer is the `Stream` of frames that tonic encodes onto the opening
//! RPC (the request stream of a forward tunnel client, the response stream
//! of a forward tunnel server, and the other way round for reverse tunnels).
//! It is polled by the HTTP/2 connection, so frames are produced exactly as
//! fast as the connection takes them.
//!
//! Scheduling:
//! - control frames (`new_stream`, `window_update`, `cancel`, `settings`,
//!   rejections) go first, in the order they were sent; none of them carries
//!   data, and `new_stream` frames are sent in increasing ID order (P-20);
//! - then streams with something to send take turns, one frame each: a
//!   message is cut into chunks of at most 16 KiB and at most the stream's
//!   send window (P-30), so a large message never holds the tunnel for more
//!   than one chunk.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use futures_core::Stream as FuturesStream;
use tokio::sync::mpsc::{self, error::TryRecvError};
use tracing::trace;

use crate::{engine::stats::Meter, wire::frame::OutFrame};

/// Largest chunk of message data in one frame (P-30).
pub(crate) const MAX_CHUNK: usize = 16 * 1024;

/// A stream with frames to write, as the writer sees it (the engine's
/// [`Stream`](super::stream::Stream)).
pub(crate) trait Source<F>: fmt::Debug + Send + Sync {
    /// Takes the next frame, with data of at most `max_chunk` bytes. Returns
    /// the frame, if any, and whether the stream has more to write now.
    fn next_frame(&self, max_chunk: usize) -> (Option<F>, bool);
}

type Ready<F> = Arc<dyn Source<F>>;

#[derive(Debug)]
enum Ctl<F> {
    Frame(F),
    Finish(Option<tonic::Status>),
}

/// The handle every part of a tunnel holds to reach its writer and reader.
#[derive(Debug)]
pub(crate) struct Core<F> {
    pub(crate) meter: Meter,
    control: mpsc::UnboundedSender<Ctl<F>>,
    ready: mpsc::UnboundedSender<Ready<F>>,
    gone: mpsc::UnboundedSender<i64>,
}

impl<F: OutFrame> Core<F> {
    /// A core, its writer, and the receiver of finished stream IDs (for the
    /// reader's stream table).
    pub(crate) fn new(meter: Meter) -> (Arc<Self>, Writer<F>, mpsc::UnboundedReceiver<i64>) {
        let (control, control_rx) = mpsc::unbounded_channel();
        let (ready, ready_rx) = mpsc::unbounded_channel();
        let (gone, gone_rx) = mpsc::unbounded_channel();
        let core = Arc::new(Self {
            meter,
            control,
            ready,
            gone,
        });
        let writer = Writer {
            control: control_rx,
            ready: ready_rx,
            ring: VecDeque::new(),
            done: false,
        };
        (core, writer, gone_rx)
    }

    /// Queues a control frame; `false` if the writer is gone.
    pub(crate) fn send_control(&self, frame: F) -> bool {
        self.control.send(Ctl::Frame(frame)).is_ok()
    }

    /// Ends the writer after the control frames queued so far: with `None`
    /// the output simply ends, with a status the outer RPC fails with it
    /// (server side).
    pub(crate) fn finish(&self, status: Option<tonic::Status>) {
        let _ = self.control.send(Ctl::Finish(status));
    }

    /// Tells the reader that a stream is over, so it can forget it.
    pub(crate) fn forget(&self, id: i64) {
        let _ = self.gone.send(id);
    }

    /// Puts a stream with something to write in the writer's ring.
    pub(crate) fn schedule(&self, stream: Ready<F>) {
        let _ = self.ready.send(stream);
    }
}

impl<F> Drop for Core<F> {
    fn drop(&mut self) {
        // Whatever path the tunnel took (even one that never opened), it is
        // no longer open once nothing refers to it.
        self.meter.tunnel_closed();
    }
}

/// The output of a tunnel: frames to encode on the opening RPC.
#[derive(Debug)]
pub(crate) struct Writer<F> {
    control: mpsc::UnboundedReceiver<Ctl<F>>,
    ready: mpsc::UnboundedReceiver<Ready<F>>,
    ring: VecDeque<Ready<F>>,
    done: bool,
}

impl<F: OutFrame> FuturesStream for Writer<F> {
    type Item = Result<F, tonic::Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let next = self.get_mut().next(cx);
        if let Poll::Ready(Some(Ok(frame))) = &next {
            let (frame, stream_id, len) = frame.describe();
            trace!(frame, stream_id, len, "frame out");
        }
        next
    }
}

impl<F: OutFrame> Writer<F> {
    fn next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<F, tonic::Status>>> {
        let this = self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            // Streams first, control second: a stream is scheduled only after
            // its `new_stream` was queued, so once the ring holds it, the
            // control queue shows that frame (P-20 and `new_stream` before data).
            while let Ok(stream) = this.ready.try_recv() {
                this.ring.push_back(stream);
            }
            match this.control.try_recv() {
                Ok(Ctl::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(Ctl::Finish(status)) => return this.end(status),
                Err(TryRecvError::Disconnected) => return this.end(None),
                Err(TryRecvError::Empty) => {}
            }
            while let Some(stream) = this.ring.pop_front() {
                let (frame, again) = stream.next_frame(MAX_CHUNK);
                if again {
                    this.ring.push_back(stream);
                }
                if let Some(frame) = frame {
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
            // Nothing to write: wait for either queue, then look again.
            match this.ready.poll_recv(cx) {
                Poll::Ready(Some(stream)) => {
                    this.ring.push_back(stream);
                    continue;
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            match this.control.poll_recv(cx) {
                Poll::Ready(Some(Ctl::Frame(frame))) => return Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Ctl::Finish(status))) => return this.end(status),
                Poll::Ready(None) => return this.end(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<F> Writer<F> {
    fn end(&mut self, status: Option<tonic::Status>) -> Poll<Option<Result<F, tonic::Status>>> {
        self.done = true;
        self.ring.clear();
        self.control.close();
        self.ready.close();
        Poll::Ready(status.map(Err))
    }
}
