//! `cargo bench --bench tunnel`: the same workloads over direct tonic, our
//! forward and reverse tunnels, the Go reference's tunnel, and mixed Go/Rust
//! pairs, all on loopback in one run; one table with medians of the
//! repetitions and ratios to direct tonic, the targets, and
//! optionally JSON (`-- --json out.json` or `TUNNEL_BENCH_JSON`).
//!
//! This process only orchestrates: every side of every setup is a child
//! process (this binary re-executed with `--role`, or the Go peer), see
//! `roles.rs` and `setups.rs`. `--help` lists the options.

mod calls;
mod cli;
mod config;
mod format;
mod go;
#[path = "../../build_support/go_build.rs"]
mod go_build;
mod memory;
mod proc;
mod report;
mod roles;
mod setups;
mod stats;
mod workloads;

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use cli::{Options, Role};
use setups::{Programs, Setup};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let role = match cli::parse(args) {
        Ok(role) => role,
        Err(e) if e.is_empty() => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tunnel bench: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    match role {
        Role::Orchestrate(opts) => orchestrate(opts),
        Role::Client(args) => roles::client(args),
        Role::Server { tunnel } => roles::server(tunnel),
        Role::Agent { addr } => roles::agent(addr),
    }
}

fn select(opts: &Options) -> Result<Vec<Setup>, String> {
    match &opts.setups {
        None => Ok(setups::DEFAULT
            .iter()
            .filter_map(|k| setups::find(k))
            .collect()),
        Some(keys) => {
            if let Some(k) = keys.iter().find(|k| setups::find(k).is_none()) {
                return Err(format!("unknown setup {k:?}"));
            }
            // Table order, whatever the order given.
            Ok(setups::ALL
                .into_iter()
                .filter(|s| keys.iter().any(|k| k == s.key))
                .collect())
        }
    }
}

fn orchestrate(opts: Options) -> ExitCode {
    let started = Instant::now();
    let mut selected = match select(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tunnel bench: {e}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let mut results = report::Results::default();

    let peer = if !selected.iter().any(Setup::needs_go) {
        None
    } else if opts.no_go {
        Some(Err("--no-go".to_owned()))
    } else {
        eprintln!("building the Go peer (interop/cmd/peer) ...");
        Some(go::build())
    };
    let peer = match peer {
        Some(Ok(path)) => Some(path),
        Some(Err(why)) => {
            selected.retain(|s| {
                if s.needs_go() {
                    let line = format!("SKIP {} ({}): Go peer unavailable: {why}", s.key, s.label);
                    println!("{line}");
                    results.skipped.push(line);
                }
                !s.needs_go()
            });
            None
        }
        None => None,
    };
    let programs = Programs {
        exe: match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                eprintln!("tunnel bench: cannot find own executable: {e}");
                return ExitCode::FAILURE;
            }
        },
        peer,
    };

    let p = &opts.params;
    eprintln!(
        "tunnel bench: {} setups x {} reps; duration {:.2} s + warmup {:.2} s per throughput \
         workload, {} sequential calls, {} callers, {} streams",
        selected.len(),
        opts.reps,
        p.duration.as_secs_f64(),
        p.warmup.as_secs_f64(),
        p.calls,
        p.callers,
        p.streams
    );
    // Repetitions outermost, so that a noisy moment hits every setup alike.
    for rep in 1..=opts.reps {
        for s in &selected {
            let t = Instant::now();
            let out = s.run(&programs, p, &opts.workloads);
            eprintln!(
                "  rep {rep}/{}: {:<18} {:>5.1} s{}",
                opts.reps,
                s.label,
                t.elapsed().as_secs_f64(),
                if out.errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({} errors)", out.errors.len())
                }
            );
            for e in &out.errors {
                eprintln!("    error: {e}");
            }
            results.add(s, out.samples);
            results
                .errors
                .extend(out.errors.into_iter().map(|e| format!("rep {rep}: {e}")));
        }
    }
    let wall = started.elapsed();

    let command = format!(
        "cargo bench --bench tunnel -- {}",
        std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect::<Vec<_>>()
            .join(" ")
    );
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let go_version = programs.peer.as_ref().and_then(|_| go::version());
    println!();
    println!(
        "grpctunnel benchmark: {} repetitions, median [min..max], ratio of medians to direct tonic",
        opts.reps
    );
    println!(
        "  {} CPUs; duration {:.2} s (+{:.2} s warmup) per throughput workload; {} sequential calls; \
         {} callers; {} streams; wall time {:.0} s",
        cpus,
        p.duration.as_secs_f64(),
        p.warmup.as_secs_f64(),
        p.calls,
        p.callers,
        p.streams,
        wall.as_secs_f64()
    );
    println!("  {}", config::describe());
    if let Some(v) = &go_version {
        println!("  Go: {v}, github.com/jhump/grpctunnel v0.3.0 (interop/cmd/peer)");
    }
    println!();
    print!(
        "{}",
        report::table(&results, &selected, p.callers, p.streams)
    );
    let targets = report::targets(&results, p.streams);
    println!();
    println!("targets (on medians):");
    print!("{}", format::targets_text(&targets));
    for s in &selected {
        let early = results.total(s.key, "early_close");
        if early > 0.0 {
            println!(
                "note: {}: {early} unary calls were answered (close_stream) before the Go client's \
                 CloseSend; Go's Invoke fails those with EOF, bench-client works around it \
                 (interop/roles/bench_client.go)",
                s.label
            );
        }
    }
    for line in &results.skipped {
        println!("{line}");
    }
    if !results.errors.is_empty() {
        println!();
        println!("errors:");
        for e in &results.errors {
            println!("  {e}");
        }
    }

    if let Some(path) = &opts.json {
        let secs = |d: Duration| format!("{}", d.as_secs_f64());
        let header = [
            ("command", format::json_str(&command)),
            ("cpus", cpus.to_string()),
            ("reps", opts.reps.to_string()),
            ("duration_s", secs(p.duration)),
            ("warmup_s", secs(p.warmup)),
            ("calls", p.calls.to_string()),
            ("callers", p.callers.to_string()),
            ("streams", p.streams.to_string()),
            ("wall_s", secs(wall)),
            ("config", format::json_str(&config::describe())),
            (
                "go",
                go_version.map_or("null".into(), |v| format::json_str(&v)),
            ),
        ];
        let text = report::json(&results, &selected, &targets, &header);
        match std::fs::write(path, text) {
            Ok(()) => eprintln!("wrote {}", path.display()),
            Err(e) => {
                eprintln!("tunnel bench: writing {}: {e}", path.display());
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
