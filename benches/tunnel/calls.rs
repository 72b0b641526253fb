//! What both benchmarks' workloads (`tunnel`, and the gateway's, which
//! includes this file) call with: the channel they drive, the client, the
//! 100 B request, the warm-up, and the client stream and bidi ping-pong
//! loops both measure.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use grpctunnel_testing::pb::{echo_service_client::EchoServiceClient, EchoRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::StdError;

use crate::config::MAX_MESSAGE;

/// Payload of unary calls and bidi pings.
pub const SMALL: usize = 100;
/// Messages of `client_stream`.
pub const CLIENT_STREAM_MESSAGE: usize = 64 * 1024;

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

/// One client stream of 64 KiB messages for `d`; returns the bytes the
/// server counted and the time to its response.
async fn one_client_stream<T: Chan>(ch: &T, d: Duration) -> Result<(u64, Duration), String> {
    let mut c = client(ch);
    let req = EchoRequest {
        payload: grpctunnel_testing::payload(CLIENT_STREAM_MESSAGE),
        ..Default::default()
    };
    let start = Instant::now();
    let end = start + d;
    let input = futures_util::stream::repeat(req)
        .take_while(move |_| std::future::ready(Instant::now() < end));
    let resp = c
        .client_stream(input)
        .await
        .map_err(status("client_stream"))?;
    Ok((resp.get_ref().total_bytes, start.elapsed()))
}

/// A client stream of 64 KiB messages for `warmup` (unmeasured, when not
/// zero), then another for `duration`: payload MB/s the server counted,
/// up to its response.
pub async fn client_stream_mb_per_s<T: Chan>(
    ch: &T,
    warmup: Duration,
    duration: Duration,
) -> Result<f64, String> {
    if !warmup.is_zero() {
        one_client_stream(ch, warmup).await?;
    }
    let (bytes, took) = one_client_stream(ch, duration).await?;
    Ok(bytes as f64 / took.as_secs_f64() / 1e6)
}

/// One bidi stream: a 100 B request, then its response, in lockstep, for
/// `warmup` and then `duration`; the measured round trips' latencies
/// (nanoseconds, unsorted). The stream is half-closed and read to its end.
pub async fn bidi_pingpong<T: Chan>(
    ch: &T,
    warmup: Duration,
    duration: Duration,
) -> Result<Vec<u64>, String> {
    let mut c = client(ch);
    let req = small();
    let (tx, rx) = mpsc::channel(1);
    let send = |tx: &mpsc::Sender<EchoRequest>| {
        let tx = tx.clone();
        let req = req.clone();
        async move { tx.send(req).await.map_err(|_| "bidi: request stream gone") }
    };
    send(&tx).await?;
    let mut inbound = c
        .bidi(ReceiverStream::new(rx))
        .await
        .map_err(status("bidi"))?
        .into_inner();
    let mut recv = async || {
        inbound
            .message()
            .await
            .map_err(status("bidi"))?
            .ok_or_else(|| "bidi ended early".to_owned())
            .map(drop)
    };
    recv().await?;
    let from = Instant::now() + warmup;
    let until = from + duration;
    let mut lat = Vec::new();
    loop {
        let t = Instant::now();
        if t >= until {
            break;
        }
        send(&tx).await?;
        recv().await?;
        if t >= from {
            lat.push(t.elapsed().as_nanos() as u64);
        }
    }
    drop(tx);
    while inbound
        .message()
        .await
        .map_err(status("bidi end"))?
        .is_some()
    {}
    Ok(lat)
}
