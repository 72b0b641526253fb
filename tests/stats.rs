//! Counters per tunnel and per endpoint.

mod common;

use common::*;
use grpctunnel::TunnelLayer;
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};

#[tokio::test]
async fn calls_are_counted_on_both_ends() {
    bounded(async {
        let layer = TunnelLayer::new();
        let server = tonic_server(layer.clone(), Echo::new()).await;
        let tunnel = forward(server.addr).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        for _ in 0..3 {
            client
                .unary(EchoRequest {
                    payload: vec![7u8; 40_000].into(),
                    ..Default::default()
                })
                .await
                .expect("unary");
        }
        let ours = tunnel.stats();
        assert_eq!(ours.streams_total, 3);
        assert_eq!(ours.messages_sent, 3);
        assert_eq!(ours.messages_received, 3);
        // Each request is the 40 000-byte payload plus its protobuf framing.
        assert!(
            ours.bytes_sent >= 120_000 && ours.bytes_sent < 120_100,
            "{ours}"
        );
        assert!(ours.bytes_received >= 120_000, "{ours}");
        assert_eq!(ours.protocol_errors, 0);

        let theirs = layer.stats();
        assert_eq!(theirs.tunnels_total, 1);
        assert_eq!(theirs.tunnels_open, 1);
        assert_eq!(theirs.streams_total, 3);
        assert_eq!(theirs.messages_received, 3);
        assert_eq!(theirs.bytes_received, ours.bytes_sent);
        assert_eq!(theirs.bytes_sent, ours.bytes_received);
        println!("client: {ours}\nserver: {theirs}");
    })
    .await
}
