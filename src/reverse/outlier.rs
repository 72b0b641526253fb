//! Outlier ejection: a reverse tunnel whose agent fails calls at once with
//! server errors is left out of picking for a while, as Envoy's outlier
//! detection does for hosts. Least-outstanding picking favours whoever
//! answers fastest, and an agent that answers every call with
//! `UNAVAILABLE` at once (a broken agent, or whoever holds a leaked
//! token for the key) answers fastest of all: without ejection it would
//! draw most of its key's calls.
//!
//! - After [`FAILURES`] calls in a row failed before any answer with
//!   `UNKNOWN`, `INTERNAL`, `UNAVAILABLE` or `DATA_LOSS`, the tunnel is
//!   ejected for [`BASE`], doubled each time it is ejected again, up to
//!   [`LONGEST`]. An answered call resets the count.
//! - The last tunnels of a key are never all left out: when every tunnel
//!   is ejected, picking uses them all, as if none were.

use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use tracing::warn;

use crate::client::TunnelChannel;

/// Failures in a row that eject a tunnel.
pub(crate) const FAILURES: u32 = 5;
/// How long a first ejection lasts.
pub(crate) const BASE: Duration = Duration::from_secs(10);
/// The longest ejection.
pub(crate) const LONGEST: Duration = Duration::from_secs(300);

/// One tunnel's ejections.
#[derive(Debug, Default)]
pub(crate) struct Ejection {
    /// Ejected until then (ms since [`epoch`]); 0: never.
    until: AtomicU64,
    /// How often it was ejected.
    count: AtomicU32,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

impl Ejection {
    /// Whether the tunnel on `channel` may be picked now; ejects it first
    /// if it failed [`FAILURES`] calls in a row.
    pub(crate) fn available(&self, channel: &TunnelChannel, id: u64) -> bool {
        let now = now_ms();
        if now < self.until.load(Ordering::Relaxed) {
            return false;
        }
        let failures = channel.consecutive_failures();
        if failures < FAILURES {
            return true;
        }
        let count = self.count.fetch_add(1, Ordering::Relaxed);
        let length = BASE.saturating_mul(1 << count.min(10)).min(LONGEST);
        self.until
            .store(now + length.as_millis() as u64, Ordering::Relaxed);
        channel.take_failures();
        warn!(
            tunnel = id,
            failures,
            ejected_for = ?length,
            "reverse tunnel left out of picking: its calls fail at once"
        );
        false
    }

    /// Whether the tunnel is ejected now.
    pub(crate) fn is_ejected(&self) -> bool {
        now_ms() < self.until.load(Ordering::Relaxed)
    }
}
