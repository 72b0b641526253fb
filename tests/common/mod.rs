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

/// Runs `fut` under [`TEST_TIMEOUT`].
pub async fn bounded<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, fut)
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
