//! `grpctunnel`: reach a gRPC server behind NAT through a hub.
//!
//! ```text
//! grpctunnel hub   --listen 127.0.0.1:8443 --config hub.toml
//! grpctunnel agent --hub http://127.0.0.1:8443 --key plant-7 --token-file token --upstream http://127.0.0.1:50051
//! grpcurl -plaintext -H 'grpctunnel-key: plant-7' 127.0.0.1:8443 list
//! ```
//!
//! Exit codes: 0 after a clean shutdown, 1 when serving failed, 2 for a
//! usage or configuration error.

// A folder per concern; the crate root re-exports their modules, so a
// path names what it uses (`crate::metrics::Labels`), and
// tests/layering.rs checks the folders' arrows.
mod admin;
mod agent;
mod compression;
mod credentials;
mod ending;
mod failure;
mod hub;
mod keepalive;
mod limit;
mod signal;
mod telemetry;

pub(crate) use admin::session;
pub(crate) use credentials::{auth, config, settings, token};
pub(crate) use hub::{accept, admission, key_policy, quota, relayed_in, reload, revoke, route};
pub(crate) use telemetry::{
    access_log, call_series, call_stats, log_budget, metrics, refusals, trace,
};

use std::process::ExitCode;

/// jemalloc rather than the system allocator: every call allocates its
/// headers, frames and futures in hub and agent, and glibc's malloc was a
/// tenth of their CPU under load.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

pub(crate) use failure::Failure;
pub(crate) use signal::shutdown_signal;

/// Reach a gRPC server behind NAT: an agent next to it dials a hub, and any
/// gRPC client calls it through the hub by key.
#[derive(Debug, Parser)]
#[command(name = "grpctunnel", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr (RUST_LOG sets the level; default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "GRPCTUNNEL_LOG_FORMAT", global = true)]
    log_format: LogFormat,
    /// Threads that run the hub's or agent's work. Default: the hub one
    /// per CPU but the first (at least one), which it leaves to the
    /// kernel's network stack and to what shares the machine; the agent
    /// one per connection to a hub (`--tunnels` per `--hub`), at most one
    /// per CPU, since one task drives each connection. `1` runs everything
    /// on one thread: no cross-thread wake-ups, the least CPU per call
    /// (see benches/README.md).
    #[arg(long, global = true, env = "GRPCTUNNEL_WORKER_THREADS")]
    worker_threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Accept agents' reverse tunnels and route callers' gRPC calls to them by key.
    Hub(hub::HubArgs),
    /// Dial a hub and serve a private gRPC server (any language) through it.
    Agent(agent::AgentArgs),
    /// Print a new random credential as hub config lines (TOML, to append
    /// to hub.toml): an agent's, bound to its keys, or a caller's.
    Token(token::TokenArgs),
    /// List the agents connected to a hub (through its admin port).
    Agents(admin::cli::AgentsArgs),
    /// Print agents connecting to, leaving and draining from a hub, live.
    Watch(admin::cli::WatchArgs),
    /// End an agent's tunnels on a hub, with a reason the agent logs.
    Disconnect(admin::cli::DisconnectArgs),
    /// Drain a hub: no new agents, its keys to other hubs, its tunnels
    /// closed once their calls finish.
    Drain(admin::cli::DrainArgs),
    /// Calls per key and method over the last minute: count, errors,
    /// p50/p99, bytes.
    Stats(admin::cli::StatsArgs),
    /// A round trip through a hub and the tunnel to an agent of KEY, which
    /// checks its upstream: the time of each leg.
    Ping(admin::cli::PingArgs),
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Before any thread: the config file's settings become variables.
    if let Err(Failure::Usage(text) | Failure::Run(text)) =
        settings::apply_config_file(&args, &Cli::command())
    {
        eprintln!("grpctunnel: {text}");
        return ExitCode::from(2);
    }
    let cli = Cli::parse_from(args);
    init_logs(cli.log_format);
    if cli.worker_threads == Some(0) {
        eprintln!("grpctunnel: --worker-threads must be at least 1");
        return ExitCode::from(2);
    }
    let threads = cli.worker_threads.unwrap_or_else(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        match &cli.command {
            Command::Agent(args) => args.connections().clamp(1, cpus),
            _ => cpus.saturating_sub(1).max(1),
        }
    });
    // Made here, run (polled) on the runtime below.
    let serve: std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Failure>>>> =
        match cli.command {
            Command::Hub(args) => Box::pin(hub::run(args)),
            Command::Agent(args) => Box::pin(agent::run(args)),
            Command::Token(args) => return exit_code(token::run(args)),
            Command::Agents(args) => Box::pin(admin::cli::agents(args)),
            Command::Watch(args) => Box::pin(admin::cli::watch(args)),
            Command::Disconnect(args) => Box::pin(admin::cli::disconnect(args)),
            Command::Drain(args) => Box::pin(admin::cli::drain(args)),
            Command::Stats(args) => Box::pin(admin::cli::stats(args)),
            Command::Ping(args) => Box::pin(admin::cli::ping(args)),
        };
    let runtime = match threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("grpctunnel: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    exit_code(runtime.block_on(serve))
}

/// The exit code for `result`, its failure printed.
fn exit_code(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(text)) => {
            eprintln!("grpctunnel: {text}");
            ExitCode::from(2)
        }
        Err(Failure::Run(text)) => {
            eprintln!("grpctunnel: {text}");
            ExitCode::from(1)
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or collector gets plain text.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

#[cfg(test)]
mod tests {
    //! The config file's settings against the real command line.
    use super::{settings::settings, Cli, CommandFactory, Failure};

    fn parse(text: &str) -> toml::Table {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn each_key_names_a_flags_variable() {
        let got = settings(
            &Cli::command(),
            "agent",
            &parse("hub = [\"https://a:1\", \"https://b:2\"]\nmax_message_size = 10\nupstream_accept_gzip = true\nlog_format = \"json\""),
        )
        .expect("settings");
        let find = |k: &str| got.iter().find(|(key, ..)| key == k).cloned().expect(k);
        assert_eq!(find("hub").1, "GRPCTUNNEL_HUB");
        assert_eq!(find("hub").2, "https://a:1,https://b:2");
        assert_eq!(find("max_message_size").2, "10");
        assert_eq!(find("upstream_accept_gzip").2, "true");
        assert_eq!(find("log_format").1, "GRPCTUNNEL_LOG_FORMAT");
    }

    #[test]
    fn unknown_keys_are_refused_and_hub_tables_are_not_settings() {
        let err = settings(&Cli::command(), "agent", &parse("lisen = \"x\"")).expect_err("typo");
        assert!(matches!(err, Failure::Usage(t) if t.contains("lisen")));
        let got = settings(
            &Cli::command(),
            "hub",
            &parse("listen = \"127.0.0.1:1\"\n[[agent]]\ntoken = \"t\"\nkeys = [\"k\"]"),
        )
        .expect("settings");
        assert_eq!(got.len(), 1);
        assert!(settings(&Cli::command(), "hub", &parse("config = \"other.toml\"")).is_err());
        // `[[admin]]` is credentials, `admin = "..."` the --admin setting.
        let tables = settings(
            &Cli::command(),
            "hub",
            &parse("[[admin]]\nname = \"ops\"\ntoken = \"t\""),
        )
        .expect("settings");
        assert!(tables.is_empty());
        let flag = settings(&Cli::command(), "hub", &parse("admin = \"127.0.0.1:9090\""))
            .expect("settings");
        assert_eq!(flag[0].1, "GRPCTUNNEL_ADMIN");
    }
}
