//! Every limit of `Limits`, `TunnelLayer::max_tunnels` and the registry's
//! limits, hit on purpose: the call or tunnel over the limit gets
//! RESOURCE_EXHAUSTED, everything else keeps working.

mod common;

use std::time::Duration;

use common::*;
use grpctunnel::{Limits, ReverseTunnelServer, Revision, TunnelChannel, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest, MetadataEntry},
    Echo,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{service::Routes, Code, Streaming};

type Client = EchoServiceClient<TunnelChannel>;

/// Opens a bidi call and waits for its first answer, so that the stream is
/// known to be running at the server.
async fn running_bidi(
    client: &mut Client,
) -> (
    mpsc::Sender<EchoRequest>,
    Streaming<grpctunnel_testing::pb::EchoResponse>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(EchoRequest::default()).await.unwrap();
    let mut answers = client
        .bidi(ReceiverStream::new(rx))
        .await
        .expect("bidi")
        .into_inner();
    answers
        .message()
        .await
        .expect("first answer")
        .expect("an answer");
    (tx, answers)
}

#[tokio::test]
async fn server_refuses_streams_beyond_its_limit_and_the_tunnel_stays_up() {
    bounded(async {
        let layer = TunnelLayer::new().limits(Limits::new().max_concurrent_streams(2));
        let server = tonic_server(layer, Echo::new()).await;
        let tunnel = forward(server.addr).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let (first, _a) = running_bidi(&mut client).await;
        let (_second, _b) = running_bidi(&mut client).await;
        let err = client
            .unary(EchoRequest::default())
            .await
            .expect_err("third stream");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(
            err.message().contains("too many concurrent streams"),
            "{err:?}"
        );
        assert!(!tunnel.is_closed());
        // Dropping a call sends `cancel`, which goes out before the next
        // call's `new_stream`: the slot is free by the time it arrives.
        drop(first);
        drop(_a);
        client
            .unary(EchoRequest::default())
            .await
            .expect("a stream slot freed up");
    })
    .await
}

#[tokio::test]
async fn channel_refuses_calls_beyond_its_limit() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let tunnel = TunnelChannel::builder()
            .limits(Limits::new().max_concurrent_streams(1))
            .open(connect(server.addr).await)
            .await
            .unwrap();
        let mut client = EchoServiceClient::new(tunnel.clone());
        let (tx, answers) = running_bidi(&mut client).await;
        let err = client
            .unary(EchoRequest::default())
            .await
            .expect_err("second call");
        assert_eq!(err.code(), Code::ResourceExhausted);
        drop((tx, answers));
        assert_eq!(tunnel.active_calls(), 0);
        client
            .unary(EchoRequest::default())
            .await
            .expect("room again");
    })
    .await
}

#[tokio::test]
async fn request_metadata_over_the_limit_is_refused() {
    bounded(async {
        let layer = TunnelLayer::new().limits(Limits::new().max_metadata_size(1024));
        let server = tonic_server(layer, Echo::new()).await;
        let mut client = EchoServiceClient::new(forward(server.addr).await);
        let mut req = tonic::Request::new(EchoRequest::default());
        req.metadata_mut()
            .insert("x-big", "v".repeat(2000).parse().unwrap());
        let err = client.unary(req).await.expect_err("too much metadata");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(
            err.message().contains("request metadata too large"),
            "{err:?}"
        );
        let mut req = tonic::Request::new(EchoRequest::default());
        req.metadata_mut().insert("x-small", "v".parse().unwrap());
        client.unary(req).await.expect("small metadata");
    })
    .await
}

#[tokio::test]
async fn response_metadata_over_the_limit_fails_the_call() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let tunnel = TunnelChannel::builder()
            .limits(Limits::new().max_metadata_size(1024))
            .open(connect(server.addr).await)
            .await
            .unwrap();
        let mut client = EchoServiceClient::new(tunnel.clone());
        let big = |key: &str| EchoRequest {
            response_headers: vec![MetadataEntry {
                key: key.into(),
                value: "v".repeat(2000).into(),
            }],
            ..Default::default()
        };
        let err = client
            .unary(big("x-big"))
            .await
            .expect_err("headers too large");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert!(
            err.message().contains("response headers too large"),
            "{err:?}"
        );
        let trailers = EchoRequest {
            response_trailers: big("x-big").response_headers,
            ..Default::default()
        };
        let err = client
            .unary(trailers)
            .await
            .expect_err("trailers too large");
        assert_eq!(err.code(), Code::ResourceExhausted);
        client
            .unary(EchoRequest::default())
            .await
            .expect("tunnel fine");
        assert!(!tunnel.is_closed());
    })
    .await
}

#[tokio::test]
async fn endpoint_refuses_tunnels_beyond_its_limit() {
    bounded(async {
        let layer = TunnelLayer::new().max_tunnels(1);
        let server = tonic_server(layer.clone(), Echo::new()).await;
        let first = forward(server.addr).await;
        let err = TunnelChannel::builder()
            .open(connect(server.addr).await)
            .await
            .expect_err("second tunnel");
        assert_eq!(
            err.status().map(|s| s.code()),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(layer.stats().tunnels_open, 1);
        let mut client = EchoServiceClient::new(first);
        client
            .unary(EchoRequest::default())
            .await
            .expect("first tunnel fine");
    })
    .await
}

#[tokio::test]
async fn registry_refuses_reverse_tunnels_beyond_its_limits() {
    bounded(async {
        let registry = keyed_registry().with_limits(2, 1);
        let server = tonic_server(TunnelLayer::new().reverse(registry.clone()), Echo::new()).await;
        let agent = |key: &str| {
            ReverseTunnelServer::new(Routes::new(Echo::new().server())).metadata("x-agent-key", key)
        };
        let a = agent("a");
        let transport = connect(server.addr).await;
        let _a = tokio::spawn(async move { a.serve(transport).await });
        registry.wait_for(Some(&"a".to_owned())).await;

        let err = agent("a")
            .serve(connect(server.addr).await)
            .await
            .expect_err("second tunnel for key a");
        assert_eq!(
            err.status().map(|s| s.code()),
            Some(Code::ResourceExhausted),
            "{err:?}"
        );

        let b = agent("b");
        let transport = connect(server.addr).await;
        let _b = tokio::spawn(async move { b.serve(transport).await });
        registry.wait_for(Some(&"b".to_owned())).await;
        let err = agent("c")
            .serve(connect(server.addr).await)
            .await
            .expect_err("third tunnel in all");
        assert_eq!(
            err.status().map(|s| s.code()),
            Some(Code::ResourceExhausted)
        );
        assert_eq!(registry.len(), 2);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_zero_buffering_pauses_reads_and_loses_nothing() {
    bounded(async {
        let layer = TunnelLayer::new()
            .max_revision(Revision::Zero)
            .limits(Limits::new().revision_zero_buffer(64 * 1024));
        let server = tonic_server(layer.clone(), Echo::new()).await;
        let tunnel = TunnelChannel::builder()
            .limits(Limits::new().revision_zero_buffer(64 * 1024))
            .open(connect(server.addr).await)
            .await
            .unwrap();
        assert_eq!(tunnel.revision(), Revision::Zero);
        let mut client = EchoServiceClient::new(tunnel.clone());
        // The handler sleeps before each answer, so it reads slowly while the
        // client pushes far more than the buffer bound.
        let requests: Vec<_> = (0..32u64)
            .map(|seq| EchoRequest {
                payload: grpctunnel_testing::payload(64 * 1024),
                sleep_ms: 5,
                seq,
                ..Default::default()
            })
            .collect();
        let mut answers = client
            .bidi(tokio_stream::iter(requests.clone()))
            .await
            .unwrap()
            .into_inner();
        let side = tokio::spawn({
            let mut client = client.clone();
            async move {
                client
                    .unary(EchoRequest {
                        payload: "side".into(),
                        ..Default::default()
                    })
                    .await
            }
        });
        for req in &requests {
            let resp = answers.message().await.unwrap().expect("every answer");
            assert_eq!(resp.seq, req.seq);
            assert_eq!(resp.payload, req.payload, "payload {} intact", req.seq);
        }
        assert!(answers.message().await.unwrap().is_none());
        let side = tokio::time::timeout(Duration::from_secs(10), side).await;
        assert_eq!(side.unwrap().unwrap().unwrap().into_inner().payload, "side");
        // The server did stop reading for the slow handler (2 MiB sent
        // against a 64 KiB buffer), and lost nothing doing so (above).
        let paused = layer.stats().reads_paused;
        assert!(paused > 0, "the server never paused: {}", layer.stats());
    })
    .await
}
