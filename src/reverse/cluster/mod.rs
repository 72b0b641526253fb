//! Several replicas, one key space: a [`Cluster`] links a registry to a
//! shared [`Directory`] so that a call for a key held by another replica is
//! relayed there.
//!
//! - Each replica publishes the keys of its reverse tunnels in the
//!   directory, with its advertised address and load, as leases it renews
//!   every third of their time to live: when the replica dies, or loses
//!   the directory, its entries expire; when the directory comes back, the
//!   next renewal publishes them again.
//! - A call through [`ReverseTunnelRegistry::get`] uses a local tunnel of
//!   the key when there is one; otherwise it looks the key up and relays
//!   the call to the least-loaded replica that holds it, over one pooled
//!   HTTP/2 connection per replica: by default as a stream of one forward
//!   tunnel per replica, or as a plain gRPC call
//!   ([`RelayTransport`]). Deadline (`grpc-timeout`, less the time already
//!   spent), cancellation, metadata, trailers and status pass as they are.
//!   A replica it cannot reach is skipped for the next one.
//! - The cluster's shared secret never leaves a replica. A relay tunnel's
//!   opening RPC, and a call relayed as plain gRPC, carry a proof made
//!   with it (`grpctunnel-relay-auth`, an HMAC over the receiving
//!   replica, the key and method or the tunnel, the time and a nonce); a
//!   relayed call also its key (`grpctunnel-relay-key`). The receiving
//!   replica refuses a proof that does not verify, is outside its window
//!   ([`DEFAULT_RELAY_WINDOW`]) or was used before (`UNAUTHENTICATED`),
//!   and serves a relayed call from its own tunnels only, never relaying
//!   it again: a relay loop cannot happen.
//! - Directory entries are sealed with the secret: an entry someone wrote
//!   into the store without it is ignored (counted in
//!   [`Cluster::refused_entries`], logged once per address), as is one
//!   whose URL has another scheme than this replica's `advertise` (no
//!   `https` to `http` downgrade) or, with [`Cluster::peers`], is not listed.
//! - A waiting call (`wait_for_ready`) also wakes when another replica
//!   publishes the key.

mod directory;
mod last_known;
mod lent;
mod members;
mod peer;
#[cfg(feature = "redis")]
mod redis;
mod relay;
mod relayed;
mod seal;

use std::{
    collections::HashSet,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::{broadcast, mpsc};
use tonic::transport::Endpoint;
use tracing::warn;

pub use directory::{Directory, DirectoryFuture, Entry};
pub use peer::RelayTransport;
#[cfg(feature = "redis")]
pub use redis::{RedisDirectory, RedisOptions};
pub(crate) use relay::{balance, check_relay_tunnel, forward, receive, wait_for_key};
pub use relayed::RelayedCalls;
pub use seal::DEFAULT_RELAY_WINDOW;

use crate::{
    error::BoxError,
    reverse::{
        registry::{KeyWatch, WeakRegistry},
        ReverseTunnelRegistry,
    },
    DEFAULT_MAX_MESSAGE_SIZE,
};
use peer::{Peer, RelayConfig};
use seal::Sealer;

/// Default time to live of a replica's directory entries.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

type Connect = dyn Fn(&str) -> Result<Endpoint, BoxError> + Send + Sync;

/// A registry's membership in a cluster of replicas sharing one key space;
/// give it to [`ReverseTunnelRegistry::cluster`](crate::ReverseTunnelRegistry::cluster).
///
/// ```no_run
/// # #[cfg(feature = "redis")]
/// # async fn run() -> Result<(), grpctunnel::BoxError> {
/// use grpctunnel::{cluster::{Cluster, RedisDirectory}, ReverseTunnelRegistry};
///
/// let directory = RedisDirectory::open("redis://127.0.0.1:6379")?;
/// let cluster = Cluster::new(directory, "http://10.0.0.5:8443", "a shared secret");
/// let registry = ReverseTunnelRegistry::with_key(|headers, _| {
///     headers.get("x-agent").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
/// })
/// .cluster(cluster);
/// // Calls for any key, on any replica:
/// let channel = registry.get("agent-7");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<ClusterInner>,
}

pub(crate) struct ClusterInner {
    pub(crate) directory: Arc<dyn Directory>,
    pub(crate) advertise: String,
    /// Proofs of membership, made and checked with the cluster secret.
    pub(crate) sealer: Sealer,
    pub(crate) ttl: Duration,
    /// With [`Cluster::peers`]: the only replicas dialled.
    allowed: Option<HashSet<String>>,
    /// Entries refused (unsealed, another scheme, not listed), and the
    /// addresses already logged.
    refused_entries: AtomicU64,
    logged_refusals: Mutex<HashSet<String>>,
    /// When the cluster was made: the origin of peers' last use.
    born: Instant,
    connect: Box<Connect>,
    /// How relayed calls travel, and the largest message they may carry.
    relay_transport: RelayTransport,
    max_message_size: usize,
    /// One connection per replica, made on first use.
    peers: Mutex<std::collections::HashMap<String, Arc<Peer>>>,
    /// Keys other replicas published, for waiting calls.
    pub(crate) published: broadcast::Sender<String>,
    /// Recent lookups, so that a relayed call does not pay a store round
    /// trip each time (see [`ClusterInner::lookup`]).
    routes: Mutex<std::collections::HashMap<String, Route>>,
    /// Where keys last were: used while the store is away or comes back
    /// empty (see `last_known.rs`).
    last_known: last_known::LastKnown,
    /// Calls this replica relays now, by (replica, key): added to the load
    /// a replica last published, so that a burst does not all go to the
    /// replica that looked idle at its last renewal.
    relaying: Mutex<std::collections::HashMap<String, std::collections::HashMap<String, u64>>>,
}

/// Refused addresses logged at most (then only counted).
const LOGGED_REFUSALS_MAX: usize = 64;

/// A recent lookup of one key.
struct Route {
    entries: Vec<Entry>,
    at: std::time::Instant,
}

/// How long a lookup is reused (at most a third of the TTL).
const ROUTE_CACHE: Duration = Duration::from_secs(1);

/// How long a lookup that found the key nowhere is reused.
const NEGATIVE_CACHE: Duration = Duration::from_millis(250);

/// Cached lookups beyond this many are pruned of stale ones.
const ROUTES_PRUNE_AT: usize = 4096;

impl Cluster {
    /// This replica's membership in the cluster kept in `directory`:
    /// `advertise` is the URL other replicas dial to reach it
    /// (`http://10.0.0.5:8443`, or `https://` with
    /// [`connect_with`](Self::connect_with)), `secret` the secret every
    /// replica shares: it keys the proofs that relayed calls carry and the
    /// seals of directory entries, and is never sent. Make it long and
    /// random (32 bytes or more).
    pub fn new(
        directory: impl Directory,
        advertise: impl Into<String>,
        secret: impl AsRef<[u8]>,
    ) -> Self {
        let (published, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(ClusterInner {
                directory: Arc::new(directory),
                advertise: advertise.into(),
                sealer: Sealer::new(secret.as_ref(), DEFAULT_RELAY_WINDOW),
                allowed: None,
                refused_entries: AtomicU64::new(0),
                logged_refusals: Mutex::default(),
                born: Instant::now(),
                ttl: DEFAULT_TTL,
                connect: Box::new(|url| Ok(Endpoint::from_shared(url.to_owned())?)),
                relay_transport: RelayTransport::default(),
                max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
                peers: Mutex::default(),
                published,
                routes: Mutex::default(),
                last_known: Default::default(),
                relaying: Mutex::default(),
            }),
        }
    }

    /// Time to live of this replica's entries (default [`DEFAULT_TTL`]):
    /// how long a dead replica's keys may still be looked up. Entries are
    /// renewed every third of it.
    ///
    /// # Panics
    ///
    /// If the cluster was cloned already.
    #[track_caller]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.inner_mut().ttl = ttl;
        self
    }

    /// How to dial another replica from its advertised URL (TLS settings,
    /// timeouts); default: `Endpoint::from_shared(url)`.
    ///
    /// # Panics
    ///
    /// If the cluster was cloned already.
    #[track_caller]
    pub fn connect_with(
        mut self,
        connect: impl Fn(&str) -> Result<Endpoint, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.inner_mut().connect = Box::new(connect);
        self
    }

    /// How calls relayed to other replicas travel (default
    /// [`RelayTransport::Tunnel`]). A replica serves both, whatever it
    /// sends with.
    ///
    /// # Panics
    ///
    /// If the cluster was cloned already.
    #[track_caller]
    pub fn relay_over(mut self, transport: RelayTransport) -> Self {
        self.inner_mut().relay_transport = transport;
        self
    }

    /// The largest response message a relay tunnel takes from another
    /// replica (default [`DEFAULT_MAX_MESSAGE_SIZE`](crate::DEFAULT_MAX_MESSAGE_SIZE));
    /// give it the receiving side's limit (the tunnel layer's
    /// `max_message_size`), so relayed calls take what local ones take.
    ///
    /// # Panics
    ///
    /// If the cluster was cloned already.
    #[track_caller]
    pub fn max_message_size(mut self, size: usize) -> Self {
        self.inner_mut().max_message_size = size;
        self
    }

    /// How long a relay proof is accepted around the time it names
    /// (default [`DEFAULT_RELAY_WINDOW`]): a captured proof is refused once
    /// it is older, and the replicas' clocks must agree to within it.
    ///
    /// # Panics
    ///
    /// If the cluster was cloned already.
    #[track_caller]
    pub fn relay_window(mut self, window: Duration) -> Self {
        self.inner_mut().sealer.set_window(window);
        self
    }

    /// Dial only these replicas (their advertised URLs, as they give them):
    /// an entry of any other address is ignored. Default: any replica whose
    /// entry carries a valid seal and whose URL has this replica's scheme.
    ///
    /// # Panics
    ///
    /// If the cluster was cloned already.
    #[track_caller]
    pub fn peers<I, S>(mut self, replicas: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.inner_mut().allowed = Some(replicas.into_iter().map(Into::into).collect());
        self
    }

    /// This replica's advertised URL.
    pub fn advertise(&self) -> &str {
        &self.inner.advertise
    }

    /// How many directory entries this replica has ignored: without a
    /// valid seal (written by someone without the cluster secret, or
    /// expired), with another scheme than its own, or not in its
    /// [`peers`](Self::peers).
    pub fn refused_entries(&self) -> u64 {
        self.inner.refused_entries.load(Ordering::Relaxed)
    }

    #[track_caller]
    fn inner_mut(&mut self) -> &mut ClusterInner {
        Arc::get_mut(&mut self.inner).expect("configure the cluster before cloning it")
    }
}

impl ClusterInner {
    /// The live entries of `key`. With `cached`, a lookup younger than
    /// [`ROUTE_CACHE`] (and a third of the TTL) is reused, also while the
    /// store is away, and an empty one younger than [`NEGATIVE_CACHE`]
    /// (calls for keys nobody holds, made up or gone, do not each cost a
    /// store round trip); without, the store is asked and nothing kept. A
    /// key that another replica publishes anew is forgotten at once (its
    /// announcement), as is one whose replica failed a call
    /// ([`forget`](Self::forget)).
    pub(crate) async fn lookup(&self, key: &str, cached: bool) -> Result<Vec<Entry>, BoxError> {
        let fresh_for = ROUTE_CACHE.min(self.ttl / 3);
        if cached {
            let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = |r: &&Route| {
                let age = r.at.elapsed();
                age < fresh_for && (!r.entries.is_empty() || age < NEGATIVE_CACHE)
            };
            if let Some(route) = routes.get(key).filter(fresh) {
                return Ok(route.entries.clone());
            }
        }
        let max_age = last_known::LastKnown::max_age(self.ttl);
        let (entries, known) = match self.directory.lookup(key).await {
            Ok(mut entries) => {
                entries.retain(|e| self.admits(e));
                if !entries.is_empty() {
                    self.last_known.remember(key, &entries);
                    (entries, false)
                } else if self.last_known.empty_is_believed() {
                    (entries, false)
                } else {
                    // Back, but maybe without what replicas publish yet.
                    match self.last_known.recall(key, max_age) {
                        Some(known) => (known, true),
                        None => (entries, false),
                    }
                }
            }
            Err(err) => {
                self.last_known.store_failed(self.ttl);
                match self.last_known.recall(key, max_age) {
                    Some(known) => (known, true),
                    None => return Err(err),
                }
            }
        };
        if known {
            tracing::debug!(%key, "the cluster directory cannot say: relaying to where the key last was");
        }
        if !cached {
            return Ok(entries);
        }
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if routes.len() >= ROUTES_PRUNE_AT {
            routes.retain(|_, r| {
                let keep_for = if r.entries.is_empty() {
                    NEGATIVE_CACHE.min(fresh_for)
                } else {
                    fresh_for
                };
                r.at.elapsed() < keep_for
            });
        }
        // Still full (a flood of made-up keys within the cache time): the
        // answer is not kept, so the map stays bounded.
        if routes.len() < ROUTES_PRUNE_AT || routes.contains_key(key) {
            let route = Route {
                entries: entries.clone(),
                at: std::time::Instant::now(),
            };
            routes.insert(key.to_owned(), route);
        }
        Ok(entries)
    }

    /// Whether `entry` may be dialled: sealed with the secret, with this
    /// replica's scheme, and listed (with [`Cluster::peers`]). A refusal
    /// is counted, and logged the first time for each address.
    pub(crate) fn admits(&self, entry: &Entry) -> bool {
        let why = if !self.sealer.check_entry(entry) {
            "its seal does not verify (written without the cluster secret, or expired)"
        } else if scheme(&entry.replica) != scheme(&self.advertise) {
            "its scheme is not this replica's (no https to http downgrade)"
        } else if self
            .allowed
            .as_ref()
            .is_some_and(|peers| !peers.contains(&entry.replica))
        {
            "it is not one of the cluster's peers"
        } else {
            return true;
        };
        self.refused_entries.fetch_add(1, Ordering::Relaxed);
        let mut logged = self
            .logged_refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if logged.len() < LOGGED_REFUSALS_MAX && logged.insert(entry.replica.clone()) {
            warn!(key = %entry.key, replica = %entry.replica, "ignoring a cluster directory entry: {why}");
        }
        false
    }

    /// Seals this replica's entries before they are published.
    fn seal(&self, entries: &mut [Entry]) {
        for entry in entries {
            self.sealer.seal(entry, self.ttl);
        }
    }

    /// `entry`'s load as this replica sees it: as published, plus the calls
    /// it relays there now.
    pub(crate) fn load_of(&self, entry: &Entry) -> u64 {
        let relaying = self.relaying.lock().unwrap_or_else(|p| p.into_inner());
        let own = relaying
            .get(&entry.replica)
            .and_then(|keys| keys.get(&entry.key))
            .copied()
            .unwrap_or(0);
        entry.load + own
    }

    /// Counts a call relayed to `entry`'s replica until the guard drops.
    pub(crate) fn relaying(self: &Arc<Self>, entry: &Entry) -> Relaying {
        let mut relaying = self.relaying.lock().unwrap_or_else(|p| p.into_inner());
        *relaying
            .entry(entry.replica.clone())
            .or_default()
            .entry(entry.key.clone())
            .or_default() += 1;
        Relaying {
            cluster: self.clone(),
            replica: entry.replica.clone(),
            key: entry.key.clone(),
        }
    }

    /// Drops the cached lookup of `key`.
    pub(crate) fn forget(&self, key: &str) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    /// Drops every cached lookup: announcements may have been missed.
    fn forget_all(&self) {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Drops the cached lookup of `key` and where it last was: its replica
    /// cannot be reached, or does not hold it any more.
    pub(crate) fn drop_route(&self, key: &str) {
        self.last_known.forget(key);
        self.forget(key);
    }

    /// The pooled connection to `replica`.
    pub(crate) fn peer(&self, replica: &str) -> Result<Arc<Peer>, BoxError> {
        let now = self.born.elapsed();
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peer) = peers.get(replica) {
            peer.used(now);
            return Ok(peer.clone());
        }
        let channel = (self.connect)(replica)?.connect_lazy();
        let peer = Arc::new(Peer::new(replica.to_owned(), channel, now));
        peers.insert(replica.to_owned(), peer.clone());
        Ok(peer)
    }

    /// Moves the entries of replicas that could not be reached lately
    /// ([`peer::UNREACHABLE_FOR`]) after the others, keeping each group's
    /// order; they stay, so a key only they hold is still tried.
    pub(crate) fn reachable_first(&self, entries: &mut [Entry]) {
        let now = self.born.elapsed();
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        entries.sort_by_key(|e| {
            peers
                .get(&e.replica)
                .is_some_and(|peer| peer.is_unreachable(now))
        });
    }

    /// `peer` could not be reached: tried last for a while.
    pub(crate) fn unreachable(&self, peer: &Peer) {
        peer.unreachable(self.born.elapsed());
    }

    /// Forgets the connections to replicas no call went to for three
    /// TTLs (replicas that left; calls still on one keep it until they end).
    fn prune_peers(&self) {
        let now = self.born.elapsed();
        let idle = self.ttl * 3;
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, peer| now.saturating_sub(peer.last_used()) < idle);
    }

    /// How relayed calls go out.
    pub(crate) fn relay_config(&self) -> RelayConfig<'_> {
        RelayConfig {
            transport: self.relay_transport,
            sealer: &self.sealer,
            max_message_size: self.max_message_size,
        }
    }
}

/// A call being relayed (see [`ClusterInner::relaying`]).
pub(crate) struct Relaying {
    cluster: Arc<ClusterInner>,
    replica: String,
    key: String,
}

impl Drop for Relaying {
    fn drop(&mut self) {
        let mut relaying = self
            .cluster
            .relaying
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(keys) = relaying.get_mut(&self.replica) else {
            return;
        };
        if let Some(n) = keys.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                keys.remove(&self.key);
            }
        }
        if keys.is_empty() {
            relaying.remove(&self.replica);
        }
    }
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("advertise", &self.inner.advertise)
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

/// A registry's link to its cluster.
pub(crate) struct ClusterLink<K> {
    pub(crate) cluster: Cluster,
    /// A key's name in the directory, and back.
    pub(crate) name: fn(&K) -> &str,
    pub(crate) from: fn(&str) -> K,
    /// Keys whose first tunnel opened (`true`) or last closed, in order.
    updates: mpsc::UnboundedSender<(String, bool)>,
    /// The application's layer around relayed calls, if any.
    pub(crate) relayed: std::sync::OnceLock<RelayedCalls>,
}

impl<K: Send + Sync + 'static> KeyWatch<K> for ClusterLink<K> {
    /// Publishes (`present`) or withdraws a key soon, in the order of the
    /// registry's changes.
    fn key_changed(&self, key: &K, present: bool) {
        let _ = self.updates.send(((self.name)(key).to_owned(), present));
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl<K: Clone + Eq + std::hash::Hash + Send + Sync + 'static> ReverseTunnelRegistry<K> {
    /// Whether this registry shares its key space with a cluster (then a
    /// key with no local tunnel may still be served by another replica).
    pub fn in_cluster(&self) -> bool {
        self.cluster_link().is_some()
    }

    /// The cluster this registry belongs to, if any.
    pub(crate) fn cluster_link(&self) -> Option<&ClusterLink<K>> {
        self.watch()?.as_any().downcast_ref::<ClusterLink<K>>()
    }
}

impl ReverseTunnelRegistry<String> {
    /// Shares this registry's keys with the other replicas of `cluster`:
    /// publishes them in its directory, and relays a call for a key that
    /// no local tunnel serves to a replica that holds it (see
    /// [`cluster`](crate::cluster)). Needs a Tokio runtime; the
    /// registry's publishing stops when it is dropped.
    ///
    /// # Panics
    ///
    /// If the registry is in a cluster already.
    #[track_caller]
    pub fn cluster(self, cluster: Cluster) -> Self {
        let link = link(cluster, String::as_str, str::to_owned, self.downgrade());
        if !self.set_watch(Arc::new(link)) {
            panic!("the registry is in a cluster already");
        }
        self
    }
}

/// Links a registry to `cluster` and keeps its keys published: at once
/// when a key's first tunnel opens or its last closes, and all of them
/// every third of the TTL, until the registry is dropped. Also feeds keys
/// other replicas publish to waiting calls. Needs a Tokio runtime.
fn link<K>(
    cluster: Cluster,
    name: fn(&K) -> &str,
    from: fn(&str) -> K,
    registry: WeakRegistry<K>,
) -> ClusterLink<K>
where
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
{
    let (updates, mut queued) = mpsc::unbounded_channel::<(String, bool)>();
    let feed = cluster.inner.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        let mut keys = feed.directory.published();
        while let Some(key) = keys.next().await {
            if key.is_empty() {
                feed.forget_all();
            } else {
                feed.forget(&key);
            }
            let _ = feed.published.send(key);
        }
    });
    let inner = cluster.inner.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(inner.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            let result = tokio::select! {
                update = queued.recv() => match update {
                    // The registry is gone.
                    None => return,
                    Some((key, true)) => {
                        let mut entries = vec![Entry::new(key, inner.advertise.clone(), 0)];
                        inner.seal(&mut entries);
                        inner.directory.publish(entries, inner.ttl).await
                    }
                    Some((key, false)) => inner.directory.withdraw(&key, &inner.advertise).await,
                },
                _ = tick.tick() => {
                    let Some(registry) = registry.upgrade() else { return };
                    let mut entries: Vec<Entry> = registry
                        .loads()
                        .iter()
                        .map(|(key, load)| Entry::new(name(key), inner.advertise.clone(), *load))
                        .collect();
                    drop(registry);
                    inner.prune_peers();
                    // Listed as a member with its keys, even with none.
                    entries.push(inner.member_entry());
                    inner.seal(&mut entries);
                    inner.directory.publish(entries, inner.ttl).await
                }
            };
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!("cluster directory reachable again");
                    // It may have come back empty (a restart, a replica
                    // promoted before it had every entry): all of this
                    // replica's keys, now rather than at the next renewal.
                    tick.reset_immediately();
                }
                Ok(()) => {}
                Err(err) if !failing => {
                    inner.last_known.store_failed(inner.ttl);
                    failing = true;
                    warn!(error = %err, "cannot update the cluster directory; local tunnels still serve, retrying at the next renewal");
                }
                Err(_) => inner.last_known.store_failed(inner.ttl),
            }
        }
    });
    ClusterLink {
        cluster,
        name,
        from,
        updates,
        relayed: std::sync::OnceLock::new(),
    }
}

/// The scheme of a URL (`http`, `https`), lower case.
fn scheme(url: &str) -> String {
    url.split_once("://")
        .map_or("", |(scheme, _)| scheme)
        .to_ascii_lowercase()
}
