//! Keep-connected mode: reopen a reverse tunnel after it drops, with capped
//! exponential backoff and jitter (beyond the Go reference).

use std::{
    collections::hash_map::RandomState,
    fmt,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

use bytes::Bytes;
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{
    error::{BoxError, Error},
    reverse::ReverseTunnelServer,
};

/// How long to wait between attempts to reopen a reverse tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay after the first failure, and after a tunnel that was open.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth factor per failed attempt.
    pub multiplier: f64,
    /// Random spread, as a fraction of the delay (0.2: ±20%).
    pub jitter: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling, up to 10 s, ±20%.
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

/// What a [`KeepConnected`] loop is doing.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ConnectionState {
    /// Attempts to open a tunnel so far.
    pub attempts: u64,
    /// Whether a tunnel is open now.
    pub connected: bool,
    /// Tunnels that were opened so far.
    pub tunnels_opened: u64,
    /// Why the last tunnel ended or the last attempt failed.
    pub last_error: Option<Error>,
    /// The loop has stopped.
    pub stopped: bool,
}

/// Handle on a reverse tunnel that reopens itself; made by
/// [`ReverseTunnelServer::keep_connected`].
///
/// Dropping the handle does not stop the loop; call [`stop`](Self::stop).
pub struct KeepConnected {
    state: watch::Receiver<ConnectionState>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl KeepConnected {
    /// The current state.
    pub fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of state.
    pub fn watch(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Waits until the state satisfies `f`; returns that state.
    pub async fn wait_until(&self, f: impl FnMut(&ConnectionState) -> bool) -> ConnectionState {
        let mut rx = self.state.clone();
        let found = rx.wait_for(f).await.map(|state| state.clone());
        found.unwrap_or_else(|_| rx.borrow().clone())
    }

    /// Stops the loop: the open tunnel shuts down gracefully and no new one
    /// is opened.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops the loop and waits until it has ended.
    pub async fn shutdown(self) -> ConnectionState {
        self.stop.cancel();
        let _ = self.task.await;
        let state = self.state.borrow().clone();
        state
    }
}

impl fmt::Debug for KeepConnected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepConnected")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl ReverseTunnelServer {
    /// Keeps a reverse tunnel open over `transport`: opens one, and whenever
    /// it ends or cannot be opened, waits ([`Backoff::default`]) and opens
    /// another. `transport` is cloned per attempt; a
    /// `tonic::transport::Channel` reconnects by itself.
    pub fn keep_connected<T>(&self, transport: T) -> KeepConnected
    where
        T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
        T::Future: Send,
        T::Error: Into<BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    {
        self.keep_connected_with(transport, Backoff::default())
    }

    /// [`keep_connected`](Self::keep_connected) with a backoff of your own.
    pub fn keep_connected_with<T>(&self, transport: T, backoff: Backoff) -> KeepConnected
    where
        T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
        T::Future: Send,
        T::Error: Into<BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    {
        let (tx, rx) = watch::channel(ConnectionState::default());
        let stop = CancellationToken::new();
        let server = self.clone();
        let task = tokio::spawn(run(server, transport, backoff, tx, stop.clone()));
        KeepConnected {
            state: rx,
            stop,
            task,
        }
    }
}

async fn run<T>(
    server: ReverseTunnelServer,
    transport: T,
    backoff: Backoff,
    state: watch::Sender<ConnectionState>,
    stop: CancellationToken,
) where
    T: tonic::client::GrpcService<tonic::body::Body> + Clone + Send + 'static,
    T::Future: Send,
    T::Error: Into<BoxError>,
    T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
{
    let mut delay = backoff.initial;
    let mut rng = Jitter::new();
    while !stop.is_cancelled() {
        state.send_modify(|s| s.attempts += 1);
        let mut opened = false;
        let result = server
            .serve_inner(transport.clone(), stop.clone().cancelled_owned(), || {
                opened = true;
                state.send_modify(|s| {
                    s.connected = true;
                    s.tunnels_opened += 1;
                });
            })
            .await;
        if let Err(err) = &result {
            debug!(error = %err.chain(), "reverse tunnel ended");
        }
        state.send_modify(|s| {
            s.connected = false;
            s.last_error = result.err();
        });
        if opened {
            delay = backoff.initial;
        }
        let wait = rng.spread(delay, backoff.jitter);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        delay = delay.mul_f64(backoff.multiplier.max(1.0)).min(backoff.max);
    }
    state.send_modify(|s| s.stopped = true);
}

/// A small xorshift generator for jitter; no need for cryptographic randomness.
struct Jitter(u64);

impl Jitter {
    fn new() -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(0x9E37_79B9_7F4A_7C15);
        Self(h.finish() | 1)
    }

    fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    fn spread(&mut self, d: Duration, jitter: f64) -> Duration {
        let j = jitter.clamp(0.0, 1.0);
        let factor = 1.0 - j + 2.0 * j * self.next_unit();
        d.mul_f64(factor)
    }
}
