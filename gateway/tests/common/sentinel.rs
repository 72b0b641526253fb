//! A replicated store for the cluster tests: a primary and a replica
//! (`store.rs`) watched by three Redis Sentinels (`redis-server --sentinel`),
//! all on loopback in temp dirs, stopped when dropped. Needs the same
//! `redis-server` as `store.rs` (Debian's runs in sentinel mode too).

use std::{path::PathBuf, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

use super::store::Store;

/// The name the Sentinels know the primary by.
pub const MASTER: &str = "mymaster";

/// One Sentinel, its log lines readable as they come.
struct Sentinel {
    _child: Child,
    port: u16,
    logs: mpsc::UnboundedReceiver<String>,
}

impl Sentinel {
    /// Starts one watching the primary on `primary` (quorum 2; a primary
    /// unanswering for 1 s is down), once it monitors it.
    async fn start(dir: &std::path::Path, primary: u16) -> Self {
        let port = super::free_port();
        let config = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {MASTER} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER} 1000\n\
                 sentinel failover-timeout {MASTER} 5000\n",
                dir.display()
            ),
        )
        .expect("sentinel config");
        let mut child = Command::new("redis-server")
            .arg(&config)
            .arg("--sentinel")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server in sentinel mode");
        let (tx, logs) = mpsc::unbounded_channel();
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let mut sentinel = Self {
            _child: child,
            port,
            logs,
        };
        sentinel.log_line("+monitor master").await;
        sentinel
    }

    /// Waits until it logged the replica (`+slave`) and the two other
    /// Sentinels (`+sentinel`), in whatever order.
    async fn knows_the_others(&mut self) {
        let (mut replica, mut others) = (false, 0);
        super::bounded(async {
            while !(replica && others == 2) {
                let line = self.logs.recv().await.expect("the sentinel ended");
                replica |= line.contains("+slave slave");
                others += usize::from(line.contains("+sentinel sentinel"));
            }
        })
        .await;
    }

    async fn log_line(&mut self, text: &str) -> String {
        super::bounded(async {
            while let Some(line) = self.logs.recv().await {
                if line.contains(text) {
                    return line;
                }
            }
            panic!(
                "the sentinel on {} ended without logging {text:?}",
                self.port
            );
        })
        .await
    }
}

/// A primary, its replica, and three Sentinels that know both and each
/// other.
pub struct Replicated {
    primary: Option<Store>,
    replica: Store,
    sentinels: Vec<Sentinel>,
    dir: PathBuf,
}

impl Replicated {
    pub async fn start() -> Self {
        let primary = Store::start().await;
        let replica = Store::start_replica_of(&primary).await;
        let dir = super::temp_dir();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(Sentinel::start(&dir, primary.port).await);
        }
        // Each has found the replica and the two other Sentinels: a
        // failover can be agreed on.
        for sentinel in &mut sentinels {
            sentinel.knows_the_others().await;
        }
        Self {
            primary: Some(primary),
            replica,
            sentinels,
            dir,
        }
    }

    /// `redis+sentinel://` naming the three Sentinels.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER}", hosts.join(","))
    }

    /// The primary (until killed) and the replica.
    pub fn stores(&self) -> impl Iterator<Item = &Store> {
        self.primary.iter().chain(std::iter::once(&self.replica))
    }

    /// Kills the primary (SIGKILL) and waits until the Sentinels have
    /// promoted the replica; returns it, the new primary.
    pub async fn kill_primary(&mut self) -> &Store {
        let primary = self.primary.take().expect("a primary to kill");
        let old = primary.port;
        primary.kill().await;
        let switched = self.sentinels[0].log_line("+switch-master").await;
        assert!(
            switched.ends_with(&format!("127.0.0.1 {old} 127.0.0.1 {}", self.replica.port)),
            "{switched}"
        );
        &self.replica
    }
}

impl Drop for Replicated {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
