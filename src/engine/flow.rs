//! Flow control (revision one, P-48 to P-53): the only place that counts
//! windows and credit.
//!
//! Each direction of each stream has a window. The sender spends its
//! [`SendWindow`] on data bytes and is topped up by the peer's
//! `window_update` frames; the receiver charges every data frame to its
//! [`RecvWindow`] (a peer that sends past it breaks the protocol, P-51) and
//! credits bytes back once its consumer has taken them (P-52), in batches of
//! half the window, and never after the stream can receive no more (P-53).
//! Revision-zero streams have no windows: a send window is then unlimited
//! and there is no receive window at all.
//!
//! Pure accounting: no I/O, no runtime, no frames. The engine's
//! [`stream`](super::stream) applies it and sends what it returns.

use std::sync::atomic::{AtomicI64, Ordering};

/// What a stream may still send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SendWindow {
    /// Bytes the peer allows; `None` when the stream has no flow control.
    remaining: Option<i64>,
}

impl SendWindow {
    /// A window of `initial` bytes, or an unlimited one (`None`, revision
    /// zero).
    pub(crate) fn new(initial: Option<u32>) -> Self {
        Self {
            remaining: initial.map(i64::from),
        }
    }

    /// Whether data may be sent now.
    pub(crate) fn is_open(&self) -> bool {
        self.remaining.is_none_or(|w| w > 0)
    }

    /// How many bytes the next chunk may carry, at most `max_chunk`.
    pub(crate) fn allowed(&self, max_chunk: usize) -> usize {
        match self.remaining {
            None => max_chunk,
            Some(w) => usize::try_from(w).unwrap_or(0).min(max_chunk),
        }
    }

    /// Spends `len` bytes, which must be at most [`allowed`](Self::allowed).
    pub(crate) fn spend(&mut self, len: usize) {
        if let Some(w) = &mut self.remaining {
            *w = w.saturating_sub(i64::try_from(len).unwrap_or(i64::MAX));
        }
    }

    /// Adds the peer's credit from a `window_update` (saturating, as the Go
    /// reference does). Returns whether the window opened with it.
    pub(crate) fn grant(&mut self, n: u32) -> bool {
        let Some(w) = &mut self.remaining else {
            return false;
        };
        let was_open = *w > 0;
        *w = w.saturating_add(i64::from(n));
        !was_open && *w > 0
    }
}

/// A peer's data frame went past the receive window (P-51).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Overrun;

impl Overrun {
    /// The status the stream ends with: the text of P-51.
    pub(crate) fn to_status(self) -> tonic::Status {
        tonic::Status::resource_exhausted("flow control window exceeded")
    }
}

/// What the peer may still send on one stream, and the credit owed to it.
///
/// [`charge`](Self::charge) runs on the tunnel's reader and
/// [`release`](Self::release) on the stream's consumer, so the window is an
/// atomic; the credit not yet sent is the consumer's own ([`Credit`]).
#[derive(Debug)]
pub(crate) struct RecvWindow {
    remaining: AtomicI64,
    /// Credit is sent once this many bytes were consumed.
    threshold: u32,
}

/// Consumed bytes not yet credited back to the peer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credit(u32);

impl RecvWindow {
    /// The window advertised to the peer: `initial` bytes.
    pub(crate) fn new(initial: u32) -> Self {
        Self {
            remaining: AtomicI64::new(i64::from(initial)),
            threshold: (initial / 2).max(1),
        }
    }

    /// Charges a received data frame of `len` bytes.
    ///
    /// # Errors
    ///
    /// [`Overrun`] when the frame is larger than what the peer may still
    /// send; nothing is charged then.
    pub(crate) fn charge(&self, len: usize) -> Result<(), Overrun> {
        let len = i64::try_from(len).map_err(|_| Overrun)?;
        // Only the reader charges, so nothing else lowers the window between
        // the check and the subtraction.
        if len > self.remaining.load(Ordering::Acquire) {
            return Err(Overrun);
        }
        self.remaining.fetch_sub(len, Ordering::AcqRel);
        Ok(())
    }

    /// Records that the consumer took `len` bytes. Returns the credit to
    /// send in a `window_update`, once half the window is owed; none when no
    /// more data can arrive (P-53) or `len` is zero.
    pub(crate) fn release(
        &self,
        owed: &mut Credit,
        len: usize,
        more_may_arrive: bool,
    ) -> Option<u32> {
        if !more_may_arrive || len == 0 {
            return None;
        }
        owed.0 = owed
            .0
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        if owed.0 < self.threshold {
            return None;
        }
        let n = std::mem::take(&mut owed.0);
        self.remaining.fetch_add(i64::from(n), Ordering::AcqRel);
        Some(n)
    }

    /// What the peer may still send (for checks and tests).
    #[cfg_attr(not(any(test, feature = "fuzzing")), allow(dead_code))]
    pub(crate) fn remaining(&self) -> i64 {
        self.remaining.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn send_window_opens_and_closes() {
        let mut w = SendWindow::new(Some(10));
        assert!(w.is_open());
        assert_eq!(w.allowed(4), 4);
        assert_eq!(w.allowed(100), 10);
        w.spend(10);
        assert!(!w.is_open());
        assert_eq!(w.allowed(100), 0);
        assert!(w.grant(5), "a closed window opens");
        assert!(!w.grant(5), "an open one stays open");
        assert_eq!(w.allowed(100), 10);
        assert!(!w.grant(0));
    }

    #[test]
    fn send_window_saturates_and_revision_zero_is_unlimited() {
        let mut w = SendWindow::new(Some(u32::MAX));
        for _ in 0..10 {
            w.grant(u32::MAX);
        }
        assert_eq!(
            w.allowed(usize::MAX),
            11 * u32::MAX as usize,
            "windows add up past u32"
        );
        w.spend(usize::MAX);
        assert!(!w.is_open(), "spending saturates instead of wrapping");
        let mut unlimited = SendWindow::new(None);
        unlimited.spend(usize::MAX);
        assert!(unlimited.is_open());
        assert_eq!(unlimited.allowed(16384), 16384);
        assert!(!unlimited.grant(1));
    }

    #[test]
    fn receive_window_overrun_and_credit() {
        let w = RecvWindow::new(100);
        let mut owed = Credit::default();
        assert_eq!(w.charge(100), Ok(()));
        assert_eq!(w.charge(1), Err(Overrun), "P-51");
        assert_eq!(w.release(&mut owed, 49, true), None, "below half");
        assert_eq!(w.release(&mut owed, 1, true), Some(50));
        assert_eq!(w.remaining(), 50);
        assert_eq!(w.release(&mut owed, 50, false), None, "P-53");
        assert_eq!(w.release(&mut owed, 0, true), None);
        assert_eq!(
            Overrun.to_status().message(),
            "flow control window exceeded"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Receive(usize),
        Consume(usize),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// A peer that honours its credit never overruns, the window never
        /// goes negative, and the credit sent never exceeds what was consumed.
        #[test]
        fn receive_window_accounting(initial in 1u32..5000, ops in proptest::collection::vec(
            prop_oneof![(0usize..3000).prop_map(Op::Receive), (0usize..3000).prop_map(Op::Consume)], 0..64)
        ) {
            let w = RecvWindow::new(initial);
            let mut owed = Credit::default();
            let (mut received, mut consumed, mut credited) = (0u64, 0u64, 0u64);
            // What the peer believes it may send: initial plus credit.
            let mut peer_window = i64::from(initial);
            for op in ops {
                match op {
                    Op::Receive(len) => {
                        let fits = (len as i64) <= peer_window;
                        prop_assert_eq!(w.charge(len).is_ok(), fits);
                        if fits {
                            peer_window -= len as i64;
                            received += len as u64;
                        }
                    }
                    Op::Consume(len) => {
                        let len = len.min((received - consumed) as usize);
                        consumed += len as u64;
                        if let Some(n) = w.release(&mut owed, len, true) {
                            credited += u64::from(n);
                            peer_window += i64::from(n);
                        }
                    }
                }
                prop_assert!(w.remaining() >= 0);
                prop_assert_eq!(w.remaining(), peer_window);
                prop_assert!(credited <= consumed);
            }
        }
    }
}
