//! A loopback TCP relay whose open connections can be frozen: kept open,
//! nothing forwarded either way, as when a NAT or load balancer drops its
//! mapping without a word. Connections made after a freeze flow again;
//! during a partition they are held silent too, until it heals.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

/// The relay; its tasks end with the test's runtime.
pub struct FreezingRelay {
    pub addr: SocketAddr,
    /// Cancelled to freeze the connections accepted so far.
    current: Arc<Mutex<CancellationToken>>,
    /// While set, new connections are accepted and held, silent.
    partitioned: Arc<std::sync::atomic::AtomicBool>,
}

impl FreezingRelay {
    /// Relays every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let tokens = current.clone();
        let partitioned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = partitioned.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if cut.load(std::sync::atomic::Ordering::SeqCst) {
                    tokio::spawn(async move {
                        std::future::pending::<()>().await;
                        drop(inbound);
                    });
                    continue;
                }
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let frozen = tokens.lock().expect("lock").clone();
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, frozen.clone()));
                tokio::spawn(pump(out_read, in_write, frozen));
            }
        });
        Self {
            addr,
            current,
            partitioned,
        }
    }

    /// Cuts the link: connections open now freeze, new ones are held
    /// silent, until [`heal`](Self::heal).
    pub fn partition(&self) {
        self.partitioned
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.freeze();
    }

    /// New connections flow again (those frozen stay frozen).
    pub fn heal(&self) {
        self.partitioned
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Freezes every connection open now.
    pub fn freeze(&self) {
        let mut current = self.current.lock().expect("lock");
        current.cancel();
        *current = CancellationToken::new();
    }
}

/// Copies `from` to `to` until either ends; once `frozen`, holds both
/// open and copies nothing.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: CancellationToken,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            () = frozen.cancelled() => break,
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Frozen: the sockets stay open, silent, until the test ends.
    std::future::pending::<()>().await;
    drop((from, to));
}
