//! The cluster directory at scale (`--cluster`): `--keys` keys (100,000)
//! published in a fresh `redis-server` through the crate's
//! `RedisDirectory`, as simulated agents of other hubs would be, in
//! batches of 1,000 (as a hub renews its keys); then 10,000 lookups of
//! random keys, one at a time, as relayed calls do.
//!
//! - store memory per key: `INFO memory` `used_memory` after minus before,
//!   over the keys;
//! - publish: wall time of all the batches, over the keys;
//! - lookup p50 and p99: each lookup's latency (a Lua script on the store).

use std::time::{Duration, Instant};

use grpctunnel::cluster::{Directory, Entry, RedisDirectory};

use crate::{
    setups::{self, Scratch},
    stats,
};

/// Lookups measured.
const LOOKUPS: usize = 10_000;
/// Keys per publish.
const BATCH: usize = 1_000;

/// The directory's figures.
pub struct DirFigures {
    pub bytes_per_key: f64,
    pub publish_us_per_key: f64,
    pub lookup_p50_us: f64,
    pub lookup_p99_us: f64,
}

/// One measurement with `keys` keys, in a store of its own.
pub fn measure(
    rt: &tokio::runtime::Runtime,
    scratch: &Scratch,
    keys: usize,
) -> Result<DirFigures, String> {
    let store = setups::start_store(scratch)?;
    let before = setups::store_memory(&store)?;
    let url = format!("redis://127.0.0.1:{}", store.port);
    let (publish, lookups) = rt.block_on(async {
        let directory = RedisDirectory::open(&url).map_err(|e| e.to_string())?;
        let started = Instant::now();
        for first in (0..keys).step_by(BATCH) {
            let entries = (first..(first + BATCH).min(keys))
                .map(|i| {
                    let replica = format!("http://10.0.{}.{}:8443", i % 3, i % 250);
                    let mut entry = Entry::new(format!("agent-{i}"), replica, (i % 7) as u64);
                    // As long as a real seal: an expiry in ms and a MAC.
                    entry.seal = format!("1765000000000.{:043}", i);
                    entry
                })
                .collect();
            directory
                .publish(entries, Duration::from_secs(600))
                .await
                .map_err(|e| format!("publish: {e}"))?;
        }
        let publish = started.elapsed();
        let mut lookups = Vec::with_capacity(LOOKUPS);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..LOOKUPS {
            // xorshift: keys spread over the whole set.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = format!("agent-{}", x % keys as u64);
            let t = Instant::now();
            let found = directory
                .lookup(&key)
                .await
                .map_err(|e| format!("lookup: {e}"))?;
            lookups.push(t.elapsed().as_nanos() as u64);
            if found.len() != 1 {
                return Err(format!("{key}: {} entries, expected 1", found.len()));
            }
        }
        Ok::<_, String>((publish, lookups))
    })?;
    let after = setups::store_memory(&store)?;
    let mut lookups = lookups;
    lookups.sort_unstable();
    Ok(DirFigures {
        bytes_per_key: after.saturating_sub(before) as f64 / keys as f64,
        publish_us_per_key: publish.as_secs_f64() * 1e6 / keys as f64,
        lookup_p50_us: stats::percentile(&lookups, 0.50) as f64 / 1e3,
        lookup_p99_us: stats::percentile(&lookups, 0.99) as f64 / 1e3,
    })
}
