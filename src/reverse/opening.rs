//! Tunnels accepted but not ready yet: an agent whose `OpenReverseTunnel`
//! the server answered already counts itself connected, while the server
//! still waits for its `Settings` (P-73) before publishing the tunnel. A
//! call for its key in that moment waits for the tunnel (briefly) rather
//! than failing `UNAVAILABLE`.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

use crate::reverse::ReverseTunnelRegistry;

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

/// One tunnel opening: counted until dropped (after it joined the
/// registry, or failed); dropping it wakes the calls waiting on it.
pub(crate) struct Opening<K: Clone + Eq + Hash + Send + Sync + 'static> {
    registry: ReverseTunnelRegistry<K>,
    key: Option<K>,
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> ReverseTunnelRegistry<K> {
    /// Counts a tunnel of `key` as opening until the guard drops.
    pub(crate) fn opening(&self, key: K) -> Opening<K> {
        let mut counts = self
            .openings()
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        *counts.0.entry(key.clone()).or_default() += 1;
        counts.1 += 1;
        drop(counts);
        Opening {
            registry: self.clone(),
            key: Some(key),
        }
    }

    /// Tunnels opening now: in all, and of `key`.
    pub(crate) fn opening_counts(&self, key: &K) -> (usize, usize) {
        let counts = self
            .openings()
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        (counts.1, counts.0.get(key).copied().unwrap_or(0))
    }

    /// Whether a tunnel of `key` (or any tunnel, for `None`) was accepted
    /// and is still opening (waiting for its `Settings`): its agent may
    /// count itself connected already, and a call through
    /// [`get`](Self::get) or [`channel`](Self::channel) waits for it.
    pub fn is_opening(&self, key: Option<&K>) -> bool {
        let counts = self
            .openings()
            .counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match key {
            Some(key) => counts.0.contains_key(key),
            None => counts.1 > 0,
        }
    }

    /// Waits up to [`OPENING_WAIT`] for a tunnel of `key` (or any) to be
    /// ready; `None` once none is opening any more, or the wait ran out.
    pub(crate) async fn wait_for_opening(
        &self,
        key: Option<&K>,
    ) -> Option<crate::reverse::ReverseTunnel<K>> {
        let wait = async {
            loop {
                let notify = self.waker(key);
                let added = notify.notified();
                tokio::pin!(added);
                added.as_mut().enable();
                if let Some(tunnel) = self.pick(key) {
                    return Some(tunnel);
                }
                if !self.is_opening(key) {
                    return None;
                }
                added.await;
            }
        };
        tokio::time::timeout(OPENING_WAIT, wait)
            .await
            .ok()
            .flatten()
    }
}

impl<K: Clone + Eq + Hash + Send + Sync + 'static> Drop for Opening<K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        {
            let mut counts = self
                .registry
                .openings()
                .counts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = counts.0.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    counts.0.remove(&key);
                }
            }
            counts.1 = counts.1.saturating_sub(1);
        }
        // Waiters look again: at the tunnel, or at no opening left.
        self.registry.wake_waiters(&key);
    }
}
