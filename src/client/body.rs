//! [`ResponseBody`]: the body of a tunneled call's response, in gRPC's
//! HTTP/2 framing, fed by the tunnel's reader.

use std::{
    fmt,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use crate::{
    client::call::CallGuard,
    engine::stream::Event,
    pb,
    wire::{message, status},
};

/// Response body of a call made through a [`TunnelChannel`](crate::TunnelChannel).
///
/// Yields the response messages, each as a 5-byte gRPC prefix followed by
/// its chunks as they arrive (no reassembly, no copy), then the trailers
/// with `grpc-status`. Reading a chunk returns its flow-control credit to the
/// tunnel server.
///
/// # Errors
///
/// The body itself never fails. When the call fails locally after its
/// headers (deadline, a message over the limit, tunnel gone, protocol
/// violation), the body ends with trailers carrying that status, as a gRPC
/// server's response would: tonic reports it as the call's status, and a
/// proxy forwards it to its caller as a status rather than a reset stream.
///
/// # Cancellation
///
/// Dropping the body before its trailers sends `cancel` for the stream.
pub struct ResponseBody {
    state: State,
}

enum State {
    Streaming {
        guard: CallGuard,
        pending: Option<Bytes>,
    },
    /// The body of a call another replica of a cluster answered; a failure
    /// of its transport ends it with trailers carrying the status.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Relayed(tonic::body::Body),
    Done,
}

impl ResponseBody {
    pub(crate) fn streaming(guard: CallGuard) -> Self {
        Self {
            state: State::Streaming {
                guard,
                pending: None,
            },
        }
    }

    pub(crate) fn empty() -> Self {
        Self { state: State::Done }
    }

    /// The body of a response relayed from another replica.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn relayed(body: tonic::body::Body) -> Self {
        Self {
            state: State::Relayed(body),
        }
    }

    /// The HTTP/2 trailers for a `close_stream` (P-63, client side); a
    /// server error counts against the tunnel's health (outlier ejection).
    pub(crate) fn close_to_trailers(
        close: Option<pb::CloseStream>,
        guard: &CallGuard,
    ) -> http::HeaderMap {
        let mut trailers = http::HeaderMap::new();
        let close = close.unwrap_or_default();
        if let Some(md) = &close.response_trailers {
            guard.metadata_to_headers(md, &mut trailers);
        }
        let status = close.status.unwrap_or_default();
        // Outlier ejection counts the calls in a row the peer ends with a
        // server error.
        let failures = guard.failures();
        if is_server_error(status.code) {
            failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            failures.store(0, std::sync::atomic::Ordering::Relaxed);
        }
        status::status_to_trailers(&status, &mut trailers);
        trailers
    }

    /// The HTTP/2 trailers for a local failure.
    pub(crate) fn status_to_trailers(status: &tonic::Status) -> http::HeaderMap {
        let mut trailers = status.metadata().clone().into_headers();
        status::status_to_trailers(&status::tonic_status_to_pb(status), &mut trailers);
        trailers
    }
}

impl Default for ResponseBody {
    /// An empty body (tonic's generated clients ask for `Default`).
    fn default() -> Self {
        Self::empty()
    }
}

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let State::Relayed(body) = &mut this.state {
            let frame = std::task::ready!(Pin::new(body).poll_frame(cx));
            return Poll::Ready(match frame {
                Some(Ok(frame)) => Some(Ok(frame)),
                // A gRPC status comes in trailers: an error here is the
                // connection to the replica failing, so the call's agent is
                // unreachable now.
                Some(Err(status)) => {
                    this.state = State::Done;
                    let status = tonic::Status::unavailable(format!(
                        "the replica serving this call is gone: {}",
                        status.message()
                    ));
                    Some(Ok(Frame::trailers(Self::status_to_trailers(&status))))
                }
                None => {
                    this.state = State::Done;
                    None
                }
            });
        }
        let State::Streaming { guard, pending } = &mut this.state else {
            return Poll::Ready(None);
        };
        if let Some(data) = pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            let event = match guard.stream.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(event) => event,
            };
            return Poll::Ready(Some(match event {
                // A repeated `response_headers` is ignored (P-42).
                Event::Headers(_) => continue,
                Event::Start { size, data } => {
                    let (first, rest) = message::start_frames(size, data);
                    *pending = rest;
                    Ok(Frame::data(first))
                }
                Event::More(data) => Ok(Frame::data(data)),
                Event::End(close) => {
                    let trailers = Self::close_to_trailers(close, guard);
                    this.state = State::Done;
                    Ok(Frame::trailers(trailers))
                }
                // A failure after the response headers (a message over the
                // limit, the tunnel gone) ends the body with trailers that
                // carry it, as a gRPC server would: a proxy passes it on as
                // a status instead of resetting its caller's stream.
                Event::Fail(status) => {
                    this.state = State::Done;
                    Ok(Frame::trailers(Self::status_to_trailers(&status)))
                }
            }));
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            State::Done => true,
            State::Relayed(body) => http_body::Body::is_end_stream(body),
            State::Streaming { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("done", &matches!(self.state, State::Done))
            .finish()
    }
}

/// Whether a call's status says the server (not the call) is in trouble:
/// `UNKNOWN`, `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`. What the application
/// answers (`NOT_FOUND`, `INVALID_ARGUMENT`, ...) says nothing about the
/// tunnel's health.
fn is_server_error(code: i32) -> bool {
    matches!(code, 2 | 13 | 14 | 15)
}
