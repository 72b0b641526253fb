//! A TCP proxy on loopback that can cut every connection through it at
//! once, abruptly: both sockets are dropped with `SO_LINGER` 0, so both
//! peers get a reset, as when a host or a middlebox dies.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    conns: Mutex<Conns>,
    accepted: watch::Sender<u64>,
}

struct Conns {
    live: HashMap<u64, JoinHandle<()>>,
    kill: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and relays each connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let (listener, addr) = super::listener().await;
        let shared = Arc::new(Shared {
            conns: Mutex::new(Conns {
                live: HashMap::new(),
                kill: CancellationToken::new(),
            }),
            accepted: watch::Sender::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, target, shared.clone()));
        Self { addr, shared, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        *self.shared.accepted.borrow()
    }

    /// Waits until at least `n` connections were accepted.
    pub async fn wait_accepted(&self, n: u64) {
        let mut rx = self.shared.accepted.subscribe();
        let _ = rx.wait_for(|&a| a >= n).await;
    }

    /// Connections relayed now.
    pub fn live(&self) -> usize {
        self.shared.lock().live.len()
    }

    /// Resets every current connection (both sides) and returns once
    /// their sockets are closed; returns how many there were. The proxy
    /// keeps listening.
    pub async fn kill(&self) -> usize {
        let (conns, kill) = {
            let mut c = self.shared.lock();
            let kill = std::mem::replace(&mut c.kill, CancellationToken::new());
            (std::mem::take(&mut c.live), kill)
        };
        kill.cancel();
        let n = conns.len();
        for (_, task) in conns {
            let _ = task.await;
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        for (_, task) in self.shared.lock().live.drain() {
            task.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let mut next = 0u64;
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            continue;
        };
        next += 1;
        let id = next;
        let mut conns = shared.lock();
        let kill = conns.kill.clone();
        let forget = shared.clone();
        let task = tokio::spawn(async move {
            relay(inbound, target, kill).await;
            forget.lock().live.remove(&id);
        });
        conns.live.insert(id, task);
        drop(conns);
        shared.accepted.send_modify(|n| *n += 1);
    }
}

async fn relay(mut inbound: TcpStream, target: SocketAddr, kill: CancellationToken) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        let _ = inbound.set_zero_linger();
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        () = kill.cancelled() => {
            // Dropped right after: a reset to both peers, no FIN.
            let _ = inbound.set_zero_linger();
            let _ = outbound.set_zero_linger();
        }
    }
}
