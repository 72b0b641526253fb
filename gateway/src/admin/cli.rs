//! The admin API's command-line client: `grpctunnel agents`, `watch`,
//! `disconnect`, `drain` and `stats`, each speaking to a hub's admin port.

use std::{path::PathBuf, time::Duration};

use tonic::service::interceptor::InterceptedService;

use clap::Args;
use serde::Serialize;

use super::{
    agents::AgentJson,
    pb::{self, admin_client::AdminClient, agent_event::Kind},
};
use crate::Failure;

/// Where the hub's admin port is (its `--admin`), and the credential for
/// one beyond loopback.
#[derive(Debug, Args)]
pub(crate) struct AdminAddr {
    /// The hub's admin address: `127.0.0.1:9090` (its `--admin`), or
    /// `https://hub.example:9090` for one beyond loopback.
    #[arg(long, default_value = "127.0.0.1:9090", env = "GRPCTUNNEL_ADMIN")]
    admin: String,
    /// File holding an `[[admin]]` token of the hub's config (needed
    /// beyond loopback).
    #[arg(long, env = "GRPCTUNNEL_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the hub's certificate, for an `https://`
    /// admin address; without it the system's roots are used.
    #[arg(long, env = "GRPCTUNNEL_ADMIN_CA_FILE")]
    admin_ca_file: Option<PathBuf>,
}

/// Adds the admin token, if any, to each call.
#[derive(Clone)]
pub(crate) struct Bearer(Option<tonic::metadata::AsciiMetadataValue>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            req.metadata_mut().insert("authorization", value.clone());
        }
        Ok(req)
    }
}

type Client = AdminClient<InterceptedService<tonic::transport::Channel, Bearer>>;

impl AdminAddr {
    async fn client(&self) -> Result<Client, Failure> {
        let url = if self.admin.contains("://") {
            self.admin.clone()
        } else {
            format!("http://{}", self.admin)
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| Failure::Usage(format!("--admin {}: {e}", self.admin)))?
            .connect_timeout(Duration::from_secs(5));
        if url.starts_with("https://") {
            let tls = match &self.admin_ca_file {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        Failure::Usage(format!("cannot read {}: {e}", path.display()))
                    })?;
                    tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                }
                None => tonic::transport::ClientTlsConfig::new().with_native_roots(),
            };
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| Failure::Usage(format!("TLS: {e}")))?;
        }
        let token = match &self.admin_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
                let value = format!("Bearer {}", text.trim())
                    .parse()
                    .map_err(|_| Failure::Usage(format!("{}: not a token", path.display())))?;
                Some(value)
            }
            None => None,
        };
        let channel = endpoint.connect().await.map_err(|e| {
            Failure::Run(format!(
                "cannot reach the hub's admin port at {}: {e}",
                self.admin
            ))
        })?;
        Ok(AdminClient::with_interceptor(channel, Bearer(token)))
    }
}

/// A failed admin call, as the CLI reports it.
fn failed(what: &str, status: tonic::Status) -> Failure {
    Failure::Run(format!("{what}: {:?}: {}", status.code(), status.message()))
}

/// `grpctunnel agents`.
#[derive(Debug, Args)]
pub(crate) struct AgentsArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// One JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Only this hub's agents (default: in a cluster, every hub's, each
    /// hub asked through the relay links).
    #[arg(long)]
    this_hub: bool,
}

/// Lists the hub's agents, every page.
pub(crate) async fn agents(args: AgentsArgs) -> Result<(), Failure> {
    let mut client = args.admin.client().await?;
    let mut agents = Vec::new();
    let mut token = String::new();
    let unreachable = loop {
        let page = client
            .list_agents(pb::ListAgentsRequest {
                key_prefix: args.prefix.clone(),
                page_size: 0,
                page_token: token,
                cluster: !args.this_hub,
            })
            .await
            .map_err(|s| failed("listing agents", s))?
            .into_inner();
        agents.extend(page.agents);
        if page.next_page_token.is_empty() {
            break page.unreachable_hubs;
        }
        token = page.next_page_token;
    };
    for hub in &unreachable {
        eprintln!("grpctunnel: hub {hub} did not answer: its agents are not listed");
    }
    if args.json {
        let rows: Vec<AgentJson<'_>> = agents.iter().map(AgentJson::from).collect();
        let text =
            serde_json::to_string_pretty(&rows).map_err(|e| Failure::Run(format!("json: {e}")))?;
        println!("{text}");
        return Ok(());
    }
    let now = super::agents::unix_ms(std::time::SystemTime::now());
    let mut table = vec![[
        "KEY",
        "TUNNEL",
        "HUB",
        "PEER",
        "CREDENTIAL",
        "UP",
        "REV",
        "VERSION",
        "IN-FLIGHT",
        "CALLS",
        "BYTES-IN",
        "BYTES-OUT",
        "STATE",
    ]
    .map(str::to_owned)
    .to_vec()];
    for a in &agents {
        let state = if a.draining {
            "draining".to_owned()
        } else if !a.last_error.is_empty() {
            a.last_error.clone()
        } else {
            "ok".to_owned()
        };
        table.push(vec![
            a.key.clone(),
            a.tunnel_id.to_string(),
            a.hub.clone(),
            a.peer.clone(),
            a.credential.clone(),
            age(now - a.connected_unix_ms),
            a.protocol_revision.to_string(),
            a.agent_version.clone(),
            a.calls_in_flight.to_string(),
            a.calls.to_string(),
            a.bytes_received.to_string(),
            a.bytes_sent.to_string(),
            state,
        ]);
    }
    print!("{}", columns(&table));
    Ok(())
}

/// `rows` as aligned columns.
fn columns(rows: &[Vec<String>]) -> String {
    let mut widths = Vec::new();
    for row in rows {
        widths.resize(widths.len().max(row.len()), 0);
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A duration in milliseconds as `1d2h`, `3h4m`, `5m6s` or `7s`.
fn age(ms: i64) -> String {
    let s = (ms.max(0) / 1000) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{}h", s / 86400, s % 86400 / 3600),
    }
}

/// `grpctunnel watch`.
#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// One JSON object per line instead of text.
    #[arg(long)]
    json: bool,
}

/// An event as `watch --json` prints it.
#[derive(Debug, Serialize)]
struct EventJson<'a> {
    event: &'static str,
    unix_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent: Option<AgentJson<'a>>,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
}

/// Prints the hub's agent events until the hub or Ctrl-C ends it.
pub(crate) async fn watch(args: WatchArgs) -> Result<(), Failure> {
    let mut client = args.admin.client().await?;
    let mut events = client
        .watch_agents(pb::WatchAgentsRequest {
            key_prefix: args.prefix.clone(),
        })
        .await
        .map_err(|s| failed("watching agents", s))?
        .into_inner();
    loop {
        let next = tokio::select! {
            next = events.message() => next.map_err(|s| failed("watching agents", s))?,
            () = crate::shutdown_signal() => return Ok(()),
        };
        let Some(e) = next else {
            return Err(Failure::Run("the hub ended the watch".into()));
        };
        let kind = Kind::try_from(e.kind).unwrap_or(Kind::Unspecified);
        let name = kind.as_str_name();
        if args.json {
            let line = EventJson {
                event: name,
                unix_ms: e.unix_ms,
                agent: e.agent.as_ref().map(AgentJson::from),
                reason: &e.reason,
            };
            let text =
                serde_json::to_string(&line).map_err(|e| Failure::Run(format!("json: {e}")))?;
            println!("{text}");
        } else {
            match &e.agent {
                Some(a) => println!(
                    "{name} key={} tunnel={} peer={} credential={}{}",
                    a.key,
                    a.tunnel_id,
                    a.peer,
                    a.credential,
                    if e.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" reason={:?}", e.reason)
                    }
                ),
                None => println!("{name}"),
            }
        }
    }
}

/// `grpctunnel disconnect`.
#[derive(Debug, Args)]
pub(crate) struct DisconnectArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// The agent's key (every tunnel of it on this hub), or a tunnel id
    /// (a number, as `grpctunnel agents` shows it).
    target: String,
    /// Told to the agent, which logs it.
    #[arg(long, default_value = "")]
    reason: String,
    /// Let the agent dial this hub again at once (default: it does not).
    #[arg(long)]
    reconnect: bool,
}

/// Ends an agent's tunnels.
pub(crate) async fn disconnect(args: DisconnectArgs) -> Result<(), Failure> {
    use pb::disconnect_agent_request::Target;
    let target = match args.target.parse::<u64>() {
        Ok(id) => Target::TunnelId(id),
        Err(_) => Target::Key(args.target.clone()),
    };
    let done = args
        .admin
        .client()
        .await?
        .disconnect_agent(pb::DisconnectAgentRequest {
            target: Some(target),
            reason: args.reason,
            reconnect: args.reconnect,
        })
        .await
        .map_err(|s| failed(&format!("disconnecting {}", args.target), s))?
        .into_inner();
    println!("disconnected {} tunnel(s)", done.disconnected);
    Ok(())
}

/// `grpctunnel drain`.
#[derive(Debug, Args)]
pub(crate) struct DrainArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// Longest calls in flight may run on, in seconds (default: the hub's
    /// `--drain`).
    #[arg(long)]
    grace: Option<u32>,
}

/// Drains the hub; returns once its tunnels have closed.
pub(crate) async fn drain(args: DrainArgs) -> Result<(), Failure> {
    let done = args
        .admin
        .client()
        .await?
        .drain(pb::DrainRequest {
            grace_seconds: args.grace.unwrap_or_default(),
        })
        .await
        .map_err(|s| failed("draining", s))?
        .into_inner();
    println!("drained {} tunnel(s)", done.tunnels);
    Ok(())
}

/// `grpctunnel ping`.
#[derive(Debug, Args)]
pub(crate) struct PingArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// The key of the agent to ping.
    key: String,
}

/// Pings an agent through the hub; prints the time of each leg.
pub(crate) async fn ping(args: PingArgs) -> Result<(), Failure> {
    let mut client = args.admin.client().await?;
    let started = std::time::Instant::now();
    let pong = client
        .ping(pb::PingRequest {
            key: args.key.clone(),
        })
        .await
        .map_err(|s| failed(&format!("pinging {}", args.key), s))?
        .into_inner();
    let total = started.elapsed().as_secs_f64();
    let ms = |s: f64| format!("{:.2} ms", s.max(0.0) * 1e3);
    println!("ping {}: {} in all", args.key, ms(total));
    println!(
        "  here -> hub {} and back: {}",
        args.admin.admin,
        ms(total - pong.hub_round_trip_seconds)
    );
    let via = if pong.relayed {
        format!(" (relayed to hub {})", pong.hub)
    } else {
        String::new()
    };
    println!(
        "  hub -> agent{via} and back: {}",
        ms(pong.hub_round_trip_seconds - pong.upstream_seconds)
    );
    println!(
        "  agent -> upstream and back: {} (the upstream answered: {})",
        ms(pong.upstream_seconds),
        pong.upstream_status
    );
    println!("agent version {}", pong.agent_version);
    Ok(())
}

/// `grpctunnel stats`.
#[derive(Debug, Args)]
pub(crate) struct StatsArgs {
    #[command(flatten)]
    admin: AdminAddr,
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Prints the last minute's calls per key and method.
pub(crate) async fn stats(args: StatsArgs) -> Result<(), Failure> {
    let stats = args
        .admin
        .client()
        .await?
        .stats(pb::StatsRequest {
            key_prefix: args.prefix,
        })
        .await
        .map_err(|s| failed("reading stats", s))?
        .into_inner();
    let mut table = vec![[
        "KEY",
        "METHOD",
        "CALLS",
        "ERRORS",
        "P50-MS",
        "P99-MS",
        "BYTES-IN",
        "BYTES-OUT",
    ]
    .map(str::to_owned)
    .to_vec()];
    for m in &stats.methods {
        let calls: u64 = m.calls_by_code.values().sum();
        let ok = m.calls_by_code.get("OK").copied().unwrap_or_default();
        table.push(vec![
            m.key.clone(),
            m.method.clone(),
            calls.to_string(),
            (calls - ok).to_string(),
            format!("{:.2}", m.p50_seconds * 1e3),
            format!("{:.2}", m.p99_seconds * 1e3),
            m.bytes_received.to_string(),
            m.bytes_sent.to_string(),
        ]);
    }
    println!("last {} s", stats.window_seconds);
    print!("{}", columns(&table));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{age, columns};

    #[test]
    fn ages_and_columns_read_well() {
        assert_eq!(age(7_400), "7s");
        assert_eq!(age(65_000), "1m5s");
        assert_eq!(age(3_723_000), "1h2m");
        assert_eq!(age(90_000_000), "1d1h");
        assert_eq!(age(-5), "0s");
        let rows = vec![
            vec!["KEY".to_owned(), "N".to_owned()],
            vec!["plant-7".to_owned(), "12".to_owned()],
        ];
        assert_eq!(columns(&rows), "KEY      N\nplant-7  12\n");
    }
}
