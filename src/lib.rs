//! gRPC tunnels as tower layers and services.
//!
//! A *tunnel* carries many gRPC calls over one long-lived gRPC stream. This
//! crate speaks the protocol of the Go module `github.com/jhump/grpctunnel`
//! (revisions zero and one, see [`Revision`]) and is wire-compatible with it
//! in every role.
//!
//! ```text
//! Forward (OpenTunnel): the network client is the tunnel client.
//!   app -> TunnelChannel ==[ClientToServer >  < ServerToClient]==> TunnelLayer -> S
//!
//! Reverse (OpenReverseTunnel): the network client is the tunnel server.
//!   S <- ReverseTunnelServer ==[ServerToClient >  < ClientToServer]==> TunnelLayer
//!                                            + ReverseTunnelRegistry -> TunnelChannel <- app
//! ```
//!
//! Terminology: the *network* client and server are the two ends of the
//! opening RPC (who dialled whom); the *tunnel* client sends calls through
//! the tunnel and the *tunnel* server answers them. In a forward tunnel they
//! coincide; in a reverse tunnel the network server becomes the tunnel client,
//! which lets a server call agents that dialled in from behind NAT.
//!
//! # Which type do I need
//!
//! | I want to… | Use |
//! |---|---|
//! | accept tunnels on a tonic server or axum router | [`TunnelLayer`] |
//! | mount the tunnel service by name (`add_service`) | [`TunnelLayer::into_service`] |
//! | send calls through a tunnel I open | [`TunnelChannel::builder`] |
//! | know, in a handler, which tunnel a call came through | [`TunnelInfo`] |
//!
//! # Forward tunnel example
//!
//! The server adds one layer; every service it already has becomes reachable
//! through tunnels. The client opens a tunnel and uses it as the channel of a
//! generated client (here tonic-health's).
//!
//! ```
//! use grpctunnel::{TunnelChannel, TunnelLayer};
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .layer(TunnelLayer::new())
//!         .add_service(health)
//!         .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
//! );
//!
//! let transport = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
//!     .connect()
//!     .await?;
//! let tunnel = TunnelChannel::builder().open(transport).await?;
//! let mut client = HealthClient::new(tunnel.clone());
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//! assert_eq!(reply.into_inner().status, 1); // SERVING
//! tunnel.close();
//! # Ok(()) }
//! ```
//!
//! # Reverse tunnel example
//!
//! An agent dials the hub and serves its services over a reverse tunnel; the
//! hub keeps the tunnel in a registry, by key, and calls the agent through it.
//!
//! ```
//! use grpctunnel::{reverse::ReverseTunnelRegistry, ReverseTunnelServer, TunnelLayer};
//! use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The hub: accepts reverse tunnels, keyed by the agent's `x-agent-id`.
//! let registry = ReverseTunnelRegistry::with_key(|headers, _extensions| {
//!     headers.get("x-agent-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?;
//! # let (_r, hub_health) = tonic_health::server::health_reporter();
//! tokio::spawn(
//!     tonic::transport::Server::builder()
//!         .layer(TunnelLayer::new().reverse(registry.clone()))
//!         .add_service(hub_health)
//!         .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
//! );
//!
//! // The agent: dials the hub and serves its own services through the tunnel.
//! let (_reporter, health) = tonic_health::server::health_reporter();
//! let agent = ReverseTunnelServer::new(tonic::service::Routes::new(health))
//!     .metadata("x-agent-id", "agent-7");
//! let transport = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
//!     .connect()
//!     .await?;
//! let serving = tokio::spawn(async move { agent.serve(transport).await });
//!
//! // The hub calls the agent by key.
//! let tunnel = registry.wait_for(Some(&"agent-7".to_owned())).await;
//! let mut client = HealthClient::new(registry.get(&"agent-7".to_owned()));
//! let reply = client.check(HealthCheckRequest { service: String::new() }).await?;
//! assert_eq!(reply.into_inner().status, 1); // SERVING
//!
//! tunnel.channel().close(); // the agent's `serve` returns Ok
//! serving.await??;
//! # Ok(()) }
//! ```
//!
//! # Authentication and timeouts
//!
//! Tunnels compose with tower middleware like any service:
//!
//! - **Authenticate once, per tunnel**: put an auth layer (a tonic
//!   interceptor, `tower_http`'s auth layers) in front of [`TunnelLayer`].
//!   A rejected `OpenTunnel` fails [`TunnelChannelBuilder::open`] with the
//!   layer's status ([`Error::status`]). Whatever the auth layer inserts into
//!   the request extensions (an identity, say) is copied into every tunneled
//!   request, next to [`TunnelInfo`].
//! - **Authorize per call**: wrap the service that tunneled calls reach
//!   ([`TunnelLayer::tunnel_service`]) in a layer that checks each request;
//!   rejecting one call leaves the tunnel up.
//! - **Client timeouts**: `tonic::Request::set_timeout` is enforced by the
//!   channel (`DEADLINE_EXCEEDED`, and the handler is cancelled) and sent as
//!   `grpc-timeout`, which the tunnel server enforces too; or wrap the
//!   [`TunnelChannel`] in `tower::ServiceBuilder::new().timeout(..)`.
//! - **Server timeouts**: a timeout layer in front of the whole server would
//!   also end the long-lived tunnel RPC; put per-call timeouts inside, on the
//!   tunneled service.
//!
//! # How it is built
//!
//! [`docs::architecture`] shows the layers (a pure wire layer, an engine
//! both roles share, the roles on top) and the path of one call through
//! them; [`docs::protocol`] is the wire protocol as this crate implements
//! it, with the `P-n` requirements the code cites and where the Go
//! reference differs.
//!
//! # Limits and defaults
//!
//! - Receive window per stream (revision one): [`DEFAULT_INITIAL_WINDOW_SIZE`].
//! - Largest received message: [`DEFAULT_MAX_MESSAGE_SIZE`]; larger ones fail
//!   their call with `RESOURCE_EXHAUSTED`.
//! - Messages are cut into chunks of at most 16 KiB; streams take turns chunk
//!   by chunk, so a large message never starves small calls.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(missing_debug_implementations, unreachable_pub)]
#![cfg_attr(not(test), warn(clippy::unwrap_used))]

pub mod pb;

pub mod client;
pub mod docs {
    //! Long-form documentation, also in the repository's `docs/` folder.

    #[doc = include_str!("../docs/ARCHITECTURE.md")]
    pub mod architecture {}

    #[doc = include_str!("../docs/PROTOCOL.md")]
    pub mod protocol {}
}
mod engine;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
#[allow(missing_docs, unreachable_pub)]
pub mod fuzzing;
mod info;
mod limits;
pub mod reverse;
pub mod server;

/// Several replicas, one key space (feature `cluster`): a registry that
/// joins a [`Cluster`](cluster::Cluster) publishes its keys in a shared
/// [`Directory`](cluster::Directory) and relays calls for keys other
/// replicas hold. How it works: the docs of
/// [`ReverseTunnelRegistry::cluster`].
#[cfg(feature = "cluster")]
pub mod cluster {
    pub use crate::reverse::cluster::{
        Cluster, Directory, DirectoryFuture, Entry, RelayTransport, RelayedCalls,
        DEFAULT_RELAY_WINDOW, DEFAULT_TTL,
    };
    #[cfg(feature = "redis")]
    pub use crate::reverse::cluster::{RedisDirectory, RedisOptions};

    /// Header of a call one replica relays to another, and of the tunnel
    /// it relays calls in: a proof of membership in the cluster. The
    /// tunnel layer takes requests carrying it as relays (they never reach
    /// the inner service); a gateway in front should strip it from
    /// callers' calls that reach its own routing.
    pub const RELAY_AUTH_HEADER: &str = crate::server::RELAY_AUTH_HEADER;

    /// Header of a relayed call: the key whose tunnels serve it. Strip it,
    /// as [`RELAY_AUTH_HEADER`], from callers' calls.
    pub const RELAY_KEY_HEADER: &str = crate::server::RELAY_KEY_HEADER;

    /// Header of a relayed call: the advertised URL of the replica that
    /// relayed it, for the receiving replica's logs (see
    /// [`ReverseTunnelRegistry::relayed_through`](crate::ReverseTunnelRegistry::relayed_through));
    /// not part of the proof. Removed before the call reaches an agent.
    pub const RELAY_FROM_HEADER: &str = "grpctunnel-relay-from";
}
mod wire;

pub use client::{TunnelChannel, TunnelChannelBuilder};
pub use engine::stats::{Counters, Stats};
pub use error::{BoxError, Error};
pub use info::{Direction, TunnelInfo};
pub use limits::Limits;
pub use reverse::{ReverseChannel, ReverseTunnelRegistry, ReverseTunnelServer, TunnelEvent};
pub use server::{TunnelLayer, TunnelService};
pub use wire::metadata::BinaryMetadata;
pub use wire::settings::{
    Revision, DEFAULT_INITIAL_WINDOW_SIZE, DEFAULT_MAX_CONCURRENT_STREAMS,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_METADATA_SIZE, DEFAULT_REVISION_ZERO_BUFFER,
};
