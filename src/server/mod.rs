//! The tunnel server: answers calls that arrive through tunnels.
//!
//! [`TunnelLayer`] adds `grpctunnel.v1.TunnelService` to a tonic server or
//! an axum router; each tunneled call is dispatched, as an ordinary
//! `http::Request` with a [`RequestBody`], to the service it wraps.
//!
//! # Example
//!
//! ```
//! use grpctunnel::TunnelLayer;
//! use tonic::transport::Server;
//!
//! # fn example(addr: std::net::SocketAddr) {
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let layer = TunnelLayer::new();
//! let stats = layer.clone(); // clones share the counters: `stats.stats()`
//! let server = Server::builder()
//!     .layer(layer)
//!     .add_service(health) // reachable directly and through tunnels
//!     .serve(addr);
//! # drop(server); }
//! ```
//!
//! To serve a different set of services through tunnels than over plain
//! connections, give them to [`TunnelLayer::tunnel_service`]; to mount the
//! tunnel service by name, use [`TunnelLayer::into_service`] with
//! `add_service`.

mod body;
pub(crate) mod dispatch;
mod future;
mod handler;
mod layer;
mod open;
pub(crate) mod reader;
mod reverse_acceptor;
mod service;

pub use body::{RequestBody, TunnelBody};
pub use future::ResponseFuture;
pub use layer::{TunnelLayer, DEFAULT_MAX_TUNNELS, DEFAULT_SHUTDOWN_GRACE};
#[cfg(feature = "cluster")]
pub(crate) use reverse_acceptor::RELAY_KEY_HEADER;
pub(crate) use reverse_acceptor::{InRelayTunnel, RelayFuture, ReverseAcceptor, RELAY_AUTH_HEADER};
pub use service::{TunnelService, Unimplemented};
