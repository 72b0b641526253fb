//! The `frp` setup: what a user installs instead of the gateway to reach a
//! private gRPC server. frp (fatedier/frp v0.65.0) built by `go build` from
//! the Go module proxy (module `gateway/benches/frp`): `frps` on the
//! "public" side, `frpc` next to the upstream with one `tcp` proxy to it,
//! frp's defaults otherwise (one TCP connection between them, multiplexed
//! by yamux). The caller's tonic `Channel` dials frps's proxy port; frp
//! copies the bytes and never parses HTTP/2.
//!
//! Its memory figure: a fresh `frps`'s `VmRSS` before and after N idle
//! clients have connected, each with its own control connection, login and
//! one tcp proxy, as N `frpc` processes would (`cmd/idleclients`: frp's own
//! client library, N services in one process), divided by N.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, Instant},
};

use crate::{
    go_build::go_build,
    memory,
    proc::Child,
    setups::{free_port, Scratch, LIMIT},
};

/// frp's version, as pinned by `gateway/benches/frp/go.mod`.
pub const VERSION: &str = "v0.65.0";

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The directory of the built `frps`, `frpc` and `idleclients`, built on
/// first use; `Err` says why not (no `go`, or the build failed).
pub fn programs() -> Result<PathBuf, String> {
    BUILT.get_or_init(build).clone()
}

fn build() -> Result<PathBuf, String> {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/frp");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("frp");
    go_build(
        &module,
        &out,
        &[
            "github.com/fatedier/frp/cmd/frps",
            "github.com/fatedier/frp/cmd/frpc",
            "./cmd/idleclients",
        ],
    )?;
    Ok(out)
}

/// Writes `name` in the scratch directory.
fn write(scratch: &Scratch, name: &str, text: &str) -> Result<String, String> {
    let path = scratch.0.join(name);
    std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path.display().to_string())
}

/// Starts `frps` on a free loopback port (its proxies' ports on loopback
/// too); returns it and its control port.
fn start_frps(dir: &Path, scratch: &Scratch) -> Result<(Child, u16), String> {
    let port = free_port()?;
    let config = write(
        scratch,
        "frps.toml",
        &format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nproxyBindAddr = \"127.0.0.1\"\n\
             log.level = \"info\"\n"
        ),
    )?;
    let mut frps = Child::spawn("frps", &dir.join("frps"), &["-c".into(), config])?;
    wait_for_line(&mut frps, "frps started successfully")?;
    Ok((frps, port))
}

/// The frpc config: frps at `port`, one tcp proxy from `remote` (0: frps
/// picks) to `local`.
fn frpc_config(port: u16, local: u16, remote: u16) -> String {
    format!(
        "serverAddr = \"127.0.0.1\"\nserverPort = {port}\nlog.level = \"info\"\n\n\
         [[proxies]]\nname = \"bench\"\ntype = \"tcp\"\nlocalIP = \"127.0.0.1\"\n\
         localPort = {local}\nremotePort = {remote}\n"
    )
}

fn wait_for_line(child: &mut Child, text: &str) -> Result<(), String> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match child.next_line(left)? {
            Some(line) if line.contains(text) => return Ok(()),
            Some(_) => {}
            None => return Err(format!("{} exited before {text:?}", child.name)),
        }
    }
}

/// A running frps and frpc: the address callers dial.
pub struct Frp {
    pub frps: Child,
    pub frpc: Child,
    pub addr: String,
}

/// Starts frps and an frpc whose tcp proxy forwards to `upstream`
/// (`127.0.0.1:port`); returns once frpc says the proxy started.
pub fn start(scratch: &Scratch, upstream: &str) -> Result<Frp, String> {
    let dir = programs()?;
    let local: u16 = upstream
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .ok_or_else(|| format!("upstream address {upstream:?} has no port"))?;
    let (frps, port) = start_frps(&dir, scratch)?;
    let remote = free_port()?;
    let config = write(scratch, "frpc.toml", &frpc_config(port, local, remote))?;
    let mut frpc = Child::spawn("frpc", &dir.join("frpc"), &["-c".into(), config])?;
    wait_for_line(&mut frpc, "start proxy success")?;
    Ok(Frp {
        frps,
        frpc,
        addr: format!("127.0.0.1:{remote}"),
    })
}

/// One repetition of frps's memory per idle client.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub clients: usize,
    pub before: u64,
    pub after: u64,
    pub connect: Duration,
}

impl Memory {
    pub fn kib_per_client(&self) -> f64 {
        (self.after as f64 - self.before as f64) / self.clients as f64 / 1024.0
    }
}

/// A fresh frps, `n` idle clients, frps's settled RSS before and after.
pub fn measure(scratch: &Scratch, n: usize, upstream_port: u16) -> Result<Memory, String> {
    let dir = programs()?;
    let (frps, port) = start_frps(&dir, scratch)?;
    let pid = frps.pid();
    let rss =
        |what: &str| memory::settled_rss(pid).ok_or(format!("frps VmRSS {what}: not readable"));
    let before = rss("before")?;
    let config = write(scratch, "idle.toml", &frpc_config(port, upstream_port, 0))?;
    let start = Instant::now();
    let mut clients = Child::spawn(
        "idleclients",
        &dir.join("idleclients"),
        &[
            "-config".into(),
            config,
            "-n".into(),
            n.to_string(),
            "-limit".into(),
            format!("{}s", LIMIT.as_secs() * 5),
        ],
    )?;
    let ready = clients.expect("READY ", LIMIT * 6)?;
    if ready.trim() != n.to_string() {
        return Err(format!("idleclients: READY {ready}, wanted {n}"));
    }
    let connect = start.elapsed();
    let after = rss("after")?;
    drop(clients);
    drop(frps);
    Ok(Memory {
        clients: n,
        before,
        after,
        connect,
    })
}
