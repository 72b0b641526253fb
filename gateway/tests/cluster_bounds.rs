//! What callers can make a cluster's store do: calls for keys nobody holds
//! and calls waiting for keys cost store lookups, and a store without the
//! directory's scripts costs loads, so all three are bounded. Real hubs,
//! agents and `redis-server`; commands counted by the store itself (`INFO
//! commandstats`).

mod common;

use std::time::Duration;

use common::{cluster::*, store::Store, *};
use tonic::Code;

/// Directory lookups the store ran: its `LOOKUP` script reads a key's
/// entries with one `HGETALL`, which nothing else of the directory sends
/// (publishing and renewals use `HGET`/`HSET`). A script refused as not
/// loaded yet (`NOSCRIPT`) ran nothing, so it is not counted.
async fn lookups(store: &Store) -> u64 {
    store.calls_of("hgetall").await
}

/// 1,000 calls for a key no hub holds, one after another: the hub asks the
/// store about once per 250 ms (a short negative cache), not once a call.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_for_an_unknown_key_do_not_each_ask_the_store() {
    const CALLS: u64 = 1_000;
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let cluster = Fixture::new(&store, &["plant-0"], 1).await;
        let hub = cluster.addrs()[0];
        let mut c = caller(hub, "nobody", false).await;
        let before = lookups(&store).await;
        let started = std::time::Instant::now();
        for _ in 0..CALLS {
            let err = c.unary(hello("anyone?")).await.expect_err("nobody");
            assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        }
        let took = started.elapsed();
        let asked = lookups(&store).await - before;
        // At most one lookup per 250 ms, and one for each edge.
        let bound = took.as_millis() as u64 / 250 + 2;
        println!("{CALLS} calls in {took:?} asked the store {asked} times (bound {bound})");
        assert!(asked <= bound, "{asked} lookups for {CALLS} calls");
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// 200 calls wait for a key that never comes while 20 agents of other keys
/// connect: a new tunnel wakes only the calls waiting for its key, so the
/// waiters do not look the store up again (they did, each, on every new
/// tunnel: 4,000 lookups). The store is fresh, without the directory's
/// scripts: the 200 first lookups at once load the lookup script once (each
/// call refused `NOSCRIPT` loaded it: 51 to 201 loads).
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_tunnel_wakes_only_the_calls_waiting_for_its_key() {
    const WAITERS: usize = 200;
    const AGENTS: usize = 20;
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let keys = keys(AGENTS);
        let cluster = Fixture::new(&store, &keys, 1).await;
        let hub = cluster.addrs()[0];
        let channel = hub_channel(hub).await;
        // The hub's announcement feed subscribed first: on subscribing it
        // tells every waiting call to look again (announcements made
        // before it were not heard), which would count here.
        grpctunnel_testing::eventually(
            "the hub's announcement feed",
            Duration::from_secs(20),
            || async {
                let out = store
                    .cli(&["PUBSUB", "NUMSUB", "grpctunnel:published"])
                    .await;
                let subscribers = out.lines().nth(1)?.trim().parse::<u64>().ok()?;
                (subscribers >= 1).then_some(())
            },
        )
        .await;
        let mut waiting = wait_for(&channel, "late", WAITERS);
        // Every waiter has looked once (and waits): the store's count
        // settles.
        let settled = grpctunnel_testing::eventually(
            "the waiters' first lookups",
            Duration::from_secs(20),
            || async {
                let a = lookups(&store).await;
                (a >= WAITERS as u64).then_some(a)
            },
        )
        .await;
        let mut agents = Vec::new();
        for key in &keys {
            agents.push(cluster.agent(&[hub], key).await);
        }
        let asked = lookups(&store).await - settled;
        // None of the waiters looked again.
        println!("{AGENTS} agents connecting with {WAITERS} calls waiting: {asked} lookups");
        assert!(asked < WAITERS as u64, "{asked} lookups");
        assert_eq!(waiting.len(), WAITERS, "the waiters still wait");
        // The fresh store had no script: 200 first lookups at once, and
        // the publishes, loaded each script once.
        let loads = store.calls_of("script|load").await;
        println!("scripts loaded {loads} times");
        assert!(loads <= 2, "{loads} script loads");
        waiting.abort_all();
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// `n` calls waiting for `key` through `channel`, all at once.
fn wait_for(
    channel: &tonic::transport::Channel,
    key: &str,
    n: usize,
) -> tokio::task::JoinSet<
    Result<tonic::Response<grpctunnel_testing::pb::EchoResponse>, tonic::Status>,
> {
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..n {
        let mut c =
            grpctunnel_testing::pb::echo_service_client::EchoServiceClient::new(channel.clone());
        let mut req = hello("waiting");
        req.metadata_mut()
            .insert("grpctunnel-key", key.parse().expect("ascii"));
        req.metadata_mut()
            .insert("grpctunnel-wait", "true".parse().expect("ascii"));
        req.set_timeout(Duration::from_secs(60));
        waiting.spawn(async move { c.unary(req).await });
    }
    waiting
}

/// A store whose user for the hub may not load scripts (an operator's ACL
/// mistake), 200 calls waiting at once: every lookup is refused `NOSCRIPT`
/// and the load refused too, yet the hub asks to load each script about
/// once per burst of calls, not once per call (one load after another, each
/// up to the store's timeout when it does not answer).
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_refuses_to_load_scripts_is_asked_once_per_burst() {
    const WAITERS: usize = 200;
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let acl = [
            "ACL",
            "SETUSER",
            "hub",
            "on",
            ">hub-pw",
            "~*",
            "&*",
            "+@all",
            "-script|load",
        ];
        assert_eq!(store.cli(&acl).await, "OK");
        let url = format!("redis://hub:hub-pw@127.0.0.1:{}", store.port);
        let cluster = Fixture::on(&url, &["plant-0"], 1).await;
        let channel = hub_channel(cluster.addrs()[0]).await;
        let waiting = wait_for(&channel, "late", WAITERS);
        // Every lookup asks twice: `EVALSHA`, then a load or `EVALSHA`
        // again once another call has tried to load.
        grpctunnel_testing::eventually(
            "every waiter's lookup",
            Duration::from_secs(30),
            || async {
                let asked = store.asks_of("evalsha").await + store.asks_of("script|load").await;
                (asked >= 2 * WAITERS as u64).then_some(())
            },
        )
        .await;
        let loads = store.asks_of("script|load").await;
        println!("{WAITERS} calls waiting: {loads} script loads asked");
        assert!(loads < 20, "{loads} script loads asked");
        assert_eq!(waiting.len(), WAITERS, "the waiters still wait");
    })
    .await
    .expect("test timed out");
    store.kill().await;
}
