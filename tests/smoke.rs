mod common;

use common::*;
use grpctunnel::TunnelLayer;
use grpctunnel_testing::{pb::echo_service_client::EchoServiceClient, pb::EchoRequest, Echo};

#[tokio::test]
async fn unary_through_forward_tunnel() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let tunnel = forward(server.addr).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let resp = client
            .unary(EchoRequest {
                payload: "hello".into(),
                seq: 7,
                ..Default::default()
            })
            .await
            .expect("unary");
        assert_eq!(resp.get_ref().payload, "hello");
        assert_eq!(resp.get_ref().seq, 7);
    })
    .await
}
