//! The one HTTP/2 configuration every Rust setup uses, so that the ratios
//! against direct tonic compare the tunnel and nothing else.
//!
//! The values are tonic 0.14 / hyper 1 defaults, written out so that they
//! are visible (and stay put if a default changes):
//!
//! | | server (`Server::builder`) | client (`Endpoint`) |
//! |---|---|---|
//! | HTTP/2 stream window | 1 MiB | 2 MiB |
//! | HTTP/2 connection window | 1 MiB | 5 MiB |
//! | adaptive window (BDP) | off | off |
//! | max concurrent streams | unlimited | (the server's) |
//! | TCP_NODELAY | on (set on each accepted socket) | on |
//!
//! HTTP/2's largest frame is h2's default, 16 KiB, unless the environment
//! variable `TUNNEL_BENCH_MAX_FRAME` (bytes; child processes inherit it)
//! sets it on every Rust server and endpoint: see the README's tuning notes.
//! The Go processes keep grpc-go's.
//!
//! Tunnels use the crate's defaults on both ends (`TunnelLayer::new()`,
//! `TunnelChannel::builder()`, `ReverseTunnelServer::new`): a 2 MiB tunnel
//! window per stream and a 4 MiB largest message. Every call goes over one
//! TCP connection: one `tonic::transport::Channel` (whose clones share it)
//! for direct, one tunnel (one HTTP/2 stream on one connection) otherwise.

use std::net::SocketAddr;

use tonic::transport::{server::TcpIncoming, Endpoint, Server};

pub const SERVER_STREAM_WINDOW: u32 = 1024 * 1024;
pub const SERVER_CONN_WINDOW: u32 = 1024 * 1024;
pub const CLIENT_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
pub const CLIENT_CONN_WINDOW: u32 = 5 * 1024 * 1024;

/// Largest message the bench's generated clients encode or decode.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// The largest HTTP/2 frame each Rust end accepts, if not h2's default
/// (`TUNNEL_BENCH_MAX_FRAME`).
pub fn max_frame_size() -> Option<u32> {
    std::env::var("TUNNEL_BENCH_MAX_FRAME")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

/// The server builder of every Rust server (direct, forward, reverse hub).
pub fn server() -> Server {
    Server::builder()
        .initial_stream_window_size(SERVER_STREAM_WINDOW)
        .initial_connection_window_size(SERVER_CONN_WINDOW)
        .http2_adaptive_window(Some(false))
        .max_frame_size(max_frame_size())
        .max_concurrent_streams(None)
        .tcp_nodelay(true)
}

/// A loopback listener on a free port; accepted sockets get TCP_NODELAY
/// (tonic's own `tcp_nodelay` does not apply to `serve_with_incoming`).
pub fn incoming() -> std::io::Result<(TcpIncoming, SocketAddr)> {
    let incoming =
        TcpIncoming::bind("127.0.0.1:0".parse().expect("loopback"))?.with_nodelay(Some(true));
    let addr = incoming.local_addr()?;
    Ok((incoming, addr))
}

/// The endpoint of every Rust client (direct, forward, reverse agent).
pub fn endpoint(addr: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| format!("endpoint {addr}: {e}"))?
        .initial_stream_window_size(CLIENT_STREAM_WINDOW)
        .initial_connection_window_size(CLIENT_CONN_WINDOW)
        .http2_adaptive_window(false)
        .max_frame_size(max_frame_size())
        .tcp_nodelay(true))
}

/// One-line description for the report header.
pub fn describe() -> String {
    format!(
        "HTTP/2 windows: server stream {} KiB / conn {} KiB, client stream {} KiB / conn {} KiB, \
         adaptive off, max frame {} KiB, TCP_NODELAY on, unlimited concurrent streams; tunnels: \
         crate defaults (window {} KiB per stream)",
        SERVER_STREAM_WINDOW / 1024,
        SERVER_CONN_WINDOW / 1024,
        CLIENT_STREAM_WINDOW / 1024,
        CLIENT_CONN_WINDOW / 1024,
        max_frame_size().unwrap_or(16 * 1024) / 1024,
        grpctunnel::DEFAULT_INITIAL_WINDOW_SIZE / 1024,
    )
}
