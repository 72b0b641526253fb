//! The call workloads, run by this process over every setup's channel.
//! They follow `benches/tunnel/workloads.rs` (`unary_seq`, `unary_conc`,
//! `stream_1m`, `client_stream`, `bidi_pingpong`, the last two shared
//! through `calls.rs`) so that the figures compare with that bench's.
//!
//! Payload bytes are message payloads (`EchoRequest.payload` /
//! `EchoResponse.payload`), not protobuf or HTTP/2 framing; MB is 10^6
//! bytes. A unary latency runs from issuing the call to its response.

use std::time::{Duration, Instant};

use grpctunnel_testing::pb::EchoRequest;

pub use crate::calls::{bidi_pingpong, client_stream_mb_per_s, warm_up, Chan};
use crate::calls::{client, one_unary, small, status};
use crate::stats;

/// Messages of the server stream.
pub const STREAM_MESSAGE: u32 = 1024 * 1024;

/// Latency of sequential unary calls, microseconds, and how many calls
/// were made in all (the unmeasured lead-in too).
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub calls: u64,
}

/// `calls` sequential unary calls of 100 B after `calls / 10` (100..2000)
/// unmeasured ones: p50 and p99 (nearest rank).
pub async fn unary_seq<T: Chan>(ch: &T, calls: usize) -> Result<Latency, String> {
    let mut c = client(ch);
    let req = small();
    let lead_in = (calls / 10).clamp(100, 2000);
    for _ in 0..lead_in {
        one_unary(&mut c, &req).await?;
    }
    let mut lat = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        one_unary(&mut c, &req).await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    lat.sort_unstable();
    Ok(Latency {
        p50_us: stats::percentile(&lat, 0.50) as f64 / 1e3,
        p99_us: stats::percentile(&lat, 0.99) as f64 / 1e3,
        calls: (lead_in + calls) as u64,
    })
}

/// `callers` concurrent loops of 100 B unary calls on one channel: calls
/// completed per second within the measured window (`duration` after
/// `warmup`; a call counts when it started and ended inside the window),
/// and every call completed, warm-up included.
pub async fn unary_conc<T: Chan>(
    ch: &T,
    callers: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(f64, u64), String> {
    let start = Instant::now() + Duration::from_millis(5);
    let from = start + warmup;
    let until = from + duration;
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let mut c = client(ch);
        tasks.push(tokio::spawn(async move {
            let req = small();
            let (mut done_in_window, mut done) = (0u64, 0u64);
            tokio::time::sleep_until(start.into()).await;
            loop {
                let t = Instant::now();
                if t >= until {
                    break;
                }
                one_unary(&mut c, &req).await?;
                done += 1;
                if t >= from && Instant::now() <= until {
                    done_in_window += 1;
                }
            }
            Ok::<_, String>((done_in_window, done))
        }));
    }
    let (mut in_window, mut total) = (0, 0);
    for t in tasks {
        let (w, d) = t.await.map_err(|e| format!("caller task: {e}"))??;
        in_window += w;
        total += d;
    }
    Ok((in_window as f64 / duration.as_secs_f64(), total))
}

/// Reads one server stream of 1 MiB messages for `warmup`, then measures
/// `duration` of it: payload MB/s. The stream is cancelled at the end.
pub async fn stream_1m<T: Chan>(
    ch: &T,
    warmup: Duration,
    duration: Duration,
) -> Result<f64, String> {
    let mut c = client(ch);
    let req = EchoRequest {
        response_size: STREAM_MESSAGE,
        repeat: u32::MAX,
        ..Default::default()
    };
    let mut s = c
        .server_stream(req)
        .await
        .map_err(status("server_stream"))?
        .into_inner();
    let warm_until = Instant::now() + warmup;
    let mut from = None;
    let mut bytes = 0u64;
    let mut last;
    loop {
        let m = s
            .message()
            .await
            .map_err(status("server_stream"))?
            .ok_or("server_stream ended early")?;
        last = Instant::now();
        match from {
            None if last >= warm_until => from = Some(last),
            None => {}
            Some(from) => {
                bytes += m.payload.len() as u64;
                if last - from >= duration {
                    break;
                }
            }
        }
    }
    drop(s);
    let secs = (last - from.expect("measured")).as_secs_f64();
    Ok(bytes as f64 / secs / 1e6)
}
