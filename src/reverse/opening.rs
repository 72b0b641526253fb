//! Tunnels accepted but not ready yet: an agent whose `OpenReverseTunnel`
//! the server answered already counts itself connected, while the server
//! still waits for its `Settings` (P-73) before publishing the tunnel. A
//! call for its key in that moment waits for the tunnel (briefly) rather
//! than failing `UNAVAILABLE`.
//!
//! This module only counts them, for the registry's limits and for
//! [`ReverseTunnelRegistry::is_opening`](crate::ReverseTunnelRegistry::is_opening);
//! the accept path holds an opening's count (`accept.rs`), a channel's
//! call waits for it (`channel.rs`).

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

/// The longest a call waits for a tunnel that is opening: a handshake is
/// one round trip; an agent that stalls in it does not hold calls longer.
pub(crate) const OPENING_WAIT: Duration = Duration::from_secs(5);

/// Tunnels opening now, by key, and in all.
pub(crate) struct Openings<K> {
    counts: Mutex<(HashMap<K, usize>, usize)>,
}

impl<K> Default for Openings<K> {
    fn default() -> Self {
        Self {
            counts: Mutex::new((HashMap::new(), 0)),
        }
    }
}

impl<K: Clone + Eq + Hash> Openings<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<K, usize>, usize)> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more tunnel of `key` opening.
    pub(crate) fn add(&self, key: &K) {
        let mut counts = self.lock();
        *counts.0.entry(key.clone()).or_default() += 1;
        counts.1 += 1;
    }

    /// One tunnel of `key` less opening (it joined the pools, or failed).
    pub(crate) fn remove(&self, key: &K) {
        let mut counts = self.lock();
        if let Some(n) = counts.0.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                counts.0.remove(key);
            }
        }
        counts.1 = counts.1.saturating_sub(1);
    }

    /// Tunnels opening now: in all, and of `key`.
    pub(crate) fn counts(&self, key: &K) -> (usize, usize) {
        let counts = self.lock();
        (counts.1, counts.0.get(key).copied().unwrap_or(0))
    }

    /// Whether a tunnel of `key` (or any, for `None`) is opening.
    pub(crate) fn is_opening(&self, key: Option<&K>) -> bool {
        let counts = self.lock();
        match key {
            Some(key) => counts.0.contains_key(key),
            None => counts.1 > 0,
        }
    }
}
