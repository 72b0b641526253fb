//! Bearer-token auth in front of the tunnel layer, per-call authorization
//! inside it.
//!
//! The server authenticates each *opening RPC* once: a tunnel without a
//! valid token is refused with UNAUTHENTICATED; an accepted one carries the
//! caller's identity, which the tunnel copies into every call it carries.
//! A second layer, on the service that answers tunneled calls, authorizes
//! each *call* by that identity: a denied call fails with PERMISSION_DENIED
//! and the tunnel stays open for the others.
//!
//! Both ends run in this process on 127.0.0.1; the example exits 0 once it
//! has shown each case, and fails if any of them behaves otherwise.
//!
//! Run with `cargo run --example auth`.

use std::error::Error;

use grpctunnel::{TunnelChannel, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use http::{header, Request, Response};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    service::Routes,
    transport::{Endpoint, Server},
    Code, Status,
};
use tower::ServiceBuilder;
use tower_http::auth::AsyncRequireAuthorizationLayer;

/// Who a token belongs to; the auth layer inserts it as a request extension.
#[derive(Clone, Debug)]
struct Identity {
    name: &'static str,
    admin: bool,
}

fn identity_for(token: &str) -> Option<Identity> {
    match token {
        "alice-token" => Some(Identity {
            name: "alice",
            admin: false,
        }),
        "root-token" => Some(Identity {
            name: "root",
            admin: true,
        }),
        _ => None,
    }
}

/// In front of everything: a missing or unknown token gets a real gRPC
/// status (trailers-only, `grpc-status: 16`), not a bare HTTP 401.
async fn authenticate(mut req: Request<Body>) -> Result<Request<Body>, Response<Body>> {
    let identity = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(identity_for);
    match identity {
        Some(identity) => {
            req.extensions_mut().insert(identity);
            Ok(req)
        }
        None => Err(Status::unauthenticated("missing or unknown bearer token").into_http()),
    }
}

/// Inside the tunnel: each call is checked against the identity of the
/// tunnel it came through. Streaming responses are for admins only.
async fn authorize(req: Request<Body>) -> Result<Request<Body>, Response<Body>> {
    let Some(identity) = req.extensions().get::<Identity>() else {
        return Err(Status::unauthenticated("no identity").into_http());
    };
    if req.uri().path().ends_with("/ServerStream") && !identity.admin {
        let msg = format!("{} may not call ServerStream", identity.name);
        return Err(Status::permission_denied(msg).into_http());
    }
    Ok(req)
}

/// Lets the echo handler report who called it (`echo_metadata`).
fn expose_identity(mut req: Request<Body>) -> Request<Body> {
    if let Some(identity) = req.extensions().get::<Identity>() {
        let name = http::HeaderValue::from_static(identity.name);
        req.headers_mut().insert("x-identity", name);
    }
    req
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // ----- server -----
    let tunneled = ServiceBuilder::new()
        .layer(AsyncRequireAuthorizationLayer::new(authorize))
        .map_request(expose_identity)
        .service(Routes::new(Echo::new().server()));
    let shutdown = CancellationToken::new();
    let layer = TunnelLayer::new()
        .tunnel_service(tunneled)
        .shutdown_token(shutdown.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(
        Server::builder()
            .layer(AsyncRequireAuthorizationLayer::new(authenticate))
            .layer(layer)
            .add_service(Echo::new().server())
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    println!("server listening on {addr}");

    // ----- client -----
    let transport = Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;

    // 1. No token: the tunnel is refused.
    match TunnelChannel::builder().open(transport.clone()).await {
        Err(err) if err.status().map(Status::code) == Some(Code::Unauthenticated) => {
            let status = err.status().map(Status::message).unwrap_or_default();
            println!("without a token: refused, UNAUTHENTICATED ({status})");
        }
        Err(err) => return Err(format!("unexpected error: {err:?}").into()),
        Ok(_) => return Err("a tunnel without a token was accepted".into()),
    }

    // 2. With a token: the tunnel opens, and calls carry alice's identity.
    let tunnel = TunnelChannel::builder()
        .metadata("authorization", "Bearer alice-token")
        .open(transport)
        .await?;
    println!("with alice's token: tunnel open");
    let mut client = EchoServiceClient::new(tunnel.clone());
    let reply = client
        .unary(EchoRequest {
            payload: "hello".into(),
            echo_metadata: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    let who = reply
        .metadata
        .iter()
        .find(|e| e.key == "x-identity")
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
        .ok_or("the handler did not see an identity")?;
    println!("  Unary: allowed, the handler saw identity {who:?}");

    // 3. A call alice may not make: denied, the tunnel stays open.
    let denied = match client.server_stream(EchoRequest::default()).await {
        Err(status) => status,
        // Through a tunnel the status may come with the first message.
        Ok(resp) => match resp.into_inner().message().await {
            Err(status) => status,
            Ok(_) => return Err("ServerStream was allowed for alice".into()),
        },
    };
    if denied.code() != Code::PermissionDenied {
        return Err(format!("unexpected status: {denied:?}").into());
    }
    println!(
        "  ServerStream: denied, PERMISSION_DENIED ({})",
        denied.message()
    );
    client.unary(EchoRequest::default()).await?;
    println!(
        "  Unary again: allowed; tunnel closed? {}",
        tunnel.is_closed()
    );
    if tunnel.is_closed() {
        return Err("the tunnel closed after a denied call".into());
    }

    // ----- shut down -----
    tunnel.close();
    shutdown.cancel();
    server.await??;
    println!("done");
    Ok(())
}
