//! Calls through the gateway: hub and agent as real processes route every
//! kind of call to the upstream, survive agents and hubs going away, and
//! carry large and compressed messages.

mod common;

use common::*;

use std::time::Duration;

use grpctunnel_testing::pb::{echo_service_client::EchoServiceClient, EchoRequest};
use tonic::Code;

#[tokio::test]
async fn calls_reach_the_upstream_through_hub_and_agent() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        // Waits for the agent (an event: its tunnel registering), bounded by
        // the call's deadline.
        let mut plant = caller(addr, "plant-7", true).await;
        let reply = plant.unary(hello("via the hub")).await.expect("unary");
        assert_eq!(reply.into_inner().payload.as_ref(), b"via the hub");

        let mut stream = plant
            .server_stream(EchoRequest {
                repeat: 3,
                response_size: 100_000,
                ..Default::default()
            })
            .await
            .expect("server stream")
            .into_inner();
        let mut got = 0;
        while let Some(msg) = stream.message().await.expect("message") {
            assert_eq!(msg.payload.len(), 100_000);
            got += 1;
        }
        assert_eq!(got, 3);

        // A key nobody registered, without waiting: UNAVAILABLE naming it.
        let mut nobody = caller(addr, "plant-9", false).await;
        let err = nobody.unary(hello("x")).await.expect_err("no agent");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("plant-9"), "{err:?}");

        assert_eq!(hub.terminate().await, Some(0), "clean exit on SIGTERM");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn calls_in_flight_fail_unavailable_when_the_agent_is_killed() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let mut agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        // A bidi call, in flight: one round trip, the request stream open.
        let (requests, mut responses) = bidi_in_flight(&mut plant).await;

        agent.child.start_kill().expect("kill -9 the agent");
        let err = loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the call ended cleanly without its agent"),
                Err(status) => break status,
            }
        };
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        drop(requests);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// The agent logs its tunnel open once the hub answered its opening RPC;
/// the hub publishes the tunnel only after the agent's `Settings` follow.
/// A call in between (a script that starts the agent, waits for its log
/// line, then calls) waits for the opening tunnel instead of failing
/// `UNAVAILABLE`, with no `grpctunnel-wait` header. Five agents, each
/// called the moment it logs.
#[tokio::test]
async fn a_call_right_after_the_agent_logs_its_tunnel_open_needs_no_wait() {
    const KEYS: [&str; 5] = ["plant-0", "plant-1", "plant-2", "plant-3", "plant-4"];
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &KEYS).await;
        let mut agents = Vec::new();
        for key in KEYS {
            // Connected before, so that the call leaves the moment the
            // agent logs.
            let mut plant = caller(addr, key, false).await;
            let mut agent = agent(&dir, addr, key, AGENT_TOKEN, upstream);
            agent.log_line("tunnel open").await;
            let reply = plant
                .unary(hello("right away"))
                .await
                .unwrap_or_else(|s| panic!("{key}: {s:?}"));
            assert_eq!(reply.into_inner().payload.as_ref(), b"right away");
            agents.push(agent);
        }
        drop(agents);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn an_agent_reconnects_after_the_hub_restarts() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub1, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        plant
            .unary(hello("before"))
            .await
            .expect("before the restart");
        assert_eq!(hub1.terminate().await, Some(0));

        // The same address again: the agent's next attempt finds it.
        let config = dir.join("hub.toml").display().to_string();
        let listen = addr.to_string();
        let mut hub2 = Process::spawn(&["hub", "--listen", &listen, "--config", &config]);
        assert_eq!(hub2.listening().await, addr);
        let mut plant = caller(addr, "plant-7", true).await;
        let reply = plant
            .unary(hello("after"))
            .await
            .expect("after the restart");
        assert_eq!(reply.into_inner().payload.as_ref(), b"after");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn health_authority_routing_and_an_agents_allow_list() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub_with(
            &dir,
            AGENT_TOKEN,
            &["plant-7"],
            &["--authority-suffix", "hub.example"],
        )
        .await;
        let _agent = agent_with(
            &dir,
            addr,
            "plant-7",
            AGENT_TOKEN,
            upstream,
            &["--allow", "grpctunnel.testing.v1.EchoService/Unary"],
        );

        // The hub's own health service answers calls that name no agent.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        // Allowed method, through the key header (waiting for the agent).
        let mut plant = caller(addr, "plant-7", true).await;
        plant.unary(hello("allowed")).await.expect("allowed");
        // A method the agent does not allow. Through a tunnel a
        // trailers-only answer arrives as empty headers and a status (P-63),
        // so a streaming call sees it on its first read.
        let err = match plant.server_stream(EchoRequest::default()).await {
            Err(status) => status,
            Ok(resp) => resp.into_inner().message().await.expect_err("not allowed"),
        };
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

        // The same agent by authority: plant-7.hub.example, no key header.
        let by_name = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .origin("http://plant-7.hub.example".parse().expect("uri"))
            .connect()
            .await
            .expect("connect");
        let reply = EchoServiceClient::new(by_name)
            .unary(hello("by authority"))
            .await
            .expect("routed by authority");
        assert_eq!(reply.into_inner().payload.as_ref(), b"by authority");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn a_10_mib_message_crosses_when_configured_end_to_end() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let size = ["--max-message-size", "16777216"];
        let (_hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &size).await;
        let _agent = agent_with(&dir, addr, "plant-7", AGENT_TOKEN, upstream, &size);
        let mut plant = caller(addr, "plant-7", true)
            .await
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        let big = vec![7u8; 10 << 20];
        let mut req = tonic::Request::new(EchoRequest {
            payload: big.clone().into(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(30));
        let reply = plant.unary(req).await.expect("10 MiB each way");
        assert_eq!(reply.into_inner().payload.as_ref(), big.as_slice());
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn gzip_compressed_calls_cross_the_gateway() {
    use tonic::codec::CompressionEncoding;

    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true)
            .await
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        // Compressible, and large enough that gzip matters.
        let payload = "gzip through a tunnel ".repeat(10_000);
        let reply = plant.unary(hello(&payload)).await.expect("a gzip call");
        // The hub compressed the answer for a caller that accepts gzip.
        assert_eq!(
            reply
                .metadata()
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok()),
            Some("gzip")
        );
        assert_eq!(reply.into_inner().payload.as_ref(), payload.as_bytes());
        // Client streaming: several compressed messages in one body.
        let requests = tokio_stream::iter((0..5).map(|i| EchoRequest {
            payload: format!("part {i} ").repeat(1000).into_bytes().into(),
            ..Default::default()
        }));
        let reply = plant
            .client_stream(tonic::Request::new(requests))
            .await
            .expect("a gzip client stream");
        assert!(!reply.into_inner().payload.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn an_agent_serves_several_hubs_with_several_tunnels() {
    bounded(async {
        let dir_a = temp_dir();
        let dir_b = temp_dir();
        let upstream = upstream().await;
        let (mut hub_a, addr_a) = hub(&dir_a, AGENT_TOKEN, &["plant-7"]).await;
        let (mut hub_b, addr_b) = hub(&dir_b, AGENT_TOKEN, &["plant-7"]).await;
        // `agent_with` names hub B; hub A comes second.
        let hub_a_url = format!("http://{addr_a}");
        let _agent = agent_with(
            &dir_a,
            addr_b,
            "plant-7",
            AGENT_TOKEN,
            upstream,
            &["--hub", &hub_a_url, "--tunnels", "2"],
        );
        // `--tunnels 2`: each hub registers two tunnels of the agent, each
        // logged with its own tunnel id.
        for hub in [&mut hub_a, &mut hub_b] {
            let mut ids = std::collections::HashSet::new();
            while ids.len() < 2 {
                let line = hub.log_line("agent connected").await;
                assert!(line.contains("plant-7"), "{line}");
                let id = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("tunnel="))
                    .unwrap_or_else(|| panic!("no tunnel id in {line}"))
                    .to_owned();
                ids.insert(id);
            }
        }
        for addr in [addr_a, addr_b] {
            let mut plant = caller(addr, "plant-7", true).await;
            plant
                .unary(hello("either hub"))
                .await
                .expect("through each hub");
        }
        // One hub goes away: the other still reaches the agent.
        assert_eq!(hub_a.terminate().await, Some(0));
        let mut plant = caller(addr_b, "plant-7", true).await;
        plant
            .unary(hello("still there"))
            .await
            .expect("through the other hub");
        let _ = std::fs::remove_dir_all(dir_a);
        let _ = std::fs::remove_dir_all(dir_b);
    })
    .await
}

/// Many small messages on long-lived connections: 5,000 round trips of
/// 100 B on one bidi call, then 2,000 unary calls on the same caller
/// connection, through hub and agent. (h2 0.4 ends a connection whose
/// budget for small DATA frames is spent; nothing here may spend it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_streams_of_small_messages_keep_their_connections() {
    tokio::time::timeout(Duration::from_secs(240), async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        ping_pong(&mut plant, 5_000).await;
        for i in 0..2_000 {
            plant
                .unary(hello("small"))
                .await
                .unwrap_or_else(|s| panic!("unary {i}: {s:?}"));
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out")
}

/// An agent's `--allow` matches names, so it refuses paths that are not
/// canonical: an upstream that normalises `/a.Svc/../b.Secret/Get` would
/// otherwise serve a service the list keeps out. Each such path, sent raw
/// through the hub, is `PERMISSION_DENIED` at the agent, not forwarded
/// (the upstream would answer `UNIMPLEMENTED`).
#[tokio::test]
async fn an_agents_allow_list_refuses_paths_that_are_not_canonical() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent_with(
            &dir,
            addr,
            "plant-7",
            AGENT_TOKEN,
            upstream,
            &["--allow", "grpctunnel.testing.v1.EchoService"],
        );
        let channel = hub_channel(addr).await;
        let call = |path: &'static str| raw_unary(channel.clone(), "plant-7", path, true);
        call("/grpctunnel.testing.v1.EchoService/Unary")
            .await
            .expect("a canonical path of an allowed service");
        for path in [
            "/grpctunnel.testing.v1.EchoService/../grpc.health.v1.Health/Check",
            "/grpctunnel.testing.v1.EchoService//Unary",
            "/grpctunnel.testing.v1.EchoService/Unary%2F..",
        ] {
            let err = call(path).await.expect_err(path);
            assert_eq!(err.code(), Code::PermissionDenied, "{path}: {err:?}");
            assert!(err.message().contains("canonical"), "{path}: {err:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// Two agents share a key; one's upstream is gone, so it answers every call
/// at once with `UNAVAILABLE`. Least-outstanding picking alone sent it
/// most calls (it is never busy); with outlier ejection it takes under a
/// tenth of 10,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_failing_every_call_at_once_takes_few_of_its_keys_calls() {
    const CALLS: usize = 10_000;
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let gone = gone_upstream();
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let mut broken = agent(&dir, addr, "plant-7", AGENT_TOKEN, gone);
        broken.log_line("tunnel open").await;
        let mut healthy = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        healthy.log_line("tunnel open").await;
        let channel = hub_channel(addr).await;
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(32));
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..CALLS {
            let mut c = EchoServiceClient::new(channel.clone());
            let mut req = hello(&i.to_string());
            req.metadata_mut()
                .insert("grpctunnel-key", "plant-7".parse().expect("ascii"));
            let permit = permits.clone().acquire_owned().await.expect("open");
            calls.spawn(async move {
                let result = c.unary(req).await;
                drop(permit);
                result.map(|_| ())
            });
        }
        let mut failed = 0;
        while let Some(done) = calls.join_next().await {
            if let Err(status) = done.expect("no panic") {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                failed += 1;
            }
        }
        println!("the agent without an upstream took {failed} of {CALLS} calls");
        assert!(failed < CALLS / 10, "{failed} of {CALLS} calls failed");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
}
