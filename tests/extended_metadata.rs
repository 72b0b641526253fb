//! The extended metadata mapping two ends of this crate agree on: binary
//! (`-bin`) metadata with arbitrary bytes crosses both ways and in both
//! tunnel directions, and so do `content-type` subtypes and `user-agent`;
//! tunneled requests carry the opening RPC's authority. With a peer that
//! can only carry raw bytes (the Go reference, played here by the raw
//! peers) a value that is not UTF-8 is dropped and counted by default, or
//! fails its call under `Fail`, and the transport headers stay out (P-58).

mod common;

use common::{raw::*, *};
use grpctunnel::{BinaryMetadata, ReverseTunnelServer, TunnelChannel, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest, MetadataEntry},
    Echo,
};
use tokio_util::sync::CancellationToken;
use tonic::{
    metadata::{BinaryMetadataValue, MetadataMap},
    service::Routes,
};

/// Random-looking bytes, as a tracing header carries: not UTF-8.
const TRACE: &[u8] = &[0x00, 0xff, 0xfe, 0x80, 0x01, 0xc3, 0x28];
const LOAD: &[u8] = &[0xde, 0xad, 0xbe, 0xef];

fn traced_request() -> tonic::Request<EchoRequest> {
    let entry = |key: &str, value: &[u8]| MetadataEntry {
        key: key.into(),
        value: bytes::Bytes::copy_from_slice(value),
    };
    let mut req = tonic::Request::new(EchoRequest {
        echo_metadata: true,
        response_headers: vec![entry("x-load-bin", LOAD)],
        response_trailers: vec![entry("x-orca-bin", LOAD)],
        ..Default::default()
    });
    req.metadata_mut()
        .insert_bin("x-trace-bin", BinaryMetadataValue::from_bytes(TRACE));
    req
}

fn bin(md: &MetadataMap, key: &str) -> Option<Vec<u8>> {
    md.get_bin(key)
        .and_then(|v| v.to_bytes().ok())
        .map(|b| b.to_vec())
}

/// One traced call: the handler saw the request's bytes exactly, and the
/// caller gets the handler's headers and trailers exactly.
async fn check_traced_call<C>(channel: C)
where
    C: tonic::client::GrpcService<tonic::body::Body> + Send,
    C::Error: Into<grpctunnel::BoxError>,
    C::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<grpctunnel::BoxError> + Send,
{
    let mut client = EchoServiceClient::new(channel);
    let resp = client.unary(traced_request()).await.expect("traced call");
    let headers = resp.metadata().clone();
    let seen = resp.into_inner().metadata;
    let trace = seen
        .iter()
        .find(|e| e.key == "x-trace-bin")
        .expect("the handler saw the trace header");
    assert_eq!(trace.value.as_ref(), TRACE);
    assert_eq!(bin(&headers, "x-load-bin").as_deref(), Some(LOAD));
    // A unary client's metadata merges headers and trailers.
    assert_eq!(bin(&headers, "x-orca-bin").as_deref(), Some(LOAD));
}

#[tokio::test]
async fn any_bytes_cross_a_forward_tunnel_between_two_ends_of_this_crate() {
    bounded(async {
        // Even under `Fail`: between two ends of this crate nothing fails.
        let layer = TunnelLayer::new().binary_metadata(BinaryMetadata::Fail);
        let server = tonic_server(layer, Echo::new()).await;
        let tunnel = TunnelChannel::builder()
            .binary_metadata(BinaryMetadata::Fail)
            .open(connect(server.addr).await)
            .await
            .expect("open");
        check_traced_call(tunnel.clone()).await;
        assert_eq!(tunnel.stats().metadata_dropped, 0);
        tunnel.close();
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn any_bytes_cross_a_reverse_tunnel_between_two_ends_of_this_crate() {
    bounded(async {
        let registry = keyed_registry();
        let layer = TunnelLayer::new()
            .reverse(registry.clone())
            .binary_metadata(BinaryMetadata::Fail);
        let server = tonic_server(layer, Echo::new()).await;
        let agent = ReverseTunnelServer::new(Routes::new(Echo::new().server()))
            .metadata("x-agent-key", "agent-7")
            .binary_metadata(BinaryMetadata::Fail);
        let stop = CancellationToken::new();
        let transport = connect(server.addr).await;
        let signal = stop.clone().cancelled_owned();
        let serving =
            tokio::spawn(async move { agent.serve_with_shutdown(transport, signal).await });
        registry.wait_for(Some(&"agent-7".to_owned())).await;
        check_traced_call(registry.get("agent-7")).await;
        stop.cancel();
        serving.await.expect("agent task").expect("clean stop");
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn a_raw_peer_gets_the_call_without_the_value_by_default() {
    bounded(async {
        let (server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        // The raw peer did not agree to base64 (it does not echo the offer).
        assert_eq!(
            peer.headers
                .get("grpctunnel-extensions")
                .and_then(|v| v.to_str().ok()),
            Some("metadata"),
            "offered on the opening RPC"
        );
        let mut client = EchoServiceClient::new(tunnel.clone());
        let mut req = tonic::Request::new(EchoRequest::default());
        req.metadata_mut()
            .insert_bin("grpc-trace-bin", BinaryMetadataValue::from_bytes(TRACE));
        req.metadata_mut()
            .insert_bin("x-utf8-bin", BinaryMetadataValue::from_bytes(b"fine"));
        let call = tokio::spawn(async move { client.unary(req).await });
        let (id, new, _) = peer.expect_unary().await;
        let md = new.request_headers.expect("request headers").md;
        assert!(!md.contains_key("grpc-trace-bin"), "dropped: {md:?}");
        // P-58 with a peer that did not agree: no transport headers.
        assert!(!md.contains_key("user-agent") && !md.contains_key("content-type"));
        assert_eq!(md["x-utf8-bin"].val, ["fine"], "raw, as P-57 says");
        peer.answer(id, &Default::default());
        call.await.expect("task").expect("the call went on");
        assert_eq!(tunnel.stats().metadata_dropped, 1);
        tunnel.close();
        drop(peer);
        server.stop().await;
    })
    .await
}

#[tokio::test]
async fn the_server_agrees_to_base64_only_when_offered() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        // A peer that does not offer (the Go reference) gets no answer to it.
        let raw = RawClient::open(server.addr, true).await;
        assert!(raw.headers.get("grpctunnel-extensions").is_none());
        drop(raw);
        server.stop().await;
    })
    .await
}

/// What the inner service saw, sent back in response headers; it answers
/// in JSON's gRPC subtype.
async fn report(
    req: http::Request<tonic::body::Body>,
) -> Result<http::Response<tonic::body::Body>, std::convert::Infallible> {
    let seen = |v: Option<&http::HeaderValue>| {
        v.cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static("-"))
    };
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into());
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body =
        http_body_util::StreamBody::new(futures_util::stream::iter([Ok::<_, tonic::Status>(
            http_body::Frame::trailers(trailers),
        )]));
    let mut resp = http::Response::new(tonic::body::Body::new(body));
    let h = resp.headers_mut();
    h.insert("x-seen-authority", authority.parse().expect("authority"));
    h.insert("x-seen-user-agent", seen(req.headers().get("user-agent")));
    h.insert(
        "x-seen-content-type",
        seen(req.headers().get("content-type")),
    );
    h.insert(
        "content-type",
        http::HeaderValue::from_static("application/grpc+json"),
    );
    Ok(resp)
}

#[tokio::test]
async fn transport_headers_and_the_authority_reach_the_inner_service() {
    use tower::ServiceExt;

    bounded(async {
        let layer = TunnelLayer::new().tunnel_service(tower::service_fn(report));
        let server = tonic_server(layer, Echo::new()).await;
        let tunnel = forward(server.addr).await;
        let req = http::Request::builder()
            .method("POST")
            .uri("/svc.Json/Call")
            .header("content-type", "application/grpc+json")
            .header("user-agent", "probe/1.0")
            .header("te", "trailers")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .expect("request");
        let resp = tunnel.clone().oneshot(req).await.expect("response");
        let h = resp.headers();
        let text = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(
            text("x-seen-authority"),
            Some(server.addr.to_string()),
            "{h:?}"
        );
        assert_eq!(text("x-seen-user-agent").as_deref(), Some("probe/1.0"));
        assert_eq!(
            text("x-seen-content-type").as_deref(),
            Some("application/grpc+json")
        );
        assert_eq!(
            text("content-type").as_deref(),
            Some("application/grpc+json")
        );
        tunnel.close();
        server.stop().await;
    })
    .await
}
