//! Partitions: a hub cut off from the store, and hubs cut off from each
//! other, silently (a loopback relay that stops forwarding: nothing
//! answers, nothing is refused, as when a network drops packets). Real
//! hub and agent processes and a real `redis-server`.

mod common;

use std::time::{Duration, Instant};

use common::{cluster::*, freeze::FreezingRelay, store::Store, *};
use grpctunnel_testing::{eventually, Echo};
use tonic::Code;

/// A hub cut off from the store (its store connection blackholed: nothing
/// answers, nothing is refused) keeps serving its own agent; the other hub
/// drops it from its routes within the TTL (the store expires what it no
/// longer renews); healed, it is found again.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_cut_off_from_the_store_serves_its_agents_and_leaves_the_routes() {
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let link =
            FreezingRelay::start(format!("127.0.0.1:{}", store.port).parse().expect("addr")).await;
        let dir = temp_dir();
        let files = cluster_files(
            &dir,
            &[
                "cut-0".to_owned(),
                "plant-0".to_owned(),
                "late-0".to_owned(),
            ],
        );
        let up = upstream().await;
        // Hub A reaches the store through the relay; hub B directly.
        let (_a, a) = cluster_hub(
            &files,
            &format!("redis://{}", link.addr),
            free_port(),
            "tunnel",
        )
        .await;
        let (_b, b) = cluster_hub(&files, &store.url(), free_port(), "tunnel").await;
        let _on_a = cluster_agent(&dir, &[a], "cut-0", up).await;
        let _on_b = cluster_agent(&dir, &[b], "plant-0", up).await;
        four_kinds(b, "cut-0").await.expect("relayed to a");

        link.partition();
        let cut = Instant::now();
        // B stops finding A's key once its entry expires (TTL 2 s).
        let via_b = tokio::sync::Mutex::new(caller(b, "cut-0", false).await);
        let gone = eventually("b drops a's key", Duration::from_secs(10), || async {
            via_b.lock().await.unary(hello("x")).await.err()
        })
        .await;
        let dropped_after = cut.elapsed();
        assert_eq!(gone.code(), Code::Unavailable, "{gone:?}");
        assert!(gone.message().contains("on any replica"), "{gone:?}");
        println!("hub b dropped the cut-off hub's key {dropped_after:?} after the cut (TTL 2 s)");
        assert!(dropped_after < Duration::from_secs(4), "{dropped_after:?}");
        // A still serves its own agent, without the store.
        four_kinds(a, "cut-0")
            .await
            .expect("a serves its own agent");

        link.heal();
        four_kinds(b, "cut-0")
            .await
            .expect("found again once healed");

        // A's subscription to announcements went silent with the cut (its
        // connection stays frozen); healed, A subscribes again, so a call
        // waiting at A for a key that then appears at B is woken.
        let mut probe = caller(a, "late-0", false).await;
        let status = probe.unary(hello("x")).await.expect_err("no late-0 yet");
        assert!(status.message().contains("on any replica"), "{status:?}");
        let waiting = tokio::spawn(async move {
            let mut c = caller(a, "late-0", true).await;
            let reply = c.unary(hello("late")).await;
            (reply, Instant::now())
        });
        let _late = cluster_agent(&dir, &[b], "late-0", up).await;
        let opened = Instant::now();
        let (reply, at) = waiting.await.expect("waiting caller");
        reply.expect("woken by b's announcement");
        println!(
            "a call waiting at a was served {:?} after the key's tunnel opened at b",
            at.saturating_duration_since(opened)
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// Hubs A and C cut off from hub B (B's advertised address is a relay that
/// freezes): calls A relayed to B when it happened fail once B's
/// connection misses its keepalive (pinged once a TTL), and every later
/// call goes to C, which holds the key too: B is tried last while
/// unreachable. Healed, B serves again.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_cut_off_from_a_hub_go_to_the_key_s_other_hubs() {
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = temp_dir();
        let files = cluster_files(&dir, &["plant-0".to_owned()]);
        let b_port = free_port();
        let link = FreezingRelay::start(format!("127.0.0.1:{b_port}").parse().expect("addr")).await;
        let advertise_b = format!("http://{}", link.addr);
        let (_b, b) = cluster_hub_with(&files, &store.url(), b_port, &advertise_b, &[]).await;
        let (_a, a) = cluster_hub(&files, &store.url(), free_port(), "tunnel").await;
        let (_c, c) = cluster_hub(&files, &store.url(), free_port(), "grpc").await;
        // The key's agents on B and C, each with an upstream of its own:
        // which one served a call is read from its record of the call's tag.
        let (echo_b, echo_c) = (Echo::new(), Echo::new());
        let up_b = upstream_with(echo_b.clone()).await;
        let up_c = upstream_with(echo_c.clone()).await;
        let _on_b = cluster_agent(&dir, &[b], "plant-0", up_b).await;
        let _on_c = cluster_agent(&dir, &[c], "plant-0", up_c).await;
        four_kinds(a, "plant-0").await.expect("relayed");
        let mut probe = Probe {
            caller: caller(a, "plant-0", false).await,
            n: 0,
        };
        // Four callers at A: balanced over B and C by what A relays there.
        let stop = tokio_util::sync::CancellationToken::new();
        let callers: Vec<_> = (0..4).map(|_| steady(a, "plant-0", &stop)).collect();
        probe
            .until_served_by(&echo_b, "B serves calls A relays")
            .await;
        link.partition();
        let cut = Instant::now();
        // Three TTLs cut off: B's keepalive is missed within two.
        tokio::time::sleep(Duration::from_secs(6)).await;
        let during = cut.elapsed();
        stop.cancel();
        let (mut ok, mut failed) = (0, 0);
        for task in callers {
            let (o, f, first) = task.await.expect("steady caller");
            ok += o;
            failed += f;
            for status in &first {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            }
        }
        println!(
            "{ok} calls through A in the {during:?} after the cut, {failed} failed (4 callers)"
        );
        assert!(
            failed <= 4,
            "more than the calls in flight at the cut: {failed}"
        );
        assert!(ok > 100, "only {ok} calls");
        probe
            .until_served_by(&echo_c, "C serves while B is cut off")
            .await;

        link.heal();
        let healed = Instant::now();
        probe
            .until_served_by(&echo_b, "B serves again once healed")
            .await;
        println!(
            "B served again {:?} after the network healed",
            healed.elapsed()
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// Tagged calls through one hub.
struct Probe {
    caller: Caller,
    n: u32,
}

impl Probe {
    /// Calls until `echo` served one (the upstream of one agent), bounded.
    async fn until_served_by(&mut self, echo: &Echo, what: &str) {
        let served = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                self.n += 1;
                let tag = format!("probe-{}", self.n);
                let mut req = hello(&tag);
                req.get_mut().tag = tag.clone();
                if self.caller.unary(req).await.is_ok() && echo.handler_state(&tag).finished {
                    return;
                }
            }
        })
        .await;
        assert!(served.is_ok(), "{what}: not within 15 s");
    }
}
