//! One axum app, one port: plain HTTP routes, gRPC, and gRPC tunnels.
//!
//! The router serves `GET /` and `GET /healthz` next to the echo gRPC
//! service. The tunnel layer wraps the whole router: `OpenTunnel` is
//! answered by the layer, and every call that arrives through a tunnel is
//! routed by the same router, as if it had come over the connection.
//! (`Router::layer` wraps each route on its own; it works too when the
//! router is also given as `TunnelLayer::tunnel_service`.)
//!
//! The example then calls it three ways (plain HTTP/1.1 over a raw TCP
//! socket, plain gRPC, gRPC through a tunnel), prints what came back and
//! exits 0; it fails if any answer is wrong.
//!
//! Run with `cargo run --example axum`.

use std::{error::Error, net::SocketAddr};

use axum::{routing::get, Router};
use grpctunnel::{TunnelChannel, TunnelInfo, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse},
    Echo,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Endpoint;
use tower::{Layer, ServiceBuilder};

/// Tells the echo handler whether its call came through a tunnel, so that
/// `echo_metadata` reports it.
fn mark_tunneled(mut req: axum::extract::Request) -> axum::extract::Request {
    let via = if req.extensions().get::<TunnelInfo>().is_some() {
        "tunnel"
    } else {
        "direct"
    };
    req.headers_mut()
        .insert("x-via", http::HeaderValue::from_static(via));
    req
}

/// A one-shot HTTP/1.1 GET over a raw TCP socket; returns the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<String, Box<dyn Error>> {
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("GET {path}: {status}").into());
    }
    Ok(body.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // ----- server -----
    let router = Router::new()
        .route("/", get(|| async { "hello from axum" }))
        .route("/healthz", get(|| async { "ok" }))
        .route_service(
            "/grpctunnel.testing.v1.EchoService/{*method}",
            ServiceBuilder::new()
                .map_request(mark_tunneled)
                .service(Echo::new().server()),
        );
    // The layer wraps the whole router (so that tunneled calls reach every
    // route) and answers in axum's own body type.
    let app = TunnelLayer::new().layer(router);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, tower::make::Shared::new(app))
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .await
    });
    println!("axum listening on {addr}");

    // ----- plain HTTP -----
    for path in ["/", "/healthz"] {
        let body = http_get(addr, path).await?;
        println!("GET {path:<9} -> {body:?}");
    }

    // ----- gRPC, directly and through a tunnel -----
    let transport = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let tunnel = TunnelChannel::builder().open(transport.clone()).await?;
    let request = || EchoRequest {
        payload: "ping".into(),
        echo_metadata: true,
        ..Default::default()
    };
    let reply = EchoServiceClient::new(transport)
        .unary(request())
        .await?
        .into_inner();
    report("plain gRPC", &reply, "direct")?;
    let reply = EchoServiceClient::new(tunnel.clone())
        .unary(request())
        .await?
        .into_inner();
    report("tunneled gRPC", &reply, "tunnel")?;

    // ----- shut down -----
    tunnel.close();
    let _ = stop.send(());
    server.await??;
    println!("done");
    Ok(())
}

/// Prints an echo reply and checks which way the handler saw it arrive.
fn report(name: &str, reply: &EchoResponse, want: &str) -> Result<(), Box<dyn Error>> {
    let via = reply
        .metadata
        .iter()
        .find(|e| e.key == "x-via")
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .unwrap_or_default();
    let payload = String::from_utf8_lossy(&reply.payload);
    println!("{name:<13} -> {payload:?}, handler saw the call arrive via {via:?}");
    if via != want {
        return Err(format!("{name}: expected via {want:?}, got {via:?}").into());
    }
    Ok(())
}
