//! The tunnel client's reader: reads `ServerToClient` frames and dispatches
//! them to streams by ID (P-54: it never waits for a consumer or a write).

use std::{collections::HashMap, sync::Arc};

use futures_core::Stream as FuturesStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, trace};

use crate::{
    client::channel::Shared,
    error::Error,
    frame::Reassembly,
    pb::{self, server_to_client::Frame},
    server::tunnel::caught_up,
    stream::{client_frame, Event, Stream},
};

type ClientStream = Stream<pb::ClientToServer>;

/// A stream as the reader tracks it.
struct Entry {
    stream: Arc<ClientStream>,
    reassembly: Reassembly,
    headers_seen: bool,
}

pub(crate) struct Reader<S> {
    shared: Arc<Shared>,
    inbound: S,
    register: mpsc::UnboundedReceiver<Arc<ClientStream>>,
    gone: mpsc::UnboundedReceiver<i64>,
    streams: HashMap<i64, Entry>,
    /// Highest stream ID registered so far (0: none yet).
    last_id: i64,
    /// A revision-zero stream whose consumer must catch up before reading on.
    paused: Option<Arc<ClientStream>>,
}

impl<S> Reader<S>
where
    S: FuturesStream<Item = Result<pb::ServerToClient, tonic::Status>> + Unpin + Send + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared>,
        inbound: S,
        register: mpsc::UnboundedReceiver<Arc<ClientStream>>,
        gone: mpsc::UnboundedReceiver<i64>,
    ) -> Self {
        Self {
            shared,
            inbound,
            register,
            gone,
            streams: HashMap::new(),
            last_id: 0,
            paused: None,
        }
    }

    pub(crate) async fn run(mut self) {
        let reason = self.read_loop().await;
        debug!(error = %reason.chain(), "tunnel closed");
        self.teardown(reason);
    }

    async fn read_loop(&mut self) -> Error {
        loop {
            tokio::select! {
                biased;
                Some(stream) = self.register.recv() => self.add(stream),
                Some(id) = self.gone.recv() => self.remove(id),
                () = self.shared.shutdown.notified() => return Error::closed_locally(),
                () = caught_up(self.paused.as_deref(), self.shared.opts.revision_zero_buffer), if self.paused.is_some() => {
                    self.paused = None;
                }
                frame = self.inbound.next(), if self.paused.is_none() => match frame {
                    Some(Ok(frame)) => {
                        if let Err(text) = self.on_frame(frame) {
                            self.shared.core.meter.protocol_error();
                            return Error::protocol(text);
                        }
                    }
                    Some(Err(status)) => return Error::closed(status),
                    None => return Error::closed(tonic::Status::unavailable("tunnel ended by peer")),
                },
            }
        }
    }

    fn remove(&mut self, id: i64) {
        if self.streams.remove(&id).is_some() {
            self.shared.core.meter.stream_closed();
        }
    }

    pub(crate) fn add(&mut self, stream: Arc<ClientStream>) {
        self.shared.core.meter.stream_opened();
        self.last_id = stream.id();
        self.streams.insert(
            stream.id(),
            Entry {
                stream,
                reassembly: Reassembly::default(),
                headers_seen: false,
            },
        );
    }

    /// Handles one frame; `Err` is fatal to the tunnel.
    pub(crate) fn on_frame(&mut self, frame: pb::ServerToClient) -> Result<(), String> {
        if tracing::enabled!(tracing::Level::TRACE) {
            let (kind, stream_id, len) = crate::stream::OutFrame::describe(&frame);
            trace!(frame = kind, stream_id, len, "frame in");
        }
        let id = frame.stream_id;
        if !self.streams.contains_key(&id) {
            // A stream registered after the last `recv` may already be answered.
            while let Ok(stream) = self.register.try_recv() {
                self.add(stream);
            }
        }
        let Some(entry) = self.streams.get_mut(&id) else {
            // P-23, client side: late frames for past streams are routine.
            if self.last_id >= 1 && id <= self.last_id {
                trace!(stream_id = id, "dropped frame for finished stream");
                return Ok(());
            }
            return Err(format!(
                "received frame for stream ID {id}: stream never created"
            ));
        };
        let max = self.shared.opts.max_message_size;
        let outcome = match frame.frame {
            Some(Frame::ResponseHeaders(md)) => {
                if entry.headers_seen {
                    Ok(())
                } else if let Err(status) =
                    check_metadata(&md, "headers", self.shared.opts.max_metadata_size)
                {
                    Err(status)
                } else {
                    entry.headers_seen = true;
                    entry.stream.deliver(Event::Headers(md));
                    Ok(())
                }
            }
            Some(Frame::ResponseMessage(msg)) => {
                let len = msg.data.len();
                entry
                    .reassembly
                    .on_envelope(msg.size, len, max)
                    .map_err(|e| e.client_status())
                    .and_then(|()| charge(&entry.stream, len))
                    .map(|()| {
                        self.shared.core.meter.received(len, true);
                        entry.stream.deliver(Event::Start {
                            size: msg.size,
                            data: msg.data,
                        });
                        if entry
                            .stream
                            .over_buffer(self.shared.opts.revision_zero_buffer)
                        {
                            self.paused = Some(entry.stream.clone());
                        }
                    })
            }
            Some(Frame::MoreResponseData(data)) => entry
                .reassembly
                .on_continuation(data.len())
                .map_err(|e| e.client_status())
                .and_then(|()| charge(&entry.stream, data.len()))
                .map(|()| {
                    self.shared.core.meter.received(data.len(), false);
                    entry.stream.deliver(Event::More(data));
                    if entry
                        .stream
                        .over_buffer(self.shared.opts.revision_zero_buffer)
                    {
                        self.paused = Some(entry.stream.clone());
                    }
                }),
            Some(Frame::CloseStream(close)) => {
                let trailers = close.response_trailers.as_ref();
                if let Some(Err(status)) = trailers
                    .map(|md| check_metadata(md, "trailers", self.shared.opts.max_metadata_size))
                {
                    entry.stream.finish();
                    entry.stream.fail(status);
                    self.remove(id);
                    return Ok(());
                }
                let code = close.status.as_ref().map_or(0, |s| s.code);
                debug!(stream_id = id, code, "stream closed");
                let stream = entry.stream.clone();
                stream.finish();
                // Forgotten before the caller can see the end (P-45).
                self.remove(id);
                stream.deliver(Event::End(Some(close)));
                return Ok(());
            }
            Some(Frame::WindowUpdate(n)) => {
                if n > 0 {
                    entry.stream.add_window(n);
                }
                Ok(())
            }
            Some(Frame::Settings(_)) => Err(tonic::Status::unknown(
                "protocol error: unexpected settings frame",
            )),
            None => Err(tonic::Status::unknown(
                "protocol error: unrecognized frame type",
            )),
        };
        if let Err(status) = outcome {
            debug!(stream_id = id, code = ?status.code(), error = %status.message(), "stream failed");
            // Unlike the Go reference (B-3) we tell the server, so that its
            // handler does not stay blocked.
            if entry.stream.finish() {
                self.shared
                    .core
                    .send_control(client_frame(id, pb::client_to_server::Frame::Cancel(())));
            }
            entry.stream.fail(status);
            self.shared.core.meter.protocol_error();
            self.remove(id);
        }
        Ok(())
    }

    fn teardown(mut self, reason: Error) {
        self.shared.set_terminal(reason.clone());
        while let Ok(stream) = self.register.try_recv() {
            self.add(stream);
        }
        let status = reason.to_status();
        for (_, entry) in self.streams.drain() {
            entry.stream.finish();
            entry.stream.fail(status.clone());
            self.shared.core.meter.stream_closed();
        }
        self.shared.core.meter.tunnel_closed();
        // Forward: half-closes the opening RPC; reverse: ends its response.
        self.shared.core.finish(None);
        if reason.is_closed() && reason.status().is_none() {
            // Closed locally: let the peer end the opening RPC, within a bound.
            let inbound = self.inbound;
            tokio::spawn(async move {
                let drain = inbound.for_each(|_| async {});
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
            });
        }
    }
}

fn check_metadata(md: &pb::Metadata, what: &str, max: usize) -> Result<(), tonic::Status> {
    let size = crate::negotiate::metadata_size(md);
    if size > max {
        return Err(tonic::Status::resource_exhausted(format!(
            "response {what} too large ({size} bytes, max {max})"
        )));
    }
    Ok(())
}

fn charge(stream: &ClientStream, len: usize) -> Result<(), tonic::Status> {
    if stream.charge_recv(len) {
        Ok(())
    } else {
        Err(tonic::Status::resource_exhausted(
            "flow control window exceeded",
        ))
    }
}
