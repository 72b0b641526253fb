//! The agent's connection to its upstream: while the upstream is down (or
//! answers with something that is not HTTP/2) calls fail `UNAVAILABLE`,
//! saying what failed but never the upstream's address; the first call
//! after it is back goes through, with no wait and no retry by the caller. Hub and agent are real processes; the
//! upstream is restarted on the same port.

mod common;

use common::*;

use grpctunnel_testing::{pb::EchoRequest, Echo};
use std::time::Duration;

use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::Code;

/// The echo service on `listener` until `stop` fires (then it sends GOAWAY
/// on every connection and ends when they are closed).
fn serve(listener: TcpListener) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(Echo::new().server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = stopped.await;
            })
            .await
            .expect("upstream serves");
    });
    (stop, server)
}

#[tokio::test]
async fn calls_fail_unavailable_while_the_upstream_is_down_and_pass_once_it_is_back() {
    bounded(async {
        let dir = temp_dir();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let upstream = listener.local_addr().expect("addr");
        let (stop, server) = serve(listener);
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        let reply = plant.unary(hello("before")).await.expect("upstream up");
        assert_eq!(reply.into_inner().payload.as_ref(), b"before");

        // Stopped: GOAWAY on the agent's connection, then it is closed.
        stop.send(()).expect("upstream running");
        server.await.expect("upstream stopped");
        let err = plant.unary(hello("down")).await.expect_err("no upstream");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("upstream"), "{err:?}");
        assert!(!err.message().contains(&upstream.to_string()), "{err:?}");

        // Something on the port that is not an HTTP/2 server: it accepts
        // and hangs up.
        let impostor = TcpListener::bind(upstream).await.expect("rebind");
        let hanging_up = tokio::spawn(async move {
            loop {
                match impostor.accept().await {
                    Ok((socket, _)) => drop(socket),
                    Err(_) => return,
                }
            }
        });
        let err = plant.unary(hello("impostor")).await.expect_err("no HTTP/2");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        // What failed, not where: the upstream's address stays with the
        // agent.
        assert!(err.message().contains("upstream"), "{err:?}");
        assert!(!err.message().contains(&upstream.to_string()), "{err:?}");
        hanging_up.abort();
        let _ = hanging_up.await;

        // Back on the same port: the very next call is served.
        let (_stop, _server) = serve(TcpListener::bind(upstream).await.expect("rebind"));
        for i in 0..3 {
            let text = format!("after {i}");
            let reply = plant.unary(hello(&text)).await.expect("upstream back");
            assert_eq!(reply.into_inner().payload.as_ref(), text.as_bytes());
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A caller that gives up on a server stream (the upstream's handler
/// producing a million messages) gets the upstream's handler cancelled:
/// the agent resets its stream to the upstream rather than leaving it
/// open. Three rounds, then an ordinary call on the same connection.
#[tokio::test]
async fn a_caller_giving_up_mid_stream_cancels_the_upstreams_handler() {
    bounded(async {
        let dir = temp_dir();
        let echo = Echo::new();
        let upstream = upstream_with(echo.clone()).await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        for round in 0..3 {
            let tag = format!("given-up-{round}");
            let mut call = tonic::Request::new(EchoRequest {
                repeat: 1_000_000,
                response_size: 1024,
                tag: tag.clone(),
                ..Default::default()
            });
            call.set_timeout(Duration::from_secs(30));
            let mut responses = plant.server_stream(call).await.expect("call").into_inner();
            responses
                .message()
                .await
                .expect("first")
                .expect("a message");
            drop(responses);
            let state = echo.wait_handler(&tag, Duration::from_secs(20)).await;
            assert!(
                state.started && state.cancelled && !state.finished,
                "round {round}: handler {state:?}, want started and cancelled"
            );
        }
        let reply = plant.unary(hello("still")).await.expect("unary");
        assert_eq!(reply.into_inner().payload.as_ref(), b"still");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// An upstream that goes silent with its connection still open (its host
/// powered off, its network cut: a relay here that stops forwarding either
/// way) fails the call open on it `UNAVAILABLE` once the agent's keepalive
/// ping goes unanswered, rather than leaving it hanging, and without the
/// upstream's address; the next call dials again and is served. Without
/// the pings (or with open calls not counted) the stream would wait out
/// the test's bound.
#[tokio::test]
async fn a_call_on_an_upstream_gone_silent_fails_unavailable_once_a_ping_goes_unanswered() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let relay = freeze::FreezingRelay::start(upstream).await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let _agent = agent_with(
            &dir,
            addr,
            "plant-7",
            AGENT_TOKEN,
            relay.addr,
            &["--upstream-keepalive", "1"],
        );
        let mut plant = caller(addr, "plant-7", true).await;
        let (requests, rx) = mpsc::channel(4);
        requests
            .send(EchoRequest {
                payload: b"first".to_vec().into(),
                ..Default::default()
            })
            .await
            .expect("queued");
        let mut responses = plant
            .bidi(ReceiverStream::new(rx))
            .await
            .expect("bidi")
            .into_inner();
        let first = responses
            .message()
            .await
            .expect("first")
            .expect("a message");
        assert_eq!(first.payload.as_ref(), b"first");

        // Open and idle on a connection that no longer carries a byte.
        relay.freeze();
        let err = responses
            .message()
            .await
            .expect_err("the upstream went silent");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("upstream"), "{err:?}");
        for hidden in [upstream.to_string(), relay.addr.to_string()] {
            assert!(!err.message().contains(&hidden), "{err:?}");
        }
        drop(requests);

        // New connections through the relay flow: the next call dials one.
        let reply = plant.unary(hello("after")).await.expect("dialled again");
        assert_eq!(reply.into_inner().payload.as_ref(), b"after");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
