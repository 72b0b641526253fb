//! [`Directory`]: where a cluster keeps which replica holds which key.

use std::{future::Future, pin::Pin, time::Duration};

use futures_core::Stream;

use crate::error::BoxError;

/// A boxed future, as [`Directory`] methods return.
pub type DirectoryFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'a>>;

/// One replica's tunnels of one key, as published in a [`Directory`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Entry {
    /// The key of the tunnels.
    pub key: String,
    /// The replica that holds them: its advertised address.
    pub replica: String,
    /// Their calls in flight when published (for balancing).
    pub load: u64,
    /// The publishing replica's seal over the entry (a MAC keyed by the
    /// cluster secret over the key, replica, load and an expiry): opaque
    /// to the directory, which stores it and returns it as given. An entry
    /// whose seal does not verify is never used, so whoever can write the
    /// store cannot send calls (or relay proofs) anywhere.
    pub seal: String,
}

impl Entry {
    /// An entry without a seal (the cluster seals what it publishes; a
    /// [`Directory`] builds its lookups' entries with this, then sets
    /// [`seal`](Self::seal) to what was stored).
    pub fn new(key: impl Into<String>, replica: impl Into<String>, load: u64) -> Self {
        Self {
            key: key.into(),
            replica: replica.into(),
            load,
            seal: String::new(),
        }
    }
}

/// The shared directory of a cluster of replicas: which replica holds
/// reverse tunnels of which key.
///
/// Entries are leases: [`publish`](Self::publish) writes them with a time
/// to live, and a replica republishes its keys well within it, so the
/// entries of a replica that dies (or loses the directory) expire on their
/// own. [`lookup`](Self::lookup) never returns an expired entry.
///
/// The crate ships [`RedisDirectory`](super::RedisDirectory) (feature
/// `redis`); implement this trait for another store.
pub trait Directory: Send + Sync + 'static {
    /// Writes (or refreshes) `entries`, each expiring `ttl` from now unless
    /// published again, with its [`seal`](Entry::seal).
    fn publish(&self, entries: Vec<Entry>, ttl: Duration) -> DirectoryFuture<'_, ()>;

    /// Removes `replica`'s entry of `key`, if any.
    fn withdraw<'a>(&'a self, key: &'a str, replica: &'a str) -> DirectoryFuture<'a, ()>;

    /// The live entries of `key`, on every replica, with the seals they
    /// were published with.
    ///
    /// Replicas also publish an entry each under a key no tunnel can have
    /// (it holds a NUL byte): the cluster's members
    /// ([`Cluster::members`](super::Cluster::members)). A store may keep it
    /// apart from the keys ([`RedisDirectory`](super::RedisDirectory):
    /// `grpctunnel:members`).
    fn lookup<'a>(&'a self, key: &'a str) -> DirectoryFuture<'a, Vec<Entry>>;

    /// Keys as replicas publish them for the first time, best effort (it
    /// wakes calls that wait for a key). An empty string says that
    /// announcements may have been missed (the feed was down and is back):
    /// every waiting call looks again, and cached lookups are dropped. A
    /// stream that ends is not restarted: return one that lasts for the
    /// directory's life.
    fn published(&self) -> Pin<Box<dyn Stream<Item = String> + Send>>;
}
