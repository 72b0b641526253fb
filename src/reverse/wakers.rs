//! Waking the calls that wait for a key: one `Notify` per key someone waits
//! for, so that a tunnel of one key wakes only the calls waiting for that
//! key (with 10,000 calls waiting for as many keys, one wake-up each, not
//! 10,000 per new tunnel; in a cluster each wake-up is a directory lookup).
//! Calls waiting for any tunnel wait on the registry's own `Notify`, which
//! every change wakes.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, Weak},
};

use tokio::sync::Notify;

/// The `Notify` of each key waited for, while someone waits.
pub(crate) struct Wakers<K> {
    keys: Mutex<HashMap<K, Weak<Notify>>>,
}

impl<K> Default for Wakers<K> {
    fn default() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Clone + Eq + Hash> Wakers<K> {
    /// The `Notify` a call waiting for `key` waits on; keep it while
    /// waiting.
    pub(crate) fn of(&self, key: &K) -> Arc<Notify> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = keys.get(key).and_then(Weak::upgrade) {
            return notify;
        }
        // Forget the keys nobody waits for any more, now and then: the map
        // stays within twice the keys waited for.
        if keys.len() >= 64 && keys.len().is_power_of_two() {
            keys.retain(|_, w| w.strong_count() > 0);
        }
        let notify = Arc::new(Notify::new());
        keys.insert(key.clone(), Arc::downgrade(&notify));
        notify
    }

    /// Wakes the calls waiting for `key`.
    pub(crate) fn wake<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(notify) = keys.get(key).and_then(Weak::upgrade) {
            notify.notify_waiters();
        }
    }

    /// Keys in the map (some may have no waiter left).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_wakes_only_its_own_waiters() {
        let wakers = Wakers::<String>::default();
        let a = wakers.of(&"a".to_owned());
        let b = wakers.of(&"b".to_owned());
        let woken_a = a.notified();
        let woken_b = b.notified();
        tokio::pin!(woken_a, woken_b);
        woken_a.as_mut().enable();
        woken_b.as_mut().enable();
        wakers.wake("a");
        assert!(futures_util::FutureExt::now_or_never(woken_a).is_some());
        assert!(futures_util::FutureExt::now_or_never(woken_b).is_none());
    }

    #[test]
    fn keys_nobody_waits_for_are_forgotten() {
        let wakers = Wakers::<u32>::default();
        for i in 0..10_000 {
            drop(wakers.of(&i));
        }
        assert!(wakers.len() <= 128, "{}", wakers.len());
    }
}
