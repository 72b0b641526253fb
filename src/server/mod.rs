//! The tunnel server: answers calls that arrive through tunnels.
//!
//! [`TunnelLayer`] adds `grpctunnel.v1.TunnelService` to a tonic server or
//! an axum router; each tunneled call is dispatched, as an ordinary
//! `http::Request` with a [`RequestBody`], to the service it wraps.

mod body;
pub(crate) mod dispatch;
mod future;
mod handler;
mod layer;
mod open;
mod service;
pub(crate) mod tunnel;

pub use body::RequestBody;
pub use future::ResponseFuture;
pub use layer::TunnelLayer;
pub use service::{TunnelService, Unimplemented};
