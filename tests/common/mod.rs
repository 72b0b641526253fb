//! Loopback harness shared by the integration tests: real tonic servers on
//! `127.0.0.1:0`, bound before they are spawned, and real HTTP/2 clients.
#![allow(dead_code, unreachable_pub)]

use std::{future::Future, net::SocketAddr, time::Duration};

use grpctunnel::{TunnelChannel, TunnelLayer};
use grpctunnel_testing::Echo;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint, Server};

/// Bound on every test body: a hang fails fast instead of blocking CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs to the test output when `RUST_LOG` is set (for example
/// `RUST_LOG=grpctunnel=debug`).
pub fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// Runs `fut` under [`TEST_TIMEOUT`].
pub async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    trace();
    tokio::time::timeout(TEST_TIMEOUT, fut)
        .await
        .expect("test timed out")
}

/// Runs `fut` under `limit`.
pub async fn bounded_for<T>(limit: Duration, fut: impl Future<Output = T>) -> T {
    trace();
    tokio::time::timeout(limit, fut)
        .await
        .expect("test timed out")
}

/// A server running on loopback; stops when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl TestServer {
    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// A tonic server with `layer` in front of the echo service.
pub async fn tonic_server(layer: TunnelLayer, echo: Echo) -> TestServer {
    let (listener, addr) = listener().await;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(echo.server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            })
            .await
            .expect("server");
    });
    TestServer {
        addr,
        stop: Some(stop),
        task,
    }
}

/// A plain HTTP/2 channel to `addr`.
pub async fn connect(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect")
}

/// A forward tunnel to `addr` with default options.
pub async fn forward(addr: SocketAddr) -> TunnelChannel {
    TunnelChannel::builder()
        .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE)
        .open(connect(addr).await)
        .await
        .expect("open tunnel")
}

/// A reverse-tunnel registry keyed on the agent's `x-agent-key` header.
pub fn keyed_registry() -> grpctunnel::ReverseTunnelRegistry<String> {
    grpctunnel::ReverseTunnelRegistry::with_key(|headers, _| {
        headers
            .get("x-agent-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    })
}

pub mod raw;

/// Polls `cond` every millisecond until it holds or `limit` passes; returns
/// whether it held. Only for state that offers no event to wait on (plain
/// counters such as `TunnelLayer::stats` or a runtime's task count); the
/// interval paces the polling, it does not order anything.
pub async fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tick.tick().await;
    }
}

/// Resident set size of this process, in bytes (Linux `/proc/self/statm`).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // 4 KiB pages: the page size of every Linux target CI runs on.
    Some(pages * 4096)
}

/// A stand-in for a separate process: a runtime of its own whose every task
/// (listener, connections, handlers) is dropped at once by [`Process::kill`],
/// so that its sockets close as the OS closes a dead process's sockets.
pub struct Process {
    rt: Option<tokio::runtime::Runtime>,
}

impl Process {
    pub fn new() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("process runtime");
        Self { rt: Some(rt) }
    }

    pub fn spawn<F>(&self, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.rt.as_ref().expect("alive").spawn(fut)
    }

    /// A tonic server with `layer` in front of `echo`, inside this process.
    pub fn tonic_server(&self, layer: TunnelLayer, echo: Echo) -> SocketAddr {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        self.spawn(async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            let _ = Server::builder()
                .layer(layer)
                .add_service(echo.server())
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        addr
    }

    /// Drops every task of the process, so that its sockets close, and
    /// returns once they are all gone (its threads have exited).
    pub async fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5)))
                .await
                .expect("process shut down");
        }
    }
}

impl Default for Process {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub mod proxy;
