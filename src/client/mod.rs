//! The tunnel client: sends calls through a tunnel.
//!
//! [`TunnelChannel`] is the client end of a tunnel as a `tower::Service`:
//! generated clients use it like a `tonic::transport::Channel`. In a forward
//! tunnel the network client builds it with [`TunnelChannel::builder`]; in a
//! reverse tunnel the network server gets one per tunnel from the registry.

mod body;
mod builder;
mod call;
mod channel;
mod future;
pub(crate) mod reader;
pub(crate) mod shared;
mod start;

pub use body::ResponseBody;
pub use builder::TunnelChannelBuilder;
pub use channel::TunnelChannel;
pub use future::ResponseFuture;
pub(crate) use start::start_client;
