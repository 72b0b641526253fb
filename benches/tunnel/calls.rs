//! What both benchmarks' workloads (`tunnel`, and the gateway's, which
//! includes this file) call with: the channel they drive, the client, the
//! 100 B request, and the warm-up.

use bytes::Bytes;
use grpctunnel_testing::pb::{echo_service_client::EchoServiceClient, EchoRequest};
use tonic::codegen::StdError;

use crate::config::MAX_MESSAGE;

/// Payload of unary calls and bidi pings.
pub const SMALL: usize = 100;

/// A channel the workloads can drive: what a generated tonic client
/// accepts, plus `Send`/`Clone` to be shared by spawned callers.
pub trait Chan:
    tonic::client::GrpcService<
        tonic::body::Body,
        Error: Into<StdError>,
        Future: Send,
        ResponseBody: http_body::Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Chan for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Error: Into<StdError>,
            Future: Send,
            ResponseBody: http_body::Body<Data = Bytes, Error: Into<StdError> + Send>
                              + Send
                              + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

pub fn client<T: Chan>(ch: &T) -> EchoServiceClient<T> {
    EchoServiceClient::new(ch.clone())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

pub fn small() -> EchoRequest {
    EchoRequest {
        payload: grpctunnel_testing::payload(SMALL),
        ..Default::default()
    }
}

pub fn status(what: &str) -> impl Fn(tonic::Status) -> String + '_ {
    move |s| format!("{what}: {:?} {}", s.code(), s.message())
}

pub async fn one_unary<T: Chan>(
    c: &mut EchoServiceClient<T>,
    req: &EchoRequest,
) -> Result<(), String> {
    let resp = c.unary(req.clone()).await.map_err(status("unary"))?;
    if resp.get_ref().payload.len() != req.payload.len() {
        return Err(format!(
            "unary: {} bytes back, sent {}",
            resp.get_ref().payload.len(),
            req.payload.len()
        ));
    }
    Ok(())
}

/// A few calls so that connections, tunnels and allocators are warm.
pub async fn warm_up<T: Chan>(ch: &T) -> Result<(), String> {
    let mut c = client(ch);
    let req = small();
    for _ in 0..200 {
        one_unary(&mut c, &req).await?;
    }
    Ok(())
}
