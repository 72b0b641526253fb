//! [`TunnelInfo`]: what a tunneled handler can learn about its tunnel.

use std::{fmt, sync::Arc};

use crate::wire::settings::Revision;

/// Which way a tunnel was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `OpenTunnel`: the network client sends the tunneled calls.
    Forward,
    /// `OpenReverseTunnel`: the network server sends the tunneled calls.
    Reverse,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        })
    }
}

/// Request extension on every call dispatched through a tunnel.
///
/// Besides this, the tunnel server copies every request extension of the
/// opening RPC into each tunneled request (remote address, TLS peer
/// certificates, whatever an auth layer inserted), so a handler can read them
/// as if the call had come over the connection itself. Request *metadata* is
/// not merged: the tunneled call's headers are its own, and the opening RPC's
/// metadata is here, in [`TunnelInfo::tunnel_metadata`].
///
/// ```
/// # use grpctunnel::TunnelInfo;
/// fn who_opened(req: &http::Request<()>) -> Option<String> {
///     let info = req.extensions().get::<TunnelInfo>()?;
///     let agent = info.tunnel_metadata().get("x-agent-id")?;
///     Some(agent.to_str().ok()?.to_owned())
/// }
/// ```
#[derive(Clone)]
pub struct TunnelInfo {
    pub(crate) direction: Direction,
    pub(crate) metadata: Arc<http::HeaderMap>,
    pub(crate) stream_id: i64,
    pub(crate) revision: Revision,
}

impl TunnelInfo {
    /// Forward or reverse.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Request headers of the opening RPC (`OpenTunnel` or
    /// `OpenReverseTunnel`), `grpctunnel-negotiate` included.
    pub fn tunnel_metadata(&self) -> &http::HeaderMap {
        &self.metadata
    }

    /// The stream ID of this call inside the tunnel.
    pub fn stream_id(&self) -> i64 {
        self.stream_id
    }

    /// The protocol revision of this stream.
    pub fn revision(&self) -> Revision {
        self.revision
    }
}

impl fmt::Debug for TunnelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelInfo")
            .field("direction", &self.direction)
            .field("stream_id", &self.stream_id)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}
