//! Bounds on what a caller can make the hub hold, with or without a
//! credential: real hub and agent processes, attacked from this process.

mod common;

use std::time::{Duration, Instant};

use common::*;
use grpctunnel_testing::pb::echo_service_client::EchoServiceClient;
use tonic::Code;

/// A call to `key` on `channel` that waits for its agent, with no deadline.
async fn waiting_call(
    channel: tonic::transport::Channel,
    key: &'static str,
) -> Result<(), tonic::Status> {
    let mut req = hello("waiting");
    req.metadata_mut()
        .insert("grpctunnel-key", key.parse().expect("ascii"));
    req.metadata_mut()
        .insert("grpctunnel-wait", "true".parse().expect("ascii"));
    EchoServiceClient::new(channel).unary(req).await.map(|_| ())
}

/// 10,000 calls wait, without deadlines, for an agent that never comes:
/// each ends at `--max-wait` with `UNAVAILABLE` naming it, none sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_waiters_without_deadlines_end_at_max_wait() {
    const CALLS: usize = 10_000;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = temp_dir();
        let (_hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &["--max-wait", "2"]).await;
        let mut channels = Vec::new();
        for _ in 0..50 {
            channels.push(hub_channel(addr).await);
        }
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..CALLS {
            let channel = channels[i % channels.len()].clone();
            calls.spawn(async move {
                let sent = Instant::now();
                let result = waiting_call(channel, "plant-7").await;
                (sent.elapsed(), result)
            });
        }
        let mut ended = 0;
        while let Some(done) = calls.join_next().await {
            let (took, result) = done.expect("no panic");
            let err = result.expect_err("no agent ever came");
            assert_eq!(err.code(), Code::Unavailable, "{err:?}");
            assert!(err.message().contains("--max-wait"), "{err:?}");
            assert!(took >= Duration::from_secs(2), "ended after {took:?}");
            ended += 1;
        }
        assert_eq!(ended, CALLS);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
}

/// Beyond `--max-waiters` calls waiting at once, one more is refused at
/// once with `RESOURCE_EXHAUSTED` naming the limit; those waiting are
/// served when their agent comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_beyond_max_waiters_are_refused() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) =
            hub_with(&dir, AGENT_TOKEN, &["plant-7"], &["--max-waiters", "10"]).await;
        let channel = hub_channel(addr).await;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..11 {
            calls.spawn(waiting_call(channel.clone(), "plant-7"));
        }
        let refused = calls.join_next().await.expect("a call").expect("no panic");
        let err = refused.expect_err("the eleventh waiter is refused before any agent");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("--max-waiters"), "{err:?}");
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut served = 0;
        while let Some(done) = calls.join_next().await {
            done.expect("no panic").expect("served once the agent came");
            served += 1;
        }
        assert_eq!(served, 10);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// 100,000 calls to made-up methods, half of them to made-up keys: the
/// metrics keep a bounded set of series (made-up keys and methods fold
/// into `other`), so `/metrics` stays below a fixed number of lines and
/// the hub's memory stays flat from the 10,000th call to the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_and_keys_leave_metrics_and_memory_bounded() {
    const CALLS: usize = 100_000;
    tokio::time::timeout(Duration::from_secs(280), async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub, addr) =
            hub_with(&dir, AGENT_TOKEN, &["plant-7"], &["--admin", "127.0.0.1:0"]).await;
        let admin = hub.admin.expect("admin port");
        let pid = hub.child.id().expect("running");
        // The agent refuses what its upstream does not serve, so made-up
        // methods end at the agent (`PERMISSION_DENIED`). (Sent on to a
        // tonic upstream, some calls of tens of thousands it answers
        // `UNIMPLEMENTED` end in `UNKNOWN` "transport error", broken
        // pipe: a plain tonic client calling a tonic server directly does
        // the same, 894 of 60,000 at 128 in flight; not the gateway's.)
        let _agent = agent_with(
            &dir,
            addr,
            "plant-7",
            AGENT_TOKEN,
            upstream,
            &["--allow", "grpctunnel.testing.v1.EchoService"],
        );
        caller(addr, "plant-7", true)
            .await
            .unary(hello("a method that exists"))
            .await
            .expect("the agent answers");
        let mut channels = Vec::new();
        for _ in 0..8 {
            channels.push(hub_channel(addr).await);
        }
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
        let mut rss_at_10k = 0;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..CALLS {
            if i == 10_000 {
                while calls.join_next().await.is_some() {}
                rss_at_10k = rss(pid);
            }
            let permit = limit.clone().acquire_owned().await.expect("open");
            let channel = channels[i % channels.len()].clone();
            calls.spawn(async move {
                let _permit = permit;
                let key = if i % 2 == 0 {
                    "plant-7".to_owned()
                } else {
                    format!("made-up-{i}")
                };
                let path = format!("/made.up{i}.Svc/M{i}");
                let err = raw_unary(channel, &key, &path, false)
                    .await
                    .expect_err("made up");
                assert!(
                    matches!(err.code(), Code::PermissionDenied | Code::Unavailable),
                    "{err:?}"
                );
            });
            while let Some(done) = calls.try_join_next() {
                done.expect("no panic");
            }
        }
        while let Some(done) = calls.join_next().await {
            done.expect("no panic");
        }
        let (_, body) = http_get(admin, "/metrics").await;
        let lines = body.lines().count();
        println!("/metrics: {lines} lines after {CALLS} calls");
        assert!(lines < 200, "{lines} lines:\n{body}");
        assert!(
            !body.contains("made-up") && !body.contains("made.up"),
            "{body}"
        );
        let grown = rss(pid).saturating_sub(rss_at_10k);
        println!(
            "hub RSS grew {} KiB from call 10,000 to {CALLS}",
            grown / 1024
        );
        assert!(grown < 8 << 20, "the hub grew {} KiB", grown / 1024);
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
}

/// An agent's opening RPC with negotiation that never sends its `Settings`;
/// the hub's answer, or its refusal.
async fn stalled_opening(
    channel: tonic::transport::Channel,
    token: &str,
    key: &str,
) -> Result<
    (
        tokio::sync::mpsc::Sender<grpctunnel::pb::ServerToClient>,
        tonic::Streaming<grpctunnel::pb::ClientToServer>,
    ),
    tonic::Status,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let md = req.metadata_mut();
    md.insert("grpctunnel-negotiate", "on".parse().expect("ascii"));
    md.insert("grpctunnel-key", key.parse().expect("ascii"));
    md.insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let resp = grpctunnel::pb::tunnel_service_client::TunnelServiceClient::new(channel)
        .open_reverse_tunnel(req)
        .await?;
    Ok((tx, resp.into_inner()))
}

/// 10,000 openings from one agent credential that never send their
/// `Settings`: the credential holds at most its quota
/// (`--max-tunnels-per-credential`, 100), the rest are refused
/// `RESOURCE_EXHAUSTED` naming it, another credential's agent connects and
/// serves meanwhile, and the stalled ones end at `--settings-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_stalled_openings_from_one_credential_do_not_lock_out_another() {
    const OPENINGS: usize = 10_000;
    const QUOTA: usize = 100;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let flood = "fl00d-t0ken-of-a-leaked-agent";
        let (_hub, addr) = hub_full(
            &dir,
            AGENT_TOKEN,
            &["plant-7"],
            &format!("[[agent]]\ntoken = {flood:?}\nkeys = [\"flood\"]\n"),
            // Longer than the flood takes, so that every place stays taken
            // while it lasts.
            &["--settings-timeout", "15"],
        )
        .await;
        let mut channels = Vec::new();
        for _ in 0..20 {
            channels.push(hub_channel(addr).await);
        }
        let flood_started = Instant::now();
        let mut openings = tokio::task::JoinSet::new();
        for i in 0..OPENINGS {
            let channel = channels[i % channels.len()].clone();
            openings.spawn(stalled_opening(channel, flood, "flood"));
        }
        let mut stalled = Vec::new();
        let mut refused = 0;
        while let Some(done) = openings.join_next().await {
            match done.expect("no panic") {
                Ok(opened) => stalled.push(opened),
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    assert!(status.message().contains("max_tunnels"), "{status:?}");
                    refused += 1;
                }
            }
        }
        let flood_took = flood_started.elapsed();
        println!(
            "{} openings held, {refused} refused, in {flood_took:?}",
            stalled.len()
        );
        assert!(
            flood_took < Duration::from_secs(15),
            "the flood outlasted the settings timeout"
        );
        assert_eq!(stalled.len(), QUOTA);
        assert_eq!(refused, OPENINGS - QUOTA);

        // Another credential's agent connects and serves while they stall.
        let mut agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        agent.log_line("tunnel open").await;
        let mut c = caller(addr, "plant-7", true).await;
        c.unary(hello("past the flood")).await.expect("served");

        // The stalled ones end at the settings timeout.
        for (_tx, mut frames) in stalled {
            let status = loop {
                match frames.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("a stalled opening ended OK"),
                    Err(status) => break status,
                }
            };
            assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
            assert!(status.message().contains("settings_timeout"), "{status:?}");
        }
        // Their places are free again.
        let again = stalled_opening(channels[0].clone(), flood, "flood").await;
        assert!(again.is_ok(), "{:?}", again.err());
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
}
