//! End-to-end demo on loopback: a tonic server with `TunnelLayer`, and a
//! client that opens one forward tunnel and makes all four kinds of call
//! through it.
//!
//! Run with `cargo run --example demo`.

use std::error::Error;

use grpctunnel::{TunnelChannel, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio_stream::{wrappers::TcpListenerStream, StreamExt};
use tonic::transport::{Endpoint, Server};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The network server: an ordinary tonic server plus one layer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .layer(TunnelLayer::new())
            .add_service(Echo::new().server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            }),
    );
    println!("server listening on {addr}");

    // The network client: one HTTP/2 connection, one tunnel over it.
    let transport = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let tunnel = TunnelChannel::builder().open(transport).await?;
    println!(
        "forward tunnel open (protocol revision {})",
        tunnel.revision()
    );
    let mut echo = EchoServiceClient::new(tunnel.clone());

    let reply = echo
        .unary(EchoRequest {
            payload: "hello through the tunnel".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "unary:            {:?}",
        String::from_utf8_lossy(&reply.payload)
    );

    let requests = tokio_stream::iter((1..=5).map(|seq| EchoRequest {
        payload: vec![0u8; 1000 * seq as usize].into(),
        seq,
        ..Default::default()
    }));
    let reply = echo.client_stream(requests).await?.into_inner();
    println!(
        "client streaming: server got {} messages, {} bytes",
        reply.count, reply.total_bytes
    );

    let mut responses = echo
        .server_stream(EchoRequest {
            response_size: 100_000,
            repeat: 4,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut sizes = Vec::new();
    while let Some(resp) = responses.next().await {
        sizes.push(resp?.payload.len());
    }
    println!(
        "server streaming: got {} messages of {:?} bytes",
        sizes.len(),
        sizes
    );

    let requests = tokio_stream::iter((1..=3).map(|seq| EchoRequest {
        payload: format!("ping {seq}").into(),
        seq,
        ..Default::default()
    }));
    let mut responses = echo.bidi(requests).await?.into_inner();
    let mut answers = Vec::new();
    while let Some(resp) = responses.next().await {
        answers.push(String::from_utf8_lossy(&resp?.payload).into_owned());
    }
    println!("bidi streaming:   {answers:?}");

    tunnel.close();
    let _ = stop.send(());
    server.await??;
    println!("done");
    Ok(())
}
