//! The processes of a run and the callers' channels.
//!
//! - `upstream`: the echo service (`grpctunnel_testing::Echo`), this bench
//!   binary re-executed with `--role upstream`, with the tunnel bench's
//!   server settings (`benches/tunnel/config.rs`); one for the whole run,
//!   shared by both setups.
//! - `direct`: a tonic `Channel` (the tunnel bench's endpoint settings) to
//!   the upstream.
//! - `gateway`: the same kind of `Channel` to a `grpctunnel hub` process,
//!   every call carrying `grpctunnel-key: bench`; a `grpctunnel agent`
//!   process serves that key and forwards to the upstream. Hub and agent
//!   are the real binary (`CARGO_BIN_EXE_grpctunnel`, the release build
//!   under `cargo bench`) with their default settings, fresh for each
//!   repetition.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tonic::{
    metadata::MetadataValue,
    service::interceptor::InterceptedService,
    transport::{Channel, Endpoint},
};

use crate::{config, proc::Child};

/// The gateway binary (hub and agent).
pub const BIN: &str = env!("CARGO_BIN_EXE_grpctunnel");
/// The key the agents register and the callers call.
pub const KEY: &str = "bench";
/// The agents' bearer token (the hub reads it from a file).
pub const TOKEN: &str = "gateway-bench-token";
/// Bounds every wait for a child's line or an agent: only a failure takes
/// this long.
pub const LIMIT: Duration = Duration::from_secs(60);

/// The interceptor of the gateway's callers.
pub type AddHeaders = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
/// The channel of the gateway setup: a tonic `Channel` to the hub whose
/// calls carry the key header.
pub type GatewayChannel = InterceptedService<Channel, AddHeaders>;

fn add_key(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut()
        .insert("grpctunnel-key", MetadataValue::from_static(KEY));
    Ok(req)
}

fn add_key_and_wait(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut()
        .insert("grpctunnel-wait", MetadataValue::from_static("true"));
    add_key(req)
}

/// Runs a child role (`--role ...`) on its own runtime; a failure is
/// printed as `bench <name>: <error>` and exits non-zero.
pub fn child_role<F, Fut>(name: &str, run: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let done = tokio::runtime::Runtime::new()
        .map_err(|e| format!("runtime: {e}"))
        .and_then(|rt| rt.block_on(run()));
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench {name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Tells the orchestrator where a child listens (`LISTENING <addr>` on
/// stdout), and exits the process when its stdin reaches EOF (the
/// orchestrator stopped it, or ended).
pub fn announce(addr: std::net::SocketAddr) {
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "LISTENING {addr}");
        let _ = out.flush();
    }
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
}

/// `--role upstream`: serves echo on a free loopback port, prints
/// `LISTENING <addr>`, and exits when stdin reaches EOF.
pub fn upstream_role() -> ExitCode {
    child_role("upstream", || async {
        let (incoming, addr) = config::incoming().map_err(|e| e.to_string())?;
        announce(addr);
        config::server()
            .add_service(Echo::new().server())
            .serve_with_incoming(incoming)
            .await
            .map_err(|e| e.to_string())
    })
}

/// Writes a secret as an operator keeps one, readable by its owner only
/// (the hub warns of any other mode).
fn write_secret(path: &std::path::Path, contents: &str) -> Result<(), String> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// A directory for the hub's config and token files, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> Result<Self, String> {
        let dir =
            std::env::temp_dir().join(format!("grpctunnel-gateway-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let token = dir.join("agent.token");
        write_secret(&token, &format!("{TOKEN}\n"))?;
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!(
                // One token for the idle agents' whole fleet: its tunnel
                // quota raised, as an operator would.
                "[[agent]]\ntoken_file = {:?}\nmax_tunnels = 1000000\nkeys = [{KEY:?}]\n",
                token.display().to_string()
            ),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        Ok(Self(dir))
    }

    pub fn config(&self) -> String {
        self.0.join("hub.toml").display().to_string()
    }

    pub fn token(&self) -> String {
        self.0.join("agent.token").display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

/// Starts the upstream child; returns it and its address.
pub fn start_upstream() -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child = Child::spawn("upstream", &exe, &strings(&["--role", "upstream"]))?;
    let addr = child.expect("LISTENING ", LIMIT)?;
    Ok((child, addr))
}

/// A hub process: its address, and its admin address if it has one.
pub struct Hub {
    pub child: Child,
    pub addr: String,
    pub admin: Option<String>,
}

/// Starts `grpctunnel hub` on a free loopback port with the scratch
/// config, plus `extra` flags; with `--admin`, reads `ADMIN` first.
pub fn start_hub(scratch: &Scratch, extra: &[String]) -> Result<Hub, String> {
    let mut args = strings(&["hub", "--listen", "127.0.0.1:0", "--config"]);
    args.push(scratch.config());
    args.extend_from_slice(extra);
    let mut child = Child::spawn("hub", Path::new(BIN), &args)?;
    let admin = if extra.iter().any(|a| a == "--admin") {
        Some(child.expect("ADMIN ", LIMIT)?)
    } else {
        None
    };
    let addr = child.expect("LISTENING ", LIMIT)?;
    Ok(Hub { child, addr, admin })
}

/// Starts `grpctunnel agent` for [`KEY`], dialling `hub` and forwarding to
/// `upstream`.
pub fn start_agent(scratch: &Scratch, hub: &str, upstream: &str) -> Result<Child, String> {
    let args = vec![
        "agent".to_owned(),
        "--hub".to_owned(),
        format!("http://{hub}"),
        "--key".to_owned(),
        KEY.to_owned(),
        "--token-file".to_owned(),
        scratch.token(),
        "--upstream".to_owned(),
        format!("http://{upstream}"),
    ];
    Child::spawn("agent", Path::new(BIN), &args)
}

/// A tonic `Channel` to `addr` with the tunnel bench's client settings.
pub async fn connect(addr: &str) -> Result<Channel, String> {
    config::endpoint(addr)?
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

/// The gateway's caller channel: `channel` (to the hub) plus the key.
pub fn gateway_channel(channel: Channel) -> GatewayChannel {
    InterceptedService::new(channel, add_key as AddHeaders)
}

/// Waits until the hub routes calls for [`KEY`] to an agent: one unary
/// call with `grpctunnel-wait: true`, which the hub holds until the
/// agent's tunnel is registered (bounded by the call's deadline).
pub async fn wait_for_agent(channel: &Channel) -> Result<(), String> {
    let mut client =
        EchoServiceClient::with_interceptor(channel.clone(), add_key_and_wait as AddHeaders);
    let mut req = tonic::Request::new(EchoRequest::default());
    req.set_timeout(LIMIT);
    tokio::time::timeout(LIMIT + Duration::from_secs(5), client.unary(req))
        .await
        .map_err(|_| format!("no agent within {} s", LIMIT.as_secs()))?
        .map_err(|s| format!("waiting for the agent: {:?} {}", s.code(), s.message()))?;
    Ok(())
}

/// An endpoint as a real agent dials its hub: the defaults.
pub fn agent_endpoint(hub: &str) -> Result<Endpoint, String> {
    Endpoint::from_shared(format!("http://{hub}")).map_err(|e| format!("endpoint {hub}: {e}"))
}

/// A free loopback port (for a hub that must advertise its address).
pub fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("a free port: {e}"))
}

/// A `redis-server` for the cluster setup, on a free port; killed when
/// dropped.
pub struct Store {
    _child: Child,
    pub port: u16,
}

/// Starts `redis-server` (no persistence) once it accepts connections.
pub fn start_store(scratch: &Scratch) -> Result<Store, String> {
    let port = free_port()?;
    let dir = scratch.0.display().to_string();
    let args = strings(&[
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir,
    ]);
    let mut child = Child::spawn("redis-server", Path::new("redis-server"), &args)?;
    loop {
        match child.next_line(LIMIT)? {
            Some(line) if line.contains("Ready to accept connections") => break,
            Some(_) => {}
            None => return Err("redis-server exited before it was ready".into()),
        }
    }
    Ok(Store {
        _child: child,
        port,
    })
}

/// Starts a hub of the cluster kept in `store`, listening and advertising
/// on a port of its own, relaying calls as `relay` says (`tunnel`, `grpc`).
pub fn start_cluster_hub(scratch: &Scratch, store: &Store, relay: &str) -> Result<Hub, String> {
    let secret = scratch.0.join("cluster.secret");
    write_secret(&secret, "gateway-bench-cluster-secret-of-32-bytes-or-more")?;
    let listen = format!("127.0.0.1:{}", free_port()?);
    let mut args = strings(&["hub", "--listen", &listen, "--config"]);
    args.push(scratch.config());
    args.extend(strings(&[
        "--cluster",
        &format!("redis://127.0.0.1:{}", store.port),
        "--advertise",
        &format!("http://{listen}"),
        "--cluster-secret-file",
        &secret.display().to_string(),
        "--cluster-relay",
        relay,
    ]));
    let mut child = Child::spawn("hub", Path::new(BIN), &args)?;
    let addr = child.expect("LISTENING ", LIMIT)?;
    Ok(Hub {
        child,
        addr,
        admin: None,
    })
}

/// `INFO memory` `used_memory` of the store, in bytes.
pub fn store_memory(store: &Store) -> Result<u64, String> {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &store.port.to_string(), "INFO", "memory"])
        .output()
        .map_err(|e| format!("redis-cli: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| "redis-cli INFO memory: no used_memory".to_owned())
}
