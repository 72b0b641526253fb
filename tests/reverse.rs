//! Reverse tunnels end to end on loopback: agents dial a tonic server and
//! serve the echo service; the server calls them through its registry.

mod common;

use std::{collections::HashMap, time::Duration};

use common::*;
use futures_util::StreamExt;
use grpctunnel::{ReverseTunnelServer, TunnelEvent, TunnelLayer};
use grpctunnel_testing::{
    cases::{run_cases, CaseOptions},
    eventually,
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::Server, Code};
use tower::ServiceBuilder;

/// A network server that accepts reverse tunnels into `registry`.
async fn hub_on(listener: TcpListener, layer: TunnelLayer) -> TestServerHandle {
    let token = CancellationToken::new();
    let layer = layer.shutdown_token(token.clone());
    let stop = token.clone();
    let task = tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(Echo::new().server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
            .await
            .expect("hub");
    });
    TestServerHandle { token, task }
}

struct TestServerHandle {
    token: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl TestServerHandle {
    async fn stop(self) {
        self.token.cancel();
        self.task.await.expect("hub stopped");
    }
}

/// The echo service of an agent, answering with an `x-agent` response
/// header so that the caller can tell which agent served it.
fn agent_service(
    name: &str,
) -> impl tower::Service<
    http::Request<tonic::body::Body>,
    Response = http::Response<tonic::body::Body>,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let name: http::HeaderValue = name.parse().unwrap();
    ServiceBuilder::new()
        .map_response(move |mut resp: http::Response<tonic::body::Body>| {
            resp.headers_mut().insert("x-agent", name.clone());
            resp
        })
        .service(Routes::new(Echo::new().server()))
}

fn agent(name: &str, key: &str) -> ReverseTunnelServer {
    ReverseTunnelServer::new(agent_service(name))
        .metadata("x-agent-key", key)
        .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE)
}

async fn answered_by<T>(client: &mut EchoServiceClient<T>) -> String
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let resp = client
        .unary(EchoRequest::default())
        .await
        .expect("call agent");
    resp.metadata()
        .get("x-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

async fn next_event(events: &mut grpctunnel::reverse::TunnelEvents<String>) -> TunnelEvent<String> {
    events.next().await.expect("event stream open")
}

#[tokio::test]
async fn registry_adds_on_open_removes_on_close_and_routes_by_key() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let mut events = registry.subscribe();

        let a = tokio::spawn({
            let channel = connect(addr).await;
            async move { agent("a", "key-a").serve(channel).await }
        });
        let stop_b = CancellationToken::new();
        let b = tokio::spawn({
            let channel = connect(addr).await;
            let stop = stop_b.clone();
            async move {
                agent("b", "key-b")
                    .serve_with_shutdown(channel, stop.cancelled_owned())
                    .await
            }
        });
        for _ in 0..2 {
            assert!(matches!(
                next_event(&mut events).await,
                TunnelEvent::Opened(_)
            ));
        }
        assert_eq!(registry.len(), 2);
        let tunnels = registry.tunnels();
        let keys: Vec<_> = tunnels.iter().map(|t| t.key().clone()).collect();
        assert!(keys.contains(&"key-a".to_owned()) && keys.contains(&"key-b".to_owned()));
        assert!(tunnels.iter().all(|t| t.remote_addr().is_some()));
        assert!(tunnels
            .iter()
            .all(|t| t.metadata().contains_key("x-agent-key")));

        for (key, want) in [("key-a", "a"), ("key-b", "b")] {
            let mut client = EchoServiceClient::new(registry.get(&key.to_owned()));
            for _ in 0..3 {
                assert_eq!(answered_by(&mut client).await, want);
            }
        }
        let mut nobody = EchoServiceClient::new(registry.get(&"key-c".to_owned()));
        let err = nobody
            .unary(EchoRequest::default())
            .await
            .expect_err("no such key");
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "no channels ready");

        // Agent b leaves: its tunnel leaves the registry, calls go to a.
        stop_b.cancel();
        b.await.unwrap().expect("b served and stopped cleanly");
        match next_event(&mut events).await {
            TunnelEvent::Closed(t) => assert_eq!(t.key(), "key-b"),
            other => panic!("expected Closed, got {other:?}"),
        }
        assert_eq!(registry.len(), 1);
        let mut any = EchoServiceClient::new(registry.channel());
        assert_eq!(answered_by(&mut any).await, "a");

        // Closing from the server side ends the agent's serve with Ok (P-71).
        registry.tunnels()[0].channel().close();
        a.await
            .unwrap()
            .expect("a's serve returns Ok when the server closes");
        assert!(matches!(
            next_event(&mut events).await,
            TunnelEvent::Closed(_)
        ));
        assert!(registry.is_empty());
        hub.stop().await;
    })
    .await
}

#[tokio::test]
async fn round_robin_spreads_calls_evenly() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let mut agents = Vec::new();
        for name in ["a", "b", "c"] {
            let channel = connect(addr).await;
            let server = agent(name, "pool");
            agents.push(server.keep_connected(channel));
        }
        let mut events = registry.subscribe();
        while registry.len() < 3 {
            next_event(&mut events).await;
        }
        let mut counts: HashMap<String, usize> = HashMap::new();
        for channel in [registry.channel(), registry.get(&"pool".to_owned())] {
            let mut client = EchoServiceClient::new(channel);
            for _ in 0..30 {
                *counts.entry(answered_by(&mut client).await).or_default() += 1;
            }
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        assert!(counts.values().all(|&n| n == 20), "{counts:?}");
        for a in agents {
            a.shutdown().await;
        }
        hub.stop().await;
    })
    .await
}

#[tokio::test]
async fn wait_for_ready_with_and_without_a_tunnel_arriving() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;

        // Fails fast without waiting.
        let mut fast = EchoServiceClient::new(registry.get(&"late".to_owned()));
        let err = fast
            .unary(EchoRequest::default())
            .await
            .expect_err("empty pool");
        assert_eq!(err.code(), Code::Unavailable);

        // Waits, bounded by the call's own timeout.
        let mut waiting =
            EchoServiceClient::new(registry.get(&"late".to_owned()).wait_for_ready(true));
        let mut req = tonic::Request::new(EchoRequest::default());
        req.set_timeout(Duration::from_millis(100));
        let err = waiting.unary(req).await.expect_err("nobody came");
        assert_eq!(err.code(), Code::DeadlineExceeded);
        let waited = tokio::time::timeout(
            Duration::from_millis(50),
            registry.wait_for(Some(&"late".to_owned())),
        )
        .await;
        assert!(waited.is_err(), "no tunnel yet");

        // A call that waits is answered once the agent arrives.
        let call = tokio::spawn(async move { answered_by(&mut waiting).await });
        let agent_task = tokio::spawn({
            let channel = connect(addr).await;
            async move { agent("late", "late").serve(channel).await }
        });
        assert_eq!(call.await.unwrap(), "late");
        let tunnel = registry.wait_for(Some(&"late".to_owned())).await;
        assert_eq!(tunnel.key(), "late");
        tunnel.channel().close();
        agent_task.await.unwrap().expect("agent done");
        hub.stop().await;
    })
    .await
}

#[tokio::test]
async fn disabled_reverse_tunnels_are_unimplemented() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let err = agent("x", "x")
            .serve(connect(server.addr).await)
            .await
            .expect_err("no reverse tunnels here");
        let status = err.status().expect("the opening RPC's status");
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "reverse tunnels not supported");
    })
    .await
}

#[tokio::test]
async fn matrix_through_reverse_tunnels() {
    bounded(async {
        for rev in [grpctunnel::Revision::One, grpctunnel::Revision::Zero] {
            let registry = keyed_registry();
            let (listener, addr) = listener().await;
            let hub = hub_on(
                listener,
                TunnelLayer::new()
                    .reverse(registry.clone())
                    .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE),
            )
            .await;
            let agent = ReverseTunnelServer::new(Routes::new(Echo::new().server()))
                .max_revision(rev)
                .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE)
                .keep_connected(connect(addr).await);
            let tunnel = registry.wait_for(None).await;
            assert_eq!(tunnel.channel().revision(), rev);
            let opts = CaseOptions {
                flow_control: rev == grpctunnel::Revision::One,
                ..CaseOptions::default()
            };
            let report = run_cases(registry.channel(), &opts).await;
            println!("revision {rev}:\n{report}");
            assert!(report.is_success(), "{report}");
            agent.shutdown().await;
            hub.stop().await;
        }
    })
    .await
}

#[tokio::test]
async fn graceful_shutdown_of_the_agent_lets_calls_in_flight_finish() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let stop = CancellationToken::new();
        let serving = tokio::spawn({
            let channel = connect(addr).await;
            let stop = stop.clone();
            async move {
                agent("a", "a")
                    .serve_with_shutdown(channel, stop.cancelled_owned())
                    .await
            }
        });
        let tunnel = registry.wait_for(None).await;
        let channel = tunnel.channel();
        // A bidi call whose first answer proves its handler is running.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let mut client = EchoServiceClient::new(channel.clone());
        tx.send(EchoRequest {
            seq: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut answers = client
            .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("bidi open")
            .into_inner();
        assert_eq!(answers.message().await.unwrap().unwrap().seq, 1);

        stop.cancel();
        // While draining, new calls are refused (P-69, P-70)...
        let err = client
            .unary(EchoRequest::default())
            .await
            .expect_err("draining");
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "server is shutting down");
        // ...and the call in flight runs to its end.
        tx.send(EchoRequest {
            seq: 2,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(answers.message().await.unwrap().unwrap().seq, 2);
        drop(tx);
        assert!(answers.message().await.expect("clean end").is_none());
        serving.await.unwrap().expect("graceful stop returns Ok");
        channel.closed().await;
        assert!(registry.is_empty());
        hub.stop().await;
    })
    .await
}

/// Dropping an agent's `serve` future (what aborting its task does) ends
/// the handlers of its calls in flight: none outlives its tunnel.
#[tokio::test]
async fn dropping_serve_ends_the_handlers_of_calls_in_flight() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let echo = Echo::new();
        let agent = ReverseTunnelServer::new(Routes::new(echo.clone().server()))
            .metadata("x-agent-key", "a");
        let serving = tokio::spawn({
            let channel = connect(addr).await;
            async move { agent.serve(channel).await }
        });
        let mut client = EchoServiceClient::new(registry.wait_for(None).await.channel());
        let call = tokio::spawn(async move {
            client
                .unary(EchoRequest {
                    sleep_ms: 30_000,
                    tag: "held".into(),
                    ..Default::default()
                })
                .await
        });
        eventually("the handler started", Duration::from_secs(10), || async {
            echo.handler_state("held").started.then_some(())
        })
        .await;
        serving.abort();
        let state = echo.wait_handler("held", Duration::from_secs(10)).await;
        assert!(state.cancelled && !state.finished, "{state:?}");
        let _ = call.await;
        hub.stop().await;
    })
    .await
}

#[tokio::test]
async fn graceful_shutdown_of_the_hub_lets_calls_in_flight_finish() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let agent_task = tokio::spawn({
            let channel = connect(addr).await;
            async move { agent("a", "a").serve(channel).await }
        });
        let channel = registry.wait_for(None).await.channel();
        // A full-duplex call the test holds open: in flight whenever the
        // drain starts, however slow the machine (a call that ends by
        // itself may end before the drain, which then tests nothing).
        let mut client = EchoServiceClient::new(channel.clone());
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let req = |seq| EchoRequest {
            seq,
            ..Default::default()
        };
        tx.send(req(1)).await.unwrap();
        let mut answers = client
            .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("the call starts")
            .into_inner();
        assert_eq!(answers.message().await.unwrap().expect("answer").seq, 1);
        // The hub's graceful shutdown begins (the token is cancelled at
        // once); the call still makes a round trip, ends with OK when its
        // caller is done, and only then does the hub stop.
        hub.token.cancel();
        tx.send(req(2)).await.unwrap();
        let second = answers
            .message()
            .await
            .expect("a round trip while draining");
        assert_eq!(second.expect("answer").seq, 2);
        assert!(
            !hub.task.is_finished(),
            "the hub stopped with a call in flight"
        );
        drop(tx);
        assert!(answers.message().await.expect("a clean end").is_none());
        hub.task.await.expect("hub stopped");
        agent_task.await.unwrap().expect("agent sees a clean end");
        assert!(registry.is_empty());
    })
    .await
}

#[tokio::test]
async fn keep_connected_reconnects_after_the_server_restarts() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let transport = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let keep = agent("a", "a").keep_connected_with(
            transport,
            grpctunnel::reverse::Backoff {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(200),
                ..Default::default()
            },
        );
        keep.wait_until(|s| s.connected).await;
        hub.stop().await;
        let state = keep.wait_until(|s| !s.connected).await;
        assert_eq!(state.tunnels_opened, 1);

        // Same address again.
        let listener = TcpListener::bind(addr).await.expect("rebind");
        let registry2 = keyed_registry();
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry2.clone())).await;
        let tunnel = registry2.wait_for(Some(&"a".to_owned())).await;
        let mut client = EchoServiceClient::new(tunnel.channel());
        assert_eq!(answered_by(&mut client).await, "a");
        let state = keep.state();
        assert!(state.connected && state.tunnels_opened == 2, "{state:?}");
        assert!(state.attempts >= 2);
        let state = keep.shutdown().await;
        assert!(state.stopped && !state.connected);
        hub.stop().await;
    })
    .await
}

/// Calls go to the agent with the fewest calls in flight (ties round-robin,
/// as `round_robin_spreads_calls_evenly` shows): with a slow call on one
/// agent, the next calls all go to the other.
#[tokio::test]
async fn calls_go_to_the_least_loaded_agent_of_a_key() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let mut agents = Vec::new();
        for name in ["a", "b"] {
            let transport = connect(addr).await;
            agents.push(agent(name, "k").keep_connected(transport));
        }
        for agent in &agents {
            agent.wait_until(|s| s.connected).await;
        }
        poll_until(Duration::from_secs(10), || {
            registry.tunnels_for("k").len() == 2
        })
        .await;
        let mut client = EchoServiceClient::new(registry.get("k"));
        let mut slow = client.clone();
        let busy = tokio::spawn(async move {
            let resp = slow
                .unary(EchoRequest {
                    sleep_ms: 2_000,
                    ..Default::default()
                })
                .await;
            resp.map(|r| {
                r.metadata()
                    .get("x-agent")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
        });
        // The slow call is in flight once one tunnel counts it.
        let loaded = poll_until(Duration::from_secs(10), || {
            registry
                .tunnels_for("k")
                .iter()
                .any(|t| t.channel().active_calls() == 1)
        })
        .await;
        assert!(loaded, "the slow call never started");
        let loaded_tunnels = registry
            .tunnels_for("k")
            .iter()
            .filter(|t| t.channel().active_calls() == 1)
            .count();
        assert_eq!(loaded_tunnels, 1);
        let mut answered = std::collections::HashSet::new();
        for _ in 0..4 {
            answered.insert(answered_by(&mut client).await);
        }
        assert_eq!(
            answered.len(),
            1,
            "all quick calls on the idle agent: {answered:?}"
        );
        // The slow call ends on its own (and on the other agent).
        let slow_agent = busy.await.expect("task").expect("slow call");
        assert!(slow_agent.is_some() && !answered.contains(&slow_agent.unwrap_or_default()));
        for agent in agents {
            agent.shutdown().await;
        }
        hub.stop().await;
    })
    .await
}

/// A drain that waits for a call ends as soon as that call is cancelled by
/// its caller (it waited out the whole grace before: only the end of a
/// stream's own response was counted).
#[tokio::test]
async fn an_agent_drain_ends_when_its_last_call_is_cancelled() {
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        // A grace far beyond the test's own bound: waiting it out fails.
        let agent = agent("a", "k").shutdown_grace(Duration::from_secs(3600));
        let connection = agent.keep_connected(connect(addr).await);
        connection.wait_until(|s| s.connected).await;
        registry.wait_for(Some(&"k".to_owned())).await;
        let mut client = EchoServiceClient::new(registry.get("k"));
        let slow = tokio::spawn(async move {
            client
                .unary(EchoRequest {
                    sleep_ms: 3_600_000,
                    ..Default::default()
                })
                .await
        });
        let started = poll_until(Duration::from_secs(10), || {
            registry
                .tunnels_for("k")
                .iter()
                .any(|t| t.channel().active_calls() == 1)
        })
        .await;
        assert!(started, "the slow call never started");
        let stopping = tokio::spawn(async move { connection.shutdown().await });
        // Once the agent drains it refuses new calls: then cancel the one
        // it waits for.
        let probe = EchoServiceClient::new(registry.get("k"));
        eventually(
            "the draining agent refuses new calls",
            Duration::from_secs(10),
            || {
                let mut probe = probe.clone();
                async move {
                    match probe.unary(EchoRequest::default()).await {
                        Err(status) if status.message().contains("shutting down") => Some(()),
                        _ => None,
                    }
                }
            },
        )
        .await;
        slow.abort();
        let state = stopping.await.expect("shutdown task");
        assert!(state.stopped, "{state:?}");
        hub.stop().await;
    })
    .await
}

/// A fake agent breaks the protocol on a reverse tunnel: the hub, its
/// tunnel client, ends the opening RPC with UNKNOWN and the violation's
/// text (P-22), as the Go reference does, not with OK.
#[tokio::test]
async fn a_protocol_error_ends_a_reverse_tunnel_with_unknown_and_its_text() {
    use grpctunnel::pb::{
        self, server_to_client::Frame, tunnel_service_client::TunnelServiceClient,
    };

    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let (frames, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut req = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        req.metadata_mut()
            .insert("x-agent-key", "fake".parse().expect("ascii"));
        let resp = TunnelServiceClient::new(connect(addr).await)
            .open_reverse_tunnel(req)
            .await
            .expect("opened");
        // No negotiation (revision zero); a frame for a stream the hub
        // never created is fatal (P-23).
        frames
            .send(pb::ServerToClient {
                stream_id: 5,
                frame: Some(Frame::ResponseHeaders(pb::Metadata::default())),
            })
            .expect("queued");
        let mut answers = resp.into_inner();
        let status = loop {
            match answers.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the opening RPC ended with OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::Unknown, "{status:?}");
        assert_eq!(
            status.message(),
            "received frame for stream ID 5: stream never created"
        );
        drop(frames);
        hub.stop().await;
    })
    .await
}

/// A raw agent for `key`: opens `OpenReverseTunnel` with negotiation and
/// sends nothing yet, so the hub holds the tunnel as opening (it waits for
/// the agent's `Settings`). Returns once the hub answered.
async fn raw_agent(
    addr: std::net::SocketAddr,
    key: &str,
) -> (
    tokio::sync::mpsc::UnboundedSender<grpctunnel::pb::ServerToClient>,
    tonic::Streaming<grpctunnel::pb::ClientToServer>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut req = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
    req.metadata_mut()
        .insert(raw::NEGOTIATE, "on".parse().expect("ascii"));
    req.metadata_mut()
        .insert("x-agent-key", key.parse().expect("ascii"));
    let resp = grpctunnel::pb::tunnel_service_client::TunnelServiceClient::new(connect(addr).await)
        .open_reverse_tunnel(req)
        .await
        .expect("the hub answers");
    (tx, resp.into_inner())
}

/// A unary call for `key` through the registry, not polled yet.
fn unary_for(
    registry: &grpctunnel::ReverseTunnelRegistry<String>,
    key: &str,
) -> std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    tonic::Response<grpctunnel_testing::pb::EchoResponse>,
                    tonic::Status,
                >,
            > + Send,
    >,
> {
    let mut client = EchoServiceClient::new(registry.get(key));
    Box::pin(async move {
        client
            .unary(EchoRequest {
                payload: "x".into(),
                ..Default::default()
            })
            .await
    })
}

/// An agent whose `OpenReverseTunnel` was answered counts itself connected
/// before the hub has its `Settings` (P-73): a call for its key in that
/// moment waits for the tunnel instead of failing `UNAVAILABLE`; if the
/// tunnel then fails to open, the call fails as it would have without it.
#[tokio::test]
async fn a_call_waits_for_a_tunnel_that_is_opening() {
    use futures_util::FutureExt;
    use grpctunnel::pb::{client_to_server::Frame as C2S, server_to_client::Frame as S2C};
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;

        let (tx, mut frames) = raw_agent(addr, "slow").await;
        assert!(registry.is_opening(Some(&"slow".to_owned())));
        assert!(registry.tunnels_for("slow").is_empty());
        let mut call = unary_for(&registry, "slow");
        // Made now, while the tunnel is opening: it waits (without the
        // wait it failed here with `no channels ready`).
        assert!((&mut call).now_or_never().is_none(), "the call waits");
        let call = tokio::spawn(call);
        tx.send(grpctunnel::pb::ServerToClient {
            stream_id: -1,
            frame: Some(S2C::Settings(grpctunnel::pb::Settings {
                supported_protocol_revisions: vec![1],
                initial_window_size: raw::RAW_WINDOW,
            })),
        })
        .expect("settings");
        // The call reaches the agent once the tunnel is ready.
        let id = loop {
            let frame = frames.message().await.expect("frame").expect("open");
            if let Some(C2S::NewStream(_)) = frame.frame {
                break frame.stream_id;
            }
        };
        tx.send(grpctunnel::pb::ServerToClient {
            stream_id: id,
            frame: Some(raw::close(12, "raw agent")),
        })
        .expect("close");
        let status = call.await.expect("task").expect_err("the agent's status");
        assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
        assert_eq!(status.message(), "raw agent");

        // An opening that fails: the waiting call fails at once, as with no
        // tunnel at all.
        let (gone_tx, gone_frames) = raw_agent(addr, "gone").await;
        let mut call = unary_for(&registry, "gone");
        assert!((&mut call).now_or_never().is_none(), "the call waits");
        drop((gone_tx, gone_frames));
        let status = call.await.expect_err("no tunnel");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(!registry.is_opening(Some(&"gone".to_owned())));
        drop(tx);
        hub.stop().await;
    })
    .await;
}

/// An agent that opens a reverse tunnel and never sends its `Settings`
/// holds a place (it counts against the per-key limit while opening, so
/// stalled openings cannot crowd out the limit's purpose), but only until
/// the settings timeout: then its opening RPC ends `DEADLINE_EXCEEDED`,
/// naming the limit, and a real agent of the key takes the place.
#[tokio::test]
async fn an_agent_that_never_sends_settings_is_ended_at_the_settings_timeout() {
    bounded(async {
        let registry = keyed_registry().with_limits(10, 1);
        let (listener, addr) = listener().await;
        let layer = TunnelLayer::new()
            .limits(grpctunnel::Limits::new().settings_timeout(Duration::from_millis(500)))
            .reverse(registry.clone());
        let hub = hub_on(listener, layer).await;

        let (_tx, mut stalled) = raw_agent(addr, "k").await;
        assert!(registry.is_opening(Some(&"k".to_owned())));
        // The key's one place is taken by the opening tunnel.
        let mut events = registry.subscribe();
        let second = tokio::spawn({
            let channel = connect(addr).await;
            async move { agent("real", "k").serve(channel).await }
        });
        let refused = second
            .await
            .expect("task")
            .expect_err("no place while one opens");
        let status = refused.status().expect("a status");
        assert_eq!(status.code(), Code::ResourceExhausted, "{refused:?}");
        assert!(status.message().contains("for this key"), "{refused:?}");

        let status = loop {
            match stalled.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the opening RPC ended with OK"),
                Err(status) => break status,
            }
        };
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("settings_timeout"), "{status:?}");
        assert!(!registry.is_opening(Some(&"k".to_owned())));

        let real = tokio::spawn({
            let channel = connect(addr).await;
            async move { agent("real", "k").serve(channel).await }
        });
        assert!(matches!(
            next_event(&mut events).await,
            TunnelEvent::Opened(_)
        ));
        let mut client = EchoServiceClient::new(registry.get("k"));
        assert_eq!(answered_by(&mut client).await, "real");
        real.abort();
        hub.stop().await;
    })
    .await;
}

/// Outlier ejection: next to a healthy agent, one that fails every call at
/// once with `UNAVAILABLE` (least-outstanding picking would favour it: it
/// is never busy) is left out after five failures in a row, so it takes
/// well under a tenth of its key's calls; with only ejected tunnels left,
/// calls still go to them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_fails_fast_is_ejected_from_picking() {
    const CALLS: usize = 2_000;
    bounded(async {
        let registry = keyed_registry();
        let (listener, addr) = listener().await;
        let hub = hub_on(listener, TunnelLayer::new().reverse(registry.clone())).await;
        let mut events = registry.subscribe();
        let broken = tower::service_fn(|_req: http::Request<tonic::body::Body>| async {
            Ok::<_, std::convert::Infallible>(
                tonic::Status::unavailable("broken agent").into_http::<tonic::body::Body>(),
            )
        });
        let bad = tokio::spawn({
            let channel = connect(addr).await;
            async move {
                ReverseTunnelServer::new(broken)
                    .metadata("x-agent-key", "k")
                    .serve(channel)
                    .await
            }
        });
        assert!(matches!(
            next_event(&mut events).await,
            TunnelEvent::Opened(_)
        ));
        let good = tokio::spawn({
            let channel = connect(addr).await;
            async move { agent("good", "k").serve(channel).await }
        });
        assert!(matches!(
            next_event(&mut events).await,
            TunnelEvent::Opened(_)
        ));

        let mut calls = tokio::task::JoinSet::new();
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        for _ in 0..CALLS {
            let mut client = EchoServiceClient::new(registry.get("k"));
            let permit = permits.clone().acquire_owned().await.expect("open");
            calls.spawn(async move {
                let result = client.unary(EchoRequest::default()).await;
                drop(permit);
                result.map(|_| ())
            });
        }
        let mut failed = 0;
        while let Some(done) = calls.join_next().await {
            if let Err(status) = done.expect("no panic") {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(status.message(), "broken agent");
                failed += 1;
            }
        }
        println!("the failing agent took {failed} of {CALLS} calls");
        assert!(failed < CALLS / 10, "{failed} of {CALLS} calls failed");
        let tunnels = registry.tunnels_for("k");
        assert_eq!(tunnels.iter().filter(|t| t.is_ejected()).count(), 1);

        // Only the ejected one left: calls still reach it.
        good.abort();
        assert!(matches!(
            next_event(&mut events).await,
            TunnelEvent::Closed(_)
        ));
        let mut client = EchoServiceClient::new(registry.get("k"));
        let status = client
            .unary(EchoRequest::default())
            .await
            .expect_err("the broken agent answers");
        assert_eq!(status.message(), "broken agent");
        bad.abort();
        hub.stop().await;
    })
    .await;
}
