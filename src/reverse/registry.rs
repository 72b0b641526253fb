//! [`ReverseTunnelRegistry`]: the reverse tunnels a network server holds,
//! grouped by affinity key.

use std::{
    borrow::Borrow,
    collections::HashMap,
    fmt,
    hash::Hash,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
};

use futures_core::Stream as FuturesStream;
use tokio::sync::{broadcast, Notify};
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};
use tracing::debug;

use crate::{
    client::TunnelChannel,
    reverse::{opening::Openings, outlier::Ejection, wakers::Wakers},
};

type KeyFn<K> = dyn Fn(&http::HeaderMap, &http::Extensions) -> K + Send + Sync;

/// Default of the total in [`ReverseTunnelRegistry::with_limits`].
pub const DEFAULT_MAX_REVERSE_TUNNELS: usize = 10_000;

/// Default of the per-key limit in [`ReverseTunnelRegistry::with_limits`].
pub const DEFAULT_MAX_REVERSE_TUNNELS_PER_KEY: usize = 1_000;

/// How many events a slow subscriber may fall behind before it is told it
/// missed some ([`TunnelEvent::Lagged`]).
const EVENT_CAPACITY: usize = 1024;

/// The reverse tunnels a network server holds, by affinity key.
///
/// Give a clone to [`TunnelLayer::reverse`](crate::TunnelLayer::reverse) and
/// keep one: each tunnel a network client opens with `OpenReverseTunnel` is
/// added once it is ready (after `Settings`, P-73), with the key computed
/// from its opening RPC, and removed the moment it ends (P-75).
///
/// Calls go through [`channel`](Self::channel) (any tunnel) or
/// [`get`](Self::get) (the tunnels of one key): both pick a tunnel
/// round-robin per call. Cloning the registry is cheap.
pub struct ReverseTunnelRegistry<K = ()> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for ReverseTunnelRegistry<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<K> {
    key_fn: Box<KeyFn<K>>,
    /// Told when a key's first tunnel joins the pools and its last leaves
    /// (a cluster publishing the registry's keys).
    watch: std::sync::OnceLock<Arc<dyn KeyWatch<K>>>,
    max_tunnels: usize,
    max_per_key: usize,
    state: Mutex<State<K>>,
    events: broadcast::Sender<TunnelEvent<K>>,
    /// Woken by every tunnel added (and opening failed): calls waiting for
    /// any tunnel.
    any: Arc<Notify>,
    /// Woken for one key: calls waiting for that key.
    wakers: Wakers<K>,
    /// Tunnels accepted and not ready yet.
    openings: Openings<K>,
    next_id: AtomicU64,
}

struct State<K> {
    all: Pool<K>,
    by_key: HashMap<K, Pool<K>>,
    /// Tunnels out of the pools, finishing their calls ([`drain`]).
    ///
    /// [`drain`]: ReverseTunnelRegistry::drain
    draining: Vec<ReverseTunnel<K>>,
    /// The registry drains: it takes no tunnel any more.
    closed: bool,
}

struct Pool<K> {
    tunnels: Vec<ReverseTunnel<K>>,
    next: usize,
}

impl<K> Default for Pool<K> {
    fn default() -> Self {
        Self {
            tunnels: Vec::new(),
            next: 0,
        }
    }
}

/// Pools up to this size are scanned whole when picking.
const SCAN_ALL: usize = 8;

/// A cheap, well-spread function of the pick counter (splitmix64's finish).
fn spread(n: usize) -> usize {
    let mut z = (n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as usize
}

impl<K> Pool<K> {
    /// The tunnel with the fewest calls in flight, ties going round-robin:
    /// every tunnel of a small pool is looked at, two of a large one (the
    /// round-robin one and one spread from it: "the power of two choices").
    ///
    /// Tunnels left out by outlier ejection (`outlier.rs`) are skipped,
    /// unless every tunnel of the pool is.
    fn pick(&mut self) -> Option<ReverseTunnel<K>> {
        let n = self.tunnels.len();
        if n == 0 {
            return None;
        }
        let start = self.next % n;
        self.next = self.next.wrapping_add(1);
        let tunnels = &self.tunnels;
        let load = |i: usize| tunnels[i].inner.channel.active_calls();
        let available = |i: usize| {
            let t = &tunnels[i].inner;
            t.ejection.available(&t.channel, t.id)
        };
        let best = if n <= SCAN_ALL {
            let scan = (0..n).map(|k| (start + k) % n);
            scan.clone()
                .filter(|&i| available(i))
                .min_by_key(|&i| load(i))
                .or_else(|| scan.min_by_key(|&i| load(i)))
                .unwrap_or(start)
        } else {
            let other = (start + 1 + spread(self.next) % (n - 1)) % n;
            match (available(start), available(other)) {
                (true, false) => start,
                (false, true) => other,
                (true, true) if load(other) < load(start) => other,
                (true, true) => start,
                // Both left out: the next one that is not, if any.
                (false, false) => (0..n)
                    .map(|k| (start + k) % n)
                    .find(|&i| available(i))
                    .unwrap_or(start),
            }
        };
        Some(self.tunnels[best].clone())
    }

    fn remove(&mut self, id: u64) {
        self.tunnels.retain(|t| t.inner.id != id);
    }
}

/// One reverse tunnel in a registry.
pub struct ReverseTunnel<K = ()> {
    inner: Arc<TunnelEntry<K>>,
}

impl<K> Clone for ReverseTunnel<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct TunnelEntry<K> {
    id: u64,
    key: K,
    metadata: http::HeaderMap,
    extensions: http::Extensions,
    channel: TunnelChannel,
    /// Whether picking leaves it out for now (outlier ejection).
    ejection: Ejection,
    /// Out of the pools, finishing its calls.
    draining: std::sync::atomic::AtomicBool,
}

impl<K> ReverseTunnel<K> {
    /// Whether picking leaves this tunnel out for now: its agent failed
    /// five calls in a row at once with a server error (`UNKNOWN`,
    /// `INTERNAL`, `UNAVAILABLE`, `DATA_LOSS`), and it is ejected for 10 s,
    /// doubling each time again, up to 5 minutes; the calls of its key go
    /// to its other tunnels (to all of them, if all are ejected).
    pub fn is_ejected(&self) -> bool {
        self.inner.ejection.is_ejected()
    }

    /// Whether the tunnel is draining ([`ReverseTunnelRegistry::drain`]):
    /// out of its pools, it takes no new call and closes once its calls in
    /// flight have finished.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// A number unique to this tunnel within its registry.
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The affinity key computed when the tunnel opened.
    pub fn key(&self) -> &K {
        &self.inner.key
    }

    /// Request headers of the opening RPC.
    pub fn metadata(&self) -> &http::HeaderMap {
        &self.inner.metadata
    }

    /// Request extensions of the opening RPC (connection info, whatever an
    /// auth layer inserted).
    pub fn extensions(&self) -> &http::Extensions {
        &self.inner.extensions
    }

    /// The network client's address, when the server recorded it (tonic's
    /// `TcpConnectInfo`; other servers: look in [`extensions`](Self::extensions)).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        remote_addr(&self.inner.extensions)
    }

    /// A channel that sends calls through this tunnel only.
    pub fn channel(&self) -> TunnelChannel {
        self.inner.channel.clone()
    }
}

fn remote_addr(ext: &http::Extensions) -> Option<SocketAddr> {
    #[cfg(feature = "transport")]
    if let Some(info) = ext.get::<tonic::transport::server::TcpConnectInfo>() {
        return info.remote_addr();
    }
    let _ = ext;
    None
}

impl<K: fmt::Debug> fmt::Debug for ReverseTunnel<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseTunnel")
            .field("id", &self.inner.id)
            .field("key", &self.inner.key)
            .field("remote_addr", &self.remote_addr())
            .field("channel", &self.inner.channel)
            .finish()
    }
}

/// A change in a registry, as [`ReverseTunnelRegistry::subscribe`] reports it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TunnelEvent<K = ()> {
    /// A tunnel is ready and in its pools.
    Opened(ReverseTunnel<K>),
    /// A tunnel left its pools to finish its calls
    /// ([`ReverseTunnelRegistry::drain`]); `Closed` follows when it ends.
    Draining(ReverseTunnel<K>),
    /// A tunnel ended and left its pools.
    Closed(ReverseTunnel<K>),
    /// This subscriber fell behind and missed this many events; take a
    /// fresh snapshot with [`ReverseTunnelRegistry::tunnels`].
    Lagged(u64),
}

/// The stream of [`TunnelEvent`]s from [`ReverseTunnelRegistry::subscribe`].
pub struct TunnelEvents<K = ()> {
    inner: BroadcastStream<TunnelEvent<K>>,
}

impl<K: Clone + Send + Sync + 'static> FuturesStream for TunnelEvents<K> {
    type Item = TunnelEvent<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|r| match r {
                Ok(event) => event,
                Err(BroadcastStreamRecvError::Lagged(n)) => TunnelEvent::Lagged(n),
            })
        })
    }
}

impl<K> fmt::Debug for TunnelEvents<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelEvents").finish_non_exhaustive()
    }
}

impl ReverseTunnelRegistry<()> {
    /// A registry in which every tunnel has the key `()`.
    pub fn new() -> Self {
        Self::with_key(|_, _| ())
    }
}

impl Default for ReverseTunnelRegistry<()> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K> ReverseTunnelRegistry<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// A registry that computes each tunnel's affinity key once, when it
    /// opens, from the opening RPC's request headers and extensions (for
    /// example an agent ID header, or the identity an auth layer inserted).
    pub fn with_key<F>(key: F) -> Self
    where
        F: Fn(&http::HeaderMap, &http::Extensions) -> K + Send + Sync + 'static,
    {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                key_fn: Box::new(key),
                watch: std::sync::OnceLock::new(),
                max_tunnels: DEFAULT_MAX_REVERSE_TUNNELS,
                max_per_key: DEFAULT_MAX_REVERSE_TUNNELS_PER_KEY,
                state: Mutex::new(State {
                    all: Pool::default(),
                    by_key: HashMap::new(),
                    draining: Vec::new(),
                    closed: false,
                }),
                events,
                any: Arc::new(Notify::new()),
                wakers: Default::default(),
                openings: Default::default(),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Caps the tunnels this registry accepts: `total` in all, `per_key` for
    /// one key; beyond them, `OpenReverseTunnel` is refused with
    /// `RESOURCE_EXHAUSTED`. Defaults: [`DEFAULT_MAX_REVERSE_TUNNELS`] and
    /// [`DEFAULT_MAX_REVERSE_TUNNELS_PER_KEY`].
    ///
    /// # Panics
    ///
    /// If called after clones of the registry were made (set limits first).
    #[track_caller]
    pub fn with_limits(mut self, total: usize, per_key: usize) -> Self {
        let inner = Arc::get_mut(&mut self.inner).expect("set limits before cloning the registry");
        inner.max_tunnels = total;
        inner.max_per_key = per_key;
        self
    }

    /// Whether one more tunnel of `key` fits the limits. Tunnels still
    /// opening count (an agent that never sends its `Settings` holds a
    /// place until the settings timeout), less `own`: the tunnel being
    /// added, itself still counted as opening.
    fn check(&self, state: &State<K>, key: &K, own: usize) -> Result<(), tonic::Status> {
        if state.closed {
            return Err(Self::draining_status());
        }
        let (opening_all, opening_key) = self.opening_counts(key);
        let (opening_all, opening_key) = (
            opening_all.saturating_sub(own),
            opening_key.saturating_sub(own),
        );
        if state.all.tunnels.len() + opening_all >= self.inner.max_tunnels {
            return Err(tonic::Status::resource_exhausted(format!(
                "too many reverse tunnels (max {})",
                self.inner.max_tunnels
            )));
        }
        let for_key = state.by_key.get(key).map_or(0, |p| p.tunnels.len()) + opening_key;
        if for_key >= self.inner.max_per_key {
            return Err(tonic::Status::resource_exhausted(format!(
                "too many reverse tunnels for this key (max {})",
                self.inner.max_per_key
            )));
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State<K>> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A snapshot of every live tunnel, draining ones included (last).
    pub fn tunnels(&self) -> Vec<ReverseTunnel<K>> {
        let state = self.lock();
        let mut all = state.all.tunnels.clone();
        all.extend(state.draining.iter().cloned());
        all
    }

    /// Drains the registry: it takes no new tunnel (an agent's
    /// `OpenReverseTunnel` is refused with `UNAVAILABLE`), every tunnel
    /// leaves its pools at once (so new calls go elsewhere: in a cluster,
    /// to the key's other replicas, as the keys leave the directory) and
    /// closes once its calls in flight have finished, or after `grace`
    /// (those still running then fail with `UNAVAILABLE`).
    ///
    /// Resolves, with how many tunnels it drained, once they have all
    /// closed. Each sends [`TunnelEvent::Draining`], then `Closed`.
    pub async fn drain(&self, grace: std::time::Duration) -> usize {
        let tunnels = {
            let mut state = self.lock();
            state.closed = true;
            let tunnels = std::mem::take(&mut state.all.tunnels);
            state.by_key.clear();
            for tunnel in &tunnels {
                tunnel.inner.draining.store(true, Ordering::Relaxed);
            }
            state.draining.extend(tunnels.iter().cloned());
            tunnels
        };
        if let Some(watch) = self.inner.watch.get() {
            let keys: std::collections::HashSet<&K> = tunnels.iter().map(|t| t.key()).collect();
            for key in keys {
                watch.key_changed(key, false);
            }
        }
        for tunnel in &tunnels {
            let _ = self
                .inner
                .events
                .send(TunnelEvent::Draining(tunnel.clone()));
        }
        let n = tunnels.len();
        let shutdowns = tunnels.into_iter().map(|tunnel| async move {
            let channel = tunnel.channel();
            channel.shutdown(grace).await;
        });
        futures_util::future::join_all(shutdowns).await;
        n
    }

    /// Whether the registry drains ([`drain`](Self::drain)).
    pub fn is_draining(&self) -> bool {
        self.lock().closed
    }

    /// A snapshot of the live tunnels of `key`.
    pub fn tunnels_for<Q>(&self, key: &Q) -> Vec<ReverseTunnel<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.lock()
            .by_key
            .get(key)
            .map(|p| p.tunnels.clone())
            .unwrap_or_default()
    }

    /// Number of live tunnels.
    pub fn len(&self) -> usize {
        self.lock().all.tunnels.len()
    }

    /// Whether there is no live tunnel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Open and close events from now on, as a `Stream`. Take
    /// [`tunnels`](Self::tunnels) after subscribing for the current state.
    pub fn subscribe(&self) -> TunnelEvents<K> {
        TunnelEvents {
            inner: BroadcastStream::new(self.inner.events.subscribe()),
        }
    }

    /// Waits until a tunnel of `key` (or any tunnel, for `None`) is live and
    /// returns it. Bound it with a timeout of your own
    /// (`tokio::time::timeout`).
    pub async fn wait_for(&self, key: Option<&K>) -> ReverseTunnel<K> {
        loop {
            let notify = self.waker(key);
            let added = notify.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(t) = self.pick(key) {
                return t;
            }
            added.await;
        }
    }

    /// What a call waiting for a tunnel of `key` (or any, for `None`)
    /// waits on: notified when one is added, or one that was opening
    /// failed. Keep it while waiting.
    pub(crate) fn waker(&self, key: Option<&K>) -> Arc<Notify> {
        match key {
            Some(key) => self.inner.wakers.of(key),
            None => self.inner.any.clone(),
        }
    }

    /// Wakes the calls waiting for `key`, and those waiting for any key.
    pub(crate) fn wake_waiters(&self, key: &K) {
        self.inner.wakers.wake(key);
        self.inner.any.notify_waiters();
    }

    /// The tunnels opening now.
    pub(crate) fn openings(&self) -> &Openings<K> {
        &self.inner.openings
    }

    /// Whether a tunnel of `key` (or any tunnel, for `None`) was accepted
    /// and is still opening (waiting for its `Settings`): its agent may
    /// count itself connected already, and a call through
    /// [`get`](Self::get) or [`channel`](Self::channel) waits for it.
    pub fn is_opening(&self, key: Option<&K>) -> bool {
        self.inner.openings.is_opening(key)
    }

    /// Tunnels opening now: in all, and of `key`.
    fn opening_counts(&self, key: &K) -> (usize, usize) {
        self.inner.openings.counts(key)
    }

    /// What is told of keys joining and leaving the pools, if anything.
    // Only a cluster uses it (feature `cluster`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn watch(&self) -> Option<&Arc<dyn KeyWatch<K>>> {
        self.inner.watch.get()
    }

    /// Tells `watch` of keys joining and leaving the pools from now on;
    /// `false` when something is told already.
    // Only a cluster uses it (feature `cluster`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn set_watch(&self, watch: Arc<dyn KeyWatch<K>>) -> bool {
        self.inner.watch.set(watch).is_ok()
    }

    /// A handle that does not keep the registry alive.
    // Only a cluster uses it (feature `cluster`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn downgrade(&self) -> WeakRegistry<K> {
        WeakRegistry(Arc::downgrade(&self.inner))
    }

    /// Each key in the pools with its calls in flight.
    // Only a cluster uses it (feature `cluster`).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn loads(&self) -> Vec<(K, u64)> {
        let state = self.lock();
        state
            .by_key
            .iter()
            .map(|(key, pool)| {
                let load = pool
                    .tunnels
                    .iter()
                    .map(|t| t.inner.channel.active_calls() as u64)
                    .sum();
                (key.clone(), load)
            })
            .collect()
    }

    /// Picks a tunnel of a pool: the least loaded, ties round-robin.
    pub(crate) fn pick<Q>(&self, key: Option<&Q>) -> Option<ReverseTunnel<K>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut state = self.lock();
        match key {
            None => state.all.pick(),
            Some(k) => state.by_key.get_mut(k).and_then(Pool::pick),
        }
    }

    /// Publishes a ready tunnel and removes it when it ends.
    /// The key of a tunnel with these opening headers.
    pub(crate) fn key_of(&self, headers: &http::HeaderMap, extensions: &http::Extensions) -> K {
        (self.inner.key_fn)(headers, extensions)
    }

    /// Whether a tunnel with these opening headers may open (limits).
    pub(crate) fn admit(
        &self,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<(), tonic::Status> {
        let key = (self.inner.key_fn)(headers, extensions);
        self.check(&self.lock(), &key, 0)
    }

    /// The refusal of a tunnel that comes to a draining registry.
    fn draining_status() -> tonic::Status {
        tonic::Status::unavailable("this server is draining: it takes no new tunnel")
    }

    pub(crate) fn add(
        &self,
        headers: http::HeaderMap,
        extensions: http::Extensions,
        channel: TunnelChannel,
    ) {
        let key = (self.inner.key_fn)(&headers, &extensions);
        let tunnel = ReverseTunnel {
            inner: Arc::new(TunnelEntry {
                id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
                key: key.clone(),
                metadata: headers,
                extensions,
                channel: channel.clone(),
                ejection: Default::default(),
                draining: Default::default(),
            }),
        };
        {
            let mut state = self.lock();
            if let Err(status) = self.check(&state, tunnel.key(), 1) {
                // Lost a race with another tunnel of the same key.
                drop(state);
                debug!(error = %status.message(), "reverse tunnel refused");
                channel.close();
                return;
            }
            state.all.tunnels.push(tunnel.clone());
            let pool = state.by_key.entry(key).or_default();
            pool.tunnels.push(tunnel.clone());
            if pool.tunnels.len() == 1 {
                if let Some(watch) = self.inner.watch.get() {
                    watch.key_changed(tunnel.key(), true);
                }
            }
        }
        debug!(tunnel = tunnel.id(), "reverse tunnel registered");
        let _ = self.inner.events.send(TunnelEvent::Opened(tunnel.clone()));
        self.wake_waiters(tunnel.key());
        // Removal happens in the reader's teardown, before the opening RPC
        // ends, so a closed tunnel is never picked again (P-75).
        let registry = Arc::downgrade(&self.inner);
        channel.on_close(move || {
            if let Some(inner) = registry.upgrade() {
                ReverseTunnelRegistry { inner }.remove(&tunnel);
            }
        });
    }

    fn remove(&self, tunnel: &ReverseTunnel<K>) {
        let id = tunnel.id();
        {
            let mut state = self.lock();
            state.draining.retain(|t| t.inner.id != id);
            state.all.remove(id);
            let key = tunnel.key();
            if let Some(pool) = state.by_key.get_mut(key) {
                pool.remove(id);
                if pool.tunnels.is_empty() {
                    state.by_key.remove(key);
                    if let Some(watch) = self.inner.watch.get() {
                        watch.key_changed(key, false);
                    }
                }
            }
        }
        debug!(tunnel = id, "reverse tunnel unregistered");
        let _ = self.inner.events.send(TunnelEvent::Closed(tunnel.clone()));
    }
}

/// A registry handle that does not keep it alive.
// Only a cluster uses it (feature `cluster`).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
pub(crate) struct WeakRegistry<K>(std::sync::Weak<Inner<K>>);

// Only a cluster uses it (feature `cluster`).
#[cfg_attr(not(feature = "cluster"), allow(dead_code))]
impl<K> WeakRegistry<K> {
    /// The registry, unless it is gone.
    pub(crate) fn upgrade(&self) -> Option<ReverseTunnelRegistry<K>> {
        self.0
            .upgrade()
            .map(|inner| ReverseTunnelRegistry { inner })
    }
}

impl<K> Clone for WeakRegistry<K> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// What is told of the keys of a registry's pools: the layer above that
/// shares them (a cluster, which publishes them).
pub(crate) trait KeyWatch<K>: Send + Sync + 'static {
    /// `key`'s first tunnel joined the pools (`present`), or its last left.
    fn key_changed(&self, key: &K, present: bool);

    /// For the layer that set it, to find itself again.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    fn as_any(&self) -> &dyn std::any::Any;
}

impl<K> fmt::Debug for ReverseTunnelRegistry<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = self
            .inner
            .state
            .lock()
            .map(|s| s.all.tunnels.len())
            .unwrap_or_default();
        f.debug_struct("ReverseTunnelRegistry")
            .field("tunnels", &len)
            .finish()
    }
}
