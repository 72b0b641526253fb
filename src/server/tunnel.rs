//! Serves one tunnel as the tunnel server: reads `ClientToServer` frames,
//! starts a handler for each `new_stream`, and feeds each stream's request
//! data to it (P-54: the reader never waits for a handler or a write).

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use futures_core::Stream as FuturesStream;
use futures_util::StreamExt;
use tokio::{sync::mpsc, task::AbortHandle, time::Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, Instrument};

use crate::{
    frame::Reassembly,
    info::{Direction, TunnelInfo},
    metadata,
    negotiate::{self, Options, Revision},
    pb::{self, client_to_server::Frame},
    server::{body::RequestBody, dispatch::Dispatch, handler},
    stream::{server_frame, Event, Stream},
    writer::Core,
};

type ServerStream = Stream<pb::ServerToClient>;

/// What a tunnel server needs besides its frames.
pub(crate) struct TunnelContext {
    pub(crate) opts: Options,
    pub(crate) dispatch: Dispatch,
    /// Request extensions of the opening RPC, copied into each tunneled request.
    pub(crate) extensions: http::Extensions,
    /// Request headers of the opening RPC.
    pub(crate) metadata: Arc<http::HeaderMap>,
    pub(crate) direction: Direction,
}

struct Entry {
    stream: Arc<ServerStream>,
    task: AbortHandle,
    reassembly: Reassembly,
    half_closed: bool,
}

/// The reader of one tunnel server.
pub(crate) struct ServerTunnel<S> {
    cx: TunnelContext,
    core: Arc<Core<pb::ServerToClient>>,
    inbound: S,
    gone: mpsc::UnboundedReceiver<i64>,
    streams: HashMap<i64, Entry>,
    /// Highest stream ID recorded (P-21), initially -1.
    highest: i64,
    /// Cancelled to start a graceful shutdown.
    /// A revision-zero stream whose consumer must catch up before reading on.
    paused: Option<Arc<ServerStream>>,
    drain: CancellationToken,
    grace: Duration,
    /// When the drain's time runs out.
    deadline: Option<Pin<Box<Sleep>>>,
}

/// How a tunnel ended, from the tunnel server's point of view.
pub(crate) enum Ending {
    /// The peer ended its side of the opening RPC.
    Closed,
    /// The opening RPC failed.
    Broken(tonic::Status),
    /// Graceful shutdown: every stream finished after the drain began.
    Drained,
    /// Shutdown without waiting (or the drain's time ran out).
    Aborted,
    /// The peer broke the protocol; the text of PROTOCOL.md.
    Protocol(String),
}

impl<S> ServerTunnel<S>
where
    S: FuturesStream<Item = Result<pb::ClientToServer, tonic::Status>> + Unpin + Send + 'static,
{
    pub(crate) fn new(
        cx: TunnelContext,
        core: Arc<Core<pb::ServerToClient>>,
        gone: mpsc::UnboundedReceiver<i64>,
        inbound: S,
    ) -> Self {
        Self {
            cx,
            core,
            inbound,
            gone,
            streams: HashMap::new(),
            highest: -1,
            paused: None,
            drain: CancellationToken::new(),
            grace: Duration::MAX,
            deadline: None,
        }
    }

    /// Cancelling `drain` starts a graceful shutdown: new streams are
    /// rejected with `UNAVAILABLE` `server is shutting down` (P-69), and the
    /// tunnel ends with [`Ending::Drained`] once the active ones finish, or
    /// with [`Ending::Aborted`] when `grace` has passed.
    pub(crate) fn with_shutdown(mut self, drain: CancellationToken, grace: Duration) -> Self {
        self.drain = drain;
        self.grace = grace;
        self
    }

    fn draining(&self) -> bool {
        self.deadline.is_some()
    }

    /// Serves until the tunnel ends; tears every stream down on the way out
    /// and hands back the inbound frames (to drain or drop).
    pub(crate) async fn run(mut self) -> (Ending, S) {
        let ending = self.read_loop().await;
        for (_, entry) in self.streams.drain() {
            entry.task.abort();
            entry.stream.finish();
            entry
                .stream
                .fail(tonic::Status::unavailable("tunnel closed"));
            self.core.meter.stream_closed();
        }
        self.core.meter.tunnel_closed();
        (ending, self.inbound)
    }

    async fn read_loop(&mut self) -> Ending {
        loop {
            tokio::select! {
                biased;
                Some(id) = self.gone.recv() => {
                    self.remove(id);
                    if self.draining() && self.streams.is_empty() {
                        return Ending::Drained;
                    }
                }
                () = async { self.deadline.as_mut().expect("guarded").await }, if self.draining() => {
                    debug!(active = self.streams.len(), "drain took too long");
                    return Ending::Aborted;
                }
                () = self.drain.cancelled(), if !self.draining() => {
                    debug!(active = self.streams.len(), "draining");
                    let until = tokio::time::Instant::now()
                        .checked_add(self.grace)
                        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86400 * 365));
                    self.deadline = Some(Box::pin(tokio::time::sleep_until(until)));
                    if self.streams.is_empty() {
                        return Ending::Drained;
                    }
                }
                () = caught_up(self.paused.as_deref(), self.cx.opts.revision_zero_buffer), if self.paused.is_some() => {
                    self.paused = None;
                }
                frame = self.inbound.next(), if self.paused.is_none() => match frame {
                    Some(Ok(frame)) => {
                        if let Err(text) = self.on_frame(frame) {
                            self.core.meter.protocol_error();
                            debug!(error = %text, "protocol error");
                            return Ending::Protocol(text);
                        }
                    }
                    Some(Err(status)) => {
                        debug!(code = ?status.code(), error = %status.message(), "tunnel broken");
                        return Ending::Broken(status);
                    }
                    None => return Ending::Closed,
                },
            }
        }
    }

    fn remove(&mut self, id: i64) -> Option<Entry> {
        let entry = self.streams.remove(&id);
        if entry.is_some() {
            self.core.meter.stream_closed();
        }
        entry
    }

    /// Handles one frame; `Err` is fatal to the tunnel (P-22).
    pub(crate) fn on_frame(&mut self, frame: pb::ClientToServer) -> Result<(), String> {
        if tracing::enabled!(tracing::Level::TRACE) {
            let (kind, stream_id, len) = crate::stream::OutFrame::describe(&frame);
            trace!(frame = kind, stream_id, len, "frame in");
        }
        let id = frame.stream_id;
        let frame = match frame.frame {
            Some(Frame::NewStream(new)) => return self.on_new_stream(id, new),
            other => other,
        };
        let Some(entry) = self.streams.get_mut(&id) else {
            // P-23, server side.
            if id <= self.highest {
                trace!(stream_id = id, "dropped frame for finished stream");
                return Ok(());
            }
            return Err(format!(
                "received frame for stream ID {id}: stream never created"
            ));
        };
        let max = self.cx.opts.max_message_size;
        let failure = match frame {
            Some(Frame::RequestMessage(msg)) if !entry.half_closed => {
                let len = msg.data.len();
                match entry.reassembly.on_envelope(msg.size, len, max) {
                    Err(e) => Some(e.server_status()),
                    Ok(()) if !entry.stream.charge_recv(len) => Some(overrun()),
                    Ok(()) => {
                        self.core.meter.received(len, true);
                        entry.stream.deliver(Event::Start {
                            size: msg.size,
                            data: msg.data,
                        });
                        if entry.stream.over_buffer(self.cx.opts.revision_zero_buffer) {
                            self.paused = Some(entry.stream.clone());
                        }
                        None
                    }
                }
            }
            Some(Frame::MoreRequestData(data)) if !entry.half_closed => {
                match entry.reassembly.on_continuation(data.len()) {
                    Err(e) => Some(e.server_status()),
                    Ok(()) if !entry.stream.charge_recv(data.len()) => Some(overrun()),
                    Ok(()) => {
                        self.core.meter.received(data.len(), false);
                        entry.stream.deliver(Event::More(data));
                        if entry.stream.over_buffer(self.cx.opts.revision_zero_buffer) {
                            self.paused = Some(entry.stream.clone());
                        }
                        None
                    }
                }
            }
            // P-37: data after half_close is dropped, a repeated half_close ignored.
            Some(Frame::RequestMessage(_) | Frame::MoreRequestData(_)) => None,
            Some(Frame::HalfClose(())) => {
                if !entry.half_closed {
                    entry.half_closed = true;
                    entry.stream.deliver(Event::End(None));
                }
                None
            }
            Some(Frame::Cancel(())) => {
                // P-38: stop delivering and cancel the handler (TONIC-NOTES 2:
                // its future is dropped, not just its input ended).
                debug!(stream_id = id, "stream cancelled by client");
                entry.task.abort();
                entry.stream.finish();
                entry.stream.fail(tonic::Status::cancelled(
                    "stream cancelled by tunnel client",
                ));
                self.remove(id);
                None
            }
            Some(Frame::WindowUpdate(n)) => {
                if n > 0 {
                    entry.stream.add_window(n);
                }
                None
            }
            Some(Frame::NewStream(_)) => None, // handled above
            None => Some(tonic::Status::unknown(
                "protocol error: unrecognized frame type",
            )),
        };
        if let Some(status) = failure {
            self.core.meter.protocol_error();
            self.end_stream(id, status);
        }
        Ok(())
    }

    /// Ends an active stream with `status`: empty headers if none were sent,
    /// then `close_stream` with empty trailers (P-33); the handler is dropped.
    fn end_stream(&mut self, id: i64, status: tonic::Status) {
        let Some(entry) = self.remove(id) else {
            return;
        };
        debug!(stream_id = id, code = ?status.code(), error = %status.message(), "stream failed");
        entry.task.abort();
        entry.stream.push_final(
            || empty_headers(id),
            close_frame(id, Some(&status), Some(pb::Metadata::default())),
        );
        entry.stream.fail(status);
    }

    fn on_new_stream(&mut self, id: i64, new: pb::NewStream) -> Result<(), String> {
        if self.streams.contains_key(&id) {
            return Err(format!("cannot create stream ID {id}: already exists"));
        }
        if id <= self.highest {
            return Err(format!(
                "cannot create stream ID {id}: that ID has already been used"
            ));
        }
        // P-28: the ID is recorded before any rejection (unlike B-1).
        self.highest = id;
        if self.draining() {
            return self.reject(id, tonic::Status::unavailable("server is shutting down"));
        }
        let Some(revision) = Revision::from_i32(new.protocol_revision) else {
            return self.reject(
                id,
                tonic::Status::unavailable(format!(
                    "server does not support protocol revision {}",
                    new.protocol_revision
                )),
            );
        };
        let opts = &self.cx.opts;
        if self.streams.len() >= opts.max_concurrent_streams {
            let max = opts.max_concurrent_streams;
            return self.reject(
                id,
                tonic::Status::resource_exhausted(format!(
                    "too many concurrent streams on this tunnel (max {max})"
                )),
            );
        }
        // The method name counts too: a huge one is refused like huge metadata.
        let md_size = new.method_name.len()
            + new
                .request_headers
                .as_ref()
                .map_or(0, negotiate::metadata_size);
        if md_size > opts.max_metadata_size {
            let max = opts.max_metadata_size;
            return self.reject(
                id,
                tonic::Status::resource_exhausted(format!(
                    "request metadata too large ({md_size} bytes, max {max})"
                )),
            );
        }
        // P-17: any revision we know is accepted on any tunnel, whatever we
        // offered in Settings (as the Go reference does).
        let name = new
            .method_name
            .strip_prefix('/')
            .unwrap_or(&new.method_name);
        // P-24: without a `/` the name is malformed; otherwise an unknown
        // service or method is for the inner service to refuse.
        if !name.contains('/') {
            return self.reject(
                id,
                tonic::Status::invalid_argument(format!("{name} is not a well-formed method name")),
            );
        }
        let uri = match http::Uri::builder()
            .path_and_query(format!("/{name}"))
            .build()
        {
            Ok(uri) if !name.starts_with('/') && !name.ends_with('/') => uri,
            _ => {
                return self.reject(
                    id,
                    tonic::Status::unimplemented(format!("{name} not implemented")),
                )
            }
        };
        let flow = revision.is_flow_controlled();
        let stream = Stream::new(
            id,
            self.core.clone(),
            flow.then_some(new.initial_window_size),
            flow.then_some(self.cx.opts.initial_window_size),
        );
        let span = crate::trace::stream_span(&tracing::Span::current(), id, uri.path());
        let req = self.request(
            uri,
            new.request_headers.unwrap_or_default(),
            &stream,
            revision,
        );
        let timeout = handler::timeout(req.headers());
        let call = handler::call(self.cx.dispatch.clone(), req);
        let task =
            tokio::spawn(handler::serve_stream(call, timeout, stream.clone()).instrument(span));
        self.core.meter.stream_opened();
        self.streams.insert(
            id,
            Entry {
                stream,
                task: task.abort_handle(),
                reassembly: Reassembly::default(),
                half_closed: false,
            },
        );
        Ok(())
    }

    fn request(
        &self,
        uri: http::Uri,
        headers: pb::Metadata,
        stream: &Arc<ServerStream>,
        revision: Revision,
    ) -> http::Request<RequestBody> {
        let mut req = http::Request::new(RequestBody::new(stream.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = uri;
        *req.version_mut() = http::Version::HTTP_2;
        let h = req.headers_mut();
        metadata::metadata_to_headers(&headers, h);
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/grpc"),
        );
        h.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
        let ext = req.extensions_mut();
        ext.extend(self.cx.extensions.clone());
        ext.insert(TunnelInfo {
            direction: self.cx.direction,
            metadata: self.cx.metadata.clone(),
            stream_id: stream.id(),
            revision,
        });
        req
    }

    /// Rejects a new stream: one `close_stream` with only a status (P-28).
    fn reject(&mut self, id: i64, status: tonic::Status) -> Result<(), String> {
        debug!(stream_id = id, code = ?status.code(), error = %status.message(), "stream rejected");
        self.core.send_control(close_frame(id, Some(&status), None));
        Ok(())
    }
}

/// Waits until a paused stream's consumer has caught up (revision zero:
/// buffering is bounded by pausing reads, never by dropping data).
pub(crate) async fn caught_up<F: crate::stream::OutFrame>(
    stream: Option<&Stream<F>>,
    limit: usize,
) {
    if let Some(stream) = stream {
        std::future::poll_fn(|cx| stream.poll_caught_up(cx, limit)).await;
    }
}

fn overrun() -> tonic::Status {
    tonic::Status::resource_exhausted("flow control window exceeded")
}

pub(crate) fn empty_headers(id: i64) -> pb::ServerToClient {
    server_frame(
        id,
        pb::server_to_client::Frame::ResponseHeaders(pb::Metadata::default()),
    )
}

/// A `close_stream` frame; an OK status without details is sent absent (P-44).
pub(crate) fn close_frame(
    id: i64,
    status: Option<&tonic::Status>,
    trailers: Option<pb::Metadata>,
) -> pb::ServerToClient {
    let status = status
        .map(metadata::tonic_status_to_pb)
        .filter(|s| s.code != 0 || !s.details.is_empty());
    server_frame(
        id,
        pb::server_to_client::Frame::CloseStream(pb::CloseStream {
            response_trailers: trailers,
            status,
        }),
    )
}
