//! Command line of the bench binary: the orchestrator's options, and the
//! internal roles it re-executes itself with (`--role client|server|agent`).

use std::{path::PathBuf, time::Duration};

use crate::workloads::Workload;

pub const USAGE: &str = "\
usage: cargo bench --bench tunnel -- [options]

  --duration SECS    measured time of each throughput workload (default 2)
  --warmup SECS      unmeasured lead-in of each throughput workload (default 0.25)
  --calls N          sequential unary calls for latency (default 20000)
  --callers N        concurrent unary callers (default 64)
  --streams N        concurrent bidi streams in many_streams (default 10000)
  --open-window N    many_streams: at most N streams between opening and their
                     first response (default 1000; 0 = all at once)
  --reps N           repetitions of everything (default 3)
  --setups LIST      comma-separated subset of: direct,forward,reverse,
                     go-forward,go-rust,rust-go,go-direct
                     (default: all but go-direct)
  --workloads LIST   comma-separated subset of: unary_seq,unary_conc,
                     stream_64k,stream_1m,client_stream,bidi_pingpong,
                     many_streams,mixed (default: all)
  --json PATH        also write the results as JSON (or env TUNNEL_BENCH_JSON)
  --no-go            skip the Go setups even if `go` is on PATH
  --quick            smoke run: --duration 0.3 --warmup 0.1 --calls 2000
                     --streams 1000 --reps 1 (explicit options still win)
";

/// Which process this is.
#[derive(Debug, Clone)]
pub enum Role {
    /// The orchestrator: runs every setup and prints the table.
    Orchestrate(Options),
    /// Child: a workload runner (the tunnel client side).
    Client(ClientArgs),
    /// Child: an echo server, plain or with the tunnel layer.
    Server { tunnel: bool },
    /// Child: a reverse-tunnel agent serving echo, dialling `addr`.
    Agent { addr: String },
}

/// How a client child reaches the echo service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientMode {
    /// Plain tonic channel.
    Direct,
    /// Our forward tunnel.
    Forward,
    /// Our reverse tunnel: the client is the network server and waits for
    /// an agent to dial in.
    Reverse,
}

impl ClientMode {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Self::Direct),
            "forward" => Ok(Self::Forward),
            "reverse" => Ok(Self::Reverse),
            _ => Err(format!("unknown client mode {s:?}")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Forward => "forward",
            Self::Reverse => "reverse",
        }
    }
}

/// Workload parameters shared by the Rust and the Go client.
#[derive(Debug, Clone)]
pub struct Params {
    pub duration: Duration,
    pub warmup: Duration,
    pub calls: usize,
    pub callers: usize,
    pub streams: usize,
    /// Streams of `many_streams` between opening and their round trip.
    pub open_window: usize,
}

#[derive(Debug, Clone)]
pub struct ClientArgs {
    pub mode: ClientMode,
    pub addr: Option<String>,
    pub workloads: Vec<Workload>,
    pub params: Params,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub params: Params,
    pub reps: usize,
    pub setups: Option<Vec<String>>,
    pub workloads: Vec<Workload>,
    pub json: Option<PathBuf>,
    pub no_go: bool,
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

fn count(v: &str, name: &str) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{name}: not a positive integer: {v:?}")),
    }
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses the process arguments (without the program name).
pub fn parse(args: Vec<String>) -> Result<Role, String> {
    let mut duration = None;
    let mut warmup = None;
    let mut calls = None;
    let mut callers = None;
    let mut streams = None;
    let mut open_window = None;
    let mut reps = None;
    let mut setups = None;
    let mut workloads = None;
    let mut json = std::env::var_os("TUNNEL_BENCH_JSON")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut no_go = false;
    let mut quick = false;
    let mut role = None;
    let mut mode = None;
    let mut addr = None;

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
            "--duration" => duration = Some(secs(&value(&flag)?, &flag)?),
            "--warmup" => warmup = Some(secs(&value(&flag)?, &flag)?),
            "--calls" => calls = Some(count(&value(&flag)?, &flag)?),
            "--callers" => callers = Some(count(&value(&flag)?, &flag)?),
            "--streams" => streams = Some(count(&value(&flag)?, &flag)?),
            "--open-window" => {
                let v = value(&flag)?;
                open_window = Some(
                    v.parse::<usize>()
                        .map_err(|_| format!("{flag}: not an integer: {v:?}"))?,
                );
            }
            "--reps" => reps = Some(count(&value(&flag)?, &flag)?),
            "--setups" => setups = Some(list(&value(&flag)?)),
            "--workloads" => {
                let names = list(&value(&flag)?);
                let parsed: Result<Vec<_>, _> = names.iter().map(|n| Workload::parse(n)).collect();
                workloads = Some(parsed?);
            }
            "--json" => json = Some(PathBuf::from(value(&flag)?)),
            "--no-go" => no_go = true,
            "--quick" => quick = true,
            "--role" => role = Some(value(&flag)?),
            "--mode" => mode = Some(value(&flag)?),
            "--addr" => addr = Some(value(&flag)?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }

    let params = Params {
        duration: duration.unwrap_or(if quick {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(2)
        }),
        warmup: warmup.unwrap_or(if quick {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(250)
        }),
        calls: calls.unwrap_or(if quick { 2_000 } else { 20_000 }),
        callers: callers.unwrap_or(64),
        streams: streams.unwrap_or(if quick { 1_000 } else { 10_000 }),
        open_window: open_window.unwrap_or(1_000),
    };
    let workloads = workloads.unwrap_or_else(|| Workload::ALL.to_vec());

    match role.as_deref() {
        None => Ok(Role::Orchestrate(Options {
            params,
            reps: reps.unwrap_or(if quick { 1 } else { 3 }),
            setups,
            workloads,
            json,
            no_go,
        })),
        Some("client") => Ok(Role::Client(ClientArgs {
            mode: ClientMode::parse(mode.as_deref().unwrap_or(""))?,
            addr,
            workloads,
            params,
        })),
        Some("server") => Ok(Role::Server {
            tunnel: match mode.as_deref() {
                Some("plain") => false,
                Some("tunnel") => true,
                other => return Err(format!("server --mode plain|tunnel, got {other:?}")),
            },
        }),
        Some("agent") => Ok(Role::Agent {
            addr: addr.ok_or("agent needs --addr")?,
        }),
        Some(other) => Err(format!("unknown role {other:?}")),
    }
}

/// The arguments that pass `params` and `workloads` on to a client child
/// (ours or the Go peer's; both take the same flags).
pub fn client_flags(params: &Params, workloads: &[Workload], go: bool) -> Vec<String> {
    let dur = |d: Duration| {
        if go {
            // A Go duration.
            format!("{}us", d.as_micros())
        } else {
            format!("{}", d.as_secs_f64())
        }
    };
    vec![
        "--workloads".into(),
        workloads
            .iter()
            .map(|w| w.name())
            .collect::<Vec<_>>()
            .join(","),
        "--duration".into(),
        dur(params.duration),
        "--warmup".into(),
        dur(params.warmup),
        "--calls".into(),
        params.calls.to_string(),
        "--callers".into(),
        params.callers.to_string(),
        "--streams".into(),
        params.streams.to_string(),
        "--open-window".into(),
        params.open_window.to_string(),
    ]
}
