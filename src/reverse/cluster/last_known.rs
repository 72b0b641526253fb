//! Last-known routes: what a replica relays with when the directory cannot
//! say. A store restart is routine (an upgrade, a primary moving), so:
//!
//! - while the store is unreachable, a call for a key another replica holds
//!   goes where the key last was (if seen within [`LastKnown::max_age`]);
//! - when the store comes back empty, its empty answers are not believed,
//!   for keys with a last-known route, until every replica has had a TTL to
//!   publish its keys again;
//! - a route is dropped as soon as its replica fails or refuses a call
//!   ([`LastKnown::forget`]), so a key that really left costs one call.
//!
//! At most [`MAX_KEYS`] keys are remembered, the oldest dropped first.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::reverse::cluster::Entry;

/// Keys remembered at most.
pub(crate) const MAX_KEYS: usize = 10_000;

/// The shortest time a route is remembered (longer with a long TTL).
const MIN_AGE: Duration = Duration::from_secs(60);

#[derive(Default)]
pub(crate) struct LastKnown {
    routes: Mutex<HashMap<String, (Vec<Entry>, Instant)>>,
    /// Until then, the store's empty answers are doubted: it failed lately,
    /// and may have come back without the entries replicas publish.
    doubt_empty_until: Mutex<Option<Instant>>,
}

impl LastKnown {
    /// How long a route is remembered, for a cluster with this TTL.
    pub(crate) fn max_age(ttl: Duration) -> Duration {
        ttl.saturating_mul(6).max(MIN_AGE)
    }

    /// `key` was found at `entries` (not empty).
    pub(crate) fn remember(&self, key: &str, entries: &[Entry]) {
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.len() >= MAX_KEYS && !routes.contains_key(key) {
            if let Some(oldest) = routes
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| k.clone())
            {
                routes.remove(&oldest);
            }
        }
        routes.insert(key.to_owned(), (entries.to_vec(), Instant::now()));
    }

    /// Where `key` last was, if seen within `max_age`.
    pub(crate) fn recall(&self, key: &str, max_age: Duration) -> Option<Vec<Entry>> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .get(key)
            .filter(|(_, at)| at.elapsed() < max_age)
            .map(|(entries, _)| entries.clone())
    }

    /// Drops `key`'s route (its replica failed or refused a call).
    pub(crate) fn forget(&self, key: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// The store failed: doubt its empty answers for a TTL from now.
    pub(crate) fn store_failed(&self, ttl: Duration) {
        *self
            .doubt_empty_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + ttl);
    }

    /// Whether an empty answer from the store can be believed now.
    pub(crate) fn empty_is_believed(&self) -> bool {
        self.doubt_empty_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|until| Instant::now() >= until)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_recalled_until_forgotten_or_old_and_bounded() {
        let known = LastKnown::default();
        let at = [Entry::new("k", "http://b:1", 0)];
        known.remember("k", &at);
        assert_eq!(
            known.recall("k", Duration::from_secs(60)),
            Some(at.to_vec())
        );
        assert_eq!(known.recall("k", Duration::ZERO), None, "too old");
        known.forget("k");
        assert_eq!(known.recall("k", Duration::from_secs(60)), None);
        for i in 0..MAX_KEYS + 10 {
            known.remember(&format!("k{i}"), &at);
        }
        assert_eq!(known.len(), MAX_KEYS);
    }

    #[test]
    fn empty_answers_are_doubted_for_a_ttl_after_the_store_failed() {
        let known = LastKnown::default();
        assert!(known.empty_is_believed());
        known.store_failed(Duration::from_secs(60));
        assert!(!known.empty_is_believed());
        known.store_failed(Duration::ZERO);
        assert!(known.empty_is_believed());
    }
}
