//! The tunnel's own frames (`ClientToServer`, `ServerToClient`): how each
//! kind is built, named and described, so that the engine can write either
//! direction through one trait, [`OutFrame`].
//!
//! Pure: no I/O.

use bytes::Bytes;

use crate::{pb, wire::status};

/// A frame type the writer can produce for data and credit.
pub(crate) trait OutFrame: std::fmt::Debug + Send + Sync + 'static {
    /// First chunk of a message of `size` bytes.
    fn envelope(id: i64, size: u32, data: Bytes) -> Self;
    /// Next chunk of the current message.
    fn more(id: i64, data: Bytes) -> Self;
    /// Credit for the peer's data.
    fn window_update(id: i64, n: u32) -> Self;
    /// Kind, stream ID and data length, for tracing.
    fn describe(&self) -> (&'static str, i64, usize);
}

impl OutFrame for pb::ClientToServer {
    fn envelope(id: i64, size: u32, data: Bytes) -> Self {
        client_frame(
            id,
            pb::client_to_server::Frame::RequestMessage(pb::MessageData { size, data }),
        )
    }

    fn more(id: i64, data: Bytes) -> Self {
        client_frame(id, pb::client_to_server::Frame::MoreRequestData(data))
    }

    fn window_update(id: i64, n: u32) -> Self {
        client_frame(id, pb::client_to_server::Frame::WindowUpdate(n))
    }

    fn describe(&self) -> (&'static str, i64, usize) {
        use pb::client_to_server::Frame as F;
        let (kind, len) = match &self.frame {
            None => ("none", 0),
            Some(F::NewStream(_)) => ("new_stream", 0),
            Some(F::RequestMessage(m)) => ("request_message", m.data.len()),
            Some(F::MoreRequestData(d)) => ("more_request_data", d.len()),
            Some(F::HalfClose(())) => ("half_close", 0),
            Some(F::Cancel(())) => ("cancel", 0),
            Some(F::WindowUpdate(n)) => ("window_update", *n as usize),
        };
        (kind, self.stream_id, len)
    }
}

impl OutFrame for pb::ServerToClient {
    fn envelope(id: i64, size: u32, data: Bytes) -> Self {
        server_frame(
            id,
            pb::server_to_client::Frame::ResponseMessage(pb::MessageData { size, data }),
        )
    }

    fn more(id: i64, data: Bytes) -> Self {
        server_frame(id, pb::server_to_client::Frame::MoreResponseData(data))
    }

    fn window_update(id: i64, n: u32) -> Self {
        server_frame(id, pb::server_to_client::Frame::WindowUpdate(n))
    }

    fn describe(&self) -> (&'static str, i64, usize) {
        use pb::server_to_client::Frame as F;
        let (kind, len) = match &self.frame {
            None => ("none", 0),
            Some(F::ResponseHeaders(_)) => ("response_headers", 0),
            Some(F::ResponseMessage(m)) => ("response_message", m.data.len()),
            Some(F::MoreResponseData(d)) => ("more_response_data", d.len()),
            Some(F::CloseStream(c)) => (
                "close_stream",
                c.status.as_ref().map_or(0, |s| s.code as usize),
            ),
            Some(F::Settings(_)) => ("settings", 0),
            Some(F::WindowUpdate(n)) => ("window_update", *n as usize),
        };
        (kind, self.stream_id, len)
    }
}

pub(crate) fn client_frame(id: i64, frame: pb::client_to_server::Frame) -> pb::ClientToServer {
    pb::ClientToServer {
        stream_id: id,
        frame: Some(frame),
    }
}

pub(crate) fn server_frame(id: i64, frame: pb::server_to_client::Frame) -> pb::ServerToClient {
    pb::ServerToClient {
        stream_id: id,
        frame: Some(frame),
    }
}

/// A short name for a frame kind, for error texts.
pub(crate) fn frame_name(frame: Option<&pb::server_to_client::Frame>) -> &'static str {
    use pb::server_to_client::Frame;
    match frame {
        None => "unrecognized frame",
        Some(Frame::ResponseHeaders(_)) => "response_headers",
        Some(Frame::ResponseMessage(_)) => "response_message",
        Some(Frame::MoreResponseData(_)) => "more_response_data",
        Some(Frame::CloseStream(_)) => "close_stream",
        Some(Frame::Settings(_)) => "settings",
        Some(Frame::WindowUpdate(_)) => "window_update",
    }
}

/// `response_headers` with no metadata: what a stream that fails before its
/// handler answered sends ahead of `close_stream` (P-33, P-63).
pub(crate) fn empty_headers(id: i64) -> pb::ServerToClient {
    server_frame(
        id,
        pb::server_to_client::Frame::ResponseHeaders(pb::Metadata::default()),
    )
}

/// A `close_stream` frame from a `google.rpc.Status`; an OK status without
/// details is sent absent (P-44).
pub(crate) fn close_stream(
    id: i64,
    status: tonic_types::Status,
    trailers: Option<pb::Metadata>,
) -> pb::ServerToClient {
    let status = (status.code != 0 || !status.details.is_empty()).then_some(status);
    server_frame(
        id,
        pb::server_to_client::Frame::CloseStream(pb::CloseStream {
            response_trailers: trailers,
            status,
        }),
    )
}

/// A `close_stream` frame from a [`tonic::Status`] (see [`close_stream`]).
pub(crate) fn close_with(
    id: i64,
    status: &tonic::Status,
    trailers: Option<pb::Metadata>,
) -> pb::ServerToClient {
    close_stream(id, status::tonic_status_to_pb(status), trailers)
}

/// `cancel` for a stream (tunnel client).
pub(crate) fn cancel(id: i64) -> pb::ClientToServer {
    client_frame(id, pb::client_to_server::Frame::Cancel(()))
}

/// `half_close` for a stream (tunnel client).
pub(crate) fn half_close(id: i64) -> pb::ClientToServer {
    client_frame(id, pb::client_to_server::Frame::HalfClose(()))
}

/// The `settings` frame a tunnel server sends first (P-11).
pub(crate) fn settings(settings: pb::Settings) -> pb::ServerToClient {
    server_frame(-1, pb::server_to_client::Frame::Settings(settings))
}
