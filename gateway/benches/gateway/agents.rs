//! Hub memory per connected idle agent.
//!
//! Method: a fresh `grpctunnel hub` process (with `--admin`, and
//! `--max-tunnels N --max-tunnels-per-key N`) is started and scraped once
//! on `/metrics`; its `VmRSS` is read once settled (`benches/tunnel/
//! memory.rs`: two readings 20 ms apart within 64 KiB). Then N agents
//! connect from this process, each as a real agent does: its own
//! `Endpoint::connect` (its own TCP connection, default settings) and one
//! `ReverseTunnelServer::keep_connected` reverse tunnel carrying the key
//! and the bearer token, serving echo. Once every agent's tunnel is open
//! and the hub's `grpctunnel_agents_connected` gauge (polled every 50 ms)
//! says N, the hub's settled `VmRSS` is read again: (after - before) / N
//! is the resident cost of one idle agent in the hub (its connection, its
//! tunnel, its registry entry).
//!
//! Each agent takes a file descriptor here and one in the hub (which
//! inherits this process's limits), so the soft `RLIMIT_NOFILE` is raised
//! (`prlimit`) when it is below N plus a margin; when it cannot be, N is
//! lowered and a line says so.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use grpctunnel::ReverseTunnelServer;
use grpctunnel_testing::Echo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Semaphore,
};

use crate::{
    memory,
    setups::{self, Scratch, KEY, LIMIT, TOKEN},
};

/// Descriptors this process needs besides the agents' connections.
const MARGIN: u64 = 256;
/// Agents between starting to connect and their tunnel being open.
const CONNECT_WINDOW: usize = 64;

/// One repetition of the memory measurement.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Agents connected.
    pub agents: usize,
    /// Hub `VmRSS` before and after, bytes.
    pub before: u64,
    pub after: u64,
    /// Time from the first connect to the gauge saying N.
    pub connect: Duration,
}

impl Memory {
    pub fn kib_per_agent(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.agents as f64 / 1024.0
    }
}

/// (soft, hard) `RLIMIT_NOFILE` of this process; `None` is unlimited.
fn nofile() -> Option<(Option<u64>, Option<u64>)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.split_whitespace().skip(3);
    let parse = |v: Option<&str>| match v? {
        "unlimited" => Some(None),
        v => v.parse().ok().map(Some),
    };
    Some((parse(fields.next())?, parse(fields.next())?))
}

/// How many agents fit the descriptor limit, after raising the soft limit
/// (and, if allowed, the hard one) with `prlimit` when needed. The second
/// value explains a shortfall or a raise.
pub fn usable_agents(wanted: usize) -> (usize, Option<String>) {
    let needed = wanted as u64 + MARGIN;
    let Some((soft, hard)) = nofile() else {
        return (
            wanted,
            Some("cannot read /proc/self/limits; trying all agents".into()),
        );
    };
    if soft.is_none_or(|s| s >= needed) {
        return (wanted, None);
    }
    let pid = std::process::id().to_string();
    let raise = |soft: u64, hard: Option<u64>| {
        let hard = hard.map_or("unlimited".to_owned(), |h| h.to_string());
        std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={soft}:{hard}")])
            .status()
            .is_ok_and(|s| s.success())
    };
    // Soft up to what is needed within the hard limit; the hard limit too
    // if that is not enough (allowed for root).
    let _ = raise(hard.map_or(needed, |h| h.min(needed)), hard);
    if hard.is_some_and(|h| h < needed) {
        let _ = raise(needed, Some(needed));
    }
    let now = nofile().and_then(|(s, _)| s).unwrap_or(u64::MAX);
    let usable = (now.saturating_sub(MARGIN) as usize).min(wanted);
    let was = soft.map_or("unlimited".into(), |s| s.to_string());
    let note = if usable < wanted {
        format!(
            "file limit {now} (was {was}): {usable} agents instead of {wanted}; \
             raise `ulimit -n` to {needed} for all"
        )
    } else {
        format!("raised the soft file limit from {was} to {now} for {wanted} agents")
    };
    (usable, Some(note))
}

/// One plain HTTP/1.1 GET of the admin port's `/metrics`; the value of
/// `grpctunnel_agents_connected`.
async fn agents_connected(admin: &str) -> Result<f64, String> {
    let mut conn = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|e| format!("admin {admin}: {e}"))?;
    let req = format!("GET /metrics HTTP/1.1\r\nhost: {admin}\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("admin {admin}: {e}"))?;
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .await
        .map_err(|e| format!("admin {admin}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("grpctunnel_agents_connected "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("admin {admin}: no grpctunnel_agents_connected in /metrics"))
}

/// Connects `n` idle agents to `hub`, at most [`CONNECT_WINDOW`] opening
/// at a time; returns their loops (to stop them) and the first failure.
async fn connect_all(
    hub: &str,
    n: usize,
) -> (Vec<grpctunnel::reverse::KeepConnected>, Result<(), String>) {
    let server = ReverseTunnelServer::new(Echo::new().server())
        .metadata("grpctunnel-key", KEY)
        .metadata("authorization", &format!("Bearer {TOKEN}"));
    let window = Arc::new(Semaphore::new(CONNECT_WINDOW));
    let endpoint = match setups::agent_endpoint(hub) {
        Ok(e) => e,
        Err(e) => return (Vec::new(), Err(e)),
    };
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (server, window, endpoint) = (server.clone(), window.clone(), endpoint.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = window.acquire_owned().await.map_err(|e| e.to_string())?;
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| format!("agent connect: {e}"))?;
            let agent = server.keep_connected(channel);
            let state = agent
                .wait_until(|s| s.connected || s.last_error.is_some())
                .await;
            if state.connected {
                Ok(agent)
            } else {
                agent.stop();
                Err(format!(
                    "agent tunnel: {}",
                    state
                        .last_error
                        .as_ref()
                        .map_or("no error".into(), grpctunnel::Error::chain)
                ))
            }
        }));
    }
    let mut agents = Vec::with_capacity(n);
    let mut first_error = None;
    let mut failed = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(agent)) => agents.push(agent),
            Ok(Err(e)) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("agent task: {e}"));
            }
        }
    }
    let result = match first_error {
        None => Ok(()),
        Some(e) => Err(format!("{failed} of {n} agents failed; first: {e}")),
    };
    (agents, result)
}

/// Polls the gauge every 50 ms (bounded by [`LIMIT`]) until it says `n`.
async fn wait_gauge(admin: &str, n: usize) -> Result<(), String> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let now = agents_connected(admin).await?;
        if now as usize == n {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "hub gauge grpctunnel_agents_connected is {now}, not {n}, after {} s",
                LIMIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One repetition: a fresh hub, `n` agents, the hub's RSS before and after.
pub fn measure(scratch: &Scratch, n: usize) -> Result<Memory, String> {
    let rt = tokio::runtime::Runtime::new().map_err(|e| format!("runtime: {e}"))?;
    let flags = [
        "--admin",
        "127.0.0.1:0",
        "--max-tunnels",
        &n.to_string(),
        "--max-tunnels-per-key",
        &n.to_string(),
    ]
    .map(str::to_owned);
    let hub = setups::start_hub(scratch, &flags)?;
    let admin = hub.admin.clone().ok_or("the hub printed no ADMIN line")?;
    let pid = hub.child.pid();
    let rss =
        |what: &str| memory::settled_rss(pid).ok_or(format!("hub VmRSS {what}: not readable"));
    // The exporter's first render allocates: before the baseline.
    rt.block_on(agents_connected(&admin))?;
    let before = rss("before")?;
    let start = Instant::now();
    let (agents, connected) = rt.block_on(connect_all(&hub.addr, n));
    let outcome = connected
        .and_then(|()| rt.block_on(wait_gauge(&admin, n)))
        .and_then(|()| {
            let connect = start.elapsed();
            let after = rss("after")?;
            Ok(Memory {
                agents: n,
                before,
                after,
                connect,
            })
        });
    for agent in &agents {
        agent.stop();
    }
    drop(hub);
    rt.shutdown_timeout(Duration::from_secs(5));
    outcome
}
