//! The peer process or connection dies mid-call.
//!
//! A TCP proxy ([`proxy::Proxy`]) sits between the network client and
//! server and resets every connection at once; or a whole side runs in a
//! runtime of its own ([`Process`]) that is dropped like a killed process.
//! Calls in flight must fail with UNAVAILABLE within a second, the tunnel
//! must report itself closed, the other side must cancel its handlers and
//! forget the tunnel, and a reconnecting agent must come back.

mod common;

use std::time::{Duration, Instant};

use common::{proxy::Proxy, *};
use futures_util::StreamExt;
use grpctunnel::{
    pb::tunnel_service_client::TunnelServiceClient,
    reverse::{Backoff, ReverseTunnelRegistry},
    ReverseTunnelServer, TunnelChannel, TunnelEvent, TunnelLayer,
};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse},
    Echo,
};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{service::Routes, transport::Endpoint, Code, Status, Streaming};

/// How soon after the kill every call in flight must have failed: a bound
/// that only catches a call left waiting (on its handler, which sleeps for
/// 30 s, on a reconnect, or on nothing at all); a call that fails as it
/// should takes milliseconds, and the tests print how many.
const PROMPT: Duration = Duration::from_secs(10);

type Registry = ReverseTunnelRegistry<String>;

fn quick_backoff() -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(100),
        ..Default::default()
    }
}

/// Runs `fut`, failing the test with `what` if it takes longer than `limit`.
async fn within<T>(limit: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// Three calls of different kinds, each known to be running in its handler.
struct InFlight {
    /// A unary call whose handler sleeps for 30 s.
    unary: JoinHandle<Result<tonic::Response<EchoResponse>, Status>>,
    /// A server stream of 16 KiB messages that never ends on its own; one
    /// message was read.
    stream: Streaming<EchoResponse>,
    /// A bidi call, answered once, whose request side stays open.
    bidi: Streaming<EchoResponse>,
    _bidi_tx: mpsc::Sender<EchoRequest>,
    tags: [String; 3],
}

/// Starts the three calls on `channel`; `echo` is the service that serves
/// them (to see the unary handler start).
async fn start_in_flight(channel: TunnelChannel, echo: &Echo, prefix: &str) -> InFlight {
    let tags = [
        format!("{prefix}-unary"),
        format!("{prefix}-stream"),
        format!("{prefix}-bidi"),
    ];
    let mut client = EchoServiceClient::new(channel.clone());
    let unary = tokio::spawn({
        let mut client = client.clone();
        let tag = tags[0].clone();
        async move {
            client
                .unary(EchoRequest {
                    sleep_ms: 30_000,
                    tag,
                    ..Default::default()
                })
                .await
        }
    });
    let mut stream = client
        .server_stream(EchoRequest {
            repeat: 1_000_000,
            response_size: 16 * 1024,
            tag: tags[1].clone(),
            ..Default::default()
        })
        .await
        .expect("server stream starts")
        .into_inner();
    assert_eq!(stream.message().await.expect("first").expect("one").seq, 0);
    let (tx, rx) = mpsc::channel(4);
    tx.send(EchoRequest {
        seq: 1,
        tag: tags[2].clone(),
        ..Default::default()
    })
    .await
    .expect("queued");
    let mut bidi = client
        .bidi(ReceiverStream::new(rx))
        .await
        .expect("bidi starts")
        .into_inner();
    assert_eq!(bidi.message().await.expect("answer").expect("one").seq, 1);
    // The unary handler only shows that it started through the tag table:
    // no event to wait on, so poll it.
    assert!(
        poll_until(Duration::from_secs(5), || echo
            .handler_state(&tags[0])
            .started)
        .await,
        "unary handler never started"
    );
    assert_eq!(channel.active_calls(), 3);
    InFlight {
        unary,
        stream,
        bidi,
        _bidi_tx: tx,
        tags,
    }
}

/// Every call of `calls` fails with UNAVAILABLE within [`PROMPT`] of
/// `killed_at`; returns how long each took.
async fn expect_unavailable(calls: InFlight, killed_at: Instant) -> [Duration; 3] {
    let InFlight {
        unary,
        mut stream,
        mut bidi,
        _bidi_tx,
        ..
    } = calls;
    let err = within(PROMPT, "unary in flight", unary)
        .await
        .expect("unary task")
        .expect_err("unary cannot succeed");
    let t_unary = killed_at.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "unary: {err:?}");

    // Messages that arrived before the kill may still be read.
    let (read, err) = within(PROMPT, "server stream in flight", async {
        let mut read = 0usize;
        loop {
            match stream.message().await {
                Ok(Some(_)) => read += 1,
                Ok(None) => panic!("server stream ended OK after the kill"),
                Err(status) => return (read, status),
            }
        }
    })
    .await;
    let t_stream = killed_at.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "server stream: {err:?}");
    let window = grpctunnel::DEFAULT_INITIAL_WINDOW_SIZE as usize;
    assert!(
        read * 16 * 1024 <= window,
        "more than a window arrived: {read}"
    );

    let err = within(PROMPT, "bidi in flight", bidi.message())
        .await
        .expect_err("bidi cannot go on");
    let t_bidi = killed_at.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "bidi: {err:?}");
    let times = [t_unary, t_stream, t_bidi];
    assert!(times.iter().all(|t| *t < PROMPT), "{times:?}");
    times
}

/// Every handler of `tags` saw its call cancelled.
async fn expect_cancelled(echo: &Echo, tags: &[String]) {
    for tag in tags {
        let state = echo.wait_handler(tag, PROMPT).await;
        assert!(state.started && state.cancelled, "{tag}: {state:?}");
        assert!(!state.finished, "{tag}: {state:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_calls_in_flight_fail_unavailable_when_the_connection_dies() {
    bounded(async {
        let echo = Echo::new();
        let server = tonic_server(TunnelLayer::new(), echo.clone()).await;
        let proxy = Proxy::start(server.addr).await;
        let tunnel = forward(proxy.addr).await;
        let calls = start_in_flight(tunnel.clone(), &echo, "fwd").await;

        let killed_at = Instant::now();
        assert_eq!(proxy.kill().await, 1, "one connection");
        let times = expect_unavailable(calls, killed_at).await;
        let why = within(PROMPT, "tunnel.closed()", tunnel.closed()).await;
        assert!(why.is_closed(), "{why:?}");
        assert!(tunnel.is_closed());
        assert_eq!(tunnel.active_calls(), 0);
        println!("failed after {times:?}; tunnel: {why:?}");

        // New calls fail without waiting for anything (their code is
        // checked by `new_calls_on_a_dead_tunnel_fail_unavailable`).
        let mut client = EchoServiceClient::new(tunnel.clone());
        let started = Instant::now();
        let err = within(PROMPT, "new call", client.unary(EchoRequest::default()))
            .await
            .expect_err("dead tunnel");
        println!("a new call failed after {:?}", started.elapsed());
        assert!(err.message().contains("tunnel closed"), "{err:?}");
    })
    .await
}

/// A call that finds its tunnel already dead fails like one that was in
/// flight: UNAVAILABLE, the code gRPC gives a channel whose transport is
/// gone (and the one retry policies look for), whether the tunnel died with
/// its connection or was closed locally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_calls_on_a_dead_tunnel_fail_unavailable() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let proxy = Proxy::start(server.addr).await;
        let broken = forward(proxy.addr).await;
        proxy.kill().await;
        within(PROMPT, "tunnel.closed()", broken.closed()).await;
        let closed = forward(server.addr).await;
        closed.close();
        for (how, tunnel) in [("broken", broken), ("closed", closed)] {
            let err = EchoServiceClient::new(tunnel)
                .unary(EchoRequest::default())
                .await
                .expect_err("dead tunnel");
            assert_eq!(err.code(), Code::Unavailable, "{how}: {err:?}");
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_forgets_the_tunnel_and_cancels_its_handlers() {
    bounded(async {
        let echo = Echo::new();
        let layer = TunnelLayer::new();
        let server = tonic_server(layer.clone(), echo.clone()).await;
        let proxy = Proxy::start(server.addr).await;
        let tunnel = forward(proxy.addr).await;
        let calls = start_in_flight(tunnel.clone(), &echo, "srv").await;
        let before = layer.stats();
        assert_eq!((before.tunnels_open, before.streams_open), (1, 3));

        proxy.kill().await;
        expect_cancelled(&echo, &calls.tags).await;
        // The layer offers counters only: poll them.
        let closed = poll_until(PROMPT, || layer.stats().tunnels_open == 0).await;
        let after = layer.stats();
        println!("server before: {before}\nserver after:  {after}");
        assert!(closed, "tunnel still counted open: {after}");
        assert_eq!(after.tunnels_total, 1);
        // Streams in flight when the tunnel died are not counted open.
        assert_eq!(after.streams_open, 0, "server: {after}");
        drop(calls);
    })
    .await
}

async fn hub(registry: &Registry) -> (TestServer, TunnelLayer) {
    let layer = TunnelLayer::new().reverse(registry.clone());
    (tonic_server(layer.clone(), Echo::new()).await, layer)
}

fn agent(echo: &Echo, key: &str) -> ReverseTunnelServer {
    ReverseTunnelServer::new(Routes::new(echo.clone().server())).metadata("x-agent-key", key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_the_hub_forgets_a_dead_agent_and_the_agent_comes_back() {
    bounded(async {
        let registry = keyed_registry();
        let (hub, hub_layer) = hub(&registry).await;
        let proxy = Proxy::start(hub.addr).await;
        let mut events = registry.subscribe();
        let echo = Echo::new();
        let transport = Endpoint::from_shared(proxy.url()).unwrap().connect_lazy();
        let keep = agent(&echo, "a").keep_connected_with(transport, quick_backoff());
        let first = registry.wait_for(Some(&"a".to_owned())).await;
        assert!(matches!(events.next().await, Some(TunnelEvent::Opened(_))));
        let calls = start_in_flight(first.channel(), &echo, "rev").await;

        let killed_at = Instant::now();
        assert_eq!(proxy.kill().await, 1);
        // The agent may be back before the hub has noticed: keep its new
        // tunnel if it shows up first.
        let mut second = None;
        let forgotten = within(PROMPT, "Closed event", async {
            loop {
                match events.next().await {
                    Some(TunnelEvent::Closed(t)) if t.id() == first.id() => {
                        return killed_at.elapsed();
                    }
                    Some(TunnelEvent::Opened(t)) if second.is_none() => second = Some(t),
                    other => panic!("expected Closed, got {other:?}"),
                }
            }
        })
        .await;
        assert!(forgotten < PROMPT, "{forgotten:?}");
        // The registry may already hold the agent's next tunnel; never the dead one.
        assert!(registry.tunnels().iter().all(|t| t.id() != first.id()));
        let tags = calls.tags.clone();
        let times = expect_unavailable(calls, killed_at).await;
        assert!(first.channel().is_closed());
        expect_cancelled(&echo, &tags).await;
        println!("registry forgot after {forgotten:?}; calls failed after {times:?}");

        // keep_connected dials again through the proxy, still listening.
        let second = match second {
            Some(t) => t,
            None => match within(Duration::from_secs(5), "reconnect", events.next()).await {
                Some(TunnelEvent::Opened(t)) => t,
                other => panic!("expected Opened, got {other:?}"),
            },
        };
        assert_ne!(second.id(), first.id());
        assert_eq!(registry.len(), 1);
        assert!(proxy.accepted() >= 2, "reconnected through the proxy");
        let mut client = EchoServiceClient::new(registry.get(&"a".to_owned()));
        let resp = client
            .unary(EchoRequest {
                seq: 7,
                ..Default::default()
            })
            .await
            .expect("the new tunnel serves calls");
        assert_eq!(resp.into_inner().seq, 7);
        let state = keep.state();
        assert!(state.connected && state.tunnels_opened == 2, "{state:?}");
        assert!(
            state.last_error.is_some(),
            "the first tunnel broke: {state:?}"
        );

        keep.shutdown().await;
        within(PROMPT, "clean close", second.channel().closed()).await;
        assert!(poll_until(PROMPT, || hub_layer.stats().tunnels_open == 0).await);
        hub.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_process_dies_with_calls_in_flight() {
    bounded(async {
        let process = Process::new();
        let echo = Echo::new();
        let layer = TunnelLayer::new();
        let addr = process.tonic_server(layer.clone(), echo.clone());
        let tunnel = forward(addr).await;
        let calls = start_in_flight(tunnel.clone(), &echo, "die").await;
        assert_eq!(layer.stats().streams_open, 3);

        let killed_at = Instant::now();
        process.kill().await;
        let tags = calls.tags.clone();
        let times = expect_unavailable(calls, killed_at).await;
        let why = within(PROMPT, "tunnel.closed()", tunnel.closed()).await;
        assert!(why.is_closed(), "{why:?}");
        // The dead process's handlers were dropped with it.
        expect_cancelled(&echo, &tags).await;
        println!("failed after {times:?}; tunnel: {why:?}");

        // Nothing listens any more: a new tunnel cannot open.
        let transport = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let err = within(PROMPT, "open", TunnelChannel::builder().open(transport))
            .await
            .expect_err("server is gone");
        assert!(err.is_closed(), "{err:?}");
    })
    .await
}

/// A forward tunnel that never opened (the server is gone, or refuses it)
/// must not stay counted as open in the counters given to the builder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_that_fails_to_open_is_not_counted_open() {
    bounded(async {
        let counters = std::sync::Arc::new(grpctunnel::Counters::default());
        let refusing = tonic_server(TunnelLayer::new().max_tunnels(0), Echo::new()).await;
        let err = TunnelChannel::builder()
            .counters(counters.clone())
            .open(connect(refusing.addr).await)
            .await
            .expect_err("max_tunnels(0)");
        assert_eq!(
            err.status().map(Status::code),
            Some(Code::ResourceExhausted)
        );

        let process = Process::new();
        let addr = process.tonic_server(TunnelLayer::new(), Echo::new());
        let transport = connect(addr).await;
        process.kill().await;
        let err = TunnelChannel::builder()
            .counters(counters.clone())
            .open(transport)
            .await
            .expect_err("server is gone");
        assert!(err.is_closed(), "{err:?}");
        let stats = counters.snapshot();
        println!("after two failed opens: {stats}");
        assert_eq!(stats.tunnels_open, 0, "{stats}");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_the_agent_process_dies_with_calls_in_flight() {
    bounded(async {
        let registry = keyed_registry();
        let (hub, hub_layer) = hub(&registry).await;
        let mut events = registry.subscribe();
        let process = Process::new();
        let echo = Echo::new();
        let serving = process.spawn({
            let agent = agent(&echo, "p");
            let url = hub.url();
            async move {
                let transport = Endpoint::from_shared(url).unwrap().connect().await;
                agent.serve(transport.expect("connect")).await
            }
        });
        let tunnel = registry.wait_for(Some(&"p".to_owned())).await;
        assert!(matches!(events.next().await, Some(TunnelEvent::Opened(_))));
        let calls = start_in_flight(tunnel.channel(), &echo, "agent").await;

        let killed_at = Instant::now();
        process.kill().await;
        match within(PROMPT, "Closed event", events.next()).await {
            Some(TunnelEvent::Closed(t)) => assert_eq!(t.id(), tunnel.id()),
            other => panic!("expected Closed, got {other:?}"),
        }
        assert!(registry.is_empty());
        let tags = calls.tags.clone();
        let times = expect_unavailable(calls, killed_at).await;
        expect_cancelled(&echo, &tags).await;
        let err = serving.await.expect_err("the agent's task died with it");
        assert!(err.is_cancelled());
        assert!(poll_until(PROMPT, || hub_layer.stats().tunnels_open == 0).await);
        println!("failed after {times:?}");

        let mut client = EchoServiceClient::new(registry.get(&"p".to_owned()));
        let err = client
            .unary(EchoRequest::default())
            .await
            .expect_err("no agent");
        assert_eq!(err.code(), Code::Unavailable);
        hub.stop().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_the_hub_process_dies_and_the_agent_notices() {
    bounded(async {
        let process = Process::new();
        let registry = keyed_registry();
        let layer = TunnelLayer::new().reverse(registry.clone());
        let addr = process.tonic_server(layer, Echo::new());
        let echo = Echo::new();
        let transport = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        let keep = agent(&echo, "h").keep_connected_with(transport, quick_backoff());
        let tunnel = registry.wait_for(Some(&"h".to_owned())).await;
        keep.wait_until(|s| s.connected).await;
        let calls = start_in_flight(tunnel.channel(), &echo, "hub").await;
        let tags = calls.tags.clone();

        let killed_at = Instant::now();
        process.kill().await;
        let state = within(PROMPT, "agent notices", keep.wait_until(|s| !s.connected)).await;
        assert!(state.last_error.is_some(), "{state:?}");
        // The agent cancels what the dead hub had asked of it.
        expect_cancelled(&echo, &tags).await;
        println!("agent noticed after {:?}: {state:?}", killed_at.elapsed());
        drop(calls);
        keep.shutdown().await;
    })
    .await
}

/// A reverse tunnel whose agent dies after the opening RPC was accepted and
/// before its `Settings` arrived must not stay counted as open by the hub:
/// `tunnels_open` is what `TunnelLayer::max_tunnels` is checked against.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_an_agent_dying_during_the_handshake_is_not_counted_open() {
    bounded(async {
        let registry = keyed_registry();
        let layer = TunnelLayer::new().reverse(registry.clone()).max_tunnels(1);
        let hub = tonic_server(layer.clone(), Echo::new()).await;
        let proxy = Proxy::start(hub.addr).await;

        // An agent that offers revision one and dies before sending Settings.
        let (_tx, rx) = mpsc::unbounded_channel::<grpctunnel::pb::ServerToClient>();
        let mut req = tonic::Request::new(tokio_stream::wrappers::UnboundedReceiverStream::new(rx));
        req.metadata_mut()
            .insert("grpctunnel-negotiate", "on".parse().unwrap());
        let resp = TunnelServiceClient::new(connect(proxy.addr).await)
            .open_reverse_tunnel(req)
            .await
            .expect("the hub accepts the opening RPC");
        assert_eq!(layer.stats().tunnels_open, 1);
        proxy.kill().await;
        drop(resp);

        let gone = poll_until(PROMPT, || layer.stats().tunnels_open == 0).await;
        let stats = layer.stats();
        println!("hub after the dead handshake: {stats}");
        assert!(registry.is_empty());
        assert!(gone, "the dead handshake is still counted open: {stats}");
        // And so a real agent still gets in under max_tunnels(1).
        let echo = Echo::new();
        let keep = agent(&echo, "late").keep_connected(connect(hub.addr).await);
        within(
            Duration::from_secs(5),
            "agent admitted",
            registry.wait_for(Some(&"late".to_owned())),
        )
        .await;
        keep.shutdown().await;
        hub.stop().await;
    })
    .await
}
