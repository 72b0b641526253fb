//! [`ReverseChannel`]: a channel over a pool of reverse tunnels.

use std::{
    fmt,
    future::Future,
    hash::Hash,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::{
    client::{ResponseBody, ResponseFuture, TunnelChannel},
    engine::stats::Stats,
    error::{BoxError, Error},
    reverse::{
        opening::OPENING_WAIT,
        served::{served, ServedBy},
        ReverseTunnel, ReverseTunnelRegistry,
    },
    wire::timeout,
};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A channel over the reverse tunnels of a registry (all of them, or those
/// of one key), made by [`ReverseTunnelRegistry::channel`] and
/// [`ReverseTunnelRegistry::get`].
///
/// Each call picks one tunnel, round-robin, and stays on it (P-74). With no
/// tunnel in the pool a call fails at once with `UNAVAILABLE` `no channels
/// ready`, unless [`wait_for_ready`](Self::wait_for_ready) is set: then it
/// waits for a tunnel, for at most the call's own timeout (`grpc-timeout`,
/// as set by `tonic::Request::set_timeout`) or until its future is dropped.
/// Either way, while a tunnel for the pool is opening (accepted, its
/// `Settings` not there yet: its agent may already count itself
/// connected), a call waits for it, up to 5 seconds and the call's timeout.
///
/// Like a [`TunnelChannel`], it tells how it is doing:
/// [`stats`](Self::stats) and [`active_calls`](Self::active_calls) add up
/// the tunnels it can use now, and [`terminal_error`](Self::terminal_error)
/// says why the last tunnel it used ended once none is left.
pub struct ReverseChannel<K = ()> {
    registry: ReverseTunnelRegistry<K>,
    key: Option<K>,
    wait: bool,
    /// Set on the clone that takes a call over once the wait for an
    /// opening tunnel is over, so that it does not wait again.
    past_opening: bool,
    /// The tunnel the last call went to, shared by clones.
    last: Arc<LastUsed>,
}

/// The tunnel a channel used last (kept to tell why it ended).
#[derive(Default)]
struct LastUsed {
    /// Its registry ID (0: none yet), checked before taking the lock.
    id: AtomicU64,
    channel: Mutex<Option<TunnelChannel>>,
}

impl LastUsed {
    fn record(&self, id: u64, channel: &TunnelChannel) {
        if self.id.swap(id, Ordering::Relaxed) != id {
            *self.channel.lock().unwrap_or_else(|p| p.into_inner()) = Some(channel.clone());
        }
    }

    fn channel(&self) -> Option<TunnelChannel> {
        self.channel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl<K: Clone> Clone for ReverseChannel<K> {
    fn clone(&self) -> Self {
        Self {
            registry: self.registry.clone(),
            key: self.key.clone(),
            wait: self.wait,
            past_opening: self.past_opening,
            last: self.last.clone(),
        }
    }
}

impl<K> ReverseChannel<K> {
    pub(crate) fn new(registry: ReverseTunnelRegistry<K>, key: Option<K>) -> Self {
        Self {
            registry,
            key,
            wait: false,
            past_opening: false,
            last: Arc::default(),
        }
    }

    /// Whether a call waits for a tunnel when the pool is empty instead of
    /// failing with `UNAVAILABLE`. Default: `false`, as in the Go reference.
    pub fn wait_for_ready(mut self, wait: bool) -> Self {
        self.wait = wait;
        self
    }
}

impl<K> ReverseChannel<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// The tunnels a call could go to now.
    fn pool(&self) -> Vec<ReverseTunnel<K>> {
        match &self.key {
            Some(key) => self.registry.tunnels_for(key),
            None => self.registry.tunnels(),
        }
    }

    /// The counters of the tunnels this channel can use now, added up
    /// (`tunnels_open` is their number). A tunnel's counts leave the sum
    /// when it closes.
    pub fn stats(&self) -> Stats {
        let pool = self.pool();
        let mut stats: Stats = pool.iter().map(|t| t.channel().stats()).sum();
        stats.tunnels_open = pool.len() as u64;
        stats.tunnels_total = pool.len() as u64;
        stats
    }

    /// Calls in flight on the tunnels this channel can use now.
    pub fn active_calls(&self) -> usize {
        self.pool().iter().map(|t| t.channel().active_calls()).sum()
    }

    /// Whether a call made now finds a tunnel.
    pub fn is_ready(&self) -> bool {
        !self.pool().is_empty()
    }

    /// Why the last tunnel this channel used ended, when no tunnel is left
    /// for it (calls then fail with `UNAVAILABLE`); `None` while one is
    /// there, or when this channel never used one.
    pub fn terminal_error(&self) -> Option<Error> {
        if self.is_ready() {
            return None;
        }
        self.last.channel()?.terminal_error()
    }
}

impl<K, B> Service<http::Request<B>> for ReverseChannel<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<ResponseBody>;
    type Error = Error;
    type Future = ReverseResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // In a cluster, a busy local pool compares its load with the other
        // replicas' (an idle local tunnel is always best).
        #[cfg(feature = "cluster")]
        if let (Some(_), Some(key)) = (self.registry.cluster_link(), &self.key) {
            if let Some(tunnel) = self.registry.pick(Some(key)) {
                if tunnel.channel().active_calls() > 0 {
                    let (registry, key, wait) = (self.registry.clone(), key.clone(), self.wait);
                    let req = req.map(tonic::body::Body::new);
                    return ReverseResponseFuture::wait(Box::pin(
                        crate::reverse::cluster::balance(registry, key, req, wait),
                    ));
                }
            }
        }
        if let Some(tunnel) = self.registry.pick(self.key.as_ref()) {
            let mut channel = tunnel.channel();
            self.last.record(tunnel.id(), &channel);
            return ReverseResponseFuture::call(channel.call(req), tunnel.id());
        }
        if !self.past_opening && self.registry.is_opening(self.key.as_ref()) {
            return self.after_opening(req);
        }
        #[cfg(feature = "cluster")]
        if let (Some(_), Some(key)) = (self.registry.cluster_link(), &self.key) {
            let (registry, key, wait) = (self.registry.clone(), key.clone(), self.wait);
            let req = req.map(tonic::body::Body::new);
            return ReverseResponseFuture::wait(Box::pin(crate::reverse::cluster::forward(
                registry, key, req, wait,
            )));
        }
        if !self.wait {
            return ReverseResponseFuture::failed(ResponseFuture::failed(
                tonic::Status::unavailable("no channels ready"),
            ));
        }
        let registry = self.registry.clone();
        let key = self.key.clone();
        let last = self.last.clone();
        let timeout = timeout::grpc_timeout(req.headers());
        ReverseResponseFuture::wait(Box::pin(async move {
            let wait = registry.wait_for(key.as_ref());
            let tunnel = match timeout {
                None => wait.await,
                Some(t) => match tokio::time::timeout(t, wait).await {
                    Ok(tunnel) => tunnel,
                    Err(_) => {
                        return ResponseFuture::failed(tonic::Status::deadline_exceeded(
                            "context deadline exceeded while waiting for a tunnel",
                        ))
                        .await
                    }
                },
            };
            let mut channel = tunnel.channel();
            last.record(tunnel.id(), &channel);
            served(channel.call(req).await, ServedBy::Tunnel(tunnel.id()))
        }))
    }
}

impl<K> ReverseTunnelRegistry<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// A channel over every tunnel, picking one round-robin per call. With
    /// no tunnel, calls fail at once with `UNAVAILABLE` `no channels ready`
    /// unless [`ReverseChannel::wait_for_ready`] is set.
    pub fn channel(&self) -> ReverseChannel<K> {
        ReverseChannel::new(self.clone(), None)
    }

    /// A channel over the tunnels of `key`, picking one round-robin per call.
    ///
    /// Takes the key borrowed, as `HashMap::get` does: with `String` keys,
    /// `registry.get("agent-7")`.
    pub fn get<Q>(&self, key: &Q) -> ReverseChannel<K>
    where
        Q: ToOwned<Owned = K> + ?Sized,
    {
        ReverseChannel::new(self.clone(), Some(key.to_owned()))
    }

    /// Waits up to [`OPENING_WAIT`] for a tunnel of `key` (or any) to be
    /// ready; `None` once none is opening any more, or the wait ran out.
    async fn wait_for_opening(&self, key: Option<&K>) -> Option<ReverseTunnel<K>> {
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

#[cfg(feature = "cluster")]
impl ReverseTunnelRegistry<String> {
    /// Waits until `key` is served somewhere: by a tunnel of this
    /// registry, or (in a cluster) by another replica; returns the channel
    /// of the key ([`get`](Self::get)). [`wait_for`](Self::wait_for) sees
    /// this replica's tunnels only, since it returns one. Bound it with a
    /// timeout of your own.
    pub async fn wait_for_key(&self, key: &str) -> ReverseChannel<String> {
        crate::reverse::cluster::wait_for_key(self, key).await;
        self.get(key)
    }
}

impl<K> ReverseChannel<K>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    /// A call made while a tunnel of the pool is opening: waits for it (up
    /// to the opening bound and the call's timeout); if it fails to open,
    /// the call goes on as if it had never been there.
    fn after_opening<B>(&mut self, req: http::Request<B>) -> ReverseResponseFuture
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let mut rest = self.clone();
        rest.past_opening = true;
        let timeout = timeout::grpc_timeout(req.headers());
        ReverseResponseFuture::wait(Box::pin(async move {
            let opened = rest.registry.wait_for_opening(rest.key.as_ref());
            let opened = match timeout {
                Some(t) if t < OPENING_WAIT => match tokio::time::timeout(t, opened).await {
                    Ok(opened) => opened,
                    Err(_) => {
                        return ResponseFuture::failed(tonic::Status::deadline_exceeded(
                            "context deadline exceeded while a tunnel was opening",
                        ))
                        .await
                    }
                },
                _ => opened.await,
            };
            match opened {
                Some(tunnel) => {
                    let mut channel = tunnel.channel();
                    rest.last.record(tunnel.id(), &channel);
                    served(channel.call(req).await, ServedBy::Tunnel(tunnel.id()))
                }
                None => rest.call(req).await,
            }
        }))
    }
}

pin_project! {
    /// Response future of [`ReverseChannel`].
    pub struct ReverseResponseFuture {
        #[pin]
        kind: Kind,
        // The tunnel a direct call went to.
        tunnel: Option<u64>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind {
        Call { #[pin] fut: ResponseFuture },
        Wait { fut: BoxFuture<Result<http::Response<ResponseBody>, Error>> },
    }
}

impl ReverseResponseFuture {
    fn call(fut: ResponseFuture, tunnel: u64) -> Self {
        Self {
            kind: Kind::Call { fut },
            tunnel: Some(tunnel),
        }
    }

    fn failed(fut: ResponseFuture) -> Self {
        Self {
            kind: Kind::Call { fut },
            tunnel: None,
        }
    }

    fn wait(fut: BoxFuture<Result<http::Response<ResponseBody>, Error>>) -> Self {
        Self {
            kind: Kind::Wait { fut },
            tunnel: None,
        }
    }
}

impl Future for ReverseResponseFuture {
    type Output = Result<http::Response<ResponseBody>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Call { fut } => {
                let resp = std::task::ready!(fut.poll(cx));
                Poll::Ready(match this.tunnel.take() {
                    Some(id) => served(resp, ServedBy::Tunnel(id)),
                    None => resp,
                })
            }
            KindProj::Wait { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl fmt::Debug for ReverseResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseResponseFuture")
            .finish_non_exhaustive()
    }
}

impl<K: fmt::Debug> fmt::Debug for ReverseChannel<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseChannel")
            .field("key", &self.key)
            .field("wait_for_ready", &self.wait)
            .finish()
    }
}
