//! The `proxies` reference setup: what any two chained HTTP/2 proxies cost
//! on this machine, to set the gateway's figures against. Each proxy is
//! this bench binary re-executed (`--role proxy --target ADDR`): a tonic
//! server with default settings whose only route is a tonic `Channel` to
//! the target, passing every call through untouched (no decoding). The
//! caller calls proxy 1, which calls proxy 2, which calls the upstream:
//! the same processes and HTTP/2 hops as hub and agent, minus the tunnel.

use std::{io::Write as _, process::ExitCode};

use tower::ServiceExt;

use crate::{
    proc::Child,
    setups::{strings, LIMIT},
};

/// Child: a transparent proxy to `target` (`host:port`).
pub fn proxy_role(target: &str) -> ExitCode {
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench proxy: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let channel = match tonic::transport::Endpoint::from_shared(format!("http://{target}")) {
            Ok(endpoint) => endpoint.connect_lazy(),
            Err(e) => {
                eprintln!("bench proxy: {target}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("bench proxy: listen: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("bench proxy: {e}");
                return ExitCode::FAILURE;
            }
        };
        {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "LISTENING {addr}");
            let _ = out.flush();
        }
        std::thread::spawn(|| {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            std::process::exit(0);
        });
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
        let served = tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            )
            .await;
        match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench proxy: {e}");
                ExitCode::FAILURE
            }
        }
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
