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

async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the hub")
}

/// 10,000 calls wait, without deadlines, for an agent that never comes:
/// each ends at `--max-wait` with `UNAVAILABLE` naming it, none sooner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_waiters_without_deadlines_end_at_max_wait() {
    const CALLS: usize = 10_000;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = temp_dir();
        let (_hub, addr) = hub_with(&dir, "s3cret-7", &["plant-7"], &["--max-wait", "2"]).await;
        let mut channels = Vec::new();
        for _ in 0..50 {
            channels.push(channel(addr).await);
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
        let (_hub, addr) = hub_with(&dir, "s3cret-7", &["plant-7"], &["--max-waiters", "10"]).await;
        let channel = channel(addr).await;
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..11 {
            calls.spawn(waiting_call(channel.clone(), "plant-7"));
        }
        let refused = calls.join_next().await.expect("a call").expect("no panic");
        let err = refused.expect_err("the eleventh waiter is refused before any agent");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("--max-waiters"), "{err:?}");
        let _agent = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
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
