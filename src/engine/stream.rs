//! State shared by the tasks that touch one tunneled stream.
//!
//! Three parties meet here: the tunnel's reader task (which dispatches
//! inbound frames and window updates), the tunnel's writer (which cuts queued
//! messages into chunks as the send window allows), and the stream's own
//! producer and consumer (a request pump and a response body on the client
//! side, a handler task and a request body on the server side). Each stream
//! has its own two small locks; nothing here is shared between streams, so no
//! lock is held across the tunnel per frame.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use bytes::Bytes;

use crate::{
    engine::{
        flow::{Credit, Overrun, RecvWindow, SendWindow},
        stats::Meter,
        writer::{Core, Source},
    },
    pb,
    wire::frame::OutFrame,
};

/// Most bytes a producer may queue on a stream before it waits for the
/// writer, on top of what the send window lets through.
const QUEUE_HIGH_WATER: usize = 256 * 1024;

/// What a stream's producer queues for the writer.
#[derive(Debug)]
pub(crate) enum Item<F> {
    /// A non-data frame that must keep its place among the stream's data
    /// (`response_headers`, `close_stream`, `half_close`).
    Frame(F),
    /// The start of a message: its full size and its first bytes.
    Start { size: u32, data: Bytes },
    /// More bytes of the current message.
    More(Bytes),
}

/// What the reader delivers to a stream's consumer.
#[derive(Debug)]
pub(crate) enum Event {
    /// Response headers (client side).
    Headers(pb::Metadata),
    /// An envelope: the message size and its first chunk.
    Start { size: u32, data: Bytes },
    /// A continuation chunk.
    More(Bytes),
    /// End of the peer's data: `half_close` on the server side (`None`),
    /// `close_stream` on the client side.
    End(Option<pb::CloseStream>),
    /// The stream failed locally (deadline, violation, tunnel gone).
    Fail(tonic::Status),
}

#[derive(Debug)]
struct SendState<F> {
    queue: VecDeque<Item<F>>,
    /// Data bytes in `queue`.
    queued: usize,
    /// What the peer lets this stream send.
    window: SendWindow,
    /// The stream is in the writer's ring (or on its way there).
    scheduled: bool,
    /// Nothing more will be written for this stream.
    closed: bool,
    /// The stream reached its end (close seen or sent, cancel sent).
    finished: bool,
    /// The server queued `response_headers`.
    headers_sent: bool,
    /// Since when the stream has had data but no window.
    blocked_since: Option<std::time::Instant>,
    /// The last frame is queued: tell the reader to forget the stream once
    /// it is written (until then window updates must still reach it).
    forget_when_drained: bool,
    producer: Option<Waker>,
}

#[derive(Debug)]
struct RecvState {
    queue: VecDeque<Event>,
    consumer: Option<Waker>,
    /// Consumed bytes not credited back yet.
    owed: Credit,
    /// No more data can arrive (end or failure queued).
    ended: bool,
    /// Data bytes queued for the consumer.
    buffered: usize,
    /// The consumer is gone: arriving data is dropped.
    abandoned: bool,
    /// The reader, waiting for the consumer to catch up (revision zero).
    reader: Option<Waker>,
}

/// One tunneled stream, as seen by every task that touches it.
#[derive(Debug)]
pub(crate) struct Stream<F> {
    id: i64,
    core: Arc<Core<F>>,
    /// What the peer may still send: `None` on revision-zero streams.
    recv_window: Option<RecvWindow>,
    send: Mutex<SendState<F>>,
    recv: Mutex<RecvState>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; the
    // state is still consistent enough to tear the stream down.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<F: OutFrame> Stream<F> {
    /// A stream with `send_window` bytes of initial credit and
    /// `recv_window` bytes advertised to the peer; `None` for no flow control.
    pub(crate) fn new(
        id: i64,
        core: Arc<Core<F>>,
        send_window: Option<u32>,
        recv_window: Option<u32>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            core,
            recv_window: recv_window.map(RecvWindow::new),
            send: Mutex::new(SendState {
                queue: VecDeque::new(),
                queued: 0,
                window: SendWindow::new(send_window),
                scheduled: false,
                closed: false,
                finished: false,
                headers_sent: false,
                forget_when_drained: false,
                blocked_since: None,
                producer: None,
            }),
            recv: Mutex::new(RecvState {
                queue: VecDeque::new(),
                consumer: None,
                owed: Credit::default(),
                ended: false,
                buffered: 0,
                abandoned: false,
                reader: None,
            }),
        })
    }

    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    pub(crate) fn core(&self) -> &Arc<Core<F>> {
        &self.core
    }

    // ----- send side -------------------------------------------------------

    /// Whether the producer may queue more: `Ready(true)` when there is room,
    /// `Ready(false)` when the stream is closed for sending.
    pub(crate) fn poll_capacity(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut st = lock(&self.send);
        if st.closed {
            return Poll::Ready(false);
        }
        if st.queued < QUEUE_HIGH_WATER {
            return Poll::Ready(true);
        }
        st.producer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Resolves once the stream is closed for sending.
    pub(crate) fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = lock(&self.send);
        if st.closed {
            return Poll::Ready(());
        }
        st.producer = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Queues an item; `false` if the stream no longer sends.
    pub(crate) fn push(self: &Arc<Self>, item: Item<F>) -> bool {
        let mut st = lock(&self.send);
        if st.closed {
            return false;
        }
        if let Item::Start { data, .. } | Item::More(data) = &item {
            st.queued += data.len();
        }
        st.queue.push_back(item);
        self.schedule(&mut st);
        true
    }

    /// Queues `response_headers` unless they were queued already; returns
    /// whether this call queued them.
    pub(crate) fn push_headers_once(self: &Arc<Self>, make: impl FnOnce() -> F) -> bool {
        let mut st = lock(&self.send);
        if st.closed || st.headers_sent {
            return false;
        }
        st.headers_sent = true;
        st.queue.push_back(Item::Frame(make()));
        self.schedule(&mut st);
        true
    }

    /// Queues the stream's last frames and closes it for sending. The
    /// `headers` frame is queued first if no headers were queued yet. The
    /// reader is told to forget the stream once the last frame is written.
    /// Returns `false` if the stream had already finished.
    pub(crate) fn push_final(self: &Arc<Self>, headers: impl FnOnce() -> F, last: F) -> bool {
        let mut st = lock(&self.send);
        if st.closed || st.finished {
            return false;
        }
        if !st.headers_sent {
            st.headers_sent = true;
            st.queue.push_back(Item::Frame(headers()));
        }
        st.queue.push_back(Item::Frame(last));
        st.finished = true;
        st.closed = true;
        st.forget_when_drained = true;
        self.schedule(&mut st);
        if let Some(w) = st.producer.take() {
            w.wake();
        }
        true
    }

    /// Stops sending: drops queued items and wakes the producer. Returns
    /// whether the stream had not finished yet (and now has).
    pub(crate) fn finish(&self) -> bool {
        let mut st = lock(&self.send);
        let was_finished = st.finished;
        st.finished = true;
        if !st.closed {
            st.closed = true;
            st.queue = VecDeque::new();
            st.queued = 0;
        }
        if let Some(w) = st.producer.take() {
            w.wake();
        }
        !was_finished
    }

    /// Adds credit from a `window_update` (saturating; B-13).
    pub(crate) fn add_window(self: &Arc<Self>, n: u32) {
        let mut st = lock(&self.send);
        if st.window.grant(n) {
            if let Some(since) = st.blocked_since.take() {
                self.core.meter.blocked(since.elapsed());
            }
        }
        self.schedule(&mut st);
    }

    fn schedule(self: &Arc<Self>, st: &mut SendState<F>) {
        if !st.scheduled && sendable(st) {
            st.scheduled = true;
            self.core.schedule(self.clone() as Arc<dyn Source<F>>);
        }
    }

    /// Takes the next frame to write (called by the writer). Returns the
    /// frame, if any, and whether the stream should stay in the ring.
    fn take_next(&self, max_chunk: usize) -> (Option<F>, bool) {
        let mut st = lock(&self.send);
        let frame = take_frame(&mut st, self.id, max_chunk, &self.core.meter);
        if !st.window.is_open()
            && st.blocked_since.is_none()
            && !st.queue.is_empty()
            && !sendable(&st)
        {
            tracing::debug!(
                stream_id = self.id,
                queued = st.queued,
                "flow control stall"
            );
            st.blocked_since = Some(std::time::Instant::now());
        }
        if st.forget_when_drained && st.queue.is_empty() {
            st.forget_when_drained = false;
            self.core.forget(self.id);
        }
        let again = sendable(&st);
        if !again {
            st.scheduled = false;
        }
        if st.queued < QUEUE_HIGH_WATER {
            if let Some(w) = st.producer.take() {
                w.wake();
            }
        }
        (frame, again)
    }

    // ----- receive side ----------------------------------------------------

    /// Checks a data frame of `len` bytes against the receive window and
    /// charges it (reader side, P-51).
    pub(crate) fn charge_recv(&self, len: usize) -> Result<(), Overrun> {
        match &self.recv_window {
            Some(window) => window.charge(len),
            None => Ok(()),
        }
    }

    /// Delivers an event to the consumer. Events after the end are dropped.
    pub(crate) fn deliver(&self, event: Event) {
        let mut st = lock(&self.recv);
        if st.ended || st.abandoned {
            return;
        }
        match &event {
            Event::End(_) | Event::Fail(_) => st.ended = true,
            Event::Start { data, .. } | Event::More(data) => st.buffered += data.len(),
            Event::Headers(_) => {}
        }
        st.queue.push_back(event);
        if let Some(w) = st.consumer.take() {
            w.wake();
        }
    }

    /// Replaces whatever is queued with a failure (the stream is torn down).
    pub(crate) fn fail(&self, status: tonic::Status) {
        let mut st = lock(&self.recv);
        if st.ended {
            return;
        }
        st.ended = true;
        st.queue.push_back(Event::Fail(status));
        if let Some(w) = st.consumer.take() {
            w.wake();
        }
    }

    /// Takes the next event, crediting consumed data back to the peer.
    pub(crate) fn poll_event(&self, cx: &mut Context<'_>) -> Poll<Event> {
        let mut st = lock(&self.recv);
        match st.queue.pop_front() {
            Some(event) => {
                release_if_empty(&mut st.queue);
                if let Event::Start { data, .. } | Event::More(data) = &event {
                    st.buffered -= data.len();
                    self.credit(&mut st, data.len());
                    if let Some(w) = st.reader.take() {
                        w.wake();
                    }
                }
                Poll::Ready(event)
            }
            None => {
                st.consumer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The consumer will read no more: queued and arriving data is dropped,
    /// and a reader waiting for it to catch up is released.
    pub(crate) fn abandon(&self) {
        let mut st = lock(&self.recv);
        st.abandoned = true;
        st.queue = VecDeque::new();
        st.buffered = 0;
        if let Some(w) = st.reader.take() {
            w.wake();
        }
    }

    /// Whether this is a revision-zero stream (no window bounds what it
    /// buffers) with more than `limit` data bytes waiting for the consumer.
    pub(crate) fn over_buffer(&self, limit: usize) -> bool {
        self.recv_window.is_none() && lock(&self.recv).buffered > limit
    }

    /// Resolves once at most half of `limit` bytes wait for the consumer (or
    /// it is gone): how a revision-zero tunnel pauses its reads.
    pub(crate) fn poll_caught_up(&self, cx: &mut Context<'_>, limit: usize) -> Poll<()> {
        let mut st = lock(&self.recv);
        if st.abandoned || st.buffered <= limit / 2 {
            return Poll::Ready(());
        }
        st.reader = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Looks at the next event without taking it.
    pub(crate) fn poll_peek<R>(
        &self,
        cx: &mut Context<'_>,
        f: impl FnOnce(&Event) -> R,
    ) -> Poll<R> {
        let mut st = lock(&self.recv);
        match st.queue.front() {
            Some(event) => Poll::Ready(f(event)),
            None => {
                st.consumer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn credit(&self, st: &mut RecvState, len: usize) {
        let Some(window) = &self.recv_window else {
            return;
        };
        // P-53: no credit once no more data can arrive.
        if let Some(n) = window.release(&mut st.owed, len, !st.ended) {
            self.core.send_control(F::window_update(self.id, n));
        }
    }
}

impl<F: OutFrame> Source<F> for Stream<F> {
    fn next_frame(&self, max_chunk: usize) -> (Option<F>, bool) {
        self.take_next(max_chunk)
    }
}

fn sendable<F>(st: &SendState<F>) -> bool {
    match st.queue.front() {
        None => false,
        Some(Item::Frame(_)) => true,
        Some(Item::Start { data, .. } | Item::More(data)) => data.is_empty() || st.window.is_open(),
    }
}

fn take_frame<F: OutFrame>(
    st: &mut SendState<F>,
    id: i64,
    max_chunk: usize,
    meter: &Meter,
) -> Option<F> {
    if !sendable(st) {
        return None;
    }
    let allowed = st.window.allowed(max_chunk);
    let frame = take_item(st, id, allowed, meter);
    release_if_empty(&mut st.queue);
    frame
}

fn take_item<F: OutFrame>(
    st: &mut SendState<F>,
    id: i64,
    allowed: usize,
    meter: &Meter,
) -> Option<F> {
    match st.queue.pop_front()? {
        Item::Frame(f) => Some(f),
        Item::Start { size, mut data } => {
            let chunk = cut(&mut data, allowed);
            charge(st, chunk.len());
            meter.sent(chunk.len(), true);
            if !data.is_empty() {
                st.queue.push_front(Item::More(data));
            }
            Some(F::envelope(id, size, chunk))
        }
        Item::More(mut data) => {
            let chunk = cut(&mut data, allowed);
            charge(st, chunk.len());
            meter.sent(chunk.len(), false);
            if !data.is_empty() {
                st.queue.push_front(Item::More(data));
            }
            Some(F::more(id, chunk))
        }
    }
}

/// Frees an emptied queue's buffer, so that an idle stream holds no queue
/// memory: a tunnel may keep many thousands of streams open and idle.
pub(crate) fn release_if_empty<T>(queue: &mut VecDeque<T>) {
    if queue.is_empty() && queue.capacity() != 0 {
        *queue = VecDeque::new();
    }
}

fn cut(data: &mut Bytes, allowed: usize) -> Bytes {
    if data.len() <= allowed {
        std::mem::take(data)
    } else {
        data.split_to(allowed)
    }
}

fn charge<F>(st: &mut SendState<F>, len: usize) {
    st.queued -= len;
    st.window.spend(len);
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use super::*;
    use crate::engine::stats::Meter;

    fn data(n: usize) -> Event {
        Event::More(Bytes::from(vec![0u8; n]))
    }

    #[test]
    fn revision_zero_stream_reports_when_its_consumer_must_catch_up() {
        let (core, _writer, _gone) = Core::<pb::ServerToClient>::new(Meter::default());
        let stream = Stream::new(1, core, None, None);
        let mut cx = Context::from_waker(Waker::noop());
        stream.deliver(data(600));
        assert!(!stream.over_buffer(1000));
        stream.deliver(data(600));
        assert!(stream.over_buffer(1000));
        assert!(stream.poll_caught_up(&mut cx, 1000).is_pending());
        assert!(matches!(
            stream.poll_event(&mut cx),
            Poll::Ready(Event::More(_))
        ));
        // 600 bytes left: above half the limit, still paused.
        assert!(stream.poll_caught_up(&mut cx, 1000).is_pending());
        assert!(matches!(
            stream.poll_event(&mut cx),
            Poll::Ready(Event::More(_))
        ));
        assert!(stream.poll_caught_up(&mut cx, 1000).is_ready());
    }

    #[test]
    fn abandoned_stream_drops_data_and_releases_the_reader() {
        let (core, _writer, _gone) = Core::<pb::ServerToClient>::new(Meter::default());
        let stream = Stream::new(1, core, None, None);
        let mut cx = Context::from_waker(Waker::noop());
        stream.deliver(data(5000));
        assert!(stream.poll_caught_up(&mut cx, 1000).is_pending());
        stream.abandon();
        assert!(stream.poll_caught_up(&mut cx, 1000).is_ready());
        stream.deliver(data(5000));
        assert!(!stream.over_buffer(1000));
    }

    #[test]
    fn flow_controlled_stream_is_bounded_by_its_window_not_by_pausing() {
        let (core, _writer, _gone) = Core::<pb::ServerToClient>::new(Meter::default());
        let stream = Stream::new(1, core, Some(100), Some(100));
        assert!(stream.charge_recv(100).is_ok());
        assert_eq!(stream.charge_recv(1), Err(Overrun), "window overrun");
        stream.deliver(data(100));
        assert!(!stream.over_buffer(10));
    }
}
