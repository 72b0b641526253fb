//! [`RequestBody`]: the body of a request dispatched through a tunnel.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;

use crate::{
    frame, pb,
    stream::{Event, Stream},
};

/// Body of an `http::Request` that a tunnel server hands to the inner service.
///
/// Yields the tunneled request messages in gRPC's HTTP/2 framing (a 5-byte
/// prefix, then the chunks as they arrive), and ends when the tunnel client
/// half-closes. Reading a chunk returns its flow-control credit to the
/// tunnel client. Inner services take it through `From<RequestBody>` for
/// their body type (tonic's and axum's are provided).
pub struct RequestBody {
    stream: Option<Arc<Stream<pb::ServerToClient>>>,
    pending: Option<Bytes>,
}

impl RequestBody {
    pub(crate) fn new(stream: Arc<Stream<pb::ServerToClient>>) -> Self {
        Self {
            stream: Some(stream),
            pending: None,
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
        if let Some(data) = this.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        let Some(stream) = &this.stream else {
            return Poll::Ready(None);
        };
        let event = match stream.poll_event(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(event) => event,
        };
        Poll::Ready(match event {
            Event::Start { size, data } => {
                if !data.is_empty() {
                    this.pending = Some(data);
                }
                Some(Ok(Frame::data(frame::prefix(size))))
            }
            Event::More(data) => Some(Ok(Frame::data(data))),
            Event::Headers(_) | Event::End(_) => {
                this.stream = None;
                None
            }
            Event::Fail(status) => {
                this.stream = None;
                Some(Err(status))
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        self.stream.is_none() && self.pending.is_none()
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
