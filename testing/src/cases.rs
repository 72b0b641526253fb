//! The case matrix: named client-side checks of the echo service, run over
//! any transport a generated tonic client accepts (a plain
//! `tonic::transport::Channel`, a tunnel channel, ...).
//!
//! Case names are shared with the Go implementation of the same matrix; see
//! [`CASE_NAMES`]. Every case is bounded by [`CaseOptions::case_timeout`], so
//! a hang is a failure, not a stuck test.
//!
//! # Example
//!
//! ```no_run
//! # async fn run(channel: tonic::transport::Channel) {
//! use grpctunnel_testing::{run_cases, CaseOptions};
//! let opts = CaseOptions {
//!     // Plain tonic reports an expired deadline as CANCELLED.
//!     deadline_code: tonic::Code::Cancelled,
//!     ..CaseOptions::default()
//! };
//! let report = run_cases(channel, &opts).await;
//! print!("{report}");
//! assert!(report.is_success());
//! # }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::join_all;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Request, Status, Streaming};

use crate::pb::echo_service_client::EchoServiceClient;
use crate::pb::{CheckRequest, CheckResponse, EchoRequest, EchoResponse, ErrorSpec, MetadataEntry};
use crate::MAX_MESSAGE_SIZE;

/// Returns `Err(format!(..))` from the enclosing function unless `cond`.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}
/// Every case name, in the order [`run_cases`] runs them.
pub const CASE_NAMES: &[&str] = &[
    "unary",
    "unary_empty",
    "client_stream",
    "server_stream",
    "bidi_full_duplex",
    "bidi_half_duplex",
    "metadata_echo",
    "headers_and_trailers",
    "error_with_details",
    "error_streaming",
    "deadline",
    "cancel",
    "sizes",
    "concurrent_100",
    "slow_consumer",
    "unimplemented",
];

/// Message sizes of the `sizes` case.
pub const SIZES: &[usize] = &[
    0,
    1,
    16383,
    16384,
    16385,
    65535,
    65536,
    65537,
    1048576,
    2 * 1048576 + 3,
];

/// Options for [`run_cases`].
#[derive(Debug, Clone)]
pub struct CaseOptions {
    /// The code a caller must get when its deadline expires. Default
    /// DEADLINE_EXCEEDED; plain tonic reports CANCELLED (`Timeout expired`).
    pub deadline_code: Code,
    /// Whether the transport has per-stream flow control; without it the
    /// `slow_consumer` case is skipped. Default `true`.
    pub flow_control: bool,
    /// Bound on each case. Default 20 s.
    pub case_timeout: Duration,
    /// Run only these cases (by name); `None` runs every case.
    pub only: Option<Vec<String>>,
}

impl Default for CaseOptions {
    fn default() -> Self {
        CaseOptions {
            deadline_code: Code::DeadlineExceeded,
            flow_control: true,
            case_timeout: Duration::from_secs(20),
            only: None,
        }
    }
}

/// Outcome of [`run_cases`].
///
/// `Display` writes one `PASS name`, `FAIL name: reason` or
/// `SKIP name: reason` line per case, then `N passed, M failed`.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Cases that ran, in order, with their outcome.
    pub results: Vec<(&'static str, Result<(), String>)>,
    /// Cases that were skipped, with the reason.
    pub skipped: Vec<(&'static str, String)>,
}

impl Report {
    /// Number of cases that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|(_, r)| r.is_ok()).count()
    }

    /// Number of cases that failed.
    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// The failed cases with their reasons.
    pub fn failures(&self) -> Vec<(&'static str, &str)> {
        self.results
            .iter()
            .filter_map(|(name, r)| r.as_ref().err().map(|e| (*name, e.as_str())))
            .collect()
    }

    /// `true` when no case failed.
    pub fn is_success(&self) -> bool {
        self.failed() == 0
    }

    /// The outcome of one case, if it ran.
    pub fn get(&self, name: &str) -> Option<&Result<(), String>> {
        self.results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, result) in &self.results {
            match result {
                Ok(()) => writeln!(f, "PASS {name}")?,
                Err(reason) => writeln!(f, "FAIL {name}: {reason}")?,
            }
        }
        for (name, reason) in &self.skipped {
            writeln!(f, "SKIP {name}: {reason}")?;
        }
        writeln!(f, "{} passed, {} failed", self.passed(), self.failed())
    }
}

/// A generated echo client over `channel`, with 16 MiB message limits both
/// ways.
pub fn client<T>(channel: T) -> EchoServiceClient<T>
where
    T: GrpcService<Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<StdError> + Send,
{
    EchoServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_SIZE)
        .max_encoding_message_size(MAX_MESSAGE_SIZE)
}

/// Runs the case matrix (or the cases in [`CaseOptions::only`]) over
/// `channel`, one case after another, each bounded by
/// [`CaseOptions::case_timeout`].
pub async fn run_cases<T>(channel: T, opts: &CaseOptions) -> Report
where
    T: GrpcService<Body> + Clone + Send + 'static,
    T::Future: Send + 'static,
    T::Error: Into<StdError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<StdError> + Send,
{
    let ctx = Ctx {
        channel: BoxChannel(Box::new(Erased::new(channel))),
        opts: opts.clone(),
    };
    let mut report = Report::default();
    for &name in CASE_NAMES {
        if let Some(only) = &opts.only {
            if !only.iter().any(|n| n == name) {
                continue;
            }
        }
        if name == "slow_consumer" && !opts.flow_control {
            report
                .skipped
                .push((name, "the transport has no flow control".to_owned()));
            continue;
        }
        let result = match tokio::time::timeout(opts.case_timeout, ctx.run(name)).await {
            Ok(result) => result,
            Err(_) => Err(format!("timed out after {:?}", opts.case_timeout)),
        };
        report.results.push((name, result));
    }
    report
}

type CaseResult = Result<(), String>;

struct Ctx {
    channel: BoxChannel,
    opts: CaseOptions,
}

impl Ctx {
    fn client(&self) -> EchoServiceClient<BoxChannel> {
        client(self.channel.clone())
    }

    async fn run(&self, name: &str) -> CaseResult {
        match name {
            "unary" => self.unary().await,
            "unary_empty" => self.unary_empty().await,
            "client_stream" => self.client_stream().await,
            "server_stream" => self.server_stream().await,
            "bidi_full_duplex" => self.bidi_full_duplex().await,
            "bidi_half_duplex" => self.bidi_half_duplex().await,
            "metadata_echo" => self.metadata_echo().await,
            "headers_and_trailers" => self.headers_and_trailers().await,
            "error_with_details" => self.error_with_details().await,
            "error_streaming" => self.error_streaming().await,
            "deadline" => self.deadline().await,
            "cancel" => self.cancel().await,
            "sizes" => self.sizes().await,
            "concurrent_100" => self.concurrent_100().await,
            "slow_consumer" => self.slow_consumer().await,
            "unimplemented" => self.unimplemented().await,
            other => Err(format!("unknown case {other}")),
        }
    }

    async fn unary(&self) -> CaseResult {
        let mut c = self.client();
        let sent = Bytes::from_static(b"hello, tunnel");
        let req = EchoRequest {
            payload: sent.clone(),
            seq: 7,
            ..Default::default()
        };
        let r = c
            .unary(req)
            .await
            .map_err(unexpected("Unary"))?
            .into_inner();
        check_echo("echo", &r, &sent, 7, 1, sent.len() as u64)?;

        let req = EchoRequest {
            payload: Bytes::from_static(b"x"),
            response_size: 300,
            seq: 8,
            ..Default::default()
        };
        let r = c
            .unary(req)
            .await
            .map_err(unexpected("Unary"))?
            .into_inner();
        check_echo("response_size 300", &r, &crate::payload(300), 8, 1, 1)
    }

    async fn unary_empty(&self) -> CaseResult {
        let r = self
            .client()
            .unary(EchoRequest::default())
            .await
            .map_err(unexpected("Unary"))?
            .into_inner();
        check_echo("empty", &r, &[], 0, 1, 0)?;
        ensure!(
            r.metadata.is_empty(),
            "unexpected metadata {:?}",
            r.metadata
        );
        Ok(())
    }

    async fn client_stream(&self) -> CaseResult {
        let mut c = self.client();
        let sizes = [0usize, 10, 100, 1000, 5000];
        let msgs: Vec<EchoRequest> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| EchoRequest {
                payload: seeded(n, i as u8),
                seq: i as u64 + 1,
                ..Default::default()
            })
            .collect();
        let last = msgs[msgs.len() - 1].payload.clone();
        let r = c
            .client_stream(tokio_stream::iter(msgs))
            .await
            .map_err(unexpected("ClientStream"))?
            .into_inner();
        let total = sizes.iter().sum::<usize>() as u64;
        check_echo("five messages", &r, &last, 5, 5, total)?;

        let r = c
            .client_stream(tokio_stream::iter(Vec::<EchoRequest>::new()))
            .await
            .map_err(unexpected("ClientStream (no messages)"))?
            .into_inner();
        check_echo("no messages", &r, &[], 0, 0, 0)
    }

    async fn server_stream(&self) -> CaseResult {
        let mut c = self.client();
        let sent = Bytes::from_static(b"abc");
        let req = EchoRequest {
            payload: sent.clone(),
            repeat: 5,
            seq: 100,
            ..Default::default()
        };
        let stream = c
            .server_stream(req)
            .await
            .map_err(unexpected("ServerStream"))?;
        let got = collect(stream.into_inner()).await?;
        ensure!(got.len() == 5, "got {} responses, want 5", got.len());
        for (i, r) in got.iter().enumerate() {
            check_echo(&format!("response {i}"), r, &sent, 100 + i as u64, 1, 3)?;
        }

        let req = EchoRequest {
            response_size: 1000,
            repeat: 3,
            ..Default::default()
        };
        let stream = c
            .server_stream(req)
            .await
            .map_err(unexpected("ServerStream"))?;
        let got = collect(stream.into_inner()).await?;
        ensure!(got.len() == 3, "got {} responses, want 3", got.len());
        let want = crate::payload(1000);
        for (i, r) in got.iter().enumerate() {
            check_echo(&format!("sized response {i}"), r, &want, i as u64, 1, 0)?;
        }

        // repeat 0 means one response.
        let stream = c
            .server_stream(EchoRequest::default())
            .await
            .map_err(unexpected("ServerStream"))?;
        let got = collect(stream.into_inner()).await?;
        ensure!(
            got.len() == 1,
            "repeat 0: got {} responses, want 1",
            got.len()
        );
        Ok(())
    }

    /// Ping-pong: each request is sent only after the previous answer
    /// arrived, which only a full-duplex handler can serve.
    async fn bidi_full_duplex(&self) -> CaseResult {
        let mut c = self.client();
        let msg = |i: usize| EchoRequest {
            payload: seeded(100 * i, i as u8),
            seq: i as u64,
            ..Default::default()
        };
        let (tx, rx) = mpsc::channel(4);
        // The handler answers the headers once the first request is in.
        send(&tx, msg(0)).await?;
        let mut stream = c
            .bidi(ReceiverStream::new(rx))
            .await
            .map_err(unexpected("Bidi"))?
            .into_inner();
        let mut total = 0u64;
        for i in 0..5 {
            if i > 0 {
                send(&tx, msg(i)).await?;
            }
            total += (100 * i) as u64;
            let r = next(&mut stream, i).await?;
            check_echo(
                &format!("response {i}"),
                &r,
                &seeded(100 * i, i as u8),
                i as u64,
                i as u32 + 1,
                total,
            )?;
        }
        drop(tx);
        end_ok(&mut stream).await
    }

    async fn bidi_half_duplex(&self) -> CaseResult {
        let mut c = self.client();
        let n = 4usize;
        let msgs: Vec<EchoRequest> = (0..n)
            .map(|i| EchoRequest {
                payload: seeded(10 + i, i as u8),
                seq: 50 + i as u64,
                half_duplex: true,
                ..Default::default()
            })
            .collect();
        let total: u64 = msgs.iter().map(|m| m.payload.len() as u64).sum();
        let mut stream = c
            .bidi(tokio_stream::iter(msgs.clone()))
            .await
            .map_err(unexpected("Bidi"))?
            .into_inner();
        for (i, m) in msgs.iter().enumerate() {
            let r = next(&mut stream, i).await?;
            let what = format!("response {i}");
            check_bytes(&what, &r.payload, &m.payload)?;
            ensure!(r.seq == m.seq, "{what}: seq {}, want {}", r.seq, m.seq);
            // A half-duplex handler has received the whole input when it
            // answers, so every response carries the totals of all of it.
            ensure!(
                r.count as usize == n && r.total_bytes == total,
                "{what}: count {} total_bytes {}, want {n} and {total} \
                 (half duplex answers only after reading all input)",
                r.count,
                r.total_bytes
            );
        }
        end_ok(&mut stream).await
    }

    async fn metadata_echo(&self) -> CaseResult {
        let mut c = self.client();

        let mut req = Request::new(EchoRequest {
            echo_metadata: true,
            ..Default::default()
        });
        add_metadata(req.metadata_mut(), ECHO_MD)?;
        let r = c
            .unary(req)
            .await
            .map_err(unexpected("Unary"))?
            .into_inner();
        check_echoed("unary", &r.metadata)?;

        // The same on a streaming call, where every response echoes it.
        let msg = EchoRequest {
            echo_metadata: true,
            ..Default::default()
        };
        let mut req = Request::new(tokio_stream::iter(vec![msg.clone(), msg]));
        add_metadata(req.metadata_mut(), ECHO_MD)?;
        let got = collect(c.bidi(req).await.map_err(unexpected("Bidi"))?.into_inner()).await?;
        ensure!(got.len() == 2, "bidi: got {} responses, want 2", got.len());
        for r in &got {
            check_echoed("bidi", &r.metadata)?;
        }
        Ok(())
    }

    async fn headers_and_trailers(&self) -> CaseResult {
        let mut c = self.client();
        let req = EchoRequest {
            repeat: 2,
            response_headers: entries(HEADER_MD),
            response_trailers: entries(TRAILER_MD),
            ..Default::default()
        };
        let response = c
            .server_stream(req)
            .await
            .map_err(unexpected("ServerStream"))?;
        check_metadata("headers", response.metadata(), HEADER_MD)?;
        check_absent("headers", response.metadata(), TRAILER_MD)?;
        let mut stream = response.into_inner();
        for i in 0..2 {
            next(&mut stream, i).await?;
        }
        end_ok(&mut stream).await?;
        let trailers = stream
            .trailers()
            .await
            .map_err(unexpected("trailers"))?
            .ok_or("no trailers")?;
        check_metadata("trailers", &trailers, TRAILER_MD)?;
        check_absent("trailers", &trailers, HEADER_MD)
    }

    async fn error_with_details(&self) -> CaseResult {
        let details = error_details();
        let req = EchoRequest {
            error: Some(ErrorSpec {
                code: Code::FailedPrecondition as i32,
                message: "boom".to_owned(),
                details: details.clone(),
            }),
            response_trailers: entries(ERROR_TRAILER_MD),
            ..Default::default()
        };
        let status = match self.client().unary(req).await {
            Ok(r) => return Err(format!("call succeeded: {:?}", r.into_inner())),
            Err(status) => status,
        };
        check_status(&status, Code::FailedPrecondition, "boom")?;
        check_details(&status, &details)?;
        check_metadata("error trailers", status.metadata(), ERROR_TRAILER_MD)
    }

    async fn error_streaming(&self) -> CaseResult {
        let details = error_details();
        let first = EchoRequest {
            seq: 1,
            payload: Bytes::from_static(b"one"),
            error: Some(ErrorSpec {
                code: Code::Aborted as i32,
                message: "stream boom".to_owned(),
                details: details.clone(),
            }),
            response_trailers: entries(ERROR_TRAILER_MD),
            ..Default::default()
        };
        let second = EchoRequest {
            seq: 2,
            payload: Bytes::from_static(b"two"),
            ..Default::default()
        };
        let mut stream = self
            .client()
            .bidi(tokio_stream::iter(vec![first, second]))
            .await
            .map_err(unexpected("Bidi"))?
            .into_inner();
        let r = next(&mut stream, 0).await?;
        check_echo("response 0", &r, b"one", 1, 1, 3)?;
        let r = next(&mut stream, 1).await?;
        check_echo("response 1", &r, b"two", 2, 2, 6)?;
        let status = match stream.message().await {
            Ok(m) => return Err(format!("stream ended with {m:?}, want an error")),
            Err(status) => status,
        };
        check_status(&status, Code::Aborted, "stream boom")?;
        check_details(&status, &details)?;
        check_metadata("error trailers", status.metadata(), ERROR_TRAILER_MD)
    }

    async fn deadline(&self) -> CaseResult {
        let mut c = self.client();
        let tag = unique_tag("deadline");
        let mut req = Request::new(EchoRequest {
            sleep_ms: 5000,
            tag: tag.clone(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_millis(200));
        let start = Instant::now();
        let result = c.unary(req).await;
        let elapsed = start.elapsed();
        match result {
            Ok(r) => return Err(format!("call succeeded: {:?}", r.into_inner())),
            Err(s) if s.code() != self.opts.deadline_code => {
                return Err(format!(
                    "caller got {:?} {:?}, want {:?}",
                    s.code(),
                    s.message(),
                    self.opts.deadline_code
                ))
            }
            Err(_) => {}
        }
        ensure!(
            elapsed < Duration::from_millis(4000),
            "caller waited {elapsed:?} for a 200 ms deadline"
        );
        let state = check_handler(&mut c, &tag).await?;
        ensure!(
            state.started && state.cancelled && !state.finished,
            "handler state {state:?}, want started and cancelled"
        );
        Ok(())
    }

    /// The caller drops a server stream whose handler is blocked (by flow
    /// control, or producing a gigabyte without it): the handler must be
    /// cancelled. Reading the first message first proves the handler
    /// started, so nothing here races.
    async fn cancel(&self) -> CaseResult {
        let mut c = self.client();
        let tag = unique_tag("cancel");
        let req = EchoRequest {
            repeat: 1_000_000,
            response_size: 1024,
            tag: tag.clone(),
            ..Default::default()
        };
        let mut stream = c
            .server_stream(req)
            .await
            .map_err(unexpected("ServerStream"))?
            .into_inner();
        next(&mut stream, 0).await?;
        drop(stream);
        let state = check_handler(&mut c, &tag).await?;
        ensure!(
            state.started && state.cancelled && !state.finished,
            "handler state {state:?}, want started and cancelled"
        );
        Ok(())
    }

    async fn sizes(&self) -> CaseResult {
        let mut c = self.client();
        for &n in SIZES {
            let sent = seeded(n, 1);
            let req = EchoRequest {
                payload: sent.clone(),
                seq: n as u64,
                ..Default::default()
            };
            let r = c
                .unary(req)
                .await
                .map_err(|s| format!("size {n}: Unary: {}", describe(&s)))?
                .into_inner();
            check_echo(&format!("size {n} unary"), &r, &sent, n as u64, 1, n as u64)?;

            let msgs: Vec<EchoRequest> = (0..3u8)
                .map(|k| EchoRequest {
                    payload: seeded(n, 2 + k),
                    seq: u64::from(k),
                    ..Default::default()
                })
                .collect();
            let mut stream = c
                .bidi(tokio_stream::iter(msgs.clone()))
                .await
                .map_err(|s| format!("size {n}: Bidi: {}", describe(&s)))?
                .into_inner();
            for (k, m) in msgs.iter().enumerate() {
                let r = next(&mut stream, k).await?;
                let what = format!("size {n} bidi response {k}");
                check_bytes(&what, &r.payload, &m.payload)?;
                ensure!(r.seq == m.seq, "{what}: seq {}, want {}", r.seq, m.seq);
            }
            end_ok(&mut stream).await?;
        }
        Ok(())
    }

    async fn concurrent_100(&self) -> CaseResult {
        let c = self.client();
        let calls = (0..100u64).map(|i| mixed_call(c.clone(), i));
        let failures: Vec<String> = join_all(calls)
            .await
            .into_iter()
            .filter_map(Result::err)
            .collect();
        ensure!(
            failures.is_empty(),
            "{} of 100 calls failed, first: {}",
            failures.len(),
            failures[0]
        );
        Ok(())
    }

    async fn slow_consumer(&self) -> CaseResult {
        let mut c = self.client();
        let tag = unique_tag("slow_consumer");
        let req = EchoRequest {
            repeat: 100_000,
            response_size: 64 * 1024,
            tag: tag.clone(),
            ..Default::default()
        };
        let mut stalled = c
            .server_stream(req)
            .await
            .map_err(unexpected("ServerStream"))?
            .into_inner();
        next(&mut stalled, 0).await?;
        // Stop reading `stalled`; other calls must still go through.
        let bound = Duration::from_secs(5);
        let calls = (0..20u64).map(|i| {
            let mut c = c.clone();
            async move {
                let sent = seeded(1000, i as u8);
                let req = EchoRequest {
                    payload: sent.clone(),
                    seq: i,
                    ..Default::default()
                };
                let r = c
                    .unary(req)
                    .await
                    .map_err(unexpected("Unary"))?
                    .into_inner();
                check_echo(&format!("call {i}"), &r, &sent, i, 1, 1000)
            }
        });
        let results = tokio::time::timeout(bound, join_all(calls))
            .await
            .map_err(|_| {
                format!("20 unary calls did not finish within {bound:?} behind a stalled stream")
            })?;
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
        drop(stalled);
        let state = check_handler(&mut c, &tag).await?;
        ensure!(
            state.started && state.cancelled && !state.finished,
            "stalled handler state {state:?}, want started and cancelled"
        );
        Ok(())
    }

    async fn unimplemented(&self) -> CaseResult {
        for path in [
            "/grpctunnel.testing.v1.EchoService/NoSuchMethod",
            "/grpctunnel.testing.v1.NoSuchService/Unary",
        ] {
            let mut grpc = tonic::client::Grpc::new(self.channel.clone());
            grpc.ready()
                .await
                .map_err(|e| format!("{path}: channel not ready: {e}"))?;
            let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
            let result = grpc
                .unary(
                    Request::new(EchoRequest::default()),
                    http::uri::PathAndQuery::from_static(path),
                    codec,
                )
                .await;
            match result {
                Ok(r) => return Err(format!("{path}: call succeeded: {:?}", r.into_inner())),
                Err(s) if s.code() != Code::Unimplemented => {
                    return Err(format!("{path}: got {}, want Unimplemented", describe(&s)))
                }
                Err(_) => {}
            }
        }
        Ok(())
    }
}

/// One call of the `concurrent_100` mix: the shape is `i % 4`.
async fn mixed_call(mut c: EchoServiceClient<BoxChannel>, i: u64) -> CaseResult {
    let n = (i as usize * 997) % 20000;
    let sent = seeded(n, i as u8);
    let req = EchoRequest {
        payload: sent.clone(),
        seq: i,
        ..Default::default()
    };
    let what = format!("call {i}");
    match i % 4 {
        0 => {
            let r = c
                .unary(req)
                .await
                .map_err(unexpected("Unary"))?
                .into_inner();
            check_echo(&what, &r, &sent, i, 1, n as u64)
        }
        1 => {
            let msgs = vec![req.clone(), req];
            let r = c
                .client_stream(tokio_stream::iter(msgs))
                .await
                .map_err(unexpected("ClientStream"))?
                .into_inner();
            check_echo(&what, &r, &sent, i, 2, 2 * n as u64)
        }
        2 => {
            let req = EchoRequest { repeat: 3, ..req };
            let stream = c
                .server_stream(req)
                .await
                .map_err(unexpected("ServerStream"))?;
            let got = collect(stream.into_inner()).await?;
            ensure!(
                got.len() == 3,
                "{what}: got {} responses, want 3",
                got.len()
            );
            for (k, r) in got.iter().enumerate() {
                check_echo(&what, r, &sent, i + k as u64, 1, n as u64)?;
            }
            Ok(())
        }
        _ => {
            let msgs = vec![req.clone(), req];
            let stream = c
                .bidi(tokio_stream::iter(msgs))
                .await
                .map_err(unexpected("Bidi"))?;
            let got = collect(stream.into_inner()).await?;
            ensure!(
                got.len() == 2,
                "{what}: got {} responses, want 2",
                got.len()
            );
            for (k, r) in got.iter().enumerate() {
                check_echo(&what, r, &sent, i, k as u32 + 1, (k as u64 + 1) * n as u64)?;
            }
            Ok(())
        }
    }
}

/// `n` bytes where byte `i` is `(i + seed) % 251`, so that messages of the
/// same size differ.
fn seeded(n: usize, seed: u8) -> Bytes {
    (0..n)
        .map(|i| ((i + usize::from(seed)) % 251) as u8)
        .collect()
}

fn unique_tag(case: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{case}-{}-{nanos}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn describe(s: &Status) -> String {
    format!("{:?} {:?}", s.code(), s.message())
}

fn unexpected(what: &'static str) -> impl FnOnce(Status) -> String {
    move |s| format!("{what}: unexpected status {}", describe(&s))
}

async fn send(tx: &mpsc::Sender<EchoRequest>, m: EchoRequest) -> CaseResult {
    tx.send(m)
        .await
        .map_err(|_| "request stream closed by the client".to_owned())
}

async fn next(stream: &mut Streaming<EchoResponse>, i: usize) -> Result<EchoResponse, String> {
    match stream.message().await {
        Ok(Some(r)) => Ok(r),
        Ok(None) => Err(format!("stream ended before response {i}")),
        Err(s) => Err(format!("response {i}: unexpected status {}", describe(&s))),
    }
}

async fn end_ok(stream: &mut Streaming<EchoResponse>) -> CaseResult {
    match stream.message().await {
        Ok(None) => Ok(()),
        Ok(Some(r)) => Err(format!("unexpected extra response seq {}", r.seq)),
        Err(s) => Err(format!("stream ended with {}", describe(&s))),
    }
}

async fn collect(mut stream: Streaming<EchoResponse>) -> Result<Vec<EchoResponse>, String> {
    let mut out = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(r)) => out.push(r),
            Ok(None) => return Ok(out),
            Err(s) => {
                return Err(format!(
                    "stream failed after {} responses: {}",
                    out.len(),
                    describe(&s)
                ))
            }
        }
    }
}

async fn check_handler(
    c: &mut EchoServiceClient<BoxChannel>,
    tag: &str,
) -> Result<CheckResponse, String> {
    let req = CheckRequest {
        tag: tag.to_owned(),
        wait_ms: 3000,
    };
    Ok(c.check_handler(req)
        .await
        .map_err(unexpected("CheckHandler"))?
        .into_inner())
}

fn check_bytes(what: &str, got: &[u8], want: &[u8]) -> CaseResult {
    if got == want {
        return Ok(());
    }
    if got.len() != want.len() {
        return Err(format!(
            "{what}: payload is {} bytes, want {}",
            got.len(),
            want.len()
        ));
    }
    let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
    Err(format!("{what}: payload differs at byte {at}"))
}

fn check_echo(
    what: &str,
    r: &EchoResponse,
    payload: &[u8],
    seq: u64,
    count: u32,
    total_bytes: u64,
) -> CaseResult {
    check_bytes(what, &r.payload, payload)?;
    ensure!(r.seq == seq, "{what}: seq {}, want {seq}", r.seq);
    ensure!(r.count == count, "{what}: count {}, want {count}", r.count);
    ensure!(
        r.total_bytes == total_bytes,
        "{what}: total_bytes {}, want {total_bytes}",
        r.total_bytes
    );
    Ok(())
}

fn check_status(s: &Status, code: Code, message: &str) -> CaseResult {
    ensure!(
        s.code() == code && s.message() == message,
        "got {}, want {code:?} {message:?}",
        describe(s)
    );
    Ok(())
}

/// The two `Any` details the error cases ask for.
fn error_details() -> Vec<prost_types::Any> {
    let info = tonic_types::pb::ErrorInfo {
        reason: "BOOM".to_owned(),
        domain: "grpctunnel.testing".to_owned(),
        metadata: [("k".to_owned(), "v".to_owned())].into(),
    };
    let failure = tonic_types::pb::PreconditionFailure {
        violations: vec![tonic_types::pb::precondition_failure::Violation {
            r#type: "TEST".to_owned(),
            subject: "tunnel".to_owned(),
            description: "the test asked for it".to_owned(),
        }],
    };
    vec![
        prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.ErrorInfo".to_owned(),
            value: info.encode_to_vec(),
        },
        prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.PreconditionFailure".to_owned(),
            value: failure.encode_to_vec(),
        },
    ]
}

/// Compares details by type URL and decoded message (not raw bytes: map
/// order is not stable).
fn check_details(s: &Status, want: &[prost_types::Any]) -> CaseResult {
    ensure!(!s.details().is_empty(), "status has no details");
    let got = tonic_types::pb::Status::decode(s.details())
        .map_err(|e| format!("grpc-status-details-bin does not decode: {e}"))?;
    ensure!(
        got.code == s.code() as i32 && got.message == s.message(),
        "details status {} {:?} differs from the status",
        got.code,
        got.message
    );
    ensure!(
        got.details.len() == want.len(),
        "{} details, want {}",
        got.details.len(),
        want.len()
    );
    for (g, w) in got.details.iter().zip(want) {
        ensure!(
            g.type_url == w.type_url,
            "detail type {:?}, want {:?}",
            g.type_url,
            w.type_url
        );
        let same = match w.type_url.rsplit('/').next() {
            Some("google.rpc.ErrorInfo") => same_message::<tonic_types::pb::ErrorInfo>(g, w),
            Some("google.rpc.PreconditionFailure") => {
                same_message::<tonic_types::pb::PreconditionFailure>(g, w)
            }
            _ => g.value == w.value,
        };
        ensure!(same, "detail {:?} differs", g.type_url);
    }
    Ok(())
}

fn same_message<M: Message + Default + PartialEq>(
    a: &prost_types::Any,
    b: &prost_types::Any,
) -> bool {
    match (M::decode(a.value.as_slice()), M::decode(b.value.as_slice())) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// Metadata as `(key, value)` pairs; `-bin` values are raw bytes.
type MdSpec = &'static [(&'static str, &'static [u8])];

/// UTF-8-valid binary value (some peers only carry those intact).
const BIN_VALUE: &[u8] = "tünnel ✓ bin".as_bytes();

const ECHO_MD: MdSpec = &[
    ("x-echo-one", b"hello world"),
    ("x-echo-multi", b"first"),
    ("x-echo-multi", b"second"),
    ("x-echo-data-bin", BIN_VALUE),
];
const HEADER_MD: MdSpec = &[
    ("x-header-one", b"h1"),
    ("x-header-multi", b"a"),
    ("x-header-multi", b"b"),
    ("x-header-data-bin", BIN_VALUE),
];
const TRAILER_MD: MdSpec = &[
    ("x-trailer-one", b"t1"),
    ("x-trailer-multi", b"c"),
    ("x-trailer-multi", b"d"),
    ("x-trailer-data-bin", "träiler ✓".as_bytes()),
];
const ERROR_TRAILER_MD: MdSpec = &[
    ("x-error-one", b"e1"),
    ("x-error-multi", b"x"),
    ("x-error-multi", b"y"),
    ("x-error-data-bin", "érror ✓".as_bytes()),
];

fn entries(spec: MdSpec) -> Vec<MetadataEntry> {
    spec.iter()
        .map(|(k, v)| MetadataEntry {
            key: (*k).to_owned(),
            value: Bytes::from_static(v),
        })
        .collect()
}

fn add_metadata(md: &mut MetadataMap, spec: MdSpec) -> CaseResult {
    for (k, v) in spec {
        if k.ends_with("-bin") {
            md.append_bin(*k, MetadataValue::from_bytes(v));
        } else {
            let v = MetadataValue::try_from(*v).map_err(|e| format!("bad value for {k}: {e}"))?;
            md.append(*k, v);
        }
    }
    Ok(())
}

/// Values per key, in order.
fn grouped<'a>(pairs: impl Iterator<Item = (&'a str, Vec<u8>)>) -> BTreeMap<&'a str, Vec<Vec<u8>>> {
    let mut map: BTreeMap<&str, Vec<Vec<u8>>> = BTreeMap::new();
    for (k, v) in pairs {
        map.entry(k).or_default().push(v);
    }
    map
}

fn values(md: &MetadataMap, key: &str) -> Result<Vec<Vec<u8>>, String> {
    if key.ends_with("-bin") {
        md.get_all_bin(key)
            .iter()
            .map(|v| {
                v.to_bytes()
                    .map(|b| b.to_vec())
                    .map_err(|_| format!("{key}: value is not base64"))
            })
            .collect()
    } else {
        Ok(md
            .get_all(key)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect())
    }
}

fn check_metadata(what: &str, md: &MetadataMap, spec: MdSpec) -> CaseResult {
    for (key, want) in grouped(spec.iter().map(|(k, v)| (*k, v.to_vec()))) {
        let got = values(md, key)?;
        ensure!(
            got == want,
            "{what}: {key} = {:?}, want {:?}",
            printable(&got),
            printable(&want)
        );
    }
    Ok(())
}

fn check_absent(what: &str, md: &MetadataMap, spec: MdSpec) -> CaseResult {
    for (key, _) in spec {
        ensure!(!md.contains_key(*key), "{what}: unexpected key {key}");
    }
    Ok(())
}

fn check_echoed(what: &str, echoed: &[MetadataEntry]) -> CaseResult {
    const TRANSPORT: &[&str] = &[":authority", "host", "te", "content-type", "user-agent"];
    for e in echoed {
        ensure!(
            !TRANSPORT.contains(&e.key.as_str()) && !e.key.starts_with("grpc-"),
            "{what}: transport key {:?} echoed",
            e.key
        );
    }
    let want = grouped(ECHO_MD.iter().map(|(k, v)| (*k, v.to_vec())));
    let got = grouped(
        echoed
            .iter()
            .filter(|e| want.contains_key(e.key.as_str()))
            .map(|e| (e.key.as_str(), e.value.to_vec())),
    );
    ensure!(
        got == want,
        "{what}: echoed {:?}, want {:?}",
        got.iter()
            .map(|(k, v)| (k, printable(v)))
            .collect::<Vec<_>>(),
        want.iter()
            .map(|(k, v)| (k, printable(v)))
            .collect::<Vec<_>>()
    );
    Ok(())
}

fn printable(values: &[Vec<u8>]) -> Vec<String> {
    values
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// A cloneable, type-erased transport, so the cases are written once for a
/// concrete client type. Each call readies its own clone of the inner
/// service, as tower's cloning rule asks. The inner service sits behind a
/// mutex (locked only to clone it) so the runner's futures are `Send` even
/// for a transport that is not `Sync`.
struct BoxChannel(Box<dyn ErasedChannel>);

trait ErasedChannel: Send + Sync {
    fn call(&self, req: http::Request<Body>) -> BoxFuture<http::Response<Body>, StdError>;
    fn clone_box(&self) -> Box<dyn ErasedChannel>;
}

struct Erased<T>(Mutex<T>);

impl<T: Clone> Erased<T> {
    fn new(inner: T) -> Self {
        Erased(Mutex::new(inner))
    }

    fn inner(&self) -> T {
        // Poisoning cannot leave a clone half-made; use the value as is.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl<T> ErasedChannel for Erased<T>
where
    T: GrpcService<Body> + Clone + Send + 'static,
    T::Future: Send + 'static,
    T::Error: Into<StdError>,
    T::ResponseBody: HttpBody<Data = Bytes> + Send + 'static,
    <T::ResponseBody as HttpBody>::Error: Into<StdError> + Send,
{
    fn call(&self, req: http::Request<Body>) -> BoxFuture<http::Response<Body>, StdError> {
        let mut svc = self.inner();
        Box::pin(async move {
            poll_fn(|cx| svc.poll_ready(cx)).await.map_err(Into::into)?;
            let response = svc.call(req).await.map_err(Into::into)?;
            Ok(response.map(Body::new))
        })
    }

    fn clone_box(&self) -> Box<dyn ErasedChannel> {
        Box::new(Erased::new(self.inner()))
    }
}

impl Clone for BoxChannel {
    fn clone(&self) -> Self {
        BoxChannel(self.0.clone_box())
    }
}

impl Service<http::Request<Body>> for BoxChannel {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<http::Response<Body>, StdError>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StdError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        self.0.call(req)
    }
}
