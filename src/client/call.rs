//! One tunneled call on the client side: the guard that cancels it when the
//! caller lets go, and the pump that moves its request body into the tunnel.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Body;
use tokio::time::{Instant, Sleep};

use crate::{
    client::shared::Handle,
    engine::stream::{Item, Stream},
    error::BoxError,
    pb,
    wire::{
        frame,
        message::{MessageSplitter, Piece},
        metadata,
    },
};

type ClientStream = Stream<pb::ClientToServer>;

/// Ends the stream with `cancel` unless it already ended. Returns whether
/// this call ended it.
pub(crate) fn cancel(stream: &ClientStream) -> bool {
    if !stream.finish() {
        return false;
    }
    let core = stream.core();
    core.send_control(frame::cancel(stream.id()));
    core.forget(stream.id());
    true
}

/// Held by the response future, then by the response body: dropping it
/// before the stream ended cancels the call (P-61).
pub(crate) struct CallGuard {
    pub(crate) stream: Arc<ClientStream>,
    handle: Arc<Handle>,
}

impl CallGuard {
    pub(crate) fn new(stream: Arc<ClientStream>, handle: Arc<Handle>) -> Self {
        Self { stream, handle }
    }
}

impl CallGuard {
    /// The tunnel's count of calls in a row the peer failed at once.
    pub(crate) fn failures(&self) -> &std::sync::atomic::AtomicU32 {
        &self.handle.shared.failures
    }

    /// Adds the peer's metadata to `headers` (response headers or
    /// trailers); what no header can carry is counted and logged.
    pub(crate) fn metadata_to_headers(&self, md: &pb::Metadata, headers: &mut http::HeaderMap) {
        let mut dropped = Vec::new();
        metadata::metadata_to_headers(md, self.handle.shared.bin, headers, &mut dropped);
        self.stream.core().meter.metadata_dropped(&dropped);
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        cancel(&self.stream);
        self.stream.abandon();
        self.handle.shared.call_done();
    }
}

/// Moves the request body into the stream's send queue, honouring its
/// capacity, then half-closes; enforces the call's deadline.
pub(crate) struct Pump<B> {
    stream: Arc<ClientStream>,
    body: Pin<Box<B>>,
    splitter: MessageSplitter,
    pieces: Vec<Piece>,
    body_done: bool,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> Pump<B> {
    pub(crate) fn new(
        stream: Arc<ClientStream>,
        body: B,
        max_message_size: usize,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            stream,
            body: Box::pin(body),
            splitter: MessageSplitter::new(max_message_size),
            pieces: Vec::new(),
            body_done: false,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        }
    }
}

impl<B> Pump<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Pumps what the body has; `Err` fails the call.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        loop {
            match self.stream.poll_capacity(cx) {
                Poll::Ready(true) => {}
                Poll::Ready(false) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
            let frame = match self.body.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(err))) => {
                    return Poll::Ready(Err(tonic::Status::from_error(err.into())))
                }
                Poll::Ready(None) => {
                    self.splitter.finish().map_err(|e| e.to_status())?;
                    self.body_done = true;
                    self.stream
                        .push(Item::Frame(frame::half_close(self.stream.id())));
                    return Poll::Ready(Ok(()));
                }
            };
            // Request trailers have no place in the protocol: dropped.
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.splitter
                .push(data, &mut self.pieces)
                .map_err(|e| e.to_status())?;
            for piece in self.pieces.drain(..) {
                let item = match piece {
                    Piece::Start { size, data } => Item::Start { size, data },
                    Piece::More(data) => Item::More(data),
                };
                self.stream.push(item);
            }
        }
    }

    fn fail(&self, status: tonic::Status) {
        if cancel(&self.stream) {
            self.stream.fail(status);
        }
    }
}

impl<B> Future for Pump<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // invariant: `Pump` is `Unpin` (the body is boxed).
        let this = self.get_mut();
        if !this.body_done {
            match this.poll_body(cx) {
                Poll::Ready(Err(status)) => {
                    this.fail(status);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(())) if !this.body_done => return Poll::Ready(()),
                _ => {}
            }
        }
        if let Some(deadline) = &mut this.deadline {
            if deadline.as_mut().poll(cx).is_ready() {
                this.fail(tonic::Status::deadline_exceeded(
                    "context deadline exceeded",
                ));
                return Poll::Ready(());
            }
        } else if this.body_done {
            return Poll::Ready(());
        }
        // Waiting for the deadline, or for more body: stop once the stream ends.
        this.stream.poll_closed(cx).map(|()| ())
    }
}
