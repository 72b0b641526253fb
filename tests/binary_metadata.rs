//! Binary (`-bin`) metadata with arbitrary bytes: two ends of this crate
//! agree to carry it as base64, so any bytes cross both ways and in both
//! tunnel directions; with a peer that can only carry raw bytes (the Go
//! reference, played here by the raw peers) a value that is not UTF-8 is
//! dropped and counted by default, or fails its call under `Fail`.

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
                .get("grpctunnel-binary-metadata")
                .and_then(|v| v.to_str().ok()),
            Some("base64"),
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
        assert!(raw.headers.get("grpctunnel-binary-metadata").is_none());
        drop(raw);
        server.stop().await;
    })
    .await
}
