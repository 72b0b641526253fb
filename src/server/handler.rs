//! One tunneled stream on the server side: call the inner service, then move
//! its response (headers, messages, trailers) into the tunnel.

use std::{future::poll_fn, sync::Arc};

use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_service::Service;
use tracing::debug;

use crate::{
    frame::{MessageSplitter, Piece},
    metadata, pb,
    server::{
        body::RequestBody,
        dispatch::Dispatch,
        tunnel::{close_frame, empty_headers},
    },
    stream::{server_frame, Item, Stream},
};

type ServerStream = Stream<pb::ServerToClient>;

/// Serves one stream to its end, honouring `grpc-timeout` (P-60: an expired
/// call ends with `DEADLINE_EXCEEDED` and its handler is dropped).
pub(crate) async fn serve_stream(
    dispatch: Dispatch,
    req: http::Request<RequestBody>,
    stream: Arc<ServerStream>,
) {
    let timeout = req
        .headers()
        .get_all("grpc-timeout")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(metadata::parse_grpc_timeout);
    let serve = call_and_respond(dispatch, req, &stream);
    let status = match timeout {
        None => serve.await,
        Some(t) => match tokio::time::timeout(t, serve).await {
            Ok(status) => status,
            Err(_) => Some(tonic::Status::deadline_exceeded(
                "context deadline exceeded",
            )),
        },
    };
    if let Some(status) = status {
        finish(&stream, &status, pb::Metadata::default());
    }
}

/// Runs the handler; returns a status only if the stream still needs its
/// `close_stream`.
async fn call_and_respond(
    mut dispatch: Dispatch,
    req: http::Request<RequestBody>,
    stream: &Arc<ServerStream>,
) -> Option<tonic::Status> {
    let resp = match dispatch.ready().await {
        Ok(svc) => svc.call(req).await,
        Err(err) => Err(err),
    };
    let resp = match resp {
        Ok(resp) => resp,
        Err(err) => return Some(tonic::Status::from_error(err)),
    };
    let (parts, body) = resp.into_parts();
    if parts.status != http::StatusCode::OK {
        // Not a gRPC response (a 404 from a router, say): gRPC's mapping of
        // HTTP statuses to codes.
        return Some(crate::negotiate::http_status_to_grpc(parts.status));
    }
    if let Some(status) = metadata::status_from_trailers(&parts.headers) {
        // Trailers-only (P-63): empty headers, then close_stream.
        let trailers = metadata::headers_to_metadata(&parts.headers).unwrap_or_default();
        close(stream, status, trailers);
        return None;
    }
    let headers = match metadata::headers_to_metadata(&parts.headers) {
        Ok(md) => md,
        Err(status) => return Some(status),
    };
    let id = stream.id();
    stream.push_headers_once(|| {
        server_frame(id, pb::server_to_client::Frame::ResponseHeaders(headers))
    });
    respond(stream, body).await
}

/// Moves the response body into the stream; ends it with the trailers.
async fn respond(stream: &Arc<ServerStream>, mut body: tonic::body::Body) -> Option<tonic::Status> {
    let mut splitter = MessageSplitter::new(u32::MAX as usize);
    let mut pieces = Vec::new();
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
                if let Err(e) = splitter.push(data, &mut pieces) {
                    return Some(e.to_status());
                }
                for piece in pieces.drain(..) {
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
        let status = metadata::status_from_trailers(&trailers).unwrap_or_else(|| {
            metadata::tonic_status_to_pb(&tonic::Status::unknown(
                "handler sent trailers without grpc-status",
            ))
        });
        let md = match metadata::headers_to_metadata(&trailers) {
            Ok(md) => md,
            Err(status) => return Some(status),
        };
        close(stream, status, md);
        return None;
    }
}

fn close(stream: &Arc<ServerStream>, status: tonic_types::Status, trailers: pb::Metadata) {
    let code = status.code;
    let id = stream.id();
    let status = (status.code != 0 || !status.details.is_empty()).then_some(status);
    let frame = server_frame(
        id,
        pb::server_to_client::Frame::CloseStream(pb::CloseStream {
            response_trailers: Some(trailers),
            status,
        }),
    );
    if stream.push_final(|| empty_headers(id), frame) {
        debug!(code, "stream closed");
    }
}

fn finish(stream: &Arc<ServerStream>, status: &tonic::Status, trailers: pb::Metadata) {
    let id = stream.id();
    if stream.push_final(
        || empty_headers(id),
        close_frame(id, Some(status), Some(trailers)),
    ) {
        debug!(code = ?status.code(), error = %status.message(), "stream closed");
    }
}
