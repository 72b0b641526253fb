//! `cargo bench -p grpctunnel-gateway --bench gateway`: what the gateway
//! (`grpctunnel hub` + `grpctunnel agent`) costs a gRPC caller, against
//! direct tonic measured in the same run, and what an idle agent costs the
//! hub in memory.
//!
//! Setups (see `setups.rs`), all on loopback, one upstream echo server
//! (`grpctunnel_testing::Echo`, a child process) shared by both:
//!
//! - `direct`: a tonic `Channel` to the upstream;
//! - `gateway`: the same kind of `Channel` to a hub process, calls carrying
//!   `grpctunnel-key: bench`; an agent process holds the reverse tunnel for
//!   that key and forwards every call to the upstream. Hub and agent are
//!   the real binary (`CARGO_BIN_EXE_grpctunnel`) with default settings;
//! - `frp`: what a user installs instead (`frp.rs`): `frps` and `frpc`
//!   (fatedier/frp v0.65.0, built from the Go module proxy), a `tcp` proxy
//!   from frps to the upstream, frp's defaults; the caller's `Channel`
//!   dials frps's proxy port;
//! - `proxies`, for reference: two plain transparent HTTP/2 proxies
//!   (`proxies.rs`), each its own process, in front of the upstream: the
//!   processes and hops of hub and agent without the tunnel;
//! - `h2-floor`, for reference: two bare relays on the `h2` crate alone
//!   (`h2_floor.rs`, one runtime thread and jemalloc as hub and agent): the
//!   least a middle that terminates HTTP/2 with `h2` costs;
//! - with `--cluster`, `relayed` and `relayed-grpc`: two hubs sharing a
//!   store, the caller calling the one without the agent.
//!
//! Workloads (see `workloads.rs`; the same as `benches/tunnel`'s
//! `unary_seq`, `unary_conc`, `stream_1m`, `client_stream` and
//! `bidi_pingpong`), run by this process: sequential 100 B unary calls
//! (p50, p99); 64 concurrent callers of 100 B unary calls on one channel
//! (calls/s over 2 s after 0.25 s); one server stream of 1 MiB messages
//! read as fast as possible (MB/s); one client stream of 64 KiB messages
//! (MB/s); one bidi stream of 100 B ping-pongs (round trips/s).
//!
//! CPU per call (see `cpu.rs`): user + system time of the processes in the
//! middle (hub and agent, frps and frpc, the proxies, the relays) over each unary
//! workload, divided by its calls.
//!
//! Memory (see `agents.rs`): a fresh hub's `VmRSS` before and after 10,000
//! idle agents (each its own TCP connection and reverse tunnel, run in
//! this process with the crate's `ReverseTunnelServer`) have connected,
//! divided by 10,000; and frps's before and after as many idle frp
//! clients (`frp.rs`).
//!
//! Repetitions (3) are the outer loop, so that a noisy moment hurts both
//! setups alike; the table shows the median of the repetitions, their
//! min..max and the ratio of the medians to direct tonic, then the
//! targets, met or not; a last column sets each setup against frp. Progress goes to stderr, the table to stdout.
//! `--help` lists the options; `--quick` is a smoke run.

#[path = "../../../benches/tunnel/calls.rs"]
mod calls;
#[path = "../../../benches/tunnel/config.rs"]
mod config;
#[path = "../../../benches/tunnel/format.rs"]
mod format;
#[path = "../../../build_support/go_build.rs"]
mod go_build;
#[path = "../../../benches/tunnel/memory.rs"]
mod memory;
// Shared with the tunnel bench, which uses more of it.
#[allow(dead_code)]
#[path = "../../../benches/tunnel/proc.rs"]
mod proc;
#[path = "../../../benches/tunnel/stats.rs"]
mod stats;

mod agents;
mod cli;
mod cpu;
mod directory;
mod frp;
mod h2_floor;
mod proxies;
mod report;
mod setups;
mod workloads;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use cli::{Options, Role};
use report::Results;
use setups::Scratch;
use workloads::Chan;

/// How long a stopped upstream may take to exit.
const STOP_LIMIT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match cli::parse(args) {
        Ok(Role::Orchestrate(opts)) => orchestrate(opts),
        Ok(Role::Upstream) => setups::upstream_role(),
        Ok(Role::Proxy(target)) => proxies::proxy_role(&target),
        Err(e) if e.is_empty() => {
            print!("{}", cli::USAGE);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gateway bench: {e}\n\n{}", cli::USAGE);
            ExitCode::from(2)
        }
    }
}

/// The figures of one setup in one repetition, and its failures.
type Outcome = (Vec<(&'static str, f64)>, Vec<String>);

/// Warm-up, then the workloads on `ch`; a failed workload is reported and
/// the next one still runs. `middle` are the processes between caller and
/// upstream, whose CPU per unary call is measured.
async fn run_workloads<T: Chan>(ch: &T, opts: &Options, middle: &[u32]) -> Outcome {
    let mut samples = Vec::new();
    let mut errors = Vec::new();
    if let Err(e) = workloads::warm_up(ch).await {
        errors.push(format!("warm-up: {e}"));
        return (samples, errors);
    }
    let cpu = cpu::Snapshot::take(middle);
    match workloads::unary_seq(ch, opts.calls).await {
        Ok(l) => {
            samples.push((report::UNARY_P50, l.p50_us));
            samples.push((report::UNARY_P99, l.p99_us));
            if let Some(us) = cpu.us_per_call(l.calls) {
                samples.push((report::CPU_SEQ, us));
            }
        }
        Err(e) => errors.push(format!("unary_seq: {e}")),
    }
    let cpu = cpu::Snapshot::take(middle);
    let machine = cpu::Machine::take();
    match workloads::unary_conc(ch, opts.callers, opts.warmup, opts.duration).await {
        Ok((rate, calls)) => {
            samples.push((report::UNARY_CONC, rate));
            if let Some(us) = cpu.us_per_call(calls) {
                samples.push((report::CPU_CONC, us));
            }
            if let Some((us, idle)) = machine.and_then(|m| m.since(calls)) {
                samples.push((report::MACHINE_CONC, us));
                samples.push((report::IDLE_CONC, idle));
            }
        }
        Err(e) => errors.push(format!("unary_conc: {e}")),
    }
    match workloads::stream_1m(ch, opts.warmup, opts.duration).await {
        Ok(mb) => samples.push((report::STREAM_1M, mb)),
        Err(e) => errors.push(format!("stream_1m: {e}")),
    }
    match workloads::client_stream_mb_per_s(ch, opts.warmup, opts.duration).await {
        Ok(mb) => samples.push((report::CLIENT_STREAM, mb)),
        Err(e) => errors.push(format!("client_stream: {e}")),
    }
    match workloads::bidi_pingpong(ch, opts.warmup, opts.duration).await {
        Ok(lat) => samples.push((report::BIDI, lat.len() as f64 / opts.duration.as_secs_f64())),
        Err(e) => errors.push(format!("bidi_pingpong: {e}")),
    }
    (samples, errors)
}

/// The calling side of one setup: connects to `addr` (the upstream, the
/// hub, frps's proxy port, the first proxy) and runs the workloads.
async fn calls(gateway: bool, addr: String, opts: Options, middle: Vec<u32>) -> Outcome {
    let channel = match setups::connect(&addr).await {
        Ok(c) => c,
        Err(e) => return (Vec::new(), vec![e]),
    };
    if !gateway {
        return run_workloads(&channel, &opts, &middle).await;
    }
    if let Err(e) = setups::wait_for_agent(&channel).await {
        return (Vec::new(), vec![e]);
    }
    run_workloads(&setups::gateway_channel(channel), &opts, &middle).await
}

/// One repetition of one setup; the gateway's hub and agent are started
/// for it and killed after.
fn run_setup(
    rt: &tokio::runtime::Runtime,
    setup: &str,
    scratch: &Scratch,
    upstream: &str,
    opts: &Options,
) -> Outcome {
    // Spawned, so that the workloads run on the runtime's workers as an
    // application's tasks do, not on this thread.
    let run = |gateway, addr, middle: &[&proc::Child]| {
        let middle = middle.iter().map(|c| c.pid()).collect();
        match rt.block_on(rt.spawn(calls(gateway, addr, opts.clone(), middle))) {
            Ok(out) => out,
            Err(e) => (Vec::new(), vec![format!("client task: {e}")]),
        }
    };
    if setup == "direct" {
        return run(false, upstream.to_owned(), &[]);
    }
    if setup == "frp" {
        return match frp::start(scratch, upstream) {
            Ok(f) => run(false, f.addr.clone(), &[&f.frps, &f.frpc]),
            Err(e) => (Vec::new(), vec![e]),
        };
    }
    if setup == "proxies" {
        // Caller -> proxy 1 -> proxy 2 -> upstream.
        let started = proxies::start_proxy(upstream)
            .and_then(|(p2, addr2)| Ok((p2, proxies::start_proxy(&addr2)?)));
        let (p2, (p1, addr1)) = match started {
            Ok(all) => all,
            Err(e) => return (Vec::new(), vec![e]),
        };
        let out = run(false, addr1, &[&p1, &p2]);
        drop((p1, p2));
        return out;
    }
    if setup == "h2-floor" {
        // Caller -> relay 1 -> relay 2 -> upstream, `h2` alone.
        let (r1, r2, addr1) = match h2_floor::start(upstream) {
            Ok(all) => all,
            Err(e) => return (Vec::new(), vec![e]),
        };
        let out = run(false, addr1, &[&r1, &r2]);
        drop((r1, r2));
        return out;
    }
    if setup.starts_with("relayed") {
        // Caller -> hub A -> (relay) -> hub B -> agent; hub A relays in one
        // tunnel to hub B (`relayed`) or with a stream per call.
        let relay = if setup == "relayed" { "tunnel" } else { "grpc" };
        let started = setups::start_store(scratch).and_then(|store| {
            let a = setups::start_cluster_hub(scratch, &store, relay)?;
            let b = setups::start_cluster_hub(scratch, &store, relay)?;
            let agent = setups::start_agent(scratch, &b.addr, upstream)?;
            Ok((store, a, b, agent))
        });
        let (store, a, b, agent) = match started {
            Ok(all) => all,
            Err(e) => return (Vec::new(), vec![e]),
        };
        let out = run(true, a.addr.clone(), &[&a.child, &b.child, &agent]);
        drop((agent, a, b, store));
        return out;
    }
    let hub = match setups::start_hub(scratch, &[]) {
        Ok(hub) => hub,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let agent = match setups::start_agent(scratch, &hub.addr, upstream) {
        Ok(agent) => agent,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let out = run(true, hub.addr.clone(), &[&hub.child, &agent]);
    drop(agent);
    drop(hub);
    out
}

fn orchestrate(opts: Options) -> ExitCode {
    let started = Instant::now();
    // Quiet hub and agent children (they inherit it); set before any
    // thread starts.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn");
    }
    let mut results = Results::default();
    let scratch = match Scratch::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let chosen = |key: &str| match &opts.setups {
        Some(list) => list.iter().any(|s| s == key),
        None => !key.starts_with("relayed") || opts.cluster,
    };
    // frp is built first (the Go module proxy, once); without it the run
    // goes on without its column, and says why.
    let with_frp = chosen("frp")
        && match frp::programs() {
            Ok(_) => true,
            Err(e) => {
                let note = format!("frp left out: {e}");
                eprintln!("gateway bench: {note}");
                results.notes.push(note);
                false
            }
        };
    // Before any child starts: they inherit the raised file limit. frps
    // holds two descriptors per idle client (its connection, its proxy's
    // listener).
    let agents = if opts.agents == 0 {
        0
    } else {
        let per = if with_frp { 2 } else { 1 };
        let (usable, note) = agents::usable_agents(opts.agents * per);
        if let Some(note) = note {
            eprintln!("gateway bench: {note}");
            results.notes.push(note);
        }
        usable / per
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gateway bench: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (upstream, upstream_addr) = match setups::start_upstream() {
        Ok(u) => u,
        Err(e) => {
            eprintln!("gateway bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "gateway bench: {} reps; {} sequential calls, {} callers, {:.2} s + {:.2} s warmup per \
         throughput workload, {} idle agents; hub and agent: {}",
        opts.reps,
        opts.calls,
        opts.callers,
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        agents,
        setups::BIN
    );
    // Repetitions outermost, so that a noisy moment hits both setups alike.
    for rep in 1..=opts.reps {
        for (key, label) in report::SETUPS {
            if !chosen(key) || (key == "frp" && !with_frp) {
                continue;
            }
            let t = Instant::now();
            let (samples, errors) = run_setup(&rt, key, &scratch, &upstream_addr, &opts);
            eprintln!(
                "  rep {rep}/{}: {label:<14} {:>5.1} s{}",
                opts.reps,
                t.elapsed().as_secs_f64(),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({} errors)", errors.len())
                }
            );
            for (figure, value) in samples {
                results.add(key, figure, value);
            }
            for e in errors {
                eprintln!("    error: {e}");
                results.errors.push(format!("rep {rep}: {key}: {e}"));
            }
        }
    }
    if opts.cluster {
        for rep in 1..=opts.reps {
            match directory::measure(&rt, &scratch, opts.keys) {
                Ok(d) => {
                    results.add("relayed", report::DIR_BYTES, d.bytes_per_key);
                    results.add("relayed", report::DIR_PUBLISH, d.publish_us_per_key);
                    results.add("relayed", report::DIR_LOOKUP_P50, d.lookup_p50_us);
                    results.add("relayed", report::DIR_LOOKUP_P99, d.lookup_p99_us);
                }
                Err(e) => {
                    eprintln!("  directory, rep {rep}: error: {e}");
                    results.errors.push(format!("rep {rep}: directory: {e}"));
                }
            }
        }
    }
    drop(rt);
    let upstream_port = upstream_addr
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    upstream.stop(STOP_LIMIT);

    // Memory last, in fresh hubs, once the call workloads are done.
    if agents > 0 {
        for rep in 1..=opts.reps {
            match agents::measure(&scratch, agents) {
                Ok(m) => {
                    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                    let line = format!(
                        "hub memory, rep {rep}: {} agents connected in {:.1} s; hub VmRSS \
                         {:.1} MiB -> {:.1} MiB: {:.2} KiB per idle agent",
                        m.agents,
                        m.connect.as_secs_f64(),
                        mib(m.before),
                        mib(m.after),
                        m.kib_per_agent()
                    );
                    eprintln!("  {line}");
                    results.notes.push(line);
                    results.add("gateway", report::HUB_MEMORY, m.kib_per_agent());
                }
                Err(e) => {
                    eprintln!("  hub memory, rep {rep}: error: {e}");
                    results.errors.push(format!("rep {rep}: memory: {e}"));
                }
            }
            if !with_frp {
                continue;
            }
            // The upstream is gone: idle clients never connect to it.
            match frp::measure(&scratch, agents, upstream_port) {
                Ok(m) => {
                    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                    let line = format!(
                        "frps memory, rep {rep}: {} idle frp clients connected in {:.1} s; \
                         frps VmRSS {:.1} MiB -> {:.1} MiB: {:.2} KiB per idle client",
                        m.clients,
                        m.connect.as_secs_f64(),
                        mib(m.before),
                        mib(m.after),
                        m.kib_per_client()
                    );
                    eprintln!("  {line}");
                    results.notes.push(line);
                    results.add("frp", report::HUB_MEMORY, m.kib_per_client());
                }
                Err(e) => {
                    eprintln!("  frps memory, rep {rep}: error: {e}");
                    results.errors.push(format!("rep {rep}: frps memory: {e}"));
                }
            }
        }
    }
    let wall = started.elapsed();

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "grpctunnel gateway benchmark: {} repetitions, median [min..max], ratio of medians to \
         direct tonic",
        opts.reps
    );
    println!(
        "  {cpus} CPUs; {} sequential calls; {} callers; {:.2} s (+{:.2} s warmup) per \
         throughput workload; {agents} idle agents; wall time {:.0} s{}",
        opts.calls,
        opts.callers,
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        wall.as_secs_f64(),
        if opts.quick { " (--quick)" } else { "" }
    );
    println!("  bench client and upstream: {}", config::describe());
    // The children inherit the environment: GRPCTUNNEL_* variables set
    // their flags (e.g. GRPCTUNNEL_WORKER_THREADS=1).
    let settings: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("GRPCTUNNEL_"))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let settings = if settings.is_empty() {
        "default settings".to_owned()
    } else {
        settings.join(" ")
    };
    println!("  hub and agent: {} ({settings})", setups::BIN);
    if with_frp {
        println!("  frp {} (frps, frpc; defaults, a tcp proxy)", frp::VERSION);
    }
    println!();
    print!(
        "{}",
        report::table(&results, opts.callers, agents, opts.keys)
    );
    for note in &results.notes {
        println!("{note}");
    }
    let targets = report::targets(&results);
    println!();
    println!("targets (on medians):");
    print!("{}", format::targets_text(&targets));
    if !results.errors.is_empty() {
        println!();
        println!("errors:");
        for e in &results.errors {
            println!("  {e}");
        }
    }

    if let Some(path) = &opts.json {
        let command = format!(
            "cargo bench -p grpctunnel-gateway --bench gateway -- {}",
            std::env::args()
                .skip(1)
                .filter(|a| a != "--bench")
                .collect::<Vec<_>>()
                .join(" ")
        );
        let secs = |d: Duration| format!("{}", d.as_secs_f64());
        let header = [
            ("command", format::json_str(&command)),
            ("cpus", cpus.to_string()),
            ("reps", opts.reps.to_string()),
            ("calls", opts.calls.to_string()),
            ("callers", opts.callers.to_string()),
            ("duration_s", secs(opts.duration)),
            ("warmup_s", secs(opts.warmup)),
            ("agents", agents.to_string()),
            ("wall_s", secs(wall)),
            ("config", format::json_str(&config::describe())),
        ];
        match std::fs::write(path, report::json(&results, &targets, &header)) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("gateway bench: writing {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    if results.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
