//! The workloads, run by a client child over any channel (tonic `Channel`,
//! `TunnelChannel`, `ReverseChannel`). The Go peer's `bench-client`
//! implements the same workloads with the same parameters and prints the
//! same `RESULT` keys (interop/roles/bench_client.go).
//!
//! Payload bytes are message payloads (`EchoRequest.payload` /
//! `EchoResponse.payload`), not protobuf or tunnel framing; MB is 10^6
//! bytes. Latencies are per call, from issuing it to its response (unary:
//! the whole call; bidi: one request to its response).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use grpctunnel_testing::pb::EchoRequest;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_stream::wrappers::ReceiverStream;

use crate::calls::{self, client, client_stream_mb_per_s, one_unary, small, status};
pub use crate::calls::{warm_up, Chan};
use crate::{cli::Params, stats};

/// Messages of the push in `mixed`.
pub const PUSH_MESSAGE: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Workload {
    /// Sequential unary calls (100 B): latency percentiles.
    UnarySeq,
    /// `callers` concurrent unary callers (100 B): calls/s and latency.
    UnaryConc,
    /// One server stream of 64 KiB messages: MB/s.
    Stream64k,
    /// One server stream of 1 MiB messages: MB/s.
    Stream1m,
    /// One client stream of 64 KiB messages: MB/s.
    ClientStream,
    /// One bidi stream, 100 B request then its response, in lockstep.
    BidiPingpong,
    /// `streams` concurrent bidi streams: open, one round trip, hold, close.
    ManyStreams,
    /// `unary_conc` while one server stream pushes 1 MiB messages.
    Mixed,
}

impl Workload {
    pub const ALL: [Workload; 8] = [
        Workload::UnarySeq,
        Workload::UnaryConc,
        Workload::Stream64k,
        Workload::Stream1m,
        Workload::ClientStream,
        Workload::BidiPingpong,
        Workload::ManyStreams,
        Workload::Mixed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::UnarySeq => "unary_seq",
            Workload::UnaryConc => "unary_conc",
            Workload::Stream64k => "stream_64k",
            Workload::Stream1m => "stream_1m",
            Workload::ClientStream => "client_stream",
            Workload::BidiPingpong => "bidi_pingpong",
            Workload::ManyStreams => "many_streams",
            Workload::Mixed => "mixed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?}"))
    }
}

/// The `key=value` figures of one workload run (one `RESULT` line).
#[derive(Debug, Default, Clone)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    fn put(&mut self, key: &str, value: f64) {
        self.0.push((key.to_owned(), value));
    }

    fn latencies(&mut self, lat: &mut [u64]) {
        lat.sort_unstable();
        self.put("p50_us", stats::percentile(lat, 0.50) as f64 / 1e3);
        self.put("p90_us", stats::percentile(lat, 0.90) as f64 / 1e3);
        self.put("p99_us", stats::percentile(lat, 0.99) as f64 / 1e3);
        self.put("p999_us", stats::percentile(lat, 0.999) as f64 / 1e3);
        self.put("max_us", stats::percentile(lat, 1.0) as f64 / 1e3);
    }
}

/// Where `many_streams` pauses so that the orchestrator can sample the
/// resident memory of both processes: it prints a line and waits for one
/// on stdin.
pub trait Gate: Send {
    fn sync(&mut self, line: &str) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

pub async fn run<T: Chan>(
    w: Workload,
    ch: &T,
    p: &Params,
    gate: &mut impl Gate,
) -> Result<Metrics, String> {
    match w {
        Workload::UnarySeq => unary_seq(ch, p).await,
        Workload::UnaryConc => {
            let (rate, mut lat) = unary_load(ch, p.callers, p.warmup, p.duration).await?;
            let mut m = Metrics::default();
            m.put("calls_per_s", rate);
            m.latencies(&mut lat);
            Ok(m)
        }
        Workload::Stream64k => server_stream(ch, 64 * 1024, p).await,
        Workload::Stream1m => server_stream(ch, 1024 * 1024, p).await,
        Workload::ClientStream => client_stream(ch, p).await,
        Workload::BidiPingpong => bidi_pingpong(ch, p).await,
        Workload::ManyStreams => many_streams(ch, p.streams, p.open_window, gate).await,
        Workload::Mixed => mixed(ch, p).await,
    }
}

async fn unary_seq<T: Chan>(ch: &T, p: &Params) -> Result<Metrics, String> {
    let mut c = client(ch);
    let req = small();
    for _ in 0..(p.calls / 10).clamp(100, 2000) {
        one_unary(&mut c, &req).await?;
    }
    let mut lat = Vec::with_capacity(p.calls);
    let start = Instant::now();
    for _ in 0..p.calls {
        let t = Instant::now();
        one_unary(&mut c, &req).await?;
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let total = start.elapsed();
    let mut m = Metrics::default();
    m.latencies(&mut lat);
    m.put("calls_per_s", p.calls as f64 / total.as_secs_f64());
    Ok(m)
}

/// `callers` concurrent loops of unary calls: calls completed per second
/// within the measured window, and their latencies (nanoseconds).
async fn unary_load<T: Chan>(
    ch: &T,
    callers: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<(f64, Vec<u64>), String> {
    let start = Instant::now() + Duration::from_millis(5);
    let from = start + warmup;
    let until = from + duration;
    let mut tasks = Vec::with_capacity(callers);
    for _ in 0..callers {
        let mut c = client(ch);
        tasks.push(tokio::spawn(async move {
            let req = small();
            let mut lat = Vec::new();
            tokio::time::sleep_until(start.into()).await;
            loop {
                let t = Instant::now();
                if t >= until {
                    break;
                }
                one_unary(&mut c, &req).await?;
                let done = Instant::now();
                if t >= from && done <= until {
                    lat.push((done - t).as_nanos() as u64);
                }
            }
            Ok::<_, String>(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.map_err(|e| format!("caller task: {e}"))??);
    }
    let rate = all.len() as f64 / duration.as_secs_f64();
    Ok((rate, all))
}

/// Reads a server stream of `size`-byte messages for `warmup`, then
/// measures `duration` of it; cancels it at the end.
async fn server_stream<T: Chan>(ch: &T, size: u32, p: &Params) -> Result<Metrics, String> {
    let mut c = client(ch);
    let req = EchoRequest {
        response_size: size,
        repeat: u32::MAX,
        ..Default::default()
    };
    let mut s = c
        .server_stream(req)
        .await
        .map_err(status("server_stream"))?
        .into_inner();
    let warm_until = Instant::now() + p.warmup;
    let mut from = None;
    let mut bytes = 0u64;
    let mut msgs = 0u64;
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
                msgs += 1;
                if last - from >= p.duration {
                    break;
                }
            }
        }
    }
    drop(s);
    let secs = (last - from.expect("measured")).as_secs_f64();
    let mut m = Metrics::default();
    m.put("mb_per_s", bytes as f64 / secs / 1e6);
    m.put("msgs_per_s", msgs as f64 / secs);
    Ok(m)
}

async fn client_stream<T: Chan>(ch: &T, p: &Params) -> Result<Metrics, String> {
    let mut m = Metrics::default();
    m.put(
        "mb_per_s",
        client_stream_mb_per_s(ch, p.warmup, p.duration).await?,
    );
    Ok(m)
}

async fn bidi_pingpong<T: Chan>(ch: &T, p: &Params) -> Result<Metrics, String> {
    let mut lat = calls::bidi_pingpong(ch, p.warmup, p.duration).await?;
    let mut m = Metrics::default();
    m.put(
        "round_trips_per_s",
        lat.len() as f64 / p.duration.as_secs_f64(),
    );
    m.latencies(&mut lat);
    Ok(m)
}

/// Opens `n` bidi streams, one round trip on each, with at most
/// `open_window` (0: no limit) between opening and their response; holds
/// all `n` open (idle) while the orchestrator samples memory; then
/// half-closes them all, again at most `open_window` at a time, and waits
/// for their ends.
///
/// The window exists because h2 0.4.20 (under hyper and tonic) ends a
/// connection with GOAWAY ENHANCE_YOUR_CALM `too_many_data_frames` when
/// small DATA frames worth more than half the connection window (512 KiB
/// with the 1 MiB default) wait unread: 10,000 streams opened at once by
/// plain tonic trip it (each request is its own small DATA frame), and so
/// do 10,000 opens or half-closes at once by a Go tunnel client, which
/// writes every tunnel frame as its own DATA frame on the opening RPC.
async fn many_streams<T: Chan>(
    ch: &T,
    n: usize,
    open_window: usize,
    gate: &mut impl Gate,
) -> Result<Metrics, String> {
    gate.sync("READY many_streams").await?;
    let (release, released) = watch::channel(false);
    let (pinged, mut pings) = mpsc::unbounded_channel::<Result<(), String>>();
    // At most `open_window` streams between opening and their round trip.
    let window = Arc::new(Semaphore::new(if open_window == 0 {
        Semaphore::MAX_PERMITS
    } else {
        open_window
    }));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = client(ch);
        let pinged = pinged.clone();
        let mut released = released.clone();
        let window = window.clone();
        tasks.push(tokio::spawn(async move {
            let run = async {
                let _permit = window.acquire().await.map_err(|_| "window closed")?;
                let (tx, rx) = mpsc::channel(1);
                tx.send(small()).await.map_err(|_| "request stream gone")?;
                let mut inbound = c
                    .bidi(ReceiverStream::new(rx))
                    .await
                    .map_err(status("open"))?
                    .into_inner();
                inbound
                    .message()
                    .await
                    .map_err(status("ping"))?
                    .ok_or("stream ended before its response")?;
                Ok::<_, String>((tx, inbound))
            };
            let (tx, mut inbound) = match run.await {
                Ok(open) => {
                    let _ = pinged.send(Ok(()));
                    open
                }
                Err(e) => {
                    let _ = pinged.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let _ = released.wait_for(|r| *r).await;
            let _permit = window.acquire().await.map_err(|_| "window closed")?;
            drop(tx);
            while inbound.message().await.map_err(status("close"))?.is_some() {}
            Ok::<_, String>(())
        }));
    }
    drop(pinged);
    for _ in 0..n {
        match pings.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err("stream tasks ended".into()),
        }
    }
    let open_ping = start.elapsed();
    gate.sync("HOLD many_streams").await?;
    let closing = Instant::now();
    let _ = release.send(true);
    for t in tasks {
        t.await.map_err(|e| format!("stream task: {e}"))??;
    }
    let close = closing.elapsed();
    let mut m = Metrics::default();
    m.put("streams", n as f64);
    m.put("open_ping_ms", open_ping.as_secs_f64() * 1e3);
    m.put("close_ms", close.as_secs_f64() * 1e3);
    Ok(m)
}

/// `unary_conc` while one server stream pushes 1 MiB messages as fast as
/// it is read.
async fn mixed<T: Chan>(ch: &T, p: &Params) -> Result<Metrics, String> {
    let mut c = client(ch);
    let req = EchoRequest {
        response_size: PUSH_MESSAGE as u32,
        repeat: u32::MAX,
        ..Default::default()
    };
    let mut s = c
        .server_stream(req)
        .await
        .map_err(status("push"))?
        .into_inner();
    // The push is flowing before the callers start.
    s.message().await.map_err(status("push"))?;
    let (stop, mut stopped) = watch::channel(false);
    let pushed = Arc::new(std::sync::Mutex::new((0u64, Duration::ZERO)));
    let push = tokio::spawn({
        let pushed = pushed.clone();
        async move {
            let start = Instant::now();
            loop {
                tokio::select! {
                    m = s.message() => match m {
                        Ok(Some(m)) => {
                            let mut p = pushed.lock().expect("push counter");
                            p.0 += m.payload.len() as u64;
                            p.1 = start.elapsed();
                        }
                        Ok(None) => return Err("push ended early".to_owned()),
                        Err(e) => return Err(status("push")(e)),
                    },
                    _ = stopped.changed() => return Ok(()),
                }
            }
        }
    });
    let load = unary_load(ch, p.callers, p.warmup, p.duration).await;
    let _ = stop.send(true);
    push.await.map_err(|e| format!("push task: {e}"))??;
    let (rate, mut lat) = load?;
    let (bytes, took) = *pushed.lock().expect("push counter");
    let mut m = Metrics::default();
    m.put("calls_per_s", rate);
    m.latencies(&mut lat);
    m.put(
        "push_mb_per_s",
        bytes as f64 / took.as_secs_f64().max(1e-9) / 1e6,
    );
    Ok(m)
}
