//! [`RequestBody`]: the body of a request dispatched through a tunnel.

use std::{
    collections::VecDeque,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;

use crate::{
    engine::stream::{release_if_empty, Event, Stream},
    pb,
    wire::message as frame,
};

/// Body of an `http::Request` that a tunnel server hands to the inner service.
///
/// Yields the tunneled request messages in gRPC's HTTP/2 framing (a 5-byte
/// prefix, then the message's chunks, without copying them), and ends when
/// the tunnel client half-closes. A message is released once all its chunks
/// are in, so a message cut short by `half_close` is dropped and the handler
/// sees a clean end of input (P-34). Chunks are taken from the stream, and
/// their flow-control credit returned, as they arrive (P-52). Inner services take it through `From<RequestBody>` for
/// their body type (tonic's and axum's are provided).
pub struct RequestBody {
    stream: Option<Arc<Stream<pb::ServerToClient>>>,
    /// Chunks of the current message, held until it is complete.
    held: VecDeque<Bytes>,
    /// Bytes of the current message still to come.
    missing: usize,
    /// Chunks of complete messages, ready to yield.
    ready: VecDeque<Bytes>,
}

impl RequestBody {
    pub(crate) fn new(stream: Arc<Stream<pb::ServerToClient>>) -> Self {
        Self {
            stream: Some(stream),
            held: VecDeque::new(),
            missing: 0,
            ready: VecDeque::new(),
        }
    }

    /// Holds `data`, which carries `len` bytes of the current message.
    fn hold(&mut self, data: Bytes, len: usize) {
        self.missing = self.missing.saturating_sub(len);
        if !data.is_empty() {
            self.held.push_back(data);
        }
        if self.missing == 0 {
            if self.ready.is_empty() {
                // Usually so: hand the buffer over rather than copy.
                std::mem::swap(&mut self.ready, &mut self.held);
            } else {
                self.ready.append(&mut self.held);
                release_if_empty(&mut self.held);
            }
        }
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if let Some(data) = this.ready.pop_front() {
                release_if_empty(&mut this.ready);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            let Some(stream) = &this.stream else {
                return Poll::Ready(None);
            };
            let event = match stream.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(event) => event,
            };
            match event {
                Event::Start { size, data } => {
                    this.missing = size as usize;
                    let (first, rest) = frame::start_frames(size, data);
                    let len = first.len() - frame::PREFIX_LEN;
                    this.hold(first, len);
                    if let Some(rest) = rest {
                        let len = rest.len();
                        this.hold(rest, len);
                    }
                }
                Event::More(data) => {
                    let len = data.len();
                    this.hold(data, len);
                }
                Event::Headers(_) | Event::End(_) => {
                    // An unfinished message is dropped (P-34).
                    this.held = VecDeque::new();
                    this.stream = None;
                }
                Event::Fail(status) => {
                    this.held = VecDeque::new();
                    this.ready = VecDeque::new();
                    this.stream = None;
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none() && self.ready.is_empty()
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        // The handler reads no more: arriving data is dropped, and a paused
        // revision-zero tunnel reads on.
        if let Some(stream) = &self.stream {
            stream.abandon();
        }
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

impl From<RequestBody> for tonic::body::Body {
    fn from(body: RequestBody) -> Self {
        tonic::body::Body::new(body)
    }
}

#[cfg(feature = "axum")]
impl From<RequestBody> for axum_core::body::Body {
    fn from(body: RequestBody) -> Self {
        axum_core::body::Body::new(body)
    }
}

/// A response body type that [`TunnelService`](crate::TunnelService) can
/// answer in: it keeps the inner service's own body type, so a tonic server
/// gets `tonic::body::Body` and an axum router `axum::body::Body`, with no
/// conversion layer in between.
///
/// Implemented for tonic's body and, with the `axum` feature, axum's. Other
/// body types implement it by wrapping the given body.
pub trait TunnelBody: http_body::Body<Data = Bytes> + Send + 'static {
    /// Wraps the body of a response the tunnel service makes itself (the
    /// opening RPCs' streams and their rejections).
    fn from_tunnel(body: tonic::body::Body) -> Self;
}

impl TunnelBody for tonic::body::Body {
    fn from_tunnel(body: tonic::body::Body) -> Self {
        body
    }
}

#[cfg(feature = "axum")]
impl TunnelBody for axum_core::body::Body {
    fn from_tunnel(body: tonic::body::Body) -> Self {
        axum_core::body::Body::new(body)
    }
}
