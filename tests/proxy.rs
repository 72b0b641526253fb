//! The tunnel as a transparent proxy: the service behind a tunnel endpoint
//! forwards every call to an upstream server (here with a tonic `Channel`,
//! as a gateway does), and what the caller does reaches the upstream as
//! HTTP/2 says it: a cancelled call is a `RST_STREAM(CANCEL)`.

mod common;

use std::time::Duration;

use common::*;
use grpctunnel::TunnelLayer;
use grpctunnel_testing::Echo;
use tokio::sync::{mpsc, oneshot};

/// An HTTP/2 server that answers any request with gRPC response headers,
/// then reads the request body until it ends; sends how it ended (`None`
/// for a clean end, else the reset's reason).
async fn watching_upstream() -> (
    std::net::SocketAddr,
    oneshot::Receiver<()>,
    oneshot::Receiver<Option<h2::Reason>>,
) {
    let (listener, addr) = listener().await;
    let (answered_tx, answered) = oneshot::channel();
    let (ended_tx, ended) = oneshot::channel();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        let mut conn = h2::server::handshake(socket).await.expect("h2 handshake");
        let (request, mut respond) = conn.accept().await.expect("a request").expect("h2");
        // Keep driving the connection while the request is watched.
        tokio::spawn(async move { while conn.accept().await.is_some() {} });
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .expect("response");
        let _send = respond.send_response(response, false).expect("headers");
        let _ = answered_tx.send(());
        let mut body = request.into_body();
        let end = loop {
            match body.data().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e.reason(),
                None => break None,
            }
        };
        let _ = ended_tx.send(end);
    });
    (addr, answered, ended)
}

#[tokio::test]
async fn a_cancelled_call_resets_the_upstream_stream_with_cancel() {
    bounded(async {
        let (upstream, answered, ended) = watching_upstream().await;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{upstream}"))
            .expect("endpoint")
            .connect_lazy();
        let proxy = tower::service_fn(move |req: http::Request<tonic::body::Body>| {
            let channel = channel.clone();
            async move { tower::ServiceExt::oneshot(channel, req).await }
        });
        let server = tonic_server(TunnelLayer::new().tunnel_service(proxy), Echo::new()).await;
        let tunnel = forward(server.addr).await;

        // A client-streaming call whose request stream stays open.
        let (_keep_open, requests) = mpsc::channel::<grpctunnel_testing::pb::EchoRequest>(1);
        let mut grpc = tonic::client::Grpc::new(tunnel.clone());
        grpc.ready().await.expect("ready");
        let call = tokio::spawn(async move {
            grpc.client_streaming::<_, grpctunnel_testing::pb::EchoRequest, grpctunnel_testing::pb::EchoResponse, _>(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(requests)),
                "/grpctunnel.testing.v1.EchoService/ClientStream".parse().expect("path"),
                tonic_prost::ProstCodec::default(),
            )
            .await
        });
        answered.await.expect("the upstream got the call");
        // The caller gives up: the tunnel sends `cancel`.
        call.abort();
        let end = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the upstream saw the end")
            .expect("upstream task");
        assert_eq!(end, Some(h2::Reason::CANCEL));
        tunnel.close();
        server.stop().await;
    })
    .await
}
