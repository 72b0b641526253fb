//! What both roles' readers share: the table of active streams, the path of
//! a received data frame into its stream, and pausing a revision-zero tunnel
//! while a consumer catches up.
//!
//! A reader reads the peer's frames in order and dispatches them by stream
//! ID; it never waits for a consumer or a write (P-54), except that a
//! revision-zero tunnel stops reading while one stream has more than its
//! buffer bound waiting (revision zero has no windows to bound it).
//! The frames that only one role receives (`new_stream`, `cancel`,
//! `response_headers`, `close_stream`) are handled by that role's reader
//! (`client/reader.rs`, `server/reader.rs`).

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use tracing::trace;

use crate::{
    engine::{
        flow::Overrun,
        stats::Meter,
        stream::{Event, Stream},
    },
    wire::{
        frame::OutFrame,
        reassembly::{Reassembly, ReassemblyError},
    },
};

/// A received data frame.
#[derive(Debug)]
pub(crate) enum Data {
    /// An envelope: the message's size and its first chunk.
    Envelope { size: u32, data: Bytes },
    /// A continuation chunk.
    More(Bytes),
}

/// Why a data frame ends its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DataError {
    /// The envelope/continuation sequence is broken, or the message is too
    /// large (P-33).
    Reassembly(ReassemblyError),
    /// The peer sent past the receive window (P-51).
    Overrun(Overrun),
}

/// The receiving half of one stream, as the reader holds it.
#[derive(Debug)]
pub(crate) struct Inflow<F> {
    stream: Arc<Stream<F>>,
    reassembly: Reassembly,
}

impl<F: OutFrame> Inflow<F> {
    pub(crate) fn new(stream: Arc<Stream<F>>) -> Self {
        Self {
            stream,
            reassembly: Reassembly::default(),
        }
    }

    pub(crate) fn stream(&self) -> &Arc<Stream<F>> {
        &self.stream
    }

    /// Checks a data frame against the message sequence (P-33) and the
    /// receive window (P-51), counts it and hands it to the consumer.
    ///
    /// # Errors
    ///
    /// When the frame breaks either rule; nothing is delivered then, and the
    /// caller ends the stream with the role's status for it.
    pub(crate) fn on_data(
        &mut self,
        data: Data,
        max_message_size: usize,
        meter: &Meter,
    ) -> Result<(), DataError> {
        let (len, start) = match &data {
            Data::Envelope { size, data } => {
                self.reassembly
                    .on_envelope(*size, data.len(), max_message_size)
                    .map_err(DataError::Reassembly)?;
                (data.len(), true)
            }
            Data::More(data) => {
                self.reassembly
                    .on_continuation(data.len())
                    .map_err(DataError::Reassembly)?;
                (data.len(), false)
            }
        };
        self.stream.charge_recv(len).map_err(DataError::Overrun)?;
        meter.received(len, start);
        self.stream.deliver(match data {
            Data::Envelope { size, data } => Event::Start { size, data },
            Data::More(data) => Event::More(data),
        });
        Ok(())
    }
}

/// Where a frame's stream ID leads.
#[derive(Debug)]
pub(crate) enum Lookup<'a, E> {
    /// An active stream.
    Active(&'a mut E),
    /// A stream that has ended: late frames for it are routine (P-23) and
    /// dropped.
    Finished,
    /// A stream that never existed: fatal to the tunnel (P-22, P-23).
    Unknown,
}

/// The active streams of one tunnel, by ID, and the highest ID seen.
#[derive(Debug)]
pub(crate) struct StreamTable<E> {
    streams: HashMap<i64, E>,
    /// Highest stream ID recorded so far.
    highest: i64,
    /// A frame for an inactive ID up to `highest` is late only once
    /// `highest` reached this.
    late_from: i64,
}

impl<E> StreamTable<E> {
    /// The tunnel server's table: IDs up to the highest `new_stream` ID
    /// (initially -1) are finished when not active (P-21, P-23).
    pub(crate) fn server() -> Self {
        Self {
            streams: HashMap::new(),
            highest: -1,
            late_from: -1,
        }
    }

    /// The tunnel client's table: once it created a stream, IDs up to the
    /// highest one it created are finished when not active (P-23).
    pub(crate) fn client() -> Self {
        Self {
            streams: HashMap::new(),
            highest: 0,
            late_from: 1,
        }
    }

    pub(crate) fn lookup(&mut self, id: i64) -> Lookup<'_, E> {
        if let Some(entry) = self.streams.get_mut(&id) {
            return Lookup::Active(entry);
        }
        if self.highest >= self.late_from && id <= self.highest {
            trace!(stream_id = id, "dropped frame for finished stream");
            return Lookup::Finished;
        }
        Lookup::Unknown
    }

    pub(crate) fn highest(&self) -> i64 {
        self.highest
    }

    /// Records `id` as used, whether or not it becomes active.
    pub(crate) fn record(&mut self, id: i64) {
        self.highest = self.highest.max(id);
    }

    pub(crate) fn contains(&self, id: i64) -> bool {
        self.streams.contains_key(&id)
    }

    pub(crate) fn insert(&mut self, id: i64, entry: E) {
        self.record(id);
        self.streams.insert(id, entry);
    }

    pub(crate) fn remove(&mut self, id: i64) -> Option<E> {
        self.streams.remove(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.streams.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    pub(crate) fn drain(&mut self) -> impl Iterator<Item = E> + '_ {
        self.streams.drain().map(|(_, entry)| entry)
    }
}

/// The text of the fatal error for a frame of a stream that never existed
/// (P-23).
pub(crate) fn never_created(id: i64) -> String {
    format!("received frame for stream ID {id}: stream never created")
}

/// A revision-zero tunnel's pause: reading stops while one stream has more
/// than `limit` bytes waiting for its consumer, and resumes once it is down
/// to half of that (or the consumer is gone). Buffering is bounded by
/// pausing, never by dropping data.
#[derive(Debug)]
pub(crate) struct Pause<F> {
    paused: Option<Arc<Stream<F>>>,
    limit: usize,
}

impl<F: OutFrame> Pause<F> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            paused: None,
            limit,
        }
    }

    /// After a delivery: pauses if `stream` has too much waiting.
    pub(crate) fn check(&mut self, stream: &Arc<Stream<F>>) {
        if stream.over_buffer(self.limit) {
            if self.paused.is_none() {
                stream.core().meter.read_paused();
            }
            self.paused = Some(stream.clone());
        }
    }

    pub(crate) fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// Resolves once the paused stream's consumer has caught up; pending
    /// forever when nothing is paused (use it in a `select!` guarded by
    /// [`is_paused`](Self::is_paused)).
    pub(crate) async fn caught_up(&mut self) {
        if let Some(stream) = &self.paused {
            std::future::poll_fn(|cx| stream.poll_caught_up(cx, self.limit)).await;
            self.paused = None;
        } else {
            std::future::pending::<()>().await;
        }
    }
}

/// Traces a received frame.
pub(crate) fn trace_in<F: OutFrame>(frame: &F) {
    if tracing::enabled!(tracing::Level::TRACE) {
        let (kind, stream_id, len) = frame.describe();
        trace!(frame = kind, stream_id, len, "frame in");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_tells_finished_from_unknown() {
        let mut client = StreamTable::<()>::client();
        assert!(matches!(client.lookup(0), Lookup::Unknown));
        client.insert(1, ());
        assert!(matches!(client.lookup(0), Lookup::Finished));
        let mut server = StreamTable::<()>::server();
        assert!(matches!(server.lookup(-2), Lookup::Finished));
        assert!(matches!(server.lookup(1), Lookup::Unknown));
        server.record(3);
        assert!(matches!(server.lookup(2), Lookup::Finished));
        assert!(matches!(server.lookup(4), Lookup::Unknown));
        server.insert(5, ());
        assert!(matches!(server.lookup(5), Lookup::Active(_)));
        assert_eq!(server.remove(5), Some(()));
        assert!(matches!(server.lookup(5), Lookup::Finished));
        assert_eq!(
            never_created(9),
            "received frame for stream ID 9: stream never created"
        );
    }
}
