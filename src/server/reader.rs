//! Serves one tunnel as the tunnel server: reads `ClientToServer` frames,
//! starts a handler for each `new_stream`, and feeds each stream's request
//! data to it (P-54: the reader never waits for a handler or a write).

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_core::Stream as FuturesStream;
use futures_util::StreamExt;
use tokio::{sync::mpsc, task::AbortHandle, time::Sleep};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Instrument};

use crate::{
    engine::{
        reader::{never_created, trace_in, Data, DataError, Inflow, Lookup, Pause, StreamTable},
        stats::Meter,
        stream::{Event, Stream},
        trace,
        writer::Core,
    },
    info::{Direction, TunnelInfo},
    pb::{self, client_to_server::Frame},
    server::{body::RequestBody, dispatch::Dispatch, handler},
    wire::{
        frame,
        metadata::{self, Mapping},
        settings::{Options, Revision},
        status, timeout,
    },
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
    /// How metadata crosses this tunnel.
    pub(crate) bin: Mapping,
    /// Scheme and authority of the opening RPC, given to each tunneled
    /// request (whose own `:authority` the protocol does not carry).
    pub(crate) authority: Option<(http::uri::Scheme, http::uri::Authority)>,
}

struct Entry {
    inflow: Inflow<pb::ServerToClient>,
    task: AbortHandle,
    half_closed: bool,
}

/// The tunnel's streams. However the tunnel ends (its read loop returned,
/// or the task running it was aborted, as dropping a reverse tunnel's
/// `serve` does), every handler still running is aborted and its stream
/// fails `UNAVAILABLE` "tunnel closed": no handler outlives its tunnel.
struct Streams(StreamTable<Entry>);

impl Streams {
    fn close_all(&mut self) {
        for entry in self.0.drain() {
            entry.task.abort();
            let stream = entry.inflow.stream();
            stream.finish();
            stream.fail(tonic::Status::unavailable("tunnel closed"));
            stream.core().meter.stream_closed();
        }
    }
}

impl Drop for Streams {
    fn drop(&mut self) {
        self.close_all();
    }
}

impl std::ops::Deref for Streams {
    type Target = StreamTable<Entry>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Streams {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Entry {
    /// A data frame, on the engine's shared path; the status to end the
    /// stream with if it breaks the rules (P-33, P-51).
    fn on_data(
        &mut self,
        data: Data,
        max_message_size: usize,
        meter: &Meter,
        pause: &mut Pause<pb::ServerToClient>,
    ) -> Option<tonic::Status> {
        match self.inflow.on_data(data, max_message_size, meter) {
            Ok(()) => {
                pause.check(self.inflow.stream());
                None
            }
            Err(DataError::Reassembly(e)) => Some(e.server_status()),
            Err(DataError::Overrun(e)) => Some(e.to_status()),
        }
    }
}

/// The reader of one tunnel server.
pub(crate) struct ServerTunnel<S> {
    cx: TunnelContext,
    core: Arc<Core<pb::ServerToClient>>,
    inbound: S,
    gone: mpsc::UnboundedReceiver<i64>,
    /// Active streams, and the highest stream ID recorded (P-21).
    streams: Streams,
    /// Set while a revision-zero stream's consumer catches up.
    pause: Pause<pb::ServerToClient>,
    /// Cancelled to start a graceful shutdown.
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
        let pause = Pause::new(cx.opts.revision_zero_buffer);
        Self {
            cx,
            core,
            inbound,
            gone,
            streams: Streams(StreamTable::server()),
            pause,
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
        self.streams.close_all();
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
                () = self.pause.caught_up(), if self.pause.is_paused() => {}
                frame = self.inbound.next(), if !self.pause.is_paused() => match frame {
                    Some(Ok(frame)) => {
                        if let Err(text) = self.on_frame(frame) {
                            self.core.meter.protocol_error();
                            debug!(error = %text, "protocol error");
                            return Ending::Protocol(text);
                        }
                        // A `cancel` (or a violation) may have ended the
                        // last stream a drain waits for.
                        if self.draining() && self.streams.is_empty() {
                            return Ending::Drained;
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
        let entry = self.streams.remove(id);
        if entry.is_some() {
            self.core.meter.stream_closed();
        }
        entry
    }

    /// Handles one frame; `Err` is fatal to the tunnel (P-22).
    pub(crate) fn on_frame(&mut self, frame: pb::ClientToServer) -> Result<(), String> {
        trace_in(&frame);
        let id = frame.stream_id;
        let frame = match frame.frame {
            Some(Frame::NewStream(new)) => return self.on_new_stream(id, new),
            other => other,
        };
        // P-23, server side.
        let entry = match self.streams.lookup(id) {
            Lookup::Active(entry) => entry,
            Lookup::Finished => return Ok(()),
            Lookup::Unknown => return Err(never_created(id)),
        };
        let max = self.cx.opts.max_message_size;
        let failure = match frame {
            Some(Frame::RequestMessage(msg)) if !entry.half_closed => {
                let data = Data::Envelope {
                    size: msg.size,
                    data: msg.data,
                };
                entry.on_data(data, max, &self.core.meter, &mut self.pause)
            }
            Some(Frame::MoreRequestData(data)) if !entry.half_closed => {
                entry.on_data(Data::More(data), max, &self.core.meter, &mut self.pause)
            }
            // P-37: data after half_close is dropped, a repeated half_close ignored.
            Some(Frame::RequestMessage(_) | Frame::MoreRequestData(_)) => None,
            Some(Frame::HalfClose(())) => {
                if !entry.half_closed {
                    entry.half_closed = true;
                    entry.inflow.stream().deliver(Event::End(None));
                }
                None
            }
            Some(Frame::Cancel(())) => {
                // P-38: stop delivering and cancel the handler (TONIC-NOTES 2:
                // its future is dropped, not just its input ended).
                debug!(stream_id = id, "stream cancelled by client");
                entry.task.abort();
                let stream = entry.inflow.stream();
                stream.finish();
                stream.fail(status::cancelled("stream cancelled by tunnel client"));
                self.remove(id);
                None
            }
            Some(Frame::WindowUpdate(n)) => {
                if n > 0 {
                    entry.inflow.stream().add_window(n);
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
        let stream = entry.inflow.stream();
        stream.push_final(
            || frame::empty_headers(id),
            frame::close_with(id, &status, Some(pb::Metadata::default())),
        );
        stream.fail(status);
    }

    fn on_new_stream(&mut self, id: i64, new: pb::NewStream) -> Result<(), String> {
        if self.streams.contains(id) {
            return Err(format!("cannot create stream ID {id}: already exists"));
        }
        if id <= self.streams.highest() {
            return Err(format!(
                "cannot create stream ID {id}: that ID has already been used"
            ));
        }
        // P-28: the ID is recorded before any rejection (unlike B-1).
        self.streams.record(id);
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
                .map_or(0, metadata::metadata_size);
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
        let mut uri = http::Uri::builder();
        if let Some((scheme, authority)) = &self.cx.authority {
            uri = uri.scheme(scheme.clone()).authority(authority.clone());
        }
        let uri = match uri.path_and_query(format!("/{name}")).build() {
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
        let span = trace::stream_span(&tracing::Span::current(), id, uri.path());
        let req = self.request(
            uri,
            new.request_headers.unwrap_or_default(),
            &stream,
            revision,
        );
        let timeout = timeout::grpc_timeout(req.headers());
        let call = handler::call(self.cx.dispatch.clone(), req);
        let task = tokio::spawn(
            handler::serve_stream(
                call,
                timeout,
                stream.clone(),
                handler::Outgoing::new(self.cx.bin, revision),
            )
            .instrument(span),
        );
        self.core.meter.stream_opened();
        self.streams.insert(
            id,
            Entry {
                inflow: Inflow::new(stream),
                task: task.abort_handle(),
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
        let mut dropped = Vec::new();
        metadata::metadata_to_headers(&headers, self.cx.bin, h, &mut dropped);
        stream.core().meter.metadata_dropped(&dropped);
        // The caller's content type crossed with the extended mapping (a
        // subtype such as `application/grpc+json`); otherwise gRPC's own.
        h.entry(http::header::CONTENT_TYPE)
            .or_insert(http::HeaderValue::from_static("application/grpc"));
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
        self.core.send_control(frame::close_with(id, &status, None));
        Ok(())
    }
}
