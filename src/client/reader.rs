//! The tunnel client's reader: reads `ServerToClient` frames and dispatches
//! them to streams by ID (P-54: it never waits for a consumer or a write).
//! Data frames take the engine's shared path ([`Inflow`]); the frames only a
//! tunnel client receives (`response_headers`, `close_stream`) are handled
//! here.

use std::sync::Arc;

use futures_core::Stream as FuturesStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    client::shared::Shared,
    engine::{
        reader::{never_created, trace_in, Data, DataError, Inflow, Lookup, Pause, StreamTable},
        stream::{Event, Stream},
    },
    error::Error,
    pb::{self, server_to_client::Frame},
    wire::{frame, metadata::metadata_size},
};

type ClientStream = Stream<pb::ClientToServer>;

/// A stream as the reader tracks it.
struct Entry {
    inflow: Inflow<pb::ClientToServer>,
    headers_seen: bool,
}

pub(crate) struct Reader<S> {
    shared: Arc<Shared>,
    inbound: S,
    register: mpsc::UnboundedReceiver<Arc<ClientStream>>,
    gone: mpsc::UnboundedReceiver<i64>,
    streams: StreamTable<Entry>,
    /// Set while a revision-zero stream's consumer catches up.
    pause: Pause<pb::ClientToServer>,
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
        let pause = Pause::new(shared.opts.revision_zero_buffer);
        Self {
            shared,
            inbound,
            register,
            gone,
            streams: StreamTable::client(),
            pause,
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
                Some(id) = self.gone.recv() => { self.remove(id); }
                () = self.shared.shutdown.notified() => return Error::closed_locally(),
                () = self.pause.caught_up(), if self.pause.is_paused() => {}
                frame = self.inbound.next(), if !self.pause.is_paused() => match frame {
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

    fn remove(&mut self, id: i64) -> Option<Entry> {
        let entry = self.streams.remove(id);
        if entry.is_some() {
            self.shared.core.meter.stream_closed();
        }
        entry
    }

    pub(crate) fn add(&mut self, stream: Arc<ClientStream>) {
        self.shared.core.meter.stream_opened();
        self.streams.insert(
            stream.id(),
            Entry {
                inflow: Inflow::new(stream),
                headers_seen: false,
            },
        );
    }

    /// Handles one frame; `Err` is fatal to the tunnel.
    pub(crate) fn on_frame(&mut self, frame: pb::ServerToClient) -> Result<(), String> {
        trace_in(&frame);
        let id = frame.stream_id;
        if !self.streams.contains(id) {
            // A stream registered after the last `recv` may already be answered.
            while let Ok(stream) = self.register.try_recv() {
                self.add(stream);
            }
        }
        // P-23, client side: late frames for past streams are routine.
        let entry = match self.streams.lookup(id) {
            Lookup::Active(entry) => entry,
            Lookup::Finished => return Ok(()),
            Lookup::Unknown => return Err(never_created(id)),
        };
        let opts = &self.shared.opts;
        let data = match frame.frame {
            Some(Frame::ResponseMessage(msg)) => Data::Envelope {
                size: msg.size,
                data: msg.data,
            },
            Some(Frame::MoreResponseData(data)) => Data::More(data),
            Some(Frame::ResponseHeaders(md)) => {
                if entry.headers_seen {
                    return Ok(());
                }
                match check_metadata(&md, "headers", opts.max_metadata_size) {
                    Ok(()) => {
                        entry.headers_seen = true;
                        entry.inflow.stream().deliver(Event::Headers(md));
                    }
                    Err(status) => self.fail_stream(id, status),
                }
                return Ok(());
            }
            Some(Frame::CloseStream(close)) => {
                let trailers = close.response_trailers.as_ref();
                let checked =
                    trailers.map(|md| check_metadata(md, "trailers", opts.max_metadata_size));
                // Forgotten before the caller can see the end (P-45).
                let Some(entry) = self.remove(id) else {
                    return Ok(());
                };
                let stream = entry.inflow.stream();
                stream.finish();
                match checked {
                    Some(Err(status)) => stream.fail(status),
                    _ => {
                        let code = close.status.as_ref().map_or(0, |s| s.code);
                        debug!(stream_id = id, code, "stream closed");
                        stream.deliver(Event::End(Some(close)));
                    }
                }
                return Ok(());
            }
            Some(Frame::WindowUpdate(n)) => {
                if n > 0 {
                    entry.inflow.stream().add_window(n);
                }
                return Ok(());
            }
            Some(Frame::Settings(_)) => {
                let status = tonic::Status::unknown("protocol error: unexpected settings frame");
                self.fail_stream(id, status);
                return Ok(());
            }
            None => {
                let status = tonic::Status::unknown("protocol error: unrecognized frame type");
                self.fail_stream(id, status);
                return Ok(());
            }
        };
        let meter = &self.shared.core.meter;
        match entry.inflow.on_data(data, opts.max_message_size, meter) {
            Ok(()) => self.pause.check(entry.inflow.stream()),
            Err(DataError::Reassembly(e)) => self.fail_stream(id, e.client_status()),
            Err(DataError::Overrun(e)) => self.fail_stream(id, e.to_status()),
        }
        Ok(())
    }

    /// Fails a stream whose frame broke its rules (the tunnel goes on).
    fn fail_stream(&mut self, id: i64, status: tonic::Status) {
        let Some(entry) = self.remove(id) else {
            return;
        };
        debug!(stream_id = id, code = ?status.code(), error = %status.message(), "stream failed");
        let stream = entry.inflow.stream();
        // Unlike the Go reference (B-3) we tell the server, so that its
        // handler does not stay blocked.
        if stream.finish() {
            self.shared.core.send_control(frame::cancel(id));
        }
        stream.fail(status);
        self.shared.core.meter.protocol_error();
    }

    fn teardown(mut self, reason: Error) {
        self.shared.set_terminal(reason.clone());
        while let Ok(stream) = self.register.try_recv() {
            self.add(stream);
        }
        let status = reason.to_status();
        for entry in self.streams.drain() {
            let stream = entry.inflow.stream();
            stream.finish();
            stream.fail(status.clone());
            self.shared.core.meter.stream_closed();
        }
        self.shared.core.meter.tunnel_closed();
        // Forward: half-closes the opening RPC; reverse: ends its response,
        // with UNKNOWN and the violation's text after a protocol error, as
        // the Go reference does (P-22).
        self.shared.core.finish(reason.protocol_status());
        if reason.is_closed() && reason.status().is_none() {
            // Closed locally: let the peer end the opening RPC, within a
            // bound. Once it has, it saw our end: the tunnel is flushed.
            let (inbound, shared) = (self.inbound, self.shared);
            tokio::spawn(async move {
                let drain = inbound.for_each(|_| async {});
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), drain).await;
                shared.flushed.cancel();
            });
        } else {
            // The opening RPC is over already.
            self.shared.flushed.cancel();
        }
    }
}

fn check_metadata(md: &pb::Metadata, what: &str, max: usize) -> Result<(), tonic::Status> {
    let size = metadata_size(md);
    if size > max {
        return Err(tonic::Status::resource_exhausted(format!(
            "response {what} too large ({size} bytes, max {max})"
        )));
    }
    Ok(())
}
