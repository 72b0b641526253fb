//! Reverse tunnels: the network server calls its network clients.
//!
//! A network client (an agent behind NAT, a device, an edge process) dials
//! the network server and opens `OpenReverseTunnel` with a
//! [`ReverseTunnelServer`]; the network server accepts it with
//! [`TunnelLayer::reverse`](crate::TunnelLayer::reverse), which publishes the
//! tunnel in a [`ReverseTunnelRegistry`]. The application then calls the
//! agents through the registry: any tunnel, or the tunnels of one key, picked
//! round-robin per call.

mod accept;
mod channel;
#[cfg(feature = "cluster")]
pub(crate) mod cluster;
mod keep;
mod opening;
mod outlier;
mod registry;
mod serve;
mod served;
mod wakers;

pub use crate::server::DEFAULT_SHUTDOWN_GRACE;
pub use channel::{ReverseChannel, ReverseResponseFuture};
pub use keep::{Backoff, ConnectionState, KeepConnected};
pub use registry::{
    ReverseTunnel, ReverseTunnelRegistry, TunnelEvent, TunnelEvents, DEFAULT_MAX_REVERSE_TUNNELS,
    DEFAULT_MAX_REVERSE_TUNNELS_PER_KEY,
};
pub use serve::ReverseTunnelServer;
pub use served::ServedBy;
