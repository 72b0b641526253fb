//! A hub restart under load: 1,000 agents, each its own TCP connection and
//! key, reconnect to a restarted hub, and every key answers again.
//!
//! The agents run in this test process: each is the crate's
//! `ReverseTunnelServer::keep_connected` (the loop the `grpctunnel agent`
//! binary runs, with its backoff and jitter) serving the echo service, so
//! 1,000 of them cost one process rather than 1,000. The hub is the real
//! binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{stream, StreamExt};
use grpctunnel::ReverseTunnelServer;
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tonic::service::Routes;

const AGENTS: usize = 1_000;

/// Bound on the whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Calls every key once through the hub, waiting (`grpctunnel-wait`) for
/// its agent; returns how many answered.
async fn call_every_key(hub: std::net::SocketAddr) -> usize {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{hub}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the hub");
    stream::iter(0..AGENTS)
        .map(|i| {
            let mut client = EchoServiceClient::new(channel.clone());
            async move {
                let key = format!("agent-{i}");
                let mut req = tonic::Request::new(EchoRequest {
                    payload: key.clone().into_bytes().into(),
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(60));
                req.metadata_mut()
                    .insert("grpctunnel-key", key.parse().expect("ascii"));
                req.metadata_mut()
                    .insert("grpctunnel-wait", "true".parse().expect("ascii"));
                let reply = client
                    .unary(req)
                    .await
                    .unwrap_or_else(|s| panic!("{key}: {s:?}"));
                assert_eq!(reply.into_inner().payload.as_ref(), key.as_bytes());
            }
        })
        .buffer_unordered(100)
        .count()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_agents_reconnect_after_the_hub_restarts() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = temp_dir();
        let keys: Vec<String> = (0..AGENTS).map(|i| format!("agent-{i}")).collect();
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        // One token for the whole fleet: its tunnel quota raised.
        let (mut hub1, addr) =
            hub_full(&dir, AGENT_TOKEN, &key_refs, "max_tunnels = 100000\n", &[]).await;

        let started = Instant::now();
        let mut agents = Vec::with_capacity(AGENTS);
        for key in &keys {
            // One connection per agent, as real agents have.
            let transport = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .connect_lazy();
            let agent = ReverseTunnelServer::new(Routes::new(Echo::new().server()))
                .metadata("grpctunnel-key", key)
                .metadata("authorization", "Bearer s3cret-7-of-an-agent")
                .keep_connected(transport);
            agents.push(agent);
        }
        assert_eq!(call_every_key(addr).await, AGENTS);
        println!(
            "{AGENTS} agents connected and answered in {:?}",
            started.elapsed()
        );

        // kill -9: no goodbye to anyone.
        hub1.child.start_kill().expect("kill -9 the hub");
        hub1.child.wait().await.expect("the hub is gone");
        let restarted = Instant::now();
        let config = dir.join("hub.toml").display().to_string();
        let listen = addr.to_string();
        let mut hub2 = Process::spawn(&["hub", "--listen", &listen, "--config", &config]);
        assert_eq!(hub2.listening().await, addr);
        assert_eq!(call_every_key(addr).await, AGENTS);
        println!(
            "{AGENTS} agents reconnected and answered {:?} after the restart",
            restarted.elapsed()
        );
        for agent in &agents {
            assert!(agent.state().connected, "every agent is connected again");
        }
        for agent in agents {
            agent.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out")
}
