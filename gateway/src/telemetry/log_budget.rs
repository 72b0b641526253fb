//! Log lines an outsider can cause, rate-limited: each kind of line has a
//! budget of [`PER_SECOND`] lines a second; lines beyond it are not
//! written, and their number is added to the next line that is.
//!
//! A flood of bad credentials, connections beyond `--max-connections` or
//! watches beyond `--max-health-watches` then costs the operator a few
//! lines a second, not the disk; the metrics count every one.

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Most lines of one budget written in one second.
pub(crate) const PER_SECOND: u32 = 10;

/// One kind of line's budget: the second it counts, how many lines were
/// written in it, and how many were not since the last one written.
#[derive(Debug)]
pub(crate) struct LogBudget(Mutex<Option<(Instant, u32, u64)>>);

impl LogBudget {
    pub(crate) const fn new() -> Self {
        Self(Mutex::new(None))
    }

    /// Whether one more line may be written now: if so, how many lines were
    /// held back since the last one (to be named in it); if not, `None`,
    /// and this one is counted as held back.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut budget = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (since, written, held) = budget.get_or_insert((now, 0, 0));
        if now.duration_since(*since) >= Duration::from_secs(1) {
            (*since, *written) = (now, 0);
        }
        if *written >= PER_SECOND {
            *held += 1;
            return None;
        }
        *written += 1;
        Some(std::mem::take(held))
    }
}

/// The budget of lines about limits that refused something.
static LIMITS: LogBudget = LogBudget::new();

/// A limit refused something: counts it
/// (`grpctunnel_limit_hits_total{limit}`; `limit` names the flag, in
/// snake case) and logs `text` with the peer, within the budget.
pub(crate) fn limit_refused(limit: &'static str, peer: Option<SocketAddr>, text: &str) {
    crate::metrics::limit_hit(limit);
    let Some(held) = LIMITS.admit() else {
        return;
    };
    let peer = peer.map(|a| a.to_string()).unwrap_or_default();
    if held > 0 {
        tracing::warn!(
            %peer, limit, held,
            "{text} ({held} more lines about limits were not logged, beyond {PER_SECOND} a second)"
        );
    } else {
        tracing::warn!(%peer, limit, "{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_writes_ten_lines_a_second_and_names_the_rest_in_the_next() {
        let budget = LogBudget::new();
        let admitted: Vec<_> = (0..25).map(|_| budget.admit()).collect();
        assert_eq!(admitted.iter().filter(|a| a.is_some()).count(), 10);
        assert!(admitted[..10].iter().all(|a| *a == Some(0)));
        assert!(admitted[10..].iter().all(Option::is_none));
        // A second later the next line names the 15 held back.
        *budget.0.lock().expect("lock") = Some((Instant::now() - Duration::from_secs(1), 10, 15));
        assert_eq!(budget.admit(), Some(15));
        assert_eq!(budget.admit(), Some(0));
    }
}
