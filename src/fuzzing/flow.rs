//! The flow-control accounting, driven directly: a peer that honours the
//! credit it is given never overruns, no window goes negative, and credit is
//! never given for bytes not consumed.

use super::Input;
use crate::engine::flow::{Credit, RecvWindow, SendWindow};

/// Runs one sequence of sends, grants, receipts and consumption.
///
/// # Panics
///
/// When an invariant breaks.
pub fn flow(data: &[u8]) {
    let mut input = Input::new(data);
    let initial = input.u32() % (4 << 20) + 1;
    let max_chunk = usize::from(input.u16()) + 1;
    let mut send = SendWindow::new((!input.u8().is_multiple_of(8)).then_some(initial));
    let recv = RecvWindow::new(initial);
    let mut owed = Credit::default();
    // The model: what the peer believes it may send, and what it sent.
    let mut peer_window = i64::from(initial);
    let (mut received, mut consumed, mut credited) = (0u64, 0u64, 0u64);
    let mut ended = false;
    while !input.is_empty() {
        let (op, n) = (input.u8() % 5, input.u32());
        match op {
            0 => {
                // The writer takes a chunk: never more than allowed.
                let allowed = send.allowed(max_chunk);
                assert!(allowed <= max_chunk);
                assert_eq!(allowed > 0, send.is_open(), "open iff something may go");
                send.spend(allowed.min(n as usize));
                assert!(send.allowed(max_chunk) <= allowed);
            }
            1 => {
                let was_open = send.is_open();
                let opened = send.grant(n);
                assert_eq!(opened, !was_open && send.is_open());
            }
            2 => {
                // The peer sends what it may, or one byte too many.
                let len = if n % 7 == 0 {
                    usize::try_from(peer_window + 1).unwrap_or(0)
                } else {
                    usize::try_from(i64::from(n) % (peer_window + 1)).unwrap_or(0)
                };
                let fits = i64::try_from(len).is_ok_and(|l| l <= peer_window);
                assert_eq!(
                    recv.charge(len).is_ok(),
                    fits,
                    "charge of {len} with {peer_window} left"
                );
                if fits {
                    peer_window -= len as i64;
                    received += len as u64;
                }
            }
            3 => {
                let len = (u64::from(n) % (received - consumed + 1)) as usize;
                consumed += len as u64;
                if let Some(credit) = recv.release(&mut owed, len, !ended) {
                    assert!(credit > 0 && !ended);
                    credited += u64::from(credit);
                    peer_window += i64::from(credit);
                }
            }
            _ => ended = true,
        }
        assert!(recv.remaining() >= 0, "receive window below zero");
        assert_eq!(
            recv.remaining(),
            peer_window,
            "the two ends disagree on the window"
        );
        assert!(credited <= consumed, "credit for bytes not consumed");
    }
}
