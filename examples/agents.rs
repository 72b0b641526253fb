//! Several agents behind one server: each agent dials in and keeps a
//! reverse tunnel open; the server calls them by key; one agent's tunnel
//! drops and the agent reconnects on its own.
//!
//! Run with `cargo run --example agents`.

use std::{error::Error, time::Duration};

use grpctunnel::{
    reverse::{Backoff, ReverseTunnelRegistry},
    ReverseTunnelServer, TunnelEvent, TunnelLayer,
};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio_stream::{wrappers::TcpListenerStream, StreamExt};
use tonic::{
    service::Routes,
    transport::{Endpoint, Server},
};

const AGENTS: [&str; 3] = ["berlin", "lima", "osaka"];

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // The hub: keys tunnels by the agent's `x-agent-id` header.
    let registry = ReverseTunnelRegistry::with_key(|headers, _| {
        headers
            .get("x-agent-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("anonymous")
            .to_owned()
    });
    let mut events = registry.subscribe();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(
        Server::builder()
            .layer(TunnelLayer::new().reverse(registry.clone()))
            .add_service(Echo::new().server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    println!("hub listening on {addr}");

    // The agents: each keeps a reverse tunnel open, reconnecting with backoff.
    let mut agents = Vec::new();
    for name in AGENTS {
        let transport = Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
        let agent = ReverseTunnelServer::new(Routes::new(Echo::new().server()))
            .metadata("x-agent-id", name);
        let backoff = Backoff {
            initial: Duration::from_millis(50),
            ..Backoff::default()
        };
        agents.push((name, agent.keep_connected_with(transport, backoff)));
    }
    let mut opened = 0;
    while opened < AGENTS.len() {
        if let Some(TunnelEvent::Opened(t)) = events.next().await {
            println!(
                "hub: agent {:?} connected from {:?}",
                t.key(),
                t.remote_addr()
            );
            opened += 1;
        }
    }

    // Calls routed by key.
    for name in AGENTS {
        let mut client = EchoServiceClient::new(registry.get(&name.to_owned()));
        let reply = client
            .unary(EchoRequest {
                payload: format!("hello {name}").into(),
                ..Default::default()
            })
            .await?
            .into_inner();
        println!(
            "hub -> {name}: {:?}",
            String::from_utf8_lossy(&reply.payload)
        );
    }

    // The lima tunnel drops (here: the hub closes it). The agent notices and
    // reconnects; calls that wait for a tunnel are answered once it is back.
    let lima = registry
        .tunnels_for(&"lima".to_owned())
        .pop()
        .ok_or("lima is connected")?;
    lima.channel().close();
    loop {
        match events.next().await {
            Some(TunnelEvent::Closed(t)) => println!("hub: agent {:?} disconnected", t.key()),
            Some(TunnelEvent::Opened(t)) => {
                println!("hub: agent {:?} reconnected", t.key());
                break;
            }
            _ => {}
        }
    }
    let mut client = EchoServiceClient::new(registry.get(&"lima".to_owned()).wait_for_ready(true));
    let mut request = tonic::Request::new(EchoRequest {
        payload: "welcome back".into(),
        ..Default::default()
    });
    request.set_timeout(Duration::from_secs(5));
    let reply = client.unary(request).await?.into_inner();
    println!("hub -> lima: {:?}", String::from_utf8_lossy(&reply.payload));

    for (name, agent) in agents {
        let state = agent.shutdown().await;
        println!(
            "{name}: {} attempt(s), {} tunnel(s) opened",
            state.attempts, state.tunnels_opened
        );
    }
    println!("tunnels left: {}", registry.len());
    Ok(())
}
