//! Promises of the public API that are easy to get wrong: borrowed registry
//! lookups, what a registry's channel tells about its tunnels, a shutdown
//! that is on the wire when it resolves, and negotiating revision zero.

mod common;

use std::time::Duration;

use common::{raw::*, *};
use futures_util::StreamExt;
use grpctunnel::{ReverseTunnelServer, Revision, TunnelChannel, TunnelEvent, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;

fn hello() -> EchoRequest {
    EchoRequest {
        payload: "hello".into(),
        ..Default::default()
    }
}

/// An agent serving the echo service over a reverse tunnel to `addr` as
/// `key`, until `stop` is cancelled; its `serve` result is the task's.
fn agent(
    addr: std::net::SocketAddr,
    key: &str,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), grpctunnel::Error>> {
    let agent =
        ReverseTunnelServer::new(Routes::new(Echo::new().server())).metadata("x-agent-key", key);
    tokio::spawn(async move {
        let transport = connect(addr).await;
        agent
            .serve_with_shutdown(transport, stop.cancelled_owned())
            .await
    })
}

#[tokio::test]
async fn registry_lookups_take_borrowed_keys() {
    bounded(async {
        let registry = keyed_registry();
        let server = tonic_server(TunnelLayer::new().reverse(registry.clone()), Echo::new()).await;
        let stop = CancellationToken::new();
        let serving = agent(server.addr, "agent-7", stop.clone());
        registry.wait_for(Some(&"agent-7".to_owned())).await;

        // `&str` for `String` keys, as with `HashMap::get`.
        assert_eq!(registry.tunnels_for("agent-7").len(), 1);
        let resp = EchoServiceClient::new(registry.get("agent-7"))
            .unary(hello())
            .await
            .expect("call by borrowed key");
        assert_eq!(resp.into_inner().payload, "hello");
        assert!(registry.tunnels_for("agent-8").is_empty());

        stop.cancel();
        serving.await.expect("agent task").expect("clean stop");
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn registry_channel_reports_stats_and_why_its_tunnel_ended() {
    bounded(async {
        let registry = keyed_registry();
        let server = tonic_server(TunnelLayer::new().reverse(registry.clone()), Echo::new()).await;
        let mut events = registry.subscribe();
        let stop = CancellationToken::new();
        let serving = agent(server.addr, "agent-7", stop.clone());
        registry.wait_for(Some(&"agent-7".to_owned())).await;

        let channel = registry.get("agent-7");
        assert!(channel.is_ready());
        assert!(channel.terminal_error().is_none(), "no tunnel has ended");
        let mut client = EchoServiceClient::new(channel.clone());
        for _ in 0..3 {
            client.unary(hello()).await.expect("call");
        }
        let stats = channel.stats();
        assert_eq!(stats.tunnels_open, 1);
        assert_eq!(stats.streams_total, 3, "{stats}");
        assert_eq!(stats.messages_sent, 3, "{stats}");
        assert_eq!(stats.messages_received, 3, "{stats}");
        assert_eq!(channel.active_calls(), 0);
        // Another key's channel counts only its own tunnels.
        assert_eq!(registry.get("agent-8").stats().streams_total, 0);

        // The agent goes away: the channel says why its tunnel ended.
        stop.cancel();
        serving.await.expect("agent task").expect("clean stop");
        loop {
            match events.next().await.expect("events") {
                TunnelEvent::Closed(t) if t.key() == "agent-7" => break,
                _ => {}
            }
        }
        assert!(!channel.is_ready());
        assert_eq!(channel.stats().tunnels_open, 0);
        let err = channel
            .terminal_error()
            .expect("the tunnel's terminal error");
        assert!(err.is_closed(), "{err:?}");
        let status = client.unary(hello()).await.expect_err("no tunnel left");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn forward_shutdown_resolves_once_the_server_saw_the_end() {
    bounded(async {
        let layer = TunnelLayer::new();
        let server = tonic_server(layer.clone(), Echo::new()).await;
        let tunnel = forward(server.addr).await;
        EchoServiceClient::new(tunnel.clone())
            .unary(hello())
            .await
            .expect("call");
        assert_eq!(layer.stats().tunnels_open, 1);
        tunnel.shutdown(Duration::from_secs(5)).await;
        // Not "soon": the server ended the tunnel before shutdown resolved.
        assert_eq!(layer.stats().tunnels_open, 0, "{}", layer.stats());
        assert!(tunnel.is_closed());
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn reverse_shutdown_is_on_the_wire_before_the_hub_goes_away() {
    bounded(async {
        let registry = keyed_registry();
        // The hub runs in a process of its own, to be killed.
        let hub = Process::new();
        let addr = hub.tonic_server(TunnelLayer::new().reverse(registry.clone()), Echo::new());
        let serving = agent(addr, "agent-7", CancellationToken::new());
        let tunnel = registry.wait_for(Some(&"agent-7".to_owned())).await;
        EchoServiceClient::new(tunnel.channel())
            .unary(hello())
            .await
            .expect("call");

        tunnel.channel().shutdown(Duration::from_secs(5)).await;
        // The hub's process ends at once: every connection drops.
        drop(hub);
        // The agent saw a clean end of the tunnel, not a broken connection.
        let ended = serving.await.expect("agent task");
        assert!(ended.is_ok(), "{ended:?}");
    })
    .await
}

#[tokio::test]
async fn server_can_negotiate_revision_zero() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new().disable_flow_control(), Echo::new()).await;
        // Negotiated: Settings arrive, offering revision zero only.
        let (raw, settings) = RawClient::negotiated(server.addr).await;
        assert_eq!(settings.supported_protocol_revisions, [0]);
        drop(raw);

        let tunnel = forward(server.addr).await;
        assert_eq!(tunnel.revision(), Revision::Zero);
        EchoServiceClient::new(tunnel.clone())
            .unary(hello())
            .await
            .expect("call on a negotiated revision-zero tunnel");

        // `max_revision(Zero)` still means no negotiation at all.
        let plain =
            tonic_server(TunnelLayer::new().max_revision(Revision::Zero), Echo::new()).await;
        let raw = RawClient::open(plain.addr, true).await;
        assert!(raw.headers.get(NEGOTIATE).is_none());
        drop(raw);
        tunnel.close();
        server.stop().await;
        plain.stop().await;
    })
    .await
}

#[tokio::test]
async fn client_can_negotiate_revision_zero() {
    bounded(async {
        let builder = TunnelChannel::builder().disable_flow_control();
        let (server, tunnel, mut peer) = negotiated_channel(builder, 65536).await;
        // The header went out, and of the offered [0, 1] revision zero won.
        assert_eq!(
            peer.headers.get(NEGOTIATE).and_then(|v| v.to_str().ok()),
            Some("on")
        );
        assert_eq!(tunnel.revision(), Revision::Zero);
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(hello()).await });
        let (_, new, _) = peer.expect_unary().await;
        assert_eq!(new.protocol_revision, 0);
        call.abort();
        tunnel.close();
        drop(peer);
        server.stop().await;
    })
    .await
}

/// A call that fails after its response headers (here a response message
/// over the client's limit) ends its body with trailers carrying the
/// status, never with a body error: a proxy in front of the channel then
/// answers its caller with that status instead of resetting the stream.
#[tokio::test]
async fn failure_after_headers_ends_the_body_with_trailers() {
    use http_body_util::BodyExt;
    use prost::Message;
    use tower::ServiceExt;

    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let tunnel = TunnelChannel::builder()
            .max_message_size(1024)
            .open(connect(server.addr).await)
            .await
            .expect("open");
        let request = EchoRequest {
            response_size: 4096,
            ..Default::default()
        }
        .encode_to_vec();
        let mut body = vec![0u8];
        body.extend_from_slice(&(request.len() as u32).to_be_bytes());
        body.extend_from_slice(&request);
        let req = http::Request::builder()
            .method("POST")
            .uri("/grpctunnel.testing.v1.EchoService/Unary")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("request");
        let resp = tunnel.clone().oneshot(req).await.expect("response headers");
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert!(
            resp.headers().get("grpc-status").is_none(),
            "not trailers-only"
        );
        let mut body = resp.into_body();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("the body never fails");
            if let Ok(t) = frame.into_trailers() {
                trailers = Some(t);
            }
        }
        let trailers = trailers.expect("trailers end the body");
        assert_eq!(
            trailers.get("grpc-status").and_then(|v| v.to_str().ok()),
            Some("8"),
            "RESOURCE_EXHAUSTED: {trailers:?}"
        );
        let message = trailers.get("grpc-message").and_then(|v| v.to_str().ok());
        assert!(
            message.is_some_and(|m| m.contains("larger than max")),
            "{trailers:?}"
        );
        tunnel.close();
        server.stop().await;
    })
    .await
}
