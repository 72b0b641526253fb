//! The hub's admin API and its command-line client, against real
//! processes: a hub with `--admin`, agent processes, and the `grpctunnel
//! agents`, `watch`, `disconnect`, `drain` and `stats` commands.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::*;
use tokio::io::{AsyncBufReadExt, BufReader};

/// `grpctunnel agents --json` on `admin`: the agents (of every hub of its
/// cluster), as JSON values.
async fn agents(admin: SocketAddr) -> Vec<serde_json::Value> {
    agents_with(admin, &[]).await
}

/// [`agents`] with more flags.
async fn agents_with(admin: SocketAddr, extra: &[&str]) -> Vec<serde_json::Value> {
    let admin = admin.to_string();
    let mut args = vec!["agents", "--admin", &admin, "--json"];
    args.extend_from_slice(extra);
    let (code, out, err) = cli(&args).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("did not answer"), "{err}");
    serde_json::from_str::<Vec<serde_json::Value>>(&out).expect("a JSON array")
}

/// The stdout lines of `process`, as they come.
fn stdout_lines(process: &mut Process) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let stdout = process.child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    rx
}

/// The next `watch --json` event for which `wanted` holds.
async fn next_event(
    lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    while let Some(line) = lines.recv().await {
        let event: serde_json::Value = serde_json::from_str(&line).expect("one JSON per line");
        if wanted(&event) {
            return event;
        }
    }
    panic!("the watch ended");
}

fn is(event: &serde_json::Value, kind: &str, key: &str) -> bool {
    event["event"] == kind && event["agent"]["key"] == key
}

/// `agents` lists every tunnel with where it comes from and how busy it
/// is; `watch` sees a kill -9'd agent leave; `disconnect` ends an agent's
/// tunnel with a reason the agent logs, and the agent stays away unless
/// told to reconnect; `stats` counts the last minute's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_watch_and_disconnect_agents() {
    bounded(async {
        let dir = temp_dir();
        let up = upstream().await;
        let (hub, addr) = hub_full(
            &dir,
            AGENT_TOKEN,
            &["stay-1", "back-2", "killed-3"],
            "name = \"fleet-a\"\n",
            &["--admin", "127.0.0.1:0"],
        )
        .await;
        let admin = hub.admin.expect("ADMIN line");
        let mut stay = agent(&dir, addr, "stay-1", AGENT_TOKEN, up);
        let mut back = agent(&dir, addr, "back-2", AGENT_TOKEN, up);
        let mut killed = agent(&dir, addr, "killed-3", AGENT_TOKEN, up);
        for a in [&mut stay, &mut back, &mut killed] {
            a.log_line("tunnel open").await;
        }
        let mut c = caller(addr, "stay-1", false).await;
        for _ in 0..7 {
            c.unary(hello("counted")).await.expect("call");
        }

        let listed = agents(admin).await;
        assert_eq!(listed.len(), 3, "{listed:?}");
        let keys: Vec<&str> = listed.iter().map(|a| a["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["back-2", "killed-3", "stay-1"], "sorted by key");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        for a in &listed {
            assert_eq!(a["credential"], "fleet-a", "{a}");
            assert_eq!(a["hub"], addr.to_string(), "{a}");
            assert_eq!(a["agent_version"], env!("CARGO_PKG_VERSION"), "{a}");
            assert_eq!(a["protocol_revision"], 1, "{a}");
            assert!(a["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{a}");
            let since = a["connected_unix_ms"].as_i64().unwrap();
            assert!(since <= now_ms && now_ms - since < 60_000, "{a}");
        }
        let stay_row = &listed[2];
        assert_eq!(stay_row["calls"], 7, "{stay_row}");
        assert!(
            stay_row["bytes_received"].as_u64().unwrap() > 0,
            "{stay_row}"
        );
        assert_eq!(listed[0]["calls"], 0);
        // The table names the same.
        let (code, table, _) = cli(&["agents", "--admin", &admin.to_string()]).await;
        assert_eq!(code, Some(0));
        assert!(table.starts_with("KEY "), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("stay-1 ") && l.contains("fleet-a")),
            "{table}"
        );
        // Only a prefix.
        let (code, out, _) = cli(&[
            "agents",
            "--admin",
            &admin.to_string(),
            "--json",
            "--prefix",
            "back",
        ])
        .await;
        assert_eq!(code, Some(0));
        assert_eq!(
            serde_json::from_str::<Vec<serde_json::Value>>(&out)
                .unwrap()
                .len(),
            1
        );

        // A watch sees the three, then a kill -9'd agent leave.
        let mut watch = Process::spawn(&["watch", "--admin", &admin.to_string(), "--json"]);
        let mut events = stdout_lines(&mut watch);
        for key in ["back-2", "killed-3", "stay-1"] {
            next_event(&mut events, |e| is(e, "SNAPSHOT", key)).await;
        }
        next_event(&mut events, |e| e["event"] == "SNAPSHOT_END").await;
        killed.child.start_kill().expect("kill -9");
        let killed_at = Instant::now();
        let gone = next_event(&mut events, |e| is(e, "DISCONNECTED", "killed-3")).await;
        let seen_after = killed_at.elapsed();
        println!("watch saw the killed agent leave {seen_after:?} after kill -9");
        // Well within the default keepalive (--keepalive 30 s).
        assert!(seen_after < Duration::from_secs(30), "{seen_after:?}");
        assert!(
            !gone["reason"].as_str().unwrap_or_default().is_empty(),
            "{gone}"
        );

        // Disconnected for good: the agent logs the reason and stays away.
        let (code, out, err) = cli(&[
            "disconnect",
            "--admin",
            &admin.to_string(),
            "stay-1",
            "--reason",
            "moved to the new plant",
        ])
        .await;
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("disconnected 1"), "{out}");
        let said = stay.log_line("tunnel closed by the hub's operator").await;
        assert!(said.contains("moved to the new plant"), "{said}");
        let left = next_event(&mut events, |e| is(e, "DISCONNECTED", "stay-1")).await;
        assert!(
            left["reason"]
                .as_str()
                .unwrap()
                .contains("moved to the new plant"),
            "{left}"
        );
        stay.log_line("no hub left to serve").await;
        let exit = stay.child.wait().await.expect("exits");
        assert_eq!(exit.code(), Some(0), "an agent told to stay away stops");
        let status = c.unary(hello("x")).await.expect_err("no agent of stay-1");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

        // Disconnected with --reconnect: it comes back.
        let id = listed[0]["tunnel_id"].as_u64().unwrap().to_string();
        let (code, _, err) = cli(&[
            "disconnect",
            "--admin",
            &admin.to_string(),
            &id,
            "--reason",
            "rebalancing",
            "--reconnect",
        ])
        .await;
        assert_eq!(code, Some(0), "{err}");
        let said = back.log_line("tunnel down; reconnecting").await;
        assert!(said.contains("rebalancing"), "{said}");
        next_event(&mut events, |e| is(e, "CONNECTED", "back-2")).await;
        back.log_line("tunnel open").await;

        // A ping's legs, the agent's upstream answering.
        let (code, out, err) = cli(&["ping", "--admin", &admin.to_string(), "back-2"]).await;
        assert_eq!(code, Some(0), "{err}");
        for leg in [
            "here -> hub",
            "hub -> agent and back",
            "agent -> upstream and back",
        ] {
            let line = out
                .lines()
                .find(|l| l.contains(leg))
                .unwrap_or_else(|| panic!("{leg}: {out}"));
            let ms: f64 = line
                .split(": ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("a time: {line}"));
            assert!(ms > 0.0 && ms < 5_000.0, "{line}");
        }
        assert!(!out.contains("unreachable"), "{out}");
        assert!(
            out.contains(concat!("agent version ", env!("CARGO_PKG_VERSION"))),
            "{out}"
        );
        // Callers may not make the hub's calls to agents.
        let mut c2 = caller(addr, "back-2", false).await;
        let refused = raw_unary(
            hub_channel(addr).await,
            "back-2",
            "/grpctunnel.admin.v1.AgentAdmin/Ping",
            false,
        )
        .await
        .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        c2.unary(hello("still fine"))
            .await
            .expect("other calls pass");
        // An agent whose upstream is gone: the hub and agent legs answer,
        // the upstream's says why not.
        let mut orphan = agent(&dir, addr, "stay-1", AGENT_TOKEN, gone_upstream());
        orphan.log_line("tunnel open").await;
        let (code, out, err) = cli(&["ping", "--admin", &admin.to_string(), "stay-1"]).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("unreachable"), "{out}");

        // Nothing to disconnect: NotFound, exit 1.
        let (code, _, err) = cli(&["disconnect", "--admin", &admin.to_string(), "nobody"]).await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("NotFound"), "{err}");

        // The last minute's calls.
        let (code, table, err) = cli(&["stats", "--admin", &admin.to_string()]).await;
        assert_eq!(code, Some(0), "{err}");
        let row = table
            .lines()
            .find(|l| l.starts_with("stay-1 ") && l.contains("/Unary"))
            .unwrap_or_else(|| panic!("no stay-1 row: {table}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        // KEY METHOD CALLS ERRORS: 7 calls and the refused one.
        assert_eq!(cells[2], "8", "{table}");
        assert_eq!(cells[3], "1", "{table}");

        drop(watch);
        hub.terminate().await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// `grpctunnel drain` on one hub of a cluster, under load through both
/// hubs, with the agent connected to both: the drained hub's tunnel
/// closes, its key leaves the store, its health turns 503, the agent's
/// reconnections to it are refused, and no call fails: those through
/// either hub go to the other hub's tunnel.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_hub_hands_its_agents_calls_to_the_other_hubs() {
    use common::{cluster::*, store::Store};
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["drain-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let admin_a = cluster.hubs[0].0.admin.expect("ADMIN line");
        let admin_b = cluster.hubs[1].0.admin.expect("ADMIN line");
        let mut agent = cluster.agent(&[a, b], "drain-0").await;
        four_kinds(a, "drain-0").await.expect("through a");
        four_kinds(b, "drain-0").await.expect("through b");
        assert_eq!(agents(admin_a).await.len(), 2, "one tunnel on each hub");

        let stop = tokio_util::sync::CancellationToken::new();
        let callers = vec![
            ("through the drained hub", steady(a, "drain-0", &stop)),
            ("through the drained hub, 2", steady(a, "drain-0", &stop)),
            ("through the other hub", steady(b, "drain-0", &stop)),
            ("through the other hub, 2", steady(b, "drain-0", &stop)),
        ];
        let (code, out, err) = cli(&["drain", "--admin", &admin_a.to_string()]).await;
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("drained 1 tunnel"), "{out}");
        assert!(
            agents_with(admin_a, &["--this-hub"]).await.is_empty(),
            "a holds no tunnel"
        );
        let left = agents(admin_a).await;
        assert_eq!(left.len(), 1, "b still does: {left:?}");
        assert_eq!(left[0]["hub"], format!("http://{b}"));
        assert_eq!(agents_with(admin_b, &["--this-hub"]).await.len(), 1);
        let (status, body) = http_get(admin_a, "/healthz").await;
        assert!(status.contains("503"), "{status} {body}");
        assert!(store
            .cli(&["HGETALL", "grpctunnel:key:drain-0"])
            .await
            .lines()
            .all(|l| !l.contains(&a.port().to_string())));
        let refused = agent.log_line("cannot open the tunnel").await;
        assert!(refused.contains("draining"), "{refused}");
        // The load goes on after the drain for a while: its length is the
        // condition tested, not a wait for an event.
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
        no_call_failed(callers, "across the drain").await;
        four_kinds(a, "drain-0").await.expect("a relays to b");
    })
    .await
    .expect("test timed out");
}

/// 1,000 agents over three hubs of one store: `grpctunnel agents` on any
/// hub lists all of them, each with the hub it is connected to (the other
/// hubs asked through the relay links, with proofs made with the cluster
/// secret); a member call without a valid proof lists nothing.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_hub_lists_the_agents_of_every_hub() {
    use common::{cluster::*, store::Store};
    use grpctunnel::ReverseTunnelServer;
    use grpctunnel_testing::Echo;
    const AGENTS: usize = 1000;
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let keys: Vec<String> = (0..AGENTS).map(|i| format!("fleet-{i}")).collect();
        let mut key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        key_refs.push("pinged-0");
        let cluster = Fixture::new(&store, &key_refs, 3).await;
        let hubs = cluster.addrs();
        let admins: Vec<SocketAddr> = cluster
            .hubs
            .iter()
            .map(|h| h.0.admin.expect("ADMIN line"))
            .collect();
        let mut fleet = Vec::with_capacity(AGENTS);
        for (i, key) in keys.iter().enumerate() {
            // One connection per agent, as real agents have; agent i on
            // hub i % 3.
            let transport =
                tonic::transport::Endpoint::from_shared(format!("http://{}", hubs[i % 3]))
                    .expect("endpoint")
                    .connect_lazy();
            let agent = ReverseTunnelServer::new(tonic::service::Routes::new(Echo::new().server()))
                .metadata("grpctunnel-key", key)
                .metadata("authorization", &format!("Bearer {AGENT_TOKEN}"))
                .keep_connected(transport);
            fleet.push(agent);
        }
        for agent in &fleet {
            agent.wait_until(|s| s.connected).await;
        }
        for (h, admin) in admins.iter().enumerate() {
            let started = Instant::now();
            let listed = agents(*admin).await;
            println!(
                "hub {h} listed {} agents of 3 hubs in {:?}",
                listed.len(),
                started.elapsed()
            );
            assert_eq!(listed.len(), AGENTS);
            for a in &listed {
                let key = a["key"].as_str().expect("a key");
                let i: usize = key["fleet-".len()..].parse().expect("numbered");
                assert_eq!(
                    a["hub"].as_str(),
                    Some(format!("http://{}", hubs[i % 3]).as_str()),
                    "{a}"
                );
            }
            // This hub's own only.
            let own = agents_with(*admin, &["--this-hub"]).await;
            assert_eq!(own.len(), AGENTS / 3 + usize::from(h < AGENTS % 3));
        }

        // A ping through hub 0 to an agent on hub 1 is relayed there.
        let _pinged = cluster.agent(&hubs[1..2], "pinged-0").await;
        // (Once hub 0 finds the key: its hub publishes it a moment after
        // the tunnel opens.)
        let admin0 = admins[0].to_string();
        let out = grpctunnel_testing::eventually(
            "hub 0 reaches pinged-0",
            Duration::from_secs(10),
            || async {
                let (code, out, _) = cli(&["ping", "--admin", &admin0, "pinged-0"]).await;
                (code == Some(0)).then_some(out)
            },
        )
        .await;
        assert!(
            out.contains(&format!("(relayed to hub http://{})", hubs[1])),
            "{out}"
        );

        // A member call without a proof made with the cluster secret.
        let forged = "v1.0.AAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let channel = hub_channel(hubs[0]).await;
        let mut client = tonic::client::Grpc::new(channel);
        client.ready().await.expect("ready");
        let mut req = tonic::Request::new(());
        req.metadata_mut()
            .insert("grpctunnel-relay-auth", forged.parse().expect("ascii"));
        let refused = client
            .unary::<(), (), _>(
                req,
                "/grpctunnel.admin.v1.Admin/ListAgents"
                    .parse()
                    .expect("path"),
                tonic_prost::ProstCodec::<(), ()>::default(),
            )
            .await
            .expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("member call"), "{refused:?}");
        for agent in fleet {
            agent.shutdown().await;
        }
    })
    .await
    .expect("test timed out");
}
