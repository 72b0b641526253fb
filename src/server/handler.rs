//! One tunneled stream on the server side: call the inner service, then move
//! its response (headers, messages, trailers) into the tunnel.

use std::{
    future::{poll_fn, Future},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tracing::debug;

use crate::{
    engine::stream::{Item, Stream},
    error::BoxError,
    pb,
    server::{body::RequestBody, dispatch::Dispatch},
    wire::{
        frame,
        message::{MessageSplitter, Piece},
        metadata::{self, Mapping},
        status,
    },
};

type ServerStream = Stream<pb::ServerToClient>;

/// The inner service's answer to one tunneled request, in flight.
pub(crate) type Call =
    Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, BoxError>> + Send>>;

/// Starts the inner service on `req`. The request moves into the call at
/// once, so that the stream's task never holds it (a tunnel may keep many
/// thousands of streams open, each with its task).
pub(crate) fn call(dispatch: Dispatch, req: http::Request<RequestBody>) -> Call {
    Box::pin(dispatch.oneshot(req))
}

/// How a stream's answer goes out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outgoing {
    /// How metadata crosses the tunnel.
    pub(crate) bin: Mapping,
    /// Largest message sent: what the stream's revision can carry (P-5:
    /// 2^31 - 1 bytes on revision zero, 2^32 - 1 on revision one).
    pub(crate) max_message_size: usize,
}

impl Outgoing {
    pub(crate) fn new(bin: Mapping, revision: crate::wire::settings::Revision) -> Self {
        let max_message_size = if revision.is_flow_controlled() {
            u32::MAX as usize
        } else {
            i32::MAX as usize
        };
        Self {
            bin,
            max_message_size,
        }
    }
}

/// Serves one stream to its end, honouring `grpc-timeout` (P-60: an expired
/// call ends with `DEADLINE_EXCEEDED` and its handler is dropped).
pub(crate) async fn serve_stream(
    call: Call,
    timeout: Option<Duration>,
    stream: Arc<ServerStream>,
    out: Outgoing,
) {
    let status = Deadline {
        serve: call_and_respond(call, &stream, out),
        // Boxed: most calls have no deadline, and a timer is large.
        timer: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
    }
    .await;
    if let Some(status) = status {
        finish(&stream, &status, pb::Metadata::default());
    }
}

pin_project! {
    /// `serve`, unless `timer` fires first.
    struct Deadline<F> {
        #[pin]
        serve: F,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<F: Future<Output = Option<tonic::Status>>> Future for Deadline<F> {
    type Output = Option<tonic::Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(status) = this.serve.poll(cx) {
            return Poll::Ready(status);
        }
        match this.timer.as_mut().map(|timer| timer.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Some(tonic::Status::deadline_exceeded(
                "context deadline exceeded",
            ))),
            _ => Poll::Pending,
        }
    }
}

/// Runs the handler; returns a status only if the stream still needs its
/// `close_stream`.
async fn call_and_respond(
    call: Call,
    stream: &Arc<ServerStream>,
    out: Outgoing,
) -> Option<tonic::Status> {
    let body = match call.await {
        Ok(resp) => match start_response(stream, resp, out.bin) {
            Ok(body) => body,
            Err(status) => return status,
        },
        Err(err) => return Some(tonic::Status::from_error(err)),
    };
    respond(stream, body, out).await
}

/// Queues the response headers; hands back the body to move, or the status
/// to end the stream with (`Err(None)`: already ended).
fn start_response(
    stream: &Arc<ServerStream>,
    resp: http::Response<tonic::body::Body>,
    bin: Mapping,
) -> Result<tonic::body::Body, Option<tonic::Status>> {
    let (parts, body) = resp.into_parts();
    if parts.status != http::StatusCode::OK {
        // Not a gRPC response (a 404 from a router, say): gRPC's mapping of
        // HTTP statuses to codes.
        return Err(Some(status::http_status_to_grpc(parts.status)));
    }
    if let Some(status) = status::status_from_trailers(&parts.headers) {
        // Trailers-only (P-63): empty headers, then close_stream. Trailers
        // that cannot cross fail the stream instead (P-57), never silently.
        let trailers = to_metadata(stream, &parts.headers, bin).map_err(Some)?;
        close(stream, status, trailers);
        return Err(None);
    }
    let headers = to_metadata(stream, &parts.headers, bin).map_err(Some)?;
    let id = stream.id();
    stream.push_headers_once(|| {
        frame::server_frame(id, pb::server_to_client::Frame::ResponseHeaders(headers))
    });
    Ok(body)
}

/// Moves the response body into the stream; ends it with the trailers.
async fn respond(
    stream: &Arc<ServerStream>,
    mut body: tonic::body::Body,
    out: Outgoing,
) -> Option<tonic::Status> {
    let bin = out.bin;
    let mut splitter = MessageSplitter::new(out.max_message_size);
    loop {
        if !poll_fn(|cx| stream.poll_capacity(cx)).await {
            // The stream ended (cancelled, or failed by the reader).
            return None;
        }
        let frame = match body.frame().await {
            None => {
                if let Err(e) = splitter.finish() {
                    return Some(e.to_status());
                }
                return Some(tonic::Status::unknown(
                    "handler ended its response without a status",
                ));
            }
            Some(Err(status)) => return Some(status),
            Some(Ok(frame)) => frame,
        };
        let frame = match frame.into_data() {
            Ok(data) => {
                // Per frame: an idle stream keeps no buffer.
                let mut pieces = Vec::new();
                if let Err(e) = splitter.push(data, &mut pieces) {
                    return Some(e.to_status());
                }
                for piece in pieces {
                    stream.push(match piece {
                        Piece::Start { size, data } => Item::Start { size, data },
                        Piece::More(data) => Item::More(data),
                    });
                }
                continue;
            }
            Err(frame) => frame,
        };
        let Ok(trailers) = frame.into_trailers() else {
            continue;
        };
        if let Err(e) = splitter.finish() {
            return Some(e.to_status());
        }
        let status = status::status_from_trailers(&trailers).unwrap_or_else(|| {
            status::tonic_status_to_pb(&tonic::Status::unknown(
                "handler sent trailers without grpc-status",
            ))
        });
        let md = match to_metadata(stream, &trailers, bin) {
            Ok(md) => md,
            Err(status) => return Some(status),
        };
        close(stream, status, md);
        return None;
    }
}

/// The handler's headers or trailers as tunnel metadata; `-bin` values the
/// peer cannot carry are counted when the policy drops them.
fn to_metadata(
    stream: &ServerStream,
    headers: &http::HeaderMap,
    bin: Mapping,
) -> Result<pb::Metadata, tonic::Status> {
    let mut dropped = Vec::new();
    let md = metadata::headers_to_metadata(headers, bin, &mut dropped)?;
    stream.core().meter.metadata_dropped(&dropped);
    Ok(md)
}

fn close(stream: &Arc<ServerStream>, status: tonic_types::Status, trailers: pb::Metadata) {
    let code = status.code;
    let id = stream.id();
    let last = frame::close_stream(id, status, Some(trailers));
    if stream.push_final(|| frame::empty_headers(id), last) {
        debug!(code, "stream closed");
    }
}

fn finish(stream: &Arc<ServerStream>, status: &tonic::Status, trailers: pb::Metadata) {
    let id = stream.id();
    let last = frame::close_with(id, status, Some(trailers));
    if stream.push_final(|| frame::empty_headers(id), last) {
        debug!(code = ?status.code(), error = %status.message(), "stream closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{stats::Meter, writer::Core};

    /// Every open stream has one of these tasks, idle or not: it must stay
    /// small (it was 1.8 KiB when the task held the request and a timer).
    #[test]
    fn a_stream_task_stays_small() {
        let (core, _writer, _gone) = Core::<pb::ServerToClient>::new(Meter::default());
        let stream = Stream::new(1, core, None, None);
        let svc = tower::service_fn(|_: http::Request<tonic::body::Body>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let dispatch = crate::server::dispatch::dispatch::<_, tonic::body::Body, _>(svc);
        let req = http::Request::new(RequestBody::new(stream.clone()));
        let out = Outgoing::new(Mapping::default(), crate::wire::settings::Revision::One);
        let task = serve_stream(call(dispatch, req), None, stream, out);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 512, "serve_stream's future is {size} bytes");
    }
}
