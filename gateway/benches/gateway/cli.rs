//! Command line of the gateway bench: the orchestrator's options, and the
//! internal roles it re-executes itself with (`--role upstream`,
//! `--role proxy --target ADDR`).

use std::{path::PathBuf, time::Duration};

pub const USAGE: &str = "\
usage: cargo bench -p grpctunnel-gateway --bench gateway -- [options]

Setups: direct tonic; hub -> agent (the gateway); frps -> frpc (frp
v0.65.0, what users install instead; built with `go` from the Go module
proxy, left out with a note when that fails); two plain proxies (tonic
server + Channel, each its own process: the same hops without the tunnel,
for reference); two bare h2 relays (the `h2` crate alone, one thread and
jemalloc as hub and agent: the floor of a middle that terminates HTTP/2;
built with cargo on first use); with --cluster, the relayed ones.

  --reps N           repetitions of everything (default 3)
  --calls N          sequential unary calls for latency (default 20000; each
                     run is preceded by calls/10, 100..2000, unmeasured)
  --callers N        concurrent unary callers (default 64)
  --duration SECS    measured time of each throughput workload (default 2)
  --warmup SECS      unmeasured lead-in of each throughput workload (default 0.25)
  --agents N         idle agents for the hub memory figure, and as many
                     idle frp clients for frps's (default 10000; 0 skips it)
  --cluster          also the `relayed` setups (caller -> hub A -> hub B ->
                     agent, two hubs sharing a redis-server started for it;
                     hub A relays in one tunnel to hub B, or, in
                     `relayed-grpc`, as plain gRPC) and the directory figures with --keys keys; needs
                     redis-server and redis-cli on PATH
  --setups LIST      only these setups, comma-separated (direct, gateway,
                     frp, proxies, h2-floor, relayed, relayed-grpc); ratios need
                     direct (and frp)
  --keys N           keys in the store for the directory figures (default 100000)
  --json PATH        also write the results as JSON (or env GATEWAY_BENCH_JSON)
  --quick            smoke run: --reps 1 --calls 2000 --duration 0.3
                     --warmup 0.1 (explicit options still win)

The hub and agent processes log at RUST_LOG=warn unless RUST_LOG is set.
";

/// Which process this is.
#[derive(Debug, Clone)]
pub enum Role {
    /// The orchestrator: starts the processes, runs the workloads, prints
    /// the table.
    Orchestrate(Options),
    /// Child: the upstream echo server.
    Upstream,
    /// Child: a transparent HTTP/2 proxy to the address (`proxies` setup).
    Proxy(String),
}

/// The orchestrator's options.
#[derive(Debug, Clone)]
pub struct Options {
    pub reps: usize,
    pub calls: usize,
    pub callers: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub agents: usize,
    pub json: Option<PathBuf>,
    pub quick: bool,
    pub cluster: bool,
    /// `--setups`: only these (`None`: all that apply).
    pub setups: Option<Vec<String>>,
    pub keys: usize,
}

fn secs(v: &str, name: &str) -> Result<Duration, String> {
    let s: f64 = v
        .parse()
        .map_err(|_| format!("{name}: not a number of seconds: {v:?}"))?;
    if !(s.is_finite() && s >= 0.0) {
        return Err(format!("{name}: must be >= 0"));
    }
    Ok(Duration::from_secs_f64(s))
}

fn count(v: &str, name: &str, zero: bool) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 || zero => Ok(n),
        _ => Err(format!("{name}: not a positive integer: {v:?}")),
    }
}

/// Parses the process arguments (without the program name). `Err("")`
/// asks for the usage text.
pub fn parse(args: Vec<String>) -> Result<Role, String> {
    let mut reps = None;
    let mut calls = None;
    let mut callers = None;
    let mut duration = None;
    let mut warmup = None;
    let mut agents = None;
    let mut json = std::env::var_os("GATEWAY_BENCH_JSON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut quick = false;
    let mut cluster = false;
    let mut setups = None;
    let mut keys = None;
    let mut role = None;
    let mut target = None;

    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        // `--flag=value` or `--flag value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            // Added by `cargo bench`.
            "--bench" => {}
            "-h" | "--help" => return Err(String::new()),
            "--reps" => reps = Some(count(&value(&flag)?, &flag, false)?),
            "--calls" => calls = Some(count(&value(&flag)?, &flag, false)?),
            "--callers" => callers = Some(count(&value(&flag)?, &flag, false)?),
            "--duration" => duration = Some(secs(&value(&flag)?, &flag)?),
            "--warmup" => warmup = Some(secs(&value(&flag)?, &flag)?),
            "--agents" => agents = Some(count(&value(&flag)?, &flag, true)?),
            "--json" => json = Some(PathBuf::from(value(&flag)?)),
            "--quick" => quick = true,
            "--cluster" => cluster = true,
            "--setups" => {
                let list: Vec<String> = value(&flag)?.split(',').map(str::to_owned).collect();
                if let Some(bad) = list
                    .iter()
                    .find(|s| !crate::report::SETUPS.iter().any(|(k, _)| k == s))
                {
                    return Err(format!("--setups: unknown setup {bad:?}"));
                }
                setups = Some(list);
            }
            "--keys" => keys = Some(count(&value(&flag)?, &flag, false)?),
            "--role" => role = Some(value(&flag)?),
            "--target" => target = Some(value(&flag)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match role.as_deref() {
        None => {}
        Some("upstream") => return Ok(Role::Upstream),
        Some("proxy") => {
            return target
                .map(Role::Proxy)
                .ok_or_else(|| "--role proxy needs --target".to_owned())
        }
        Some(other) => return Err(format!("unknown role {other:?}")),
    }
    let duration = duration.unwrap_or(if quick {
        Duration::from_millis(300)
    } else {
        Duration::from_secs(2)
    });
    if duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    Ok(Role::Orchestrate(Options {
        reps: reps.unwrap_or(if quick { 1 } else { 3 }),
        calls: calls.unwrap_or(if quick { 2_000 } else { 20_000 }),
        callers: callers.unwrap_or(64),
        duration,
        warmup: warmup.unwrap_or(if quick {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(250)
        }),
        agents: agents.unwrap_or(10_000),
        json,
        quick,
        cluster,
        setups,
        keys: keys.unwrap_or(100_000),
    }))
}
