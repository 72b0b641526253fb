//! End-to-end demo on loopback: a tonic server with `TunnelLayer`;
//! a client that opens one forward tunnel and makes all four kinds of call
//! through it; and an "agent" that dials the server and opens a reverse
//! tunnel, through which the server calls the agent by key.
//!
//! Run with `cargo run --example demo`.

use std::error::Error;

use grpctunnel::{ReverseTunnelRegistry, ReverseTunnelServer, TunnelChannel, TunnelLayer};
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
    // Reverse tunnels are keyed by the agent's `x-agent-id` header.
    let registry = ReverseTunnelRegistry::with_key(|headers, _| {
        headers
            .get("x-agent-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("anonymous")
            .to_owned()
    });
    let layer = TunnelLayer::new().reverse(registry.clone());
    let server = tokio::spawn(
        Server::builder()
            .layer(layer.clone())
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

    println!("client counters: {}", tunnel.stats());
    tunnel.close();
    println!("forward tunnel closed");

    // An agent (say, behind NAT) dials the server and serves its own echo
    // service over a reverse tunnel.
    let agent_transport = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let agent = ReverseTunnelServer::new(tonic::service::Routes::new(Echo::new().server()))
        .metadata("x-agent-id", "agent-7");
    let agent_stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn({
        let stop = agent_stop.clone();
        async move {
            agent
                .serve_with_shutdown(agent_transport, stop.cancelled_owned())
                .await
        }
    });
    let reverse = registry.wait_for(Some(&"agent-7".to_owned())).await;
    println!(
        "reverse tunnel from {:?} registered under key {:?} (revision {})",
        reverse.remote_addr(),
        reverse.key(),
        reverse.channel().revision()
    );
    // The server is now the caller: it reaches the agent by key.
    let mut agent_client = EchoServiceClient::new(registry.get(&"agent-7".to_owned()));
    let reply = agent_client
        .unary(EchoRequest {
            payload: "hello, agent".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    println!(
        "server -> agent-7: {:?}",
        String::from_utf8_lossy(&reply.payload)
    );
    let mut pushed = agent_client
        .server_stream(EchoRequest {
            response_size: 10,
            repeat: 3,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut n = 0;
    while let Some(resp) = pushed.next().await {
        resp?;
        n += 1;
    }
    println!("server -> agent-7 (server streaming): {n} replies");
    let mut events = registry.subscribe();
    agent_stop.cancel();
    serving.await??;
    if let Some(grpctunnel::TunnelEvent::Closed(t)) = events.next().await {
        println!("agent {:?} stopped; its tunnel left the registry", t.key());
    }
    println!("tunnels left in the registry: {}", registry.len());
    println!("server counters: {}", layer.stats());

    let _ = stop.send(());
    server.await??;
    println!("done");
    Ok(())
}
