//! The `proxies` reference setup: what any two chained HTTP/2 proxies cost
//! on this machine, to set the gateway's figures against. Each proxy is
//! this bench binary re-executed (`--role proxy --target ADDR`): a tonic
//! server with default settings whose only route is a tonic `Channel` to
//! the target, passing every call through untouched (no decoding). The
//! caller calls proxy 1, which calls proxy 2, which calls the upstream:
//! the same processes and HTTP/2 hops as hub and agent, minus the tunnel.

use std::process::ExitCode;

use tower::ServiceExt;

use crate::{
    proc::Child,
    setups::{announce, child_role, strings, LIMIT},
};

/// Child: a transparent proxy to `target` (`host:port`).
pub fn proxy_role(target: &str) -> ExitCode {
    child_role("proxy", || async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| format!("{target}: {e}"))?
            .connect_lazy();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("listen: {e}"))?;
        announce(listener.local_addr().map_err(|e| e.to_string())?);
        let pass = tower::service_fn(move |req: http::Request<axum::body::Body>| {
            let call = channel.clone().oneshot(req.map(tonic::body::Body::new));
            async move {
                Ok::<_, std::convert::Infallible>(match call.await {
                    Ok(resp) => resp.map(axum::body::Body::new),
                    Err(e) => tonic::Status::unavailable(format!("proxy: {e}"))
                        .into_http::<axum::body::Body>(),
                })
            }
        });
        let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(pass));
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await
            .map_err(|e| e.to_string())
    })
}

/// Starts a proxy to `target`; returns it and its address.
pub fn start_proxy(target: &str) -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut child = Child::spawn(
        "proxy",
        &exe,
        &strings(&["--role", "proxy", "--target", target]),
    )?;
    let addr = child.expect("LISTENING ", LIMIT)?;
    Ok((child, addr))
}
