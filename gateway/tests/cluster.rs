//! Several hubs, one key space, on a real Redis: real hub and agent
//! processes, a real `redis-server` (see `common/store.rs`).

mod common;

use std::time::{Duration, Instant};

use common::{cluster::*, sentinel::Replicated, store::Store, *};
use grpctunnel_testing::{eventually, Echo};
use tonic::Code;

#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hubs_thirty_agents_every_key_from_every_hub() {
    let store = Store::start().await;
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
        eventually(
            "every directory entry withdrawn",
            Duration::from_secs(10),
            || async {
                let left = store
                    .cli(&["--scan", "--pattern", "grpctunnel:key:*"])
                    .await;
                left.is_empty().then_some(())
            },
        )
        .await;
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
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_fails_over_to_the_others() {
    let store = Store::start().await;
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

/// Relays from outside the cluster are refused: a relayed call or relay
/// tunnel with no proof, a made-up one, or the secret itself as the proof
/// (what hubs sent before proofs) is `UNAUTHENTICATED`. (Proofs captured
/// from a hub, replayed: `cluster_trust.rs`.)
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_relay_proofs_are_refused() {
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["plant-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let _agent = cluster.agent(&[b], "plant-0").await;
        // Through hub a, relayed to b: works.
        four_kinds(a, "plant-0").await.expect("relayed");

        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        let made_up = [
            (SECRET.to_owned(), "a malformed cluster proof"),
            (
                format!("v1.{now}.{:032x}.{}", 7, "A".repeat(43)),
                "not made with this cluster's secret",
            ),
        ];
        let relayed = |proof: &str| {
            let mut req = hello("forged");
            req.metadata_mut()
                .insert("grpctunnel-relay-auth", proof.parse().expect("ascii"));
            req.metadata_mut()
                .insert("grpctunnel-relay-key", "plant-0".parse().expect("ascii"));
            req
        };
        let mut at_b = caller(b, "plant-0", false).await;
        for (proof, why) in &made_up {
            let err = at_b.unary(relayed(proof)).await.expect_err("made up");
            assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
            assert!(err.message().contains(why), "{err:?}");
        }
        let relay_tunnel = |hub: std::net::SocketAddr, proof: String| async move {
            let transport = tonic::transport::Endpoint::from_shared(format!("http://{hub}"))
                .expect("url")
                .connect()
                .await
                .expect("connect");
            grpctunnel::TunnelChannel::builder()
                .metadata("grpctunnel-relay-auth", &proof)
                .open(transport)
                .await
        };
        for (proof, why) in made_up {
            let err = relay_tunnel(b, proof).await.expect_err("made up");
            let status = err.status().expect("a status");
            assert_eq!(status.code(), Code::Unauthenticated, "{err:?}");
            assert!(status.message().contains(why), "{err:?}");
        }
        // The hubs still relay to each other.
        four_kinds(a, "plant-0").await.expect("relayed");
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// The store goes away for 10 s under load, then comes back empty: no
/// call fails. Local calls never needed it; relayed ones go where their key
/// last was while the store cannot say, and while it comes back without
/// the entries the hubs republish within a TTL.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_going_away_and_coming_back_empty_fails_no_call() {
    let store = Store::start().await;
    let port = store.port;
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["plant-0"], 2).await;
        let [a, b] = cluster.addrs()[..] else {
            unreachable!("two hubs")
        };
        let _agent = cluster.agent(&[b], "plant-0").await;
        four_kinds(a, "plant-0").await.expect("relayed");

        // Calls back to back, relayed through a and local at b, for the
        // whole test.
        let stop = tokio_util::sync::CancellationToken::new();
        let (relayed, local) = (steady(a, "plant-0", &stop), steady(b, "plant-0", &stop));

        // The outage and the empty store are what is tested: their length
        // is the condition, not a wait for something to happen.
        store.kill().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let store = Store::start_on(port).await;
        let back = Instant::now();
        eventually("b republishes its key", Duration::from_secs(10), || async {
            let entries = store.cli(&["HGETALL", "grpctunnel:key:plant-0"]).await;
            (!entries.is_empty()).then_some(())
        })
        .await;
        println!(
            "the key was in the store again {:?} after it restarted",
            back.elapsed()
        );
        // Two TTLs with the store back (and empty at first).
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.cancel();
        let callers = vec![("relayed", relayed), ("local", local)];
        no_call_failed(callers, "across the outage and the empty store").await;
        store.kill().await;
    })
    .await
    .expect("test timed out");
}

/// A replicated store (a primary, a replica, three Sentinels, all real):
/// the primary killed under relayed and local load, the hubs find the
/// promoted replica through the Sentinels; no call fails, and a key first
/// published after the failover is reachable from every hub.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_follow_a_sentinel_failover_and_fail_no_call() {
    let mut store = Replicated::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::on(&store.url(), &["plant-0", "plant-1"], 3).await;
        let [a, b, c] = cluster.addrs()[..] else {
            unreachable!("three hubs")
        };
        // Hub b relays as plain gRPC, c in tunnels (`Fixture::on`).
        let _agent = cluster.agent(&[a], "plant-0").await;
        // Under steady traffic, every hub has routed the key before.
        for hub in [b, c] {
            four_kinds(hub, "plant-0").await.expect("relayed");
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let callers = vec![
            ("relayed as gRPC", steady(b, "plant-0", &stop)),
            ("relayed in a tunnel", steady(c, "plant-0", &stop)),
            ("local", steady(a, "plant-0", &stop)),
        ];

        let failed_over = Instant::now();
        let primary = store.kill_primary().await;
        println!(
            "the Sentinels promoted the replica in {:?}",
            failed_over.elapsed()
        );
        let _new = cluster.agent(&[c], "plant-1").await;
        for hub in [a, b, c] {
            four_kinds(hub, "plant-1")
                .await
                .expect("a key published after the failover");
        }
        println!(
            "plant-1 reachable from every hub {:?} after the kill",
            failed_over.elapsed()
        );
        let entries = primary.cli(&["HGETALL", "grpctunnel:key:plant-1"]).await;
        assert!(
            entries.contains("127.0.0.1"),
            "on the new primary: {entries:?}"
        );
        stop.cancel();
        no_call_failed(callers, "across the failover").await;
    })
    .await
    .expect("test timed out");
}

/// A key that moves to another hub is found there: hubs reuse a lookup for
/// up to a second, but forget it when another hub announces the key or
/// when the hub it points to refuses the call. At most a few calls in
/// between fail, with `UNAVAILABLE`, and none hangs.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_moves_to_another_hub_is_found_there() {
    let store = Store::start().await;
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
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_local_agents_hand_calls_to_a_less_loaded_hub() {
    let store = Store::start().await;
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

/// The library's side of a cluster: a registry in this process joins the
/// cluster of a hub process; `wait_for_key` resolves once the hub's agent
/// publishes the key, and the channel it returns reaches that agent by
/// relay.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_library_registry_waits_for_and_calls_a_key_on_another_replica() {
    use grpctunnel::{
        cluster::{Cluster, RedisDirectory},
        ReverseTunnelRegistry,
    };
    use grpctunnel_testing::pb::echo_service_client::EchoServiceClient;
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(60), async {
        let cluster = Fixture::new(&store, &["plant-0"], 1).await;
        let hub = cluster.addrs()[0];
        let directory = RedisDirectory::open(&store.url()).expect("a redis URL");
        let registry = ReverseTunnelRegistry::with_key(|_, _| String::new()).cluster(Cluster::new(
            directory,
            "http://127.0.0.1:1",
            SECRET,
        ));
        assert!(registry.in_cluster());
        let waiting = tokio::spawn({
            let registry = registry.clone();
            async move { registry.wait_for_key("plant-0").await }
        });
        let _agent = cluster.agent(&[hub], "plant-0").await;
        let channel = waiting.await.expect("no panic");
        let mut client = EchoServiceClient::new(channel);
        let reply = client
            .unary(hello("from the library"))
            .await
            .expect("relayed");
        assert_eq!(reply.into_inner().payload.as_ref(), b"from the library");
    })
    .await
    .expect("test timed out");
    store.kill().await;
}
