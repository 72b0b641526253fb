//! The child processes the orchestrator runs (this binary, re-executed with
//! `--role`). Each side of a setup is its own process, as the Go peer's
//! sides are, so that each has its own runtime (default: one worker thread
//! per core) and its own resident memory to measure.
//!
//! Line protocol on stdout (shared with the Go peer's `bench-client` and
//! `bench-server`):
//!
//! - `LISTENING <addr>`: a server (or the reverse-tunnel hub) is listening;
//! - `READY <workload>` / `HOLD <workload>`: the client pauses until it
//!   reads a line on stdin (the orchestrator samples memory meanwhile);
//! - `RESULT <workload> key=value ...`: one workload's figures;
//! - `ERROR <workload> <reason>`: a workload failed (the client goes on).
//!
//! Servers and agents run until stdin reaches EOF.

use std::{
    io::{BufRead, Write},
    process::ExitCode,
};

use grpctunnel::{reverse::ReverseTunnelRegistry, ReverseTunnelServer, TunnelChannel, TunnelLayer};
use grpctunnel_testing::Echo;
use tokio::sync::mpsc;
use tonic::service::Routes;

use crate::{
    cli::{ClientArgs, ClientMode},
    config,
    workloads::{self, Chan, Gate},
};

/// Writes one whole line to stdout.
pub fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Logs to stderr when `RUST_LOG` is set (e.g. `RUST_LOG=grpctunnel=debug`).
fn trace() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    trace();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Lines from stdin; `None` at EOF. Read on a plain thread: a blocking
/// read must not hold a runtime worker.
fn stdin_lines() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Exits the process when stdin reaches EOF.
fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        std::process::exit(0);
    });
}

/// `--role server`: the echo service, plain or behind `TunnelLayer`.
pub fn server(tunnel: bool) -> ExitCode {
    runtime().block_on(async move {
        let (incoming, addr) = match config::incoming() {
            Ok(v) => v,
            Err(e) => {
                eprintln!("bench server: {e}");
                return ExitCode::FAILURE;
            }
        };
        emit(&format!("LISTENING {addr}"));
        exit_on_stdin_eof();
        let served = if tunnel {
            config::server()
                .layer(TunnelLayer::new())
                .add_service(Echo::new().server())
                .serve_with_incoming(incoming)
                .await
        } else {
            config::server()
                .add_service(Echo::new().server())
                .serve_with_incoming(incoming)
                .await
        };
        if let Err(e) = served {
            eprintln!("bench server: {e}");
            return ExitCode::FAILURE;
        }
        ExitCode::SUCCESS
    })
}

/// `--role agent`: dials the reverse hub and serves echo through one
/// reverse tunnel.
pub fn agent(addr: String) -> ExitCode {
    runtime().block_on(async move {
        exit_on_stdin_eof();
        let transport = match config::endpoint(&addr) {
            Ok(e) => match e.connect().await {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("bench agent: connect {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => {
                eprintln!("bench agent: {e}");
                return ExitCode::FAILURE;
            }
        };
        let agent = ReverseTunnelServer::new(Routes::new(Echo::new().server()));
        // The tunnel ends when the hub (the client child) exits; the
        // client reports any failure that matters.
        match agent.serve(transport).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        }
    })
}

/// The orchestrator's side of a pause: print, then wait for a stdin line.
struct StdinGate(mpsc::UnboundedReceiver<String>);

impl Gate for StdinGate {
    async fn sync(&mut self, line: &str) -> Result<(), String> {
        emit(line);
        self.0
            .recv()
            .await
            .map(drop)
            .ok_or_else(|| "stdin closed during a pause".to_owned())
    }
}

/// `--role client`: connects as `mode` says and runs the workloads.
pub fn client(args: ClientArgs) -> ExitCode {
    // Spawned, so that the workloads run on the runtime's workers as an
    // application's tasks do (`block_on` would run them on this thread,
    // and every wake-up of them would unpark it).
    let rt = runtime();
    match rt.block_on(rt.spawn(run_client(args))) {
        Ok(code) => code,
        Err(e) => {
            emit(&format!("ERROR setup client task: {e}"));
            ExitCode::FAILURE
        }
    }
}

async fn run_client(args: ClientArgs) -> ExitCode {
    {
        let mut gate = StdinGate(stdin_lines());
        let outcome = match args.mode {
            ClientMode::Direct => match connect(&args).await {
                Ok(ch) => run_all(&ch, &args, &mut gate).await,
                Err(e) => Err(e),
            },
            ClientMode::Forward => match connect(&args).await {
                Ok(transport) => match TunnelChannel::builder().open(transport).await {
                    Ok(ch) => {
                        let r = run_all(&ch, &args, &mut gate).await;
                        ch.close();
                        r
                    }
                    Err(e) => Err(format!("open tunnel: {e}")),
                },
                Err(e) => Err(e),
            },
            ClientMode::Reverse => reverse_hub(&args, &mut gate).await,
        };
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                emit(&format!("ERROR setup {}", one_line(&e)));
                ExitCode::FAILURE
            }
        }
    }
}

async fn connect(args: &ClientArgs) -> Result<tonic::transport::Channel, String> {
    let addr = args.addr.as_deref().ok_or("client needs --addr")?;
    config::endpoint(addr)?
        .connect()
        .await
        .map_err(|e| format!("connect {addr}: {e}"))
}

/// The network server of a reverse tunnel: listens, waits for the agent's
/// tunnel, then runs the workloads through the registry's channel.
async fn reverse_hub(args: &ClientArgs, gate: &mut StdinGate) -> Result<(), String> {
    let registry = ReverseTunnelRegistry::new();
    let (incoming, addr) = config::incoming().map_err(|e| e.to_string())?;
    let layer = TunnelLayer::new().reverse(registry.clone());
    tokio::spawn(async move {
        // The inner service is never called: only the agent dials in.
        let served = config::server()
            .layer(layer)
            .add_service(Echo::new().server())
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            eprintln!("bench hub: {e}");
        }
    });
    emit(&format!("LISTENING {addr}"));
    tokio::time::timeout(std::time::Duration::from_secs(30), registry.wait_for(None))
        .await
        .map_err(|_| "no reverse tunnel within 30 s".to_owned())?;
    run_all(&registry.channel(), args, gate).await
}

async fn run_all<T: Chan>(ch: &T, args: &ClientArgs, gate: &mut StdinGate) -> Result<(), String> {
    workloads::warm_up(ch).await?;
    for &w in &args.workloads {
        match workloads::run(w, ch, &args.params, gate).await {
            Ok(m) => {
                let mut line = format!("RESULT {}", w.name());
                for (k, v) in &m.0 {
                    line.push_str(&format!(" {k}={v}"));
                }
                emit(&line);
            }
            Err(e) => emit(&format!("ERROR {} {}", w.name(), one_line(&e))),
        }
        // Let cancelled streams wind down before the next workload.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Ok(())
}

fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}
