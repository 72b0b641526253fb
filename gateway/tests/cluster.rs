//! Several hubs, one key space, on a real Redis: real hub and agent
//! processes, a real `redis-server` (see `common/store.rs`).

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::{store::Store, *};
use grpctunnel_testing::{pb::EchoRequest, Echo};
use tonic::Code;

const SECRET: &str = "cluster-s3cret";
const TOKEN: &str = "s3cret-7";

/// A free loopback port, for a hub that must advertise its address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The hubs' shared config (agents' token bound to `keys`) and secret.
fn cluster_files(dir: &std::path::Path, keys: &[String]) -> (String, String) {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[agent]]\ntoken = {TOKEN:?}\nkeys = [{}]\n",
            keys.join(", ")
        ),
    )
    .expect("config");
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, SECRET).expect("secret");
    (config.display().to_string(), secret.display().to_string())
}

/// A hub of the cluster in `store`, on a port of its own.
async fn cluster_hub(files: &(String, String), store: &str, port: u16) -> (Process, SocketAddr) {
    let listen = format!("127.0.0.1:{port}");
    let advertise = format!("http://{listen}");
    let mut hub = Process::spawn(&[
        "hub",
        "--listen",
        &listen,
        "--config",
        &files.0,
        "--cluster",
        store,
        "--advertise",
        &advertise,
        "--cluster-secret-file",
        &files.1,
        "--cluster-ttl",
        "2",
        "--admin",
        "127.0.0.1:0",
    ]);
    let addr = hub.listening().await;
    (hub, addr)
}

/// An agent of `key` connected to each of `hubs`, once all its tunnels
/// are open.
async fn cluster_agent(
    dir: &std::path::Path,
    hubs: &[SocketAddr],
    key: &str,
    upstream: SocketAddr,
) -> Process {
    let list: Vec<String> = hubs.iter().map(|h| format!("http://{h}")).collect();
    let token = dir.join(format!("agent-{key}.token"));
    std::fs::write(&token, TOKEN).expect("token");
    let mut agent = Process::spawn(&[
        "agent",
        "--hub",
        &list.join(","),
        "--key",
        key,
        "--token-file",
        &token.display().to_string(),
        "--upstream",
        &format!("http://{upstream}"),
    ]);
    for _ in hubs {
        agent.log_line("tunnel open").await;
    }
    agent
}

/// Every call kind for `key` through `hub`; the first failure, if any.
/// The calls wait for the key (`grpctunnel-wait`): a hub publishes a new
/// key a moment after its agent's tunnel opens.
async fn four_kinds(hub: SocketAddr, key: &'static str) -> Result<(), String> {
    let mut c = caller(hub, key, true).await;
    let fail = |kind: &str| {
        let kind = kind.to_owned();
        move |s: tonic::Status| format!("{key} via {hub}: {kind}: {s:?}")
    };
    let reply = c.unary(hello(key)).await.map_err(fail("unary"))?;
    if reply.into_inner().payload.as_ref() != key.as_bytes() {
        return Err(format!("{key} via {hub}: unary: wrong payload"));
    }
    let req = EchoRequest {
        payload: key.as_bytes().to_vec().into(),
        repeat: 3,
        ..Default::default()
    };
    let mut stream = c
        .server_stream(req)
        .await
        .map_err(fail("server stream"))?
        .into_inner();
    let mut n = 0;
    while stream
        .message()
        .await
        .map_err(fail("server stream"))?
        .is_some()
    {
        n += 1;
    }
    if n != 3 {
        return Err(format!("{key} via {hub}: server stream: {n} of 3"));
    }
    let requests = (1..=3).map(|seq| EchoRequest {
        seq,
        ..Default::default()
    });
    let reply = c
        .client_stream(tokio_stream::iter(requests.clone()))
        .await
        .map_err(fail("client stream"))?;
    if reply.into_inner().seq != 3 {
        return Err(format!("{key} via {hub}: client stream: not the last"));
    }
    let mut responses = c
        .bidi(tokio_stream::iter(requests))
        .await
        .map_err(fail("bidi"))?
        .into_inner();
    let mut n = 0;
    while responses.message().await.map_err(fail("bidi"))?.is_some() {
        n += 1;
    }
    if n != 3 {
        return Err(format!("{key} via {hub}: bidi: {n} of 3"));
    }
    Ok(())
}

fn keys(n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| &*Box::leak(format!("plant-{i}").into_boxed_str()))
        .collect()
}

/// Every key through every hub, all four call kinds; returns the failures.
async fn every_key_everywhere(hubs: &[SocketAddr], keys: &[&'static str]) -> Vec<String> {
    let mut calls = tokio::task::JoinSet::new();
    for &hub in hubs {
        for &key in keys {
            calls.spawn(four_kinds(hub, key));
        }
    }
    let mut failures = Vec::new();
    while let Some(done) = calls.join_next().await {
        if let Err(e) = done.expect("no panic") {
            failures.push(e);
        }
    }
    failures
}

/// Hubs of one cluster on `store`, their shared files, and an upstream
/// for their agents; the temp dir goes when dropped.
struct Fixture {
    dir: std::path::PathBuf,
    upstream: SocketAddr,
    hubs: Vec<(Process, SocketAddr)>,
}

impl Fixture {
    /// `n` hubs whose agents' token is bound to `keys`.
    async fn new(store: &Store, keys: &[&str], n: usize) -> Self {
        let dir = temp_dir();
        let upstream = upstream().await;
        let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let files = cluster_files(&dir, &owned);
        let mut hubs = Vec::new();
        for _ in 0..n {
            hubs.push(cluster_hub(&files, &store.url(), free_port()).await);
        }
        Self {
            dir,
            upstream,
            hubs,
        }
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.hubs.iter().map(|h| h.1).collect()
    }

    /// An agent of `key` connected to `hubs`, its tunnels open.
    async fn agent(&self, hubs: &[SocketAddr], key: &str) -> Process {
        cluster_agent(&self.dir, hubs, key, self.upstream).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_thirty_agents_every_key_from_every_hub() {
    let Some(store) = Store::start().await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(240), async {
        let keys = keys(30);
        let cluster = Fixture::new(&store, &keys, 3).await;
        let addrs = cluster.addrs();
        // Agent i on hub i % 3 only: two hubs in three reach it by relay.
        let mut agents = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            agents.push(cluster.agent(&[addrs[i % 3]], key).await);
        }
        let failures = every_key_everywhere(&addrs, &keys).await;
        println!(
            "{} calls ({} hubs x {} keys x 4 kinds), {} failed",
            addrs.len() * keys.len() * 4,
            addrs.len(),
            keys.len(),
            failures.len()
        );
        assert!(failures.is_empty(), "{failures:#?}");

        // Agents gone, entries gone: nothing left in the store.
        for agent in agents {
            let mut agent = agent;
            agent.child.start_kill().expect("kill");
            agent.child.wait().await.expect("gone");
        }
        let left = async {
            loop {
                let n = store
                    .cli(&["--scan", "--pattern", "grpctunnel:key:*"])
                    .await;
                if n.is_empty() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), left)
            .await
            .expect("every directory entry withdrawn");
        drop(cluster);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// Kill -9 a hub: calls relayed through it fail `UNAVAILABLE` at once; its
/// agents, also connected to another hub, stay reachable from every
/// remaining hub (the dead hub's entries are skipped, then expire). (A
/// caller connected to the dead hub itself sees its own gRPC library's
/// connection error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_fails_over_to_the_others() {
    let Some(store) = Store::start().await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(180), async {
        let keys = keys(6);
        let mut all = keys.clone();
        all.push("solo");
        let mut cluster = Fixture::new(&store, &all, 3).await;
        let addrs = cluster.addrs();
        let mut agents = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let two = [addrs[i % 3], addrs[(i + 1) % 3]];
            agents.push(cluster.agent(&two, key).await);
        }
        let _solo = cluster.agent(&[addrs[0]], "solo").await;
        assert!(every_key_everywhere(&addrs, &keys).await.is_empty());

        // A call in flight through hub 1, relayed to hub 0, when 0 dies.
        let mut relayed = caller(addrs[1], "solo", true).await;
        let (requests, mut responses) = bidi_in_flight(&mut relayed).await;
        let (mut dead, _) = cluster.hubs.remove(0);
        dead.child.start_kill().expect("kill -9 a hub");
        let killed = Instant::now();
        let err = loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the call ended cleanly through a dead hub"),
                Err(status) => break status,
            }
        };
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        drop(requests);

        let alive = &addrs[1..];
        let failures = every_key_everywhere(alive, &keys).await;
        println!(
            "every key reachable from the other hubs {:?} after the kill; failures: {}",
            killed.elapsed(),
            failures.len()
        );
        assert!(failures.is_empty(), "{failures:#?}");
        drop(agents);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// A relayed call from outside the cluster (no or a wrong secret) is
/// refused; a relayed call for a key the hub does not hold is not relayed
/// again (no loops), even though another hub holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_relays_are_refused_and_relays_never_loop() {
    let Some(store) = Store::start().await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["plant-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let _agent = cluster.agent(&[b], "plant-0").await;
        // Through hub a, relayed to b: works.
        four_kinds(a, "plant-0").await.expect("relayed");

        let relayed = |secret: &'static str| {
            let mut req = hello("forged");
            req.metadata_mut()
                .insert("grpctunnel-relay-secret", secret.parse().expect("ascii"));
            req.metadata_mut()
                .insert("grpctunnel-relay-key", "plant-0".parse().expect("ascii"));
            req
        };
        let mut plain = caller(a, "plant-0", false).await;
        let err = plain
            .unary(relayed("guessed"))
            .await
            .expect_err("a wrong secret");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        // The right secret at a hub that does not hold the key: served
        // from its own tunnels only, so it fails instead of hopping on.
        let err = plain
            .unary(relayed(SECRET))
            .await
            .expect_err("not relayed twice");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("on this replica"), "{err:?}");
        // At the hub that holds it, the same relayed call is served.
        let mut at_b = caller(b, "plant-0", false).await;
        let reply = at_b.unary(relayed(SECRET)).await.expect("served at b");
        assert_eq!(reply.into_inner().payload.as_ref(), b"forged");
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// The store goes away: each hub still serves its own agents, a relayed
/// key fails `UNAVAILABLE` naming the directory; the store comes back
/// empty: hubs republish their keys, relayed calls resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_republish_after_the_store_restarts() {
    let Some(store) = Store::start().await else {
        return;
    };
    let port = store.port;
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["plant-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let _agent = cluster.agent(&[b], "plant-0").await;
        four_kinds(a, "plant-0").await.expect("relayed");

        store.kill().await;
        four_kinds(b, "plant-0")
            .await
            .expect("local keys work without the store");
        let mut via_a = caller(a, "plant-0", false).await;
        let err = via_a.unary(hello("x")).await.expect_err("no directory");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("directory"), "{err:?}");

        let store = Store::start_on(port).await.expect("the store again");
        let back = Instant::now();
        let resumed = async {
            loop {
                // Retried on each answer: the hubs republish within a
                // third of the TTL (2 s).
                if via_a.unary(hello("again")).await.is_ok() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), resumed)
            .await
            .expect("relayed calls resume");
        println!(
            "relayed calls resumed {:?} after the store came back",
            back.elapsed()
        );
        store.kill().await;
    })
    .await
    .expect("test timed out");
}

/// A gauge of a hub's `/metrics`.
async fn gauge(admin: SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
}

/// Churn: 10,000 agent connections come and go across 3 hubs (20 rounds
/// of 500 agents, each its own connection and key, calls through another
/// hub proving each is registered), and leave nothing behind: no entry in
/// the store, no tunnel in any hub, and no more tasks or memory (beyond
/// allocator slack) in any hub after the last round than after the 5th.
///
/// The agents run in this process (the crate's `keep_connected`, which
/// the agent binary runs), so that 10,000 connections cost one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_agent_connections_leave_nothing_behind() {
    use grpctunnel::ReverseTunnelServer;
    use grpctunnel_testing::Echo;
    const ROUNDS: usize = 20;
    const AGENTS: usize = 500;
    let Some(store) = Store::start().await else {
        return;
    };
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
            // Each key answers through the next hub: registered, and
            // published in the store.
            let via = addrs[(round + 1) % 3];
            let mut calls = tokio::task::JoinSet::new();
            for (i, &key) in keys.iter().enumerate() {
                if i % 10 == 0 {
                    calls.spawn(async move {
                        let mut c = caller(via, key, true).await;
                        c.unary(hello(key)).await.map(|_| ())
                    });
                }
            }
            while let Some(done) = calls.join_next().await {
                done.expect("no panic")
                    .unwrap_or_else(|s| panic!("round {round}: the agent answers: {s:?}"));
            }
            for agent in agents {
                agent.shutdown().await;
            }
            // Every hub sees its tunnels gone (the gauge is read at scrape).
            for &admin in &admins {
                while gauge(admin, "grpctunnel_agents_connected").await != 0.0 {
                    tokio::task::yield_now().await;
                }
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
        let entries = async {
            loop {
                if store
                    .cli(&["--scan", "--pattern", "grpctunnel:key:*"])
                    .await
                    .is_empty()
                {
                    return;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), entries)
            .await
            .expect("no directory entry left");
        for (i, &admin) in admins.iter().enumerate() {
            // Connection tasks end as their sockets close: wait for that,
            // bounded; a leak never gets there.
            let settled = async {
                loop {
                    let tasks = gauge(admin, "grpctunnel_tasks_alive").await;
                    if tasks <= baseline_tasks[i] + 2.0 {
                        return tasks;
                    }
                    tokio::task::yield_now().await;
                }
            };
            let tasks = tokio::time::timeout(Duration::from_secs(10), settled)
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "hub {i}: tasks never came back to {} after round 5",
                        baseline_tasks[i]
                    )
                });
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

/// `VmRSS` of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// Small messages on a relayed stream: 5,000 round trips of 100 B on one
/// bidi call relayed between two hubs, over their pooled connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_relayed_stream_of_small_messages_keeps_its_connection() {
    let Some(store) = Store::start().await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(180), async {
        let cluster = Fixture::new(&store, &["plant-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let _agent = cluster.agent(&[b], "plant-0").await;
        let mut via_a = caller(a, "plant-0", true).await;
        let (requests, mut responses) = bidi_in_flight(&mut via_a).await;
        for seq in 2..=5_000u64 {
            requests
                .send(EchoRequest {
                    seq,
                    payload: vec![7u8; 100].into(),
                    ..Default::default()
                })
                .await
                .expect("send");
            let reply = responses
                .message()
                .await
                .unwrap_or_else(|s| panic!("round trip {seq}: {s:?}"))
                .expect("a response");
            assert_eq!(reply.seq, seq);
        }
        drop(requests);
        assert!(responses.message().await.expect("a clean end").is_none());
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// A key that moves to another hub is found there: hubs reuse a lookup for
/// up to a second, but forget it when another hub announces the key or
/// when the hub it points to refuses the call. At most a few calls in
/// between fail, with `UNAVAILABLE`, and none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_moves_to_another_hub_is_found_there() {
    let Some(store) = Store::start().await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["plant-0"], 3).await;
        let [a, b, c] = cluster.addrs()[..] else {
            unreachable!("three hubs")
        };
        let mut on_b = cluster.agent(&[b], "plant-0").await;
        four_kinds(a, "plant-0").await.expect("relayed to b");
        let mut via_a = caller(a, "plant-0", false).await;
        via_a.unary(hello("cached")).await.expect("relayed, cached");

        on_b.child.start_kill().expect("kill the agent on b");
        on_b.child.wait().await.expect("gone");
        let _on_c = cluster.agent(&[c], "plant-0").await;
        four_kinds(c, "plant-0").await.expect("registered at c");
        let mut failed = 0;
        let reply = loop {
            match via_a.unary(hello("moved")).await {
                Ok(reply) => break reply,
                Err(status) => {
                    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                    failed += 1;
                    assert!(
                        failed < 5,
                        "still not found after {failed} calls: {status:?}"
                    );
                }
            }
        };
        assert_eq!(reply.into_inner().payload.as_ref(), b"moved");
        println!("the moved key answered after {failed} failed calls");
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// Balancing across hubs: an idle local agent always serves (ties stay
/// local); once the local agents are busy, a call goes to the hub whose
/// agent of the key is less loaded. Which agent served a call is read from
/// its upstream's record of the call's tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_local_agents_hand_calls_to_a_less_loaded_hub() {
    let Some(store) = Store::start().await else {
        return;
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["plant-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let (echo_a, echo_b) = (Echo::new(), Echo::new());
        let (up_a, up_b) = (
            upstream_with(echo_a.clone()).await,
            upstream_with(echo_b.clone()).await,
        );
        let _on_a = cluster_agent(&cluster.dir, &[a], "plant-0", up_a).await;
        let _on_b = cluster_agent(&cluster.dir, &[b], "plant-0", up_b).await;
        four_kinds(a, "plant-0").await.expect("at a");
        four_kinds(b, "plant-0").await.expect("at b");
        let tagged = |tag: &str| {
            let mut req = hello(tag);
            req.get_mut().tag = tag.to_owned();
            req
        };
        // Which upstream finished the call tagged `tag`: waits (bounded)
        // on the one expected, then looks at the other.
        let served_by = |tag: &'static str, expect_a: bool| {
            let (echo_a, echo_b) = (echo_a.clone(), echo_b.clone());
            async move {
                let (first, second) = if expect_a {
                    (echo_a, echo_b)
                } else {
                    (echo_b, echo_a)
                };
                let there = first.wait_handler(tag, Duration::from_secs(10)).await;
                let elsewhere = second.wait_handler(tag, Duration::ZERO).await;
                (there.finished, elsewhere.started)
            }
        };
        let mut via_a = caller(a, "plant-0", false).await;

        // Both idle: the local agent serves.
        via_a.unary(tagged("tie")).await.expect("tie");
        assert_eq!(
            served_by("tie", true).await,
            (true, false),
            "a tie stays local"
        );

        // The local agent busy with a call in flight: the next goes to b.
        let (held, _responses) = bidi_in_flight(&mut via_a).await;
        via_a.unary(tagged("busy")).await.expect("busy");
        assert_eq!(
            served_by("busy", false).await,
            (true, false),
            "handed to the idle hub"
        );
        drop(held);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}
