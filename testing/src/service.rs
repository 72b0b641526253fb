//! [`Echo`]: the echo test service, implemented by hand on top of
//! [`tonic::server::Grpc`].
//!
//! Every method is served through [`tonic::server::Grpc::streaming`] (the
//! call shape is not on the wire), so that every call can send response
//! headers, messages and then trailers, on success and on error. A generated
//! unary handler cannot send trailers, and an `Err` from it always becomes a
//! trailers-only response; see `TONIC-NOTES.md`.
//!
//! Semantics follow the comments in `proto/grpctunnel/testing/v1/echo.proto`:
//!
//! * The payload of a response is the request payload, or `response_size`
//!   bytes where byte `i` is `i % 251` ([`crate::payload`]).
//! * `sleep_ms` delays the answer. Unary, client-streaming and
//!   server-streaming calls sleep before sending response headers; a
//!   bidi call sleeps for the first request before its headers and for every
//!   later request before answering it. The sleep ends early only by
//!   cancellation: the handler future is dropped, and the call's tag records
//!   `cancelled`.
//! * `response_headers`, `response_trailers` and `error` come from the first
//!   request of a call. Trailers are sent on success and on error; an error is
//!   sent after the responses (a unary or client-streaming call with an error
//!   sends no response message). An error with code 0 counts as success.
//! * Client streaming: every control field (`response_size`, `echo_metadata`,
//!   `sleep_ms`, headers, trailers, error, tag) comes from the first request;
//!   `seq` and `payload` come from the last one.
//! * Bidi: `count` and `total_bytes` are the number and size of the requests
//!   received when the response is sent, so in half duplex every response
//!   carries the totals of the whole input.
//! * `echo_metadata` copies the request metadata the handler saw, one entry
//!   per value, skipping transport keys (`:authority`, `host`, `te`,
//!   `content-type`, `user-agent`, `grpc-*`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use prost::Message;
use tokio::sync::{mpsc, watch};
use tonic::codegen::{http, Body as HttpBody, BoxFuture, Service, StdError};
use tonic::metadata::{Ascii, Binary, KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::server::{NamedService, StreamingService, UnaryService};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::pb::{CheckRequest, CheckResponse, EchoRequest, EchoResponse, ErrorSpec, MetadataEntry};

/// Largest message the service (and the case-matrix clients) encode or
/// decode: 16 MiB.
pub const MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Fully qualified name of the echo service.
pub const SERVICE_NAME: &str = "grpctunnel.testing.v1.EchoService";

const PATH_UNARY: &str = "/grpctunnel.testing.v1.EchoService/Unary";
const PATH_CLIENT_STREAM: &str = "/grpctunnel.testing.v1.EchoService/ClientStream";
const PATH_SERVER_STREAM: &str = "/grpctunnel.testing.v1.EchoService/ServerStream";
const PATH_BIDI: &str = "/grpctunnel.testing.v1.EchoService/Bidi";
const PATH_CHECK_HANDLER: &str = "/grpctunnel.testing.v1.EchoService/CheckHandler";

/// What happened to the handler of a tagged call (see [`Echo::handler_state`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerState {
    /// The handler started (it read the first request).
    pub started: bool,
    /// The handler ended before finishing: its future was dropped or its
    /// request stream failed.
    pub cancelled: bool,
    /// The handler finished normally (including when it returned the error
    /// its request asked for).
    pub finished: bool,
}

impl HandlerState {
    fn ended(&self) -> bool {
        self.cancelled || self.finished
    }
}

impl From<HandlerState> for CheckResponse {
    fn from(s: HandlerState) -> Self {
        CheckResponse {
            started: s.started,
            cancelled: s.cancelled,
            finished: s.finished,
        }
    }
}

/// Per-tag handler states. Each tag has a watch channel so that
/// `CheckHandler` can wait for an event instead of polling.
#[derive(Default)]
struct Tags {
    map: Mutex<HashMap<String, Arc<watch::Sender<HandlerState>>>>,
}

impl Tags {
    fn entry(&self, tag: &str) -> Arc<watch::Sender<HandlerState>> {
        // A poisoned lock only means another handler panicked while holding
        // it; the map itself is still consistent.
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(tag.to_owned())
            .or_insert_with(|| Arc::new(watch::Sender::new(HandlerState::default())))
            .clone()
    }
}

/// Records `started` on creation and `finished` on [`HandlerGuard::finish`];
/// dropped without `finish` (handler future dropped, request stream failed)
/// it records `cancelled`.
struct HandlerGuard {
    state: Option<Arc<watch::Sender<HandlerState>>>,
    done: bool,
}

impl HandlerGuard {
    fn start(tags: &Tags, tag: &str) -> Self {
        let state = (!tag.is_empty()).then(|| tags.entry(tag));
        if let Some(s) = &state {
            s.send_modify(|s| s.started = true);
        }
        HandlerGuard { state, done: false }
    }

    fn finish(&mut self) {
        if !self.done {
            self.done = true;
            if let Some(s) = &self.state {
                s.send_modify(|s| s.finished = true);
            }
        }
    }
}

impl Drop for HandlerGuard {
    fn drop(&mut self) {
        if !self.done {
            if let Some(s) = &self.state {
                s.send_modify(|s| s.cancelled = true);
            }
        }
    }
}

/// The echo test service.
///
/// Cheap to clone: clones share the tag table, so a test can keep one clone
/// to inspect handler states while another is served.
///
/// # Example
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use grpctunnel_testing::Echo;
/// let echo = Echo::new();
/// tonic::transport::Server::builder()
///     .add_service(echo.clone().server())
///     .serve("127.0.0.1:50051".parse()?)
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct Echo {
    tags: Arc<Tags>,
}

impl fmt::Debug for Echo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Echo").finish_non_exhaustive()
    }
}

impl Echo {
    /// A new service with an empty tag table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The servable service: pass it to
    /// `tonic::transport::Server::builder().add_service(..)`,
    /// `tonic::service::Routes::new(..)` or any tower stack.
    pub fn server(self) -> EchoServer {
        EchoServer { echo: self }
    }

    /// The current state of the handler of the call tagged `tag`.
    pub fn handler_state(&self, tag: &str) -> HandlerState {
        *self.tags.entry(tag).borrow()
    }

    /// Waits up to `timeout` for the handler tagged `tag` to be cancelled or
    /// to finish, then returns its state (what `CheckHandler` reports).
    pub async fn wait_handler(&self, tag: &str, timeout: Duration) -> HandlerState {
        let mut rx = self.tags.entry(tag).subscribe();
        // Either outcome (ended, or the wait timed out) is reported through
        // the current state below.
        let _ = tokio::time::timeout(timeout, rx.wait_for(HandlerState::ended)).await;
        let state = *rx.borrow();
        state
    }

    async fn unary(self, req: Request<Streaming<EchoRequest>>) -> CallResult {
        let (md, _, mut input) = req.into_parts();
        let first = only_request(&mut input).await?;
        let mut guard = HandlerGuard::start(&self.tags, &first.tag);
        let Plan {
            headers,
            fin,
            fail,
            echoed,
        } = plan(&first, &md).inspect_err(|_| guard.finish())?;
        sleep_ms(first.sleep_ms).await;
        let response = answer(&first, &echoed, 1, first.payload.len() as u64);
        Ok(with_headers(
            headers,
            generate(|tx| async move {
                let _input = input;
                if !fail {
                    tx.send(response).await;
                }
                guard.finish();
                fin
            }),
        ))
    }

    async fn client_stream(self, req: Request<Streaming<EchoRequest>>) -> CallResult {
        let (md, _, mut input) = req.into_parts();
        let Some(first) = input.message().await? else {
            let empty = EchoResponse::default();
            return Ok(Response::new(generate(|tx| async move {
                tx.send(empty).await;
                None
            })));
        };
        let mut guard = HandlerGuard::start(&self.tags, &first.tag);
        let Plan {
            headers,
            fin,
            fail,
            echoed,
        } = plan(&first, &md).inspect_err(|_| guard.finish())?;
        let mut count: u32 = 1;
        let mut total = first.payload.len() as u64;
        let mut seq = first.seq;
        let mut payload = first.payload.clone();
        // An error here drops the guard unfinished: the call ended early.
        while let Some(m) = input.message().await? {
            count = count.saturating_add(1);
            total = total.saturating_add(m.payload.len() as u64);
            seq = m.seq;
            payload = m.payload;
        }
        sleep_ms(first.sleep_ms).await;
        let last = EchoRequest {
            payload,
            seq,
            ..first.clone()
        };
        let response = answer(&last, &echoed, count, total);
        Ok(with_headers(
            headers,
            generate(|tx| async move {
                if !fail {
                    tx.send(response).await;
                }
                guard.finish();
                fin
            }),
        ))
    }

    async fn server_stream(self, req: Request<Streaming<EchoRequest>>) -> CallResult {
        let (md, _, mut input) = req.into_parts();
        let first = only_request(&mut input).await?;
        let mut guard = HandlerGuard::start(&self.tags, &first.tag);
        let Plan {
            headers,
            fin,
            fail: _,
            echoed,
        } = plan(&first, &md).inspect_err(|_| guard.finish())?;
        sleep_ms(first.sleep_ms).await;
        let template = answer(&first, &echoed, 1, first.payload.len() as u64);
        let repeat = first.repeat.max(1);
        Ok(with_headers(
            headers,
            generate(|tx| async move {
                // Keep the request open until the handler ends.
                let _input = input;
                for i in 0..repeat {
                    let response = EchoResponse {
                        seq: template.seq.wrapping_add(u64::from(i)),
                        ..template.clone()
                    };
                    tx.send(response).await;
                }
                guard.finish();
                fin
            }),
        ))
    }

    async fn bidi(self, req: Request<Streaming<EchoRequest>>) -> CallResult {
        let (md, _, mut input) = req.into_parts();
        let Some(first) = input.message().await? else {
            return Ok(Response::new(generate(|_| async { None })));
        };
        let mut guard = HandlerGuard::start(&self.tags, &first.tag);
        let Plan {
            headers,
            fin,
            fail: _,
            echoed,
        } = plan(&first, &md).inspect_err(|_| guard.finish())?;
        sleep_ms(first.sleep_ms).await;
        Ok(with_headers(
            headers,
            generate(|tx| async move {
                let answered = if first.half_duplex {
                    bidi_half_duplex(first, &mut input, &echoed, &tx).await
                } else {
                    bidi_full_duplex(first, &mut input, &echoed, &tx).await
                };
                match answered {
                    Ok(()) => {
                        guard.finish();
                        fin
                    }
                    // The guard is dropped unfinished: cancelled.
                    Err(status) => Some(status),
                }
            }),
        ))
    }

    async fn check_handler(
        self,
        req: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let req = req.into_inner();
        let state = self
            .wait_handler(&req.tag, Duration::from_millis(u64::from(req.wait_ms)))
            .await;
        Ok(Response::new(state.into()))
    }
}

async fn bidi_full_duplex(
    first: EchoRequest,
    input: &mut Streaming<EchoRequest>,
    echoed: &[MetadataEntry],
    tx: &Emitter,
) -> Result<(), Status> {
    let mut count: u32 = 1;
    let mut total = first.payload.len() as u64;
    tx.send(answer(&first, echoed, count, total)).await;
    while let Some(m) = input.message().await? {
        count = count.saturating_add(1);
        total = total.saturating_add(m.payload.len() as u64);
        check_response_size(&m)?;
        sleep_ms(m.sleep_ms).await;
        tx.send(answer(&m, echoed, count, total)).await;
    }
    Ok(())
}

async fn bidi_half_duplex(
    first: EchoRequest,
    input: &mut Streaming<EchoRequest>,
    echoed: &[MetadataEntry],
    tx: &Emitter,
) -> Result<(), Status> {
    let mut all = vec![first];
    while let Some(m) = input.message().await? {
        check_response_size(&m)?;
        all.push(m);
    }
    let count = u32::try_from(all.len()).unwrap_or(u32::MAX);
    let total = all.iter().map(|m| m.payload.len() as u64).sum();
    for (i, m) in all.iter().enumerate() {
        if i > 0 {
            sleep_ms(m.sleep_ms).await;
        }
        tx.send(answer(m, echoed, count, total)).await;
    }
    Ok(())
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;
type CallResult = Result<Response<ResponseStream>, Status>;

/// What the first request of a call asks for, validated before anything is
/// sent.
struct Plan {
    headers: MetadataMap,
    /// Final status to end the response stream with: `None` for a plain OK.
    fin: Option<Status>,
    /// `fin` is an error (no unary response is sent then).
    fail: bool,
    echoed: Vec<MetadataEntry>,
}

fn with_headers(headers: MetadataMap, stream: ResponseStream) -> Response<ResponseStream> {
    let mut response = Response::new(stream);
    *response.metadata_mut() = headers;
    response
}

fn plan(first: &EchoRequest, md: &MetadataMap) -> Result<Plan, Status> {
    check_response_size(first)?;
    let headers = to_metadata(&first.response_headers, "response_headers")?;
    let trailers = to_metadata(&first.response_trailers, "response_trailers")?;
    let (fin, fail) = match &first.error {
        Some(spec) if spec.code != 0 => (Some(error_status(spec, trailers)), true),
        _ if trailers.is_empty() => (None, false),
        _ => (Some(Status::with_metadata(Code::Ok, "", trailers)), false),
    };
    let echoed = if first.echo_metadata {
        echo_metadata(md)
    } else {
        Vec::new()
    };
    Ok(Plan {
        headers,
        fin,
        fail,
        echoed,
    })
}

fn check_response_size(m: &EchoRequest) -> Result<(), Status> {
    if m.response_size as usize > MAX_MESSAGE_SIZE {
        return Err(Status::invalid_argument(format!(
            "response_size {} is larger than {MAX_MESSAGE_SIZE}",
            m.response_size
        )));
    }
    Ok(())
}

fn error_status(spec: &ErrorSpec, trailers: MetadataMap) -> Status {
    let details = if spec.details.is_empty() {
        Bytes::new()
    } else {
        tonic_types::pb::Status {
            code: spec.code,
            message: spec.message.clone(),
            details: spec.details.clone(),
        }
        .encode_to_vec()
        .into()
    };
    Status::with_details_and_metadata(
        Code::from_i32(spec.code),
        spec.message.clone(),
        details,
        trailers,
    )
}

/// The response to `m`: its payload (or `response_size` pattern bytes), seq
/// and the given totals.
fn answer(m: &EchoRequest, echoed: &[MetadataEntry], count: u32, total: u64) -> EchoResponse {
    let payload = if m.response_size > 0 {
        crate::payload(m.response_size as usize)
    } else {
        m.payload.clone()
    };
    EchoResponse {
        payload,
        metadata: if m.echo_metadata {
            echoed.to_vec()
        } else {
            Vec::new()
        },
        seq: m.seq,
        count,
        total_bytes: total,
    }
}

/// Builds a metadata map from entries; `-bin` keys take the raw bytes.
fn to_metadata(entries: &[MetadataEntry], field: &str) -> Result<MetadataMap, Status> {
    let mut md = MetadataMap::new();
    for e in entries {
        let bad = |what: &str| {
            Status::invalid_argument(format!(
                "{field}: invalid metadata {what} for key {:?}",
                e.key
            ))
        };
        if e.key.ends_with("-bin") {
            let key =
                MetadataKey::<Binary>::from_bytes(e.key.as_bytes()).map_err(|_| bad("key"))?;
            md.append_bin(key, MetadataValue::from_bytes(&e.value));
        } else {
            let key = MetadataKey::<Ascii>::from_bytes(e.key.as_bytes()).map_err(|_| bad("key"))?;
            let value =
                MetadataValue::<Ascii>::try_from(e.value.as_ref()).map_err(|_| bad("value"))?;
            md.append(key, value);
        }
    }
    Ok(md)
}

/// Keys that belong to the transport, not to the application.
fn is_transport_key(key: &str) -> bool {
    matches!(
        key,
        ":authority" | "host" | "te" | "content-type" | "user-agent"
    ) || key.starts_with("grpc-")
}

/// The request metadata as entries, one per value, transport keys skipped.
fn echo_metadata(md: &MetadataMap) -> Vec<MetadataEntry> {
    md.iter()
        .map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => (k.as_str(), Bytes::copy_from_slice(v.as_bytes())),
            KeyAndValueRef::Binary(k, v) => {
                // Undecodable base64 from the peer is echoed as received.
                let raw = v
                    .to_bytes()
                    .unwrap_or_else(|_| Bytes::copy_from_slice(v.as_encoded_bytes()));
                (k.as_str(), raw)
            }
        })
        .filter(|(k, _)| !is_transport_key(k))
        .map(|(k, value)| MetadataEntry {
            key: k.to_owned(),
            value,
        })
        .collect()
}

async fn sleep_ms(ms: u32) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(ms))).await;
    }
}

/// Sends the responses of a [`generate`] producer.
struct Emitter(mpsc::Sender<EchoResponse>);

impl Emitter {
    /// Sends one response. Waits while the consumer has not taken the
    /// previous one, so the producer follows HTTP/2 flow control.
    async fn send(&self, response: EchoResponse) {
        // The receiver lives as long as the producer (both are owned by the
        // same `Generate`), so sending cannot fail while anyone listens.
        let _ = self.0.send(response).await;
    }
}

/// The request of a one-request call, returned once the input has ended:
/// like tonic's generated handlers and the Go reference's server (P-35), so
/// that the answer never overtakes the caller's half-close (a Go client fails
/// a call whose close_stream arrives before it half-closed).
async fn only_request(input: &mut Streaming<EchoRequest>) -> Result<EchoRequest, Status> {
    let first = input
        .message()
        .await?
        .ok_or_else(|| Status::internal("missing request message"))?;
    while input.message().await?.is_some() {}
    Ok(first)
}

/// Turns a producer into a response stream: the producer sends messages
/// through its [`Emitter`] and returns the final status (`None` for a plain
/// OK). The producer runs inside the stream's `poll_next`, so dropping the
/// stream drops the producer (and its [`HandlerGuard`]).
fn generate<F, Fut>(producer: F) -> ResponseStream
where
    F: FnOnce(Emitter) -> Fut,
    Fut: Future<Output = Option<Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(1);
    Box::pin(Generate {
        producer: Some(Box::pin(producer(Emitter(tx)))),
        rx,
        fin: None,
    })
}

struct Generate {
    producer: Option<Pin<Box<dyn Future<Output = Option<Status>> + Send>>>,
    rx: mpsc::Receiver<EchoResponse>,
    fin: Option<Status>,
}

impl Stream for Generate {
    type Item = Result<EchoResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            // `poll_recv` can return `Pending` with a message queued when the
            // task's coop budget is spent, so only `Ready(None)` (every
            // sender gone and every message taken) may end the stream.
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(m)) => return Poll::Ready(Some(Ok(m))),
                Poll::Ready(None) if this.producer.is_none() => {
                    return Poll::Ready(this.fin.take().map(Err))
                }
                Poll::Ready(None) | Poll::Pending => {}
            }
            let Some(producer) = this.producer.as_mut() else {
                return Poll::Pending;
            };
            match producer.as_mut().poll(cx) {
                Poll::Ready(fin) => {
                    // Dropping the producer drops the sender, so the loop
                    // drains what is left and then ends.
                    this.producer = None;
                    this.fin = fin;
                }
                Poll::Pending => {
                    // The producer may have sent a message while it ran.
                    return match this.rx.poll_recv(cx) {
                        Poll::Ready(Some(m)) => Poll::Ready(Some(Ok(m))),
                        _ => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// The servable echo service (see [`Echo::server`]): routes the five
/// EchoService paths, answers any other path with UNIMPLEMENTED.
#[derive(Clone, Debug)]
pub struct EchoServer {
    echo: Echo,
}

impl NamedService for EchoServer {
    const NAME: &'static str = SERVICE_NAME;
}

#[derive(Clone, Copy)]
enum Method {
    Unary,
    ClientStream,
    ServerStream,
    Bidi,
}

struct EchoMethod {
    echo: Echo,
    method: Method,
}

impl StreamingService<EchoRequest> for EchoMethod {
    type Response = EchoResponse;
    type ResponseStream = ResponseStream;
    type Future = BoxFuture<Response<ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<EchoRequest>>) -> Self::Future {
        let echo = self.echo.clone();
        match self.method {
            Method::Unary => Box::pin(echo.unary(request)),
            Method::ClientStream => Box::pin(echo.client_stream(request)),
            Method::ServerStream => Box::pin(echo.server_stream(request)),
            Method::Bidi => Box::pin(echo.bidi(request)),
        }
    }
}

struct CheckMethod(Echo);

impl UnaryService<CheckRequest> for CheckMethod {
    type Response = CheckResponse;
    type Future = BoxFuture<Response<CheckResponse>, Status>;

    fn call(&mut self, request: Request<CheckRequest>) -> Self::Future {
        Box::pin(self.0.clone().check_handler(request))
    }
}

fn grpc<Req, Resp>() -> tonic::server::Grpc<tonic_prost::ProstCodec<Resp, Req>>
where
    Req: Message + Default + Send + 'static,
    Resp: Message + Send + 'static,
{
    tonic::server::Grpc::new(tonic_prost::ProstCodec::default())
        .apply_max_message_size_config(Some(MAX_MESSAGE_SIZE), Some(MAX_MESSAGE_SIZE))
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let echo = self.echo.clone();
        let method = match req.uri().path() {
            PATH_UNARY => Method::Unary,
            PATH_CLIENT_STREAM => Method::ClientStream,
            PATH_SERVER_STREAM => Method::ServerStream,
            PATH_BIDI => Method::Bidi,
            PATH_CHECK_HANDLER => {
                return Box::pin(async move {
                    Ok(grpc::<CheckRequest, CheckResponse>()
                        .unary(CheckMethod(echo), req)
                        .await)
                });
            }
            path => {
                let status = Status::unimplemented(format!("unknown method {path}"));
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        Box::pin(async move {
            Ok(grpc::<EchoRequest, EchoResponse>()
                .streaming(EchoMethod { echo, method }, req)
                .await)
        })
    }
}
