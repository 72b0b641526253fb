//! The cluster under churn and long streams: real hubs on a real Redis,
//! agents in this process (see `common/cluster.rs`).

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{cluster::*, store::Store, *};
use grpctunnel_testing::{eventually, pb::echo_service_client::EchoServiceClient};

/// A gauge of a hub's `/metrics`.
async fn gauge(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

/// Churn: 10,000 agent connections come and go across 3 hubs (20 rounds
/// of 500 agents, each its own connection and key; every agent registered
/// (the hubs' gauges add up to 500) and published (500 entries in the
/// store), and every key answers through another hub), and leave
/// nothing behind: no entry in
/// the store, no tunnel in any hub, and no more tasks or memory (beyond
/// allocator slack) in any hub after the last round than after the 5th.
///
/// The agents run in this process (the crate's `keep_connected`, which
/// the agent binary runs), so that 10,000 connections cost one process.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_agent_connections_leave_nothing_behind() {
    use grpctunnel::ReverseTunnelServer;
    use grpctunnel_testing::Echo;
    const ROUNDS: usize = 20;
    const AGENTS: usize = 500;
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(280), async {
        let keys = keys(AGENTS);
        let cluster = Fixture::new(&store, &keys, 3).await;
        let addrs = cluster.addrs();
        let admins: Vec<SocketAddr> = cluster
            .hubs
            .iter()
            .map(|h| h.0.admin.expect("admin port"))
            .collect();
        let pids: Vec<u32> = cluster
            .hubs
            .iter()
            .map(|h| h.0.child.id().expect("running"))
            .collect();
        let mut baseline_tasks = Vec::new();
        let mut rss_at_5 = Vec::new();
        let started = Instant::now();
        for round in 1..=ROUNDS {
            let mut agents = Vec::with_capacity(AGENTS);
            for (i, key) in keys.iter().enumerate() {
                let hub = addrs[(i + round) % 3];
                let transport = tonic::transport::Endpoint::from_shared(format!("http://{hub}"))
                    .expect("endpoint")
                    .connect_lazy();
                agents.push(
                    ReverseTunnelServer::new(tonic::service::Routes::new(Echo::new().server()))
                        .metadata("grpctunnel-key", key)
                        .metadata("authorization", &format!("Bearer {TOKEN}"))
                        .keep_connected(transport),
                );
            }
            // Every agent registered with its hub, and published in the
            // store for the others.
            let what = format!("round {round}: {AGENTS} agents registered");
            eventually(&what, Duration::from_secs(60), || async {
                let mut connected = 0.0;
                for &admin in &admins {
                    connected += gauge(admin, "grpctunnel_agents_connected").await;
                }
                (connected == AGENTS as f64).then_some(())
            })
            .await;
            let what = format!("round {round}: {AGENTS} keys in the store");
            eventually(&what, Duration::from_secs(30), || async {
                let entries = store
                    .cli(&["--scan", "--pattern", "grpctunnel:key:*"])
                    .await;
                (entries.lines().count() == AGENTS).then_some(())
            })
            .await;
            // Every key answers through the next hub (one HTTP/2
            // connection, the calls multiplexed on it), relayed for the
            // agents on the two other hubs. (While call latency was a
            // Prometheus summary, whose memory grows with the values seen,
            // this grew each hub by 1.5 MiB a round; calling one key as
            // often did not.)
            let via = addrs[(round + 1) % 3];
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{via}"))
                .expect("endpoint")
                .connect()
                .await
                .expect("connect to the hub");
            let mut calls = tokio::task::JoinSet::new();
            for &key in &keys {
                let mut client = EchoServiceClient::new(channel.clone());
                calls.spawn(async move {
                    let mut req = hello(key);
                    let md = req.metadata_mut();
                    md.insert("grpctunnel-key", key.parse().expect("ascii"));
                    md.insert("grpctunnel-wait", "true".parse().expect("ascii"));
                    client.unary(req).await.map(|_| ())
                });
            }
            let mut answered = 0;
            while let Some(done) = calls.join_next().await {
                done.expect("no panic")
                    .unwrap_or_else(|s| panic!("round {round}: the agent answers: {s:?}"));
                answered += 1;
            }
            assert_eq!(answered, AGENTS);
            for agent in agents {
                agent.shutdown().await;
            }
            // Every hub sees its tunnels gone (the gauge is read at scrape).
            for &admin in &admins {
                eventually(
                    "a hub's tunnels gone",
                    Duration::from_secs(10),
                    || async move {
                        (gauge(admin, "grpctunnel_agents_connected").await == 0.0).then_some(())
                    },
                )
                .await;
            }
            // After 5 rounds each hub holds its pooled connections to the
            // others (their tasks); from then on nothing may grow.
            if round == 5 {
                for &admin in &admins {
                    baseline_tasks.push(gauge(admin, "grpctunnel_tasks_alive").await);
                }
                rss_at_5 = pids.iter().map(|&p| rss(p)).collect();
            }
        }
        println!(
            "{} agent connections over 3 hubs in {:?}",
            ROUNDS * AGENTS,
            started.elapsed()
        );
        // The store: every entry withdrawn.
        eventually(
            "no directory entry left",
            Duration::from_secs(10),
            || async {
                let left = store
                    .cli(&["--scan", "--pattern", "grpctunnel:key:*"])
                    .await;
                left.is_empty().then_some(())
            },
        )
        .await;
        for (i, &admin) in admins.iter().enumerate() {
            // Connection tasks end as their sockets close: wait for that,
            // bounded; a leak never gets there.
            let baseline = baseline_tasks[i];
            let what = format!("hub {i}: tasks back to {baseline} (after round 5)");
            let tasks = eventually(&what, Duration::from_secs(10), || async move {
                let tasks = gauge(admin, "grpctunnel_tasks_alive").await;
                (tasks <= baseline + 2.0).then_some(tasks)
            })
            .await;
            println!(
                "hub {i}: {tasks} tasks alive (after round 5: {})",
                baseline_tasks[i]
            );
            let now = rss(pids[i]);
            let grown = now.saturating_sub(rss_at_5[i]);
            println!(
                "hub {i}: RSS {} KiB, {} KiB more than after round 5",
                now / 1024,
                grown / 1024
            );
            assert!(grown < 16 << 20, "hub {i} grew {} KiB", grown / 1024);
        }
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// Small messages on a relayed stream: 5,000 round trips of 100 B on one
/// bidi call relayed between two hubs, over their pooled connection.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_relayed_stream_of_small_messages_keeps_its_connection() {
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(180), async {
        let cluster = Fixture::new(&store, &["plant-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let _agent = cluster.agent(&[b], "plant-0").await;
        let mut via_a = caller(a, "plant-0", true).await;
        ping_pong(&mut via_a, 5_000).await;
    })
    .await
    .expect("test timed out");
    store.kill().await;
}
