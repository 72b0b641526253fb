//! Tunnels opened through tunnels: forward inside forward, and reverse
//! inside forward (as in the Go reference's own tests).

mod common;

use common::*;
use grpctunnel::{reverse::ReverseTunnelRegistry, ReverseTunnelServer, TunnelChannel, TunnelLayer};
use grpctunnel_testing::{
    cases::{run_cases, CaseOptions},
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::Routes, transport::Server};
use tower_layer::Layer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_inside_forward() {
    bounded(async {
        let (listener, addr) = listener().await;
        // Tunneled calls reach a service that itself accepts tunnels.
        let inner = TunnelLayer::new()
            .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE)
            .layer(Routes::new(Echo::new().server()));
        tokio::spawn(
            Server::builder()
                .layer(
                    TunnelLayer::new()
                        .tunnel_service(inner)
                        .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE),
                )
                .add_service(Echo::new().server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let outer = forward(addr).await;
        let nested = TunnelChannel::builder()
            .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE)
            .open(outer.clone())
            .await
            .expect("tunnel through a tunnel");
        let report = run_cases(nested.clone(), &CaseOptions::default()).await;
        println!("{report}");
        assert!(report.is_success(), "{report}");
        // The outer tunnel still carries ordinary calls too.
        let mut client = EchoServiceClient::new(outer);
        client
            .unary(EchoRequest::default())
            .await
            .expect("outer call");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reverse_inside_forward() {
    bounded(async {
        let (listener, addr) = listener().await;
        let registry = ReverseTunnelRegistry::new();
        let inner = TunnelLayer::new()
            .reverse(registry.clone())
            .layer(Routes::new(Echo::new().server()));
        tokio::spawn(
            Server::builder()
                .layer(TunnelLayer::new().tunnel_service(inner))
                .add_service(Echo::new().server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        // The agent opens a forward tunnel, and its reverse tunnel inside it.
        let outer = forward(addr).await;
        let agent = ReverseTunnelServer::new(Routes::new(Echo::new().server()));
        let serving = tokio::spawn(async move { agent.serve(outer).await });
        let tunnel = registry.wait_for(None).await;
        let mut client = EchoServiceClient::new(registry.channel());
        let resp = client
            .unary(EchoRequest {
                payload: "through both".into(),
                ..Default::default()
            })
            .await
            .expect("call through a reverse tunnel inside a forward one");
        assert_eq!(resp.into_inner().payload, "through both");
        tunnel.channel().close();
        serving.await.unwrap().expect("agent ends cleanly");
    })
    .await
}
