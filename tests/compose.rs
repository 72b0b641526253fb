//! The tunnel layer composed with tonic, axum and tower: the layer on an
//! axum router, an auth layer in front of the endpoint, a timeout around the
//! channel, a different service over tunnels than over plain connections,
//! and the endpoint mounted as a named service.

mod common;

use std::time::Duration;

use common::*;
use grpctunnel::{Revision, TunnelChannel, TunnelInfo, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::Routes, transport::Server, Code};
use tower::{Layer as _, ServiceBuilder};

/// What the auth layer below proves about a caller.
#[derive(Clone, Debug)]
struct Identity(String);

/// A bearer-token check in front of everything: rejects with
/// UNAUTHENTICATED, otherwise records the caller's identity.
#[allow(clippy::result_large_err)]
fn auth(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let token = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    match token.as_deref() {
        Some("s3cret") => {
            req.extensions_mut().insert(Identity("alice".into()));
            Ok(req)
        }
        _ => Err(tonic::Status::unauthenticated("bad token")),
    }
}

/// Copies what a tunneled request carries in its extensions into headers,
/// so that the echo service reports them back.
fn expose_extensions<B>(mut req: http::Request<B>) -> http::Request<B> {
    let identity = req.extensions().get::<Identity>().map(|i| i.0.clone());
    let info = req.extensions().get::<TunnelInfo>().cloned();
    let h = req.headers_mut();
    if let Some(identity) = identity {
        h.insert("x-seen-identity", identity.parse().unwrap());
    }
    if let Some(info) = info {
        h.insert("x-seen-stream-id", info.stream_id().into());
        h.insert(
            "x-seen-direction",
            info.direction().to_string().parse().unwrap(),
        );
        if let Some(agent) = info.tunnel_metadata().get("x-agent") {
            h.insert("x-seen-agent", agent.clone());
        }
    }
    req
}

fn seen(resp: &grpctunnel_testing::pb::EchoResponse, key: &str) -> Option<String> {
    resp.metadata
        .iter()
        .find(|e| e.key == key)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

#[tokio::test]
async fn auth_layer_rejects_tunnel_and_identity_reaches_tunneled_handlers() {
    bounded(async {
        let (listener, addr) = listener().await;
        let routes = Routes::new(Echo::new().server());
        let inner = ServiceBuilder::new()
            .map_request(expose_extensions)
            .service(routes);
        tokio::spawn(
            Server::builder()
                .layer(tonic::service::InterceptorLayer::new(auth))
                .layer(TunnelLayer::new())
                .serve_with_incoming(inner, TcpListenerStream::new(listener)),
        );

        let err = TunnelChannel::builder()
            .open(connect(addr).await)
            .await
            .expect_err("no token: rejected");
        assert_eq!(err.status().map(|s| s.code()), Some(Code::Unauthenticated));

        let tunnel = TunnelChannel::builder()
            .metadata("authorization", "Bearer s3cret")
            .metadata("x-agent", "agent-7")
            .open(connect(addr).await)
            .await
            .expect("token accepted");
        let mut client = EchoServiceClient::new(tunnel);
        for _ in 0..2 {
            let resp = client
                .unary(EchoRequest {
                    echo_metadata: true,
                    ..Default::default()
                })
                .await
                .expect("tunneled call")
                .into_inner();
            assert_eq!(seen(&resp, "x-seen-identity").as_deref(), Some("alice"));
            assert_eq!(seen(&resp, "x-seen-direction").as_deref(), Some("forward"));
            assert_eq!(seen(&resp, "x-seen-agent").as_deref(), Some("agent-7"));
            assert!(seen(&resp, "x-seen-stream-id").is_some());
            // The opening RPC's metadata is not merged into the call's.
            assert!(seen(&resp, "authorization").is_none());
        }
    })
    .await
}

/// An axum router with a plain HTTP route next to the echo gRPC service.
fn echo_router() -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route_service(
            "/grpctunnel.testing.v1.EchoService/{*method}",
            Echo::new().server(),
        )
}

#[tokio::test]
async fn axum_router_serves_tunnels_next_to_plain_http() {
    bounded(async {
        let (listener, addr) = listener().await;
        let router = echo_router();
        // The layer wraps the whole router and answers in axum's body type:
        // no conversion layer.
        let app = TunnelLayer::new().layer(router);
        tokio::spawn(async move { axum::serve(listener, tower::make::Shared::new(app)).await });

        // A path that is neither a route nor the tunnel: axum's 404 arrives
        // through the tunnel as UNIMPLEMENTED (gRPC's HTTP status mapping).
        let tunnel = forward(addr).await;
        let mut grpc = tonic::client::Grpc::new(tunnel.clone());
        grpc.ready().await.unwrap();
        let err = grpc
            .unary::<EchoRequest, EchoRequest, _>(
                tonic::Request::new(EchoRequest::default()),
                "/nope.Svc/Missing".parse().unwrap(),
                tonic_prost::ProstCodec::default(),
            )
            .await
            .expect_err("404");
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

        let tunnel = forward(addr).await;
        let mut client = EchoServiceClient::new(tunnel);
        let resp = client
            .unary(EchoRequest {
                payload: "via axum".into(),
                ..Default::default()
            })
            .await
            .expect("tunneled call through axum")
            .into_inner();
        assert_eq!(resp.payload, "via axum");

        let mut http = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        http.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("ok"), "{text}");
    })
    .await
}

#[tokio::test]
async fn axum_router_layer_serves_tunnels_with_the_router_as_tunnel_service() {
    bounded(async {
        let (listener, addr) = listener().await;
        let router = echo_router();
        // `Router::layer` wraps each route, and the fallback, on its own:
        // the fallback's copy answers `OpenTunnel`, and tunneled calls go to
        // the whole router, given as the tunnel service.
        let app = router
            .clone()
            .layer(TunnelLayer::new().tunnel_service(router));
        tokio::spawn(async move { axum::serve(listener, app).await });

        let tunnel = forward(addr).await;
        let mut client = EchoServiceClient::new(tunnel);
        let resp = client
            .unary(EchoRequest {
                payload: "via Router::layer".into(),
                ..Default::default()
            })
            .await
            .expect("tunneled call through Router::layer")
            .into_inner();
        assert_eq!(resp.payload, "via Router::layer");
    })
    .await
}

#[tokio::test]
async fn timeout_layer_around_the_channel_cancels_the_handler() {
    bounded(async {
        let echo = Echo::new();
        let server = tonic_server(TunnelLayer::new(), echo.clone()).await;
        let tunnel = forward(server.addr).await;
        let timed = ServiceBuilder::new()
            .timeout(Duration::from_millis(100))
            .service(tunnel.clone());
        let mut client = EchoServiceClient::new(timed);
        let err = client
            .unary(EchoRequest {
                sleep_ms: 10_000,
                tag: "slow".into(),
                ..Default::default()
            })
            .await
            .expect_err("timed out");
        assert!(err.message().contains("timed out"), "{err:?}");
        let state = echo.wait_handler("slow", Duration::from_secs(5)).await;
        assert!(state.started && state.cancelled, "{state:?}");

        // The tunnel is still fine.
        let mut client = EchoServiceClient::new(tunnel);
        client
            .unary(EchoRequest::default())
            .await
            .expect("after timeout");
    })
    .await
}

#[tokio::test]
async fn tunnels_can_expose_a_different_service() {
    bounded(async {
        let (listener, addr) = listener().await;
        let (_reporter, health) = tonic_health::server::health_reporter();
        let layer = TunnelLayer::new().tunnel_service(Routes::new(health));
        tokio::spawn(
            Server::builder()
                .layer(layer)
                .add_service(Echo::new().server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        // Plain connection: echo is there.
        let mut plain = EchoServiceClient::new(connect(addr).await);
        plain
            .unary(EchoRequest::default())
            .await
            .expect("plain echo");
        // Tunnel: health is there, echo is not.
        let tunnel = forward(addr).await;
        let mut health = tonic_health::pb::health_client::HealthClient::new(tunnel.clone());
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("tunneled health");
        assert_eq!(resp.into_inner().status, 1);
        let mut echo = EchoServiceClient::new(tunnel);
        let err = echo
            .unary(EchoRequest::default())
            .await
            .expect_err("no echo");
        assert_eq!(err.code(), Code::Unimplemented);
    })
    .await
}

#[tokio::test]
async fn endpoint_mounts_as_a_named_service() {
    bounded(async {
        let (listener, addr) = listener().await;
        let tunnel_svc = TunnelLayer::new()
            .tunnel_service(Routes::new(Echo::new().server()))
            .into_service();
        tokio::spawn(
            Server::builder()
                .add_service(tunnel_svc)
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let tunnel = forward(addr).await;
        let mut client = EchoServiceClient::new(tunnel);
        let resp = client
            .unary(EchoRequest {
                payload: "named".into(),
                ..Default::default()
            })
            .await
            .expect("tunneled call");
        assert_eq!(resp.into_inner().payload, "named");
    })
    .await
}

#[tokio::test]
async fn revision_zero_on_either_side_falls_back() {
    bounded(async {
        for (server_rev, client_rev) in [
            (Revision::Zero, Revision::One),
            (Revision::One, Revision::Zero),
            (Revision::Zero, Revision::Zero),
        ] {
            let server =
                tonic_server(TunnelLayer::new().max_revision(server_rev), Echo::new()).await;
            let tunnel = TunnelChannel::builder()
                .max_revision(client_rev)
                .open(connect(server.addr).await)
                .await
                .expect("open");
            assert_eq!(tunnel.revision(), Revision::Zero);
            let mut client = EchoServiceClient::new(tunnel);
            let resp = client
                .unary(EchoRequest {
                    payload: grpctunnel_testing::payload(100_000),
                    ..Default::default()
                })
                .await
                .expect("unary on revision zero");
            assert_eq!(resp.into_inner().payload.len(), 100_000);
        }
    })
    .await
}
