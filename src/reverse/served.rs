//! [`ServedBy`]: where a call through a reverse channel went, in its
//! response's extensions.

use crate::{client::ResponseBody, error::Error};

/// Where a call through a [`ReverseChannel`](crate::ReverseChannel) went: in its response's
/// extensions (`tonic::Response::extensions` for a generated client), for
/// logs and diagnostics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServedBy {
    /// A tunnel of this registry, by its [`id`](crate::reverse::ReverseTunnel::id).
    Tunnel(u64),
    /// Another replica of the cluster, by its advertised URL: the call was
    /// relayed there.
    Replica(String),
}

/// `resp` marked as served by `by`.
pub(crate) fn served(
    resp: Result<http::Response<ResponseBody>, Error>,
    by: ServedBy,
) -> Result<http::Response<ResponseBody>, Error> {
    resp.map(|mut resp| {
        resp.extensions_mut().insert(by);
        resp
    })
}
