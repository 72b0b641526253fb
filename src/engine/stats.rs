//! Cheap counters for tunnels and for a whole endpoint.
//!
//! Every tunnel counts into its own [`Counters`], and into the counters of
//! the endpoint it belongs to (a `TunnelLayer`, a `ReverseTunnelServer`).
//! Counting is a few
//! relaxed atomic additions per frame; reading is a [`Stats`] snapshot.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

/// A process-wide number for each tunnel, for spans and logs.
pub(crate) fn next_tunnel_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Relaxed)
}

/// A snapshot of counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Tunnels open now (endpoint counters only).
    pub tunnels_open: u64,
    /// Tunnels opened so far (endpoint counters only).
    pub tunnels_total: u64,
    /// Streams (tunneled calls) open now.
    pub streams_open: u64,
    /// Streams opened so far.
    pub streams_total: u64,
    /// Messages sent through tunnels.
    pub messages_sent: u64,
    /// Messages received through tunnels.
    pub messages_received: u64,
    /// Message bytes sent (payload only, as flow control counts them).
    pub bytes_sent: u64,
    /// Message bytes received.
    pub bytes_received: u64,
    /// Protocol violations by peers (stream-level and tunnel-level).
    pub protocol_errors: u64,
    /// Metadata values left out: `-bin` values the peer cannot carry
    /// ([`BinaryMetadata::Drop`](crate::BinaryMetadata::Drop)), and a peer's
    /// values no HTTP/2 header can hold (an invalid key or value, entries
    /// past a header map's bound).
    pub metadata_dropped: u64,
    /// Times a revision-zero tunnel stopped reading because one stream's
    /// consumer had more than `Limits::revision_zero_buffer` waiting (it
    /// reads again once that consumer caught up).
    pub reads_paused: u64,
    /// Time streams with data to send spent waiting for flow-control credit,
    /// summed over streams.
    pub flow_control_blocked: Duration,
}

impl std::ops::AddAssign for Stats {
    /// Adds another snapshot's counters (the stats of several tunnels).
    fn add_assign(&mut self, other: Self) {
        self.tunnels_open += other.tunnels_open;
        self.tunnels_total += other.tunnels_total;
        self.streams_open += other.streams_open;
        self.streams_total += other.streams_total;
        self.messages_sent += other.messages_sent;
        self.messages_received += other.messages_received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.protocol_errors += other.protocol_errors;
        self.metadata_dropped += other.metadata_dropped;
        self.reads_paused += other.reads_paused;
        self.flow_control_blocked += other.flow_control_blocked;
    }
}

impl std::iter::Sum for Stats {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut sum, s| {
            sum += s;
            sum
        })
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "tunnels {}/{} open/total, streams {}/{} open/total, sent {} msgs {} B, received {} msgs {} B, protocol errors {}, metadata dropped {}, reads paused {}, blocked on flow control {:?}",
            self.tunnels_open,
            self.tunnels_total,
            self.streams_open,
            self.streams_total,
            self.messages_sent,
            self.bytes_sent,
            self.messages_received,
            self.bytes_received,
            self.protocol_errors,
            self.metadata_dropped,
            self.reads_paused,
            self.flow_control_blocked,
        )
    }
}

/// Live counters, shared by the parts of a tunnel or an endpoint.
#[derive(Default)]
pub struct Counters {
    tunnels_open: AtomicU64,
    tunnels_total: AtomicU64,
    streams_open: AtomicU64,
    streams_total: AtomicU64,
    messages_sent: AtomicU64,
    messages_received: AtomicU64,
    bytes_sent: AtomicU64,
    bytes_received: AtomicU64,
    protocol_errors: AtomicU64,
    metadata_dropped: AtomicU64,
    reads_paused: AtomicU64,
    blocked_nanos: AtomicU64,
}

impl Counters {
    /// A snapshot.
    pub fn snapshot(&self) -> Stats {
        Stats {
            tunnels_open: self.tunnels_open.load(Relaxed),
            tunnels_total: self.tunnels_total.load(Relaxed),
            streams_open: self.streams_open.load(Relaxed),
            streams_total: self.streams_total.load(Relaxed),
            messages_sent: self.messages_sent.load(Relaxed),
            messages_received: self.messages_received.load(Relaxed),
            bytes_sent: self.bytes_sent.load(Relaxed),
            bytes_received: self.bytes_received.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            metadata_dropped: self.metadata_dropped.load(Relaxed),
            reads_paused: self.reads_paused.load(Relaxed),
            flow_control_blocked: Duration::from_nanos(self.blocked_nanos.load(Relaxed)),
        }
    }
}

impl fmt::Debug for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// A tunnel's counters and those of its endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter {
    tunnel: Arc<Counters>,
    endpoint: Option<Arc<Counters>>,
    /// The tunnel was counted closed (counting it twice must not happen).
    closed: Arc<std::sync::atomic::AtomicBool>,
}

macro_rules! both {
    ($self:ident, $field:ident, $op:ident, $n:expr) => {{
        let n = $n;
        $self.tunnel.$field.$op(n, Relaxed);
        if let Some(e) = &$self.endpoint {
            e.$field.$op(n, Relaxed);
        }
    }};
}

impl Meter {
    /// Counters for a new tunnel of `endpoint` (which counts it as open).
    pub(crate) fn tunnel(endpoint: Option<Arc<Counters>>) -> Self {
        if let Some(e) = &endpoint {
            e.tunnels_open.fetch_add(1, Relaxed);
            e.tunnels_total.fetch_add(1, Relaxed);
        }
        Self {
            tunnel: Arc::new(Counters::default()),
            endpoint,
            closed: Arc::default(),
        }
    }

    /// The tunnel ended (or never opened); counted once however often called.
    pub(crate) fn tunnel_closed(&self) {
        if self.closed.swap(true, Relaxed) {
            return;
        }
        if let Some(e) = &self.endpoint {
            e.tunnels_open.fetch_sub(1, Relaxed);
        }
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.tunnel
    }

    pub(crate) fn stream_opened(&self) {
        both!(self, streams_open, fetch_add, 1);
        both!(self, streams_total, fetch_add, 1);
    }

    pub(crate) fn stream_closed(&self) {
        both!(self, streams_open, fetch_sub, 1);
    }

    /// A data frame went out; `start` if it began a message.
    pub(crate) fn sent(&self, len: usize, start: bool) {
        both!(self, bytes_sent, fetch_add, len as u64);
        if start {
            both!(self, messages_sent, fetch_add, 1);
        }
    }

    /// A data frame came in; `start` if it began a message.
    pub(crate) fn received(&self, len: usize, start: bool) {
        both!(self, bytes_received, fetch_add, len as u64);
        if start {
            both!(self, messages_received, fetch_add, 1);
        }
    }

    /// A revision-zero tunnel stopped reading for a slow consumer.
    pub(crate) fn read_paused(&self) {
        both!(self, reads_paused, fetch_add, 1);
    }

    pub(crate) fn protocol_error(&self) {
        both!(self, protocol_errors, fetch_add, 1);
    }

    /// Metadata values of these keys were left out (a `-bin` value the
    /// peer cannot carry, or a peer's value no HTTP/2 header can hold):
    /// counted, and the first drop of each key in this process is logged
    /// (64 keys at most, so a peer cannot flood the log).
    pub(crate) fn metadata_dropped(&self, keys: &[String]) {
        if keys.is_empty() {
            return;
        }
        both!(self, metadata_dropped, fetch_add, keys.len() as u64);
        static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut warned = WARNED.lock().unwrap_or_else(|p| p.into_inner());
        for key in keys {
            if warned.len() < 64 && !warned.contains(key) {
                warned.push(key.clone());
                tracing::warn!(
                    key = %key,
                    "dropping a metadata value the other side cannot carry: a binary value that is not UTF-8 for a raw peer, or a key or value that is not a valid HTTP/2 header (further drops of this key are only counted in Stats::metadata_dropped)"
                );
            }
        }
    }

    pub(crate) fn blocked(&self, d: Duration) {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        both!(self, blocked_nanos, fetch_add, nanos);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_counts_roll_up_to_the_endpoint() {
        let endpoint = Arc::new(Counters::default());
        let a = Meter::tunnel(Some(endpoint.clone()));
        let b = Meter::tunnel(Some(endpoint.clone()));
        a.stream_opened();
        a.sent(100, true);
        a.sent(50, false);
        b.received(7, true);
        b.protocol_error();
        a.stream_closed();
        b.tunnel_closed();
        let e = endpoint.snapshot();
        assert_eq!((e.tunnels_open, e.tunnels_total), (1, 2));
        assert_eq!((e.streams_open, e.streams_total), (0, 1));
        assert_eq!((e.messages_sent, e.bytes_sent), (1, 150));
        assert_eq!((e.messages_received, e.bytes_received), (1, 7));
        assert_eq!(e.protocol_errors, 1);
        let a = a.counters().snapshot();
        assert_eq!((a.bytes_sent, a.bytes_received), (150, 0));
    }
}
