//! The setups (who calls whom, through what) and how the orchestrator runs
//! one repetition of one setup: a serving process and a calling process,
//! both children, talking over loopback.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    cli::{self, ClientMode, Params},
    memory,
    proc::Child,
    workloads::Workload,
};

/// The serving process of a setup.
#[derive(Debug, Clone, Copy)]
enum Serving {
    /// Our echo server without the tunnel layer.
    RustPlain,
    /// Our echo server with `TunnelLayer` (forward tunnels).
    RustTunnel,
    /// Our reverse-tunnel agent; it dials the client's hub.
    RustAgent,
    /// `peer bench-server`: the Go echo service, directly and through the Go
    /// reference's tunnel handler.
    Go,
}

/// The calling process of a setup.
#[derive(Debug, Clone, Copy)]
enum Calling {
    Rust(ClientMode),
    /// `peer bench-client`, through a Go tunnel or (`direct`) plain gRPC.
    Go {
        direct: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Name on the command line and in the JSON.
    pub key: &'static str,
    /// Name in the table.
    pub label: &'static str,
    serving: Serving,
    calling: Calling,
}

impl Setup {
    pub fn needs_go(&self) -> bool {
        matches!(self.serving, Serving::Go) || matches!(self.calling, Calling::Go { .. })
    }
}

/// Every setup, in table order. `go-direct` is not run by default.
pub const ALL: [Setup; 7] = [
    Setup {
        key: "direct",
        label: "direct tonic",
        serving: Serving::RustPlain,
        calling: Calling::Rust(ClientMode::Direct),
    },
    Setup {
        key: "forward",
        label: "rust forward",
        serving: Serving::RustTunnel,
        calling: Calling::Rust(ClientMode::Forward),
    },
    Setup {
        key: "reverse",
        label: "rust reverse",
        serving: Serving::RustAgent,
        calling: Calling::Rust(ClientMode::Reverse),
    },
    Setup {
        key: "go-forward",
        label: "go -> go tunnel",
        serving: Serving::Go,
        calling: Calling::Go { direct: false },
    },
    Setup {
        key: "go-rust",
        label: "go -> rust tunnel",
        serving: Serving::RustTunnel,
        calling: Calling::Go { direct: false },
    },
    Setup {
        key: "rust-go",
        label: "rust -> go tunnel",
        serving: Serving::Go,
        calling: Calling::Rust(ClientMode::Forward),
    },
    Setup {
        key: "go-direct",
        label: "go direct grpc",
        serving: Serving::Go,
        calling: Calling::Go { direct: true },
    },
];

pub const DEFAULT: [&str; 6] = [
    "direct",
    "forward",
    "reverse",
    "go-forward",
    "go-rust",
    "rust-go",
];

pub fn find(key: &str) -> Option<Setup> {
    ALL.into_iter().find(|s| s.key == key)
}

/// The programs the children run.
pub struct Programs {
    /// This bench binary.
    pub exe: PathBuf,
    /// The Go peer, when built.
    pub peer: Option<PathBuf>,
}

/// One figure of one workload of one repetition.
#[derive(Debug, Clone)]
pub struct Sample {
    pub workload: Workload,
    pub key: String,
    pub value: f64,
}

/// What one repetition of a setup produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub samples: Vec<Sample>,
    pub errors: Vec<String>,
}

/// No output for this long means a child is stuck.
const LINE_LIMIT: Duration = Duration::from_secs(120);
const STOP_LIMIT: Duration = Duration::from_secs(5);

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

impl Setup {
    fn peer<'a>(&self, programs: &'a Programs) -> Result<&'a Path, String> {
        programs
            .peer
            .as_deref()
            .ok_or_else(|| format!("{}: the Go peer is not available", self.key))
    }

    fn start_serving(&self, programs: &Programs) -> Result<(Child, String), String> {
        let mut child = match self.serving {
            Serving::RustPlain | Serving::RustTunnel => {
                let mode = if matches!(self.serving, Serving::RustPlain) {
                    "plain"
                } else {
                    "tunnel"
                };
                Child::spawn(
                    "rust server",
                    &programs.exe,
                    &strings(&["--role", "server", "--mode", mode]),
                )?
            }
            Serving::Go => Child::spawn(
                "go server",
                self.peer(programs)?,
                &strings(&["bench-server"]),
            )?,
            Serving::RustAgent => unreachable!("the agent dials the client"),
        };
        let addr = child.expect("LISTENING ", LINE_LIMIT)?;
        Ok((child, addr))
    }

    fn start_calling(
        &self,
        programs: &Programs,
        addr: Option<&str>,
        params: &Params,
        workloads: &[Workload],
    ) -> Result<Child, String> {
        match self.calling {
            Calling::Rust(mode) => {
                let mut args = strings(&["--role", "client", "--mode", mode.as_str()]);
                if let Some(addr) = addr {
                    args.extend(strings(&["--addr", addr]));
                }
                args.extend(cli::client_flags(params, workloads, false));
                Child::spawn("rust client", &programs.exe, &args)
            }
            Calling::Go { direct } => {
                let mut args = strings(&["bench-client", "--addr", addr.unwrap_or_default()]);
                if direct {
                    args.push("--direct".into());
                }
                args.extend(cli::client_flags(params, workloads, true));
                Child::spawn("go client", self.peer(programs)?, &args)
            }
        }
    }

    /// Starts both processes: (calling, serving).
    fn start(
        &self,
        programs: &Programs,
        params: &Params,
        workloads: &[Workload],
    ) -> Result<(Child, Child), String> {
        if let Serving::RustAgent = self.serving {
            let mut calling = self.start_calling(programs, None, params, workloads)?;
            let addr = calling.expect("LISTENING ", LINE_LIMIT)?;
            let agent = Child::spawn(
                "rust agent",
                &programs.exe,
                &strings(&["--role", "agent", "--addr", &addr]),
            )?;
            return Ok((calling, agent));
        }
        let (serving, addr) = self.start_serving(programs)?;
        let calling = self.start_calling(programs, Some(&addr), params, workloads)?;
        Ok((calling, serving))
    }

    /// Runs `workloads` in one pair of processes and collects the figures;
    /// `many_streams` also gets the memory figures of both sides.
    fn run_pair(
        &self,
        programs: &Programs,
        params: &Params,
        workloads: &[Workload],
        out: &mut Outcome,
    ) {
        let (mut calling, serving) = match self.start(programs, params, workloads) {
            Ok(pair) => pair,
            Err(e) => {
                out.errors.push(format!("{}: {e}", self.key));
                return;
            }
        };
        // (calling, serving) RSS at READY.
        let mut base = None;
        loop {
            let line = match calling.next_line(LINE_LIMIT) {
                Ok(Some(line)) => line,
                Ok(None) => break,
                Err(e) => {
                    out.errors.push(format!("{}: {e}", self.key));
                    break;
                }
            };
            let (tag, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
            match tag {
                "READY" | "HOLD" => {
                    let rss = (
                        memory::settled_rss(calling.pid()),
                        memory::settled_rss(serving.pid()),
                    );
                    if tag == "READY" {
                        base = Some(rss);
                    } else if let (Some((Some(c0), Some(s0))), (Some(c1), Some(s1))) = (base, rss) {
                        let n = params.streams as f64;
                        let per = |a: u64, b: u64| (b as f64 - a as f64) / n / 1024.0;
                        let w = Workload::ManyStreams;
                        out.samples
                            .push(sample(w, "client_kib_per_stream", per(c0, c1)));
                        out.samples
                            .push(sample(w, "server_kib_per_stream", per(s0, s1)));
                    }
                    if let Err(e) = calling.send_line("GO") {
                        out.errors.push(format!("{}: {e}", self.key));
                        break;
                    }
                }
                "RESULT" => match parse_result(rest) {
                    Ok(samples) => out.samples.extend(samples),
                    Err(e) => out.errors.push(format!("{}: {e}: {line}", self.key)),
                },
                "ERROR" => out.errors.push(format!("{}: {rest}", self.key)),
                _ => eprintln!("{}: unexpected line {line:?}", calling.name),
            }
        }
        match calling.wait(STOP_LIMIT) {
            Some(status) if status.success() => {}
            status => out.errors.push(format!(
                "{}: {} ended with {status:?}",
                self.key, calling.name
            )),
        }
        serving.stop(STOP_LIMIT);
    }

    /// One repetition: `many_streams` in fresh processes (so that memory is
    /// measured from a clean baseline), everything else in another pair.
    pub fn run(&self, programs: &Programs, params: &Params, workloads: &[Workload]) -> Outcome {
        let mut out = Outcome::default();
        let (many, rest): (Vec<Workload>, Vec<Workload>) = workloads
            .iter()
            .partition(|w| matches!(w, Workload::ManyStreams));
        if !rest.is_empty() {
            self.run_pair(programs, params, &rest, &mut out);
        }
        if !many.is_empty() {
            self.run_pair(programs, params, &many, &mut out);
        }
        out
    }
}

fn sample(workload: Workload, key: &str, value: f64) -> Sample {
    Sample {
        workload,
        key: key.to_owned(),
        value,
    }
}

/// `<workload> key=value ...`
fn parse_result(rest: &str) -> Result<Vec<Sample>, String> {
    let mut parts = rest.split_whitespace();
    let workload = Workload::parse(parts.next().ok_or("empty RESULT")?)?;
    parts
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or("key=value expected")?;
            let v: f64 = v.parse().map_err(|_| format!("bad number {v:?}"))?;
            Ok(sample(workload, k, v))
        })
        .collect()
}
