//! The calls of the last minute, per key and method: counts by status,
//! latency buckets, bytes. The admin API's `Stats` (and the dashboard)
//! read them; Prometheus gets the same calls as counters and histograms
//! since the start (`metrics.rs`).
//!
//! A minute is six slots of ten seconds, each reused once it is a minute
//! old; quantiles are read off the summed buckets, as Prometheus'
//! `histogram_quantile` reads them (linear within a bucket).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Latency histogram buckets, in seconds: 0.5 ms to 60 s (also the
/// Prometheus histogram's).
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Seconds one slot covers.
const SLOT: Duration = Duration::from_secs(10);
/// Slots in the window.
const SLOTS: usize = 6;
/// The window the figures cover, in seconds.
pub(crate) const WINDOW_SECS: u32 = (SLOT.as_secs() as u32) * SLOTS as u32;
/// Most key/method pairs kept: label values are bounded already (keys by
/// the config, methods to 1,000), this bounds their product.
const MAX_SERIES: usize = 10_000;

/// What one call did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call<'a> {
    pub(crate) key: &'a str,
    pub(crate) method: &'a str,
    /// The gRPC code's name (`OK`, `Unavailable`, ...).
    pub(crate) code: &'static str,
    pub(crate) seconds: f64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
}

/// The figures of one key and method over the window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Summary {
    pub(crate) key: String,
    pub(crate) method: String,
    /// Calls by code name, by name.
    pub(crate) codes: Vec<(&'static str, u64)>,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
}

/// The windowed figures of every key and method.
#[derive(Debug)]
pub(crate) struct CallStats {
    start: Instant,
    /// Key -> method -> slots.
    series: Mutex<HashMap<String, HashMap<String, Series>>>,
}

impl Default for CallStats {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            series: Mutex::default(),
        }
    }
}

#[derive(Debug, Default)]
struct Series {
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default, Clone)]
struct Slot {
    /// Which ten seconds since the start this slot holds.
    epoch: u64,
    codes: Vec<(&'static str, u64)>,
    buckets: [u64; LATENCY_BUCKETS.len() + 1],
    bytes_received: u64,
    bytes_sent: u64,
}

impl Slot {
    fn add(&mut self, other: &Slot) {
        for (code, n) in &other.codes {
            count(&mut self.codes, code, *n);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *mine += theirs;
        }
        self.bytes_received += other.bytes_received;
        self.bytes_sent += other.bytes_sent;
    }
}

fn count(codes: &mut Vec<(&'static str, u64)>, code: &'static str, n: u64) {
    match codes.iter_mut().find(|(c, _)| *c == code) {
        Some((_, m)) => *m += n,
        None => codes.push((code, n)),
    }
}

impl Series {
    /// Counts `call` in the slot of `epoch`.
    fn add(&mut self, epoch: u64, call: &Call<'_>) {
        let slot = &mut self.slots[(epoch % SLOTS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slot {
                epoch,
                ..Slot::default()
            };
        }
        count(&mut slot.codes, call.code, 1);
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| call.seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        slot.buckets[bucket] += 1;
        slot.bytes_received += call.bytes_received;
        slot.bytes_sent += call.bytes_sent;
    }

    /// Whether every slot is older than the window at `epoch`.
    fn stale(&self, epoch: u64) -> bool {
        self.slots
            .iter()
            .all(|s| s.codes.is_empty() || s.epoch + (SLOTS as u64) <= epoch)
    }
}

impl CallStats {
    fn epoch(&self) -> u64 {
        self.start.elapsed().as_secs() / SLOT.as_secs()
    }

    /// Counts one call.
    pub(crate) fn record(&self, call: Call<'_>) {
        let epoch = self.epoch();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        // Known series (every call but a series' first): one lookup, no
        // allocation.
        if let Some(known) = series
            .get_mut(call.key)
            .and_then(|m| m.get_mut(call.method))
        {
            known.add(epoch, &call);
            return;
        }
        let total: usize = series.values().map(HashMap::len).sum();
        if total >= MAX_SERIES {
            for methods in series.values_mut() {
                methods.retain(|_, s| !s.stale(epoch));
            }
            series.retain(|_, m| !m.is_empty());
            if series.values().map(HashMap::len).sum::<usize>() >= MAX_SERIES {
                return;
            }
        }
        series
            .entry(call.key.to_owned())
            .or_default()
            .entry(call.method.to_owned())
            .or_default()
            .add(epoch, &call);
    }

    /// The figures of the last minute for keys starting with `prefix`,
    /// by key then method; stale pairs are forgotten.
    pub(crate) fn snapshot(&self, prefix: &str) -> Vec<Summary> {
        let epoch = self.epoch();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for methods in series.values_mut() {
            methods.retain(|_, s| !s.stale(epoch));
        }
        series.retain(|_, m| !m.is_empty());
        let mut out = Vec::new();
        for (key, methods) in series.iter().filter(|(k, _)| k.starts_with(prefix)) {
            for (method, s) in methods {
                let mut sum = Slot::default();
                for slot in s
                    .slots
                    .iter()
                    .filter(|slot| slot.epoch + (SLOTS as u64) > epoch)
                {
                    sum.add(slot);
                }
                if sum.codes.is_empty() {
                    continue;
                }
                sum.codes.sort_unstable();
                out.push(Summary {
                    key: key.clone(),
                    method: method.clone(),
                    p50: quantile(&sum.buckets, 0.5),
                    p99: quantile(&sum.buckets, 0.99),
                    codes: sum.codes,
                    bytes_received: sum.bytes_received,
                    bytes_sent: sum.bytes_sent,
                });
            }
        }
        out.sort_by(|a, b| (&a.key, &a.method).cmp(&(&b.key, &b.method)));
        out
    }
}

/// The `q` quantile of bucket counts (over [`LATENCY_BUCKETS`] and one
/// past the last), linear within its bucket; 0 with no call.
fn quantile(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = q * total as f64;
    let mut seen = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (seen + n) as f64 >= rank {
            let Some(hi) = LATENCY_BUCKETS.get(i) else {
                // Past the last bound: that bound is all that is known.
                return LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1];
            };
            let lo = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = (rank - seen as f64) / *n as f64;
            return lo + (hi - lo) * within.clamp(0.0, 1.0);
        }
        seen += n;
    }
    LATENCY_BUCKETS[LATENCY_BUCKETS.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(key: &'static str, code: &'static str, seconds: f64) -> Call<'static> {
        Call {
            key,
            method: "/a.B/C",
            code,
            seconds,
            bytes_received: 10,
            bytes_sent: 20,
        }
    }

    #[test]
    fn the_window_counts_codes_bytes_and_quantiles_per_key() {
        let stats = CallStats::default();
        for _ in 0..98 {
            stats.record(call("k1", "OK", 0.002));
        }
        stats.record(call("k1", "Unavailable", 0.002));
        stats.record(call("k1", "OK", 20.0));
        stats.record(call("k2", "OK", 0.0001));
        let all = stats.snapshot("");
        assert_eq!(all.len(), 2);
        let k1 = &all[0];
        assert_eq!(k1.key, "k1");
        assert_eq!(k1.codes, vec![("OK", 99), ("Unavailable", 1)]);
        assert_eq!((k1.bytes_received, k1.bytes_sent), (1000, 2000));
        // 2 ms lies in the (1 ms, 2.5 ms] bucket.
        assert!(k1.p50 > 0.001 && k1.p50 <= 0.0025, "{}", k1.p50);
        assert!(k1.p99 > 0.001 && k1.p99 <= 0.0025, "{}", k1.p99);
        assert_eq!(stats.snapshot("k2").len(), 1);
        assert!(stats.snapshot("x").is_empty());
    }

    #[test]
    fn quantiles_read_the_buckets_as_prometheus_does() {
        let mut buckets = [0u64; LATENCY_BUCKETS.len() + 1];
        buckets[1] = 10; // (0.5 ms, 1 ms]
        assert!((quantile(&buckets, 0.5) - 0.00075).abs() < 1e-9);
        buckets[LATENCY_BUCKETS.len()] = 1000;
        assert_eq!(quantile(&buckets, 0.99), 60.0);
        assert_eq!(quantile(&[0; 3], 0.5), 0.0);
    }
}
