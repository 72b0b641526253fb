//! A real Redis server for the cluster tests: started on a free loopback
//! port in a temp dir, stopped when dropped. Without `redis-server` on
//! `PATH` the tests that need it show as ignored, with the reason
//! (`cfg(missing_redis_server)`, from `build.rs`); under `CI=true` they run
//! (`.ci/run` installs it) and a missing server is a failure.

use std::{path::PathBuf, process::Stdio};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// A running `redis-server`.
pub struct Store {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Store {
    /// Starts one on a free port.
    pub async fn start() -> Self {
        Self::start_on(super::free_port()).await
    }

    /// Starts one on `port` (a restart reuses its port).
    pub async fn start_on(port: u16) -> Self {
        Self::start_with(port, &["--port", &port.to_string()]).await
    }

    /// Starts one that takes only TLS on a free port, with the certificate
    /// and key given (PEM files), and the password `password`.
    pub async fn start_tls(cert: &str, key: &str, ca: &str, password: &str) -> Self {
        let port = super::free_port();
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ];
        Self::start_with(port, &args).await
    }

    /// Starts a replica of `primary` on a free port, once it holds a copy
    /// of the primary's data.
    pub async fn start_replica_of(primary: &Store) -> Self {
        let port = super::free_port();
        let args = [
            "--port",
            &port.to_string(),
            "--replicaof",
            "127.0.0.1",
            &primary.port.to_string(),
        ];
        Self::start_until(port, &args, "REPLICA sync: Finished with success").await
    }

    async fn start_with(port: u16, args: &[&str]) -> Self {
        Self::start_until(port, args, "Ready to accept connections").await
    }

    /// Starts one with `args`, once it logged `ready`.
    async fn start_until(port: u16, args: &[&str], ready: &str) -> Self {
        let dir = super::temp_dir();
        let spawned = Command::new("redis-server")
            .args(args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = spawned.unwrap_or_else(|e| {
            panic!("redis-server unavailable ({e}); install it (apt-get install redis-server)")
        });
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        super::bounded(async {
            while let Some(line) = lines.next_line().await.expect("stdout") {
                if line.contains(ready) {
                    return;
                }
            }
            panic!("redis-server ended before it logged {ready:?}");
        })
        .await;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, port, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it at once (SIGKILL) and waits for its end.
    pub async fn kill(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Runs `redis-cli` against it; returns its output.
    pub async fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .await
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// How many times the store ran `command` (`hgetall`, `script|load`),
    /// by its own count (`INFO commandstats`), including the commands its
    /// scripts ran; 0 before the first.
    pub async fn calls_of(&self, command: &str) -> u64 {
        self.stat_of(command, "calls").await
    }

    /// How many times clients asked for `command`: run, or refused (ACL,
    /// `rejected_calls`).
    pub async fn asks_of(&self, command: &str) -> u64 {
        self.stat_of(command, "calls").await + self.stat_of(command, "rejected_calls").await
    }

    /// The figure `name` of the store's `INFO commandstats` line for
    /// `command`.
    async fn stat_of(&self, command: &str, name: &str) -> u64 {
        let stats = self.cli(&["INFO", "commandstats"]).await;
        let line = format!("cmdstat_{command}:");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|fields| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            })
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}
