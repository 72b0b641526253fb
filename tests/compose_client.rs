//! Tunnel channels wrapped in tower middleware on the calling side: timeout,
//! retry, concurrency limit, buffer and tonic interceptors, each used
//! through a generated client and checked on a forward [`TunnelChannel`] and
//! on a [`ReverseChannel`] alike.
//!
//! Every check is a generic `async fn` over [`Channel`], run once per
//! direction; the server side of each direction serves the echo service
//! behind a [`Side`], which counts and can hold or fail calls.

mod common;

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use common::*;
use grpctunnel::{
    client::ResponseBody, ReverseChannel, ReverseTunnelRegistry, ReverseTunnelServer,
    TunnelChannel, TunnelLayer,
};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse},
    Echo,
};
use http::{Request, Response};
use http_body_util::{BodyExt, Collected, Full};
use tokio::{sync::watch, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{body::Body, service::Routes, transport::Server, Code, Status};
use tower::{
    retry::Policy, timeout::error::Elapsed, util::BoxCloneSyncService, BoxError, Service,
    ServiceBuilder, ServiceExt,
};

/// Client-side timeout of the tower layers here.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);
/// Longer than any deadline here; cut short by cancellation.
const SLOW_MS: u32 = 30_000;
/// Retries allowed by [`RetryUnavailable`].
const MAX_RETRIES: usize = 3;
/// Concurrency limit on the channel, and calls made against it.
const LIMIT: usize = 2;
const CALLS: u64 = 6;

/// What both channel types are: a cheap-to-clone tower service whose errors
/// mean "the tunnel is unusable" (a failed call is a status in trailers).
trait Channel:
    Service<
        Request<Body>,
        Response = Response<ResponseBody>,
        Error = grpctunnel::Error,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Channel for T
where
    T: Service<Request<Body>, Response = Response<ResponseBody>, Error = grpctunnel::Error>
        + Clone
        + Send
        + Sync
        + 'static,
    T::Future: Send + 'static,
{
}

// ----- server side ----------------------------------------------------------

/// The echo service behind two test layers: a gauge of calls in flight
/// (until their response headers) with a gate that holds calls while shut,
/// and a switch that fails the next `n` calls with UNAVAILABLE.
#[derive(Clone)]
struct Side {
    echo: Echo,
    state: Arc<SideState>,
}

struct SideState {
    in_flight: watch::Sender<usize>,
    max_in_flight: AtomicUsize,
    gate_open: watch::Sender<bool>,
    fail_next: AtomicUsize,
    calls: AtomicUsize,
}

/// One call in flight; counted down when dropped (answered or cancelled).
struct InFlight(Arc<SideState>);

impl InFlight {
    fn enter(state: &Arc<SideState>) -> Self {
        state.in_flight.send_modify(|n| {
            *n += 1;
            state.max_in_flight.fetch_max(*n, SeqCst);
        });
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.send_modify(|n| *n -= 1);
    }
}

impl Side {
    fn new() -> Self {
        Self {
            echo: Echo::new(),
            state: Arc::new(SideState {
                in_flight: watch::Sender::new(0),
                max_in_flight: AtomicUsize::new(0),
                gate_open: watch::Sender::new(true),
                fail_next: AtomicUsize::new(0),
                calls: AtomicUsize::new(0),
            }),
        }
    }

    fn service(&self) -> BoxCloneSyncService<Request<Body>, Response<Body>, Infallible> {
        let side = self.clone();
        let routes = Routes::new(self.echo.clone().server());
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
            side.clone().serve(routes.clone(), req)
        }))
    }

    async fn serve(self, routes: Routes, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let state = &self.state;
        state.calls.fetch_add(1, SeqCst);
        if state
            .fail_next
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Ok(Status::unavailable("flaky: try again").into_http());
        }
        let _in_flight = InFlight::enter(state);
        let mut gate = state.gate_open.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        routes.oneshot(req).await
    }

    fn calls(&self) -> usize {
        self.state.calls.load(SeqCst)
    }

    fn fail_next(&self, n: usize) {
        self.state.fail_next.store(n, SeqCst);
    }

    fn set_gate(&self, open: bool) {
        self.state.gate_open.send_replace(open);
    }

    /// Waits until at least `n` calls are in flight.
    async fn wait_in_flight(&self, n: usize) {
        let mut rx = self.state.in_flight.subscribe();
        rx.wait_for(|now| *now >= n).await.expect("gauge alive");
    }

    fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(SeqCst)
    }
}

/// One server that accepts forward and reverse tunnels, one agent that
/// opened a reverse tunnel to it, and a forward tunnel.
struct Setup {
    forward: TunnelChannel,
    forward_side: Side,
    reverse: ReverseChannel,
    /// The registry's tunnel that `reverse` calls go through.
    reverse_tunnel: TunnelChannel,
    reverse_side: Side,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

async fn setup() -> Setup {
    let (forward_side, reverse_side) = (Side::new(), Side::new());
    let registry = ReverseTunnelRegistry::new();
    let layer = TunnelLayer::new()
        .tunnel_service(forward_side.service())
        .reverse(registry.clone());
    let (listener, addr) = listener().await;
    let server = tokio::spawn(async move {
        Server::builder()
            .layer(layer)
            .add_service(Echo::new().server())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("server");
    });
    let agent = ReverseTunnelServer::new(reverse_side.service());
    let transport = connect(addr).await;
    let agent = tokio::spawn(async move {
        let _ = agent.serve(transport).await;
    });
    let reverse_tunnel = registry.wait_for(None).await.channel();
    Setup {
        forward: forward(addr).await,
        forward_side,
        reverse: registry.channel(),
        reverse_tunnel,
        reverse_side,
        tasks: vec![server, agent],
    }
}

/// Runs `$check(via, side, tunnel, channel)` for the forward tunnel, then
/// for the reverse channel.
macro_rules! both_directions {
    ($check:ident) => {
        bounded(async {
            let s = setup().await;
            $check("forward", &s.forward_side, &s.forward, s.forward.clone()).await;
            $check(
                "reverse",
                &s.reverse_side,
                &s.reverse_tunnel,
                s.reverse.clone(),
            )
            .await;
        })
        .await
    };
}

// ----- helpers ----------------------------------------------------------------

/// A tower timeout fails with `Elapsed`, which a generated client reports
/// as UNKNOWN `request timed out`; as a `Status` it is DEADLINE_EXCEEDED.
fn deadline_status(err: BoxError) -> BoxError {
    if err.is::<Elapsed>() {
        Status::deadline_exceeded("client deadline exceeded").into()
    } else {
        err
    }
}

fn slow(tag: &str) -> EchoRequest {
    EchoRequest {
        sleep_ms: SLOW_MS,
        tag: tag.to_owned(),
        ..Default::default()
    }
}

fn seen(resp: &EchoResponse, key: &str) -> Option<String> {
    resp.metadata
        .iter()
        .find(|e| e.key == key)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

/// Checks the call tagged `tag` ended on both sides: no stream left on the
/// tunnel client, the handler cancelled on the tunnel server.
async fn assert_freed(side: &Side, tunnel: &TunnelChannel, tag: &str) {
    assert_eq!(tunnel.active_calls(), 0, "{tag}: client end freed");
    let state = side.echo.wait_handler(tag, TEST_TIMEOUT).await;
    assert!(state.started && state.cancelled, "{tag}: {state:?}");
}

// ----- timeout and deadlines --------------------------------------------------

async fn timeout_check<C: Channel>(via: &str, side: &Side, tunnel: &TunnelChannel, chan: C) {
    let timed = ServiceBuilder::new().timeout(CLIENT_TIMEOUT).service(chan);
    let mut client = EchoServiceClient::new(timed);
    let tag = format!("{via}-slow");
    let err = client.unary(slow(&tag)).await.expect_err("timed out");
    // `Elapsed` is no gRPC status: tonic's generated client says UNKNOWN.
    assert_eq!(err.code(), Code::Unknown, "{via}: {err:?}");
    assert_eq!(err.message(), "request timed out");
    assert_freed(side, tunnel, &tag).await;

    // The same client, timeout and all, keeps working.
    let resp = client
        .unary(EchoRequest {
            payload: "fast".into(),
            ..Default::default()
        })
        .await
        .expect("fast call after a timeout");
    assert_eq!(resp.into_inner().payload, "fast");
    assert!(!tunnel.is_closed(), "{via}");
}

#[tokio::test]
async fn timeout_layer_cuts_slow_calls_and_the_channel_stays_usable() {
    both_directions!(timeout_check);
}

async fn deadline_check<C: Channel>(via: &str, side: &Side, tunnel: &TunnelChannel, chan: C) {
    // A tower timeout whose error is mapped to a status.
    let timed = ServiceBuilder::new()
        .map_err(deadline_status)
        .timeout(CLIENT_TIMEOUT)
        .service(chan.clone());
    let mut client = EchoServiceClient::new(timed);
    let tag = format!("{via}-tower-deadline");
    let err = client.unary(slow(&tag)).await.expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{via}: {err:?}");
    assert_eq!(err.message(), "client deadline exceeded");
    assert_freed(side, tunnel, &tag).await;

    // The call's own deadline (`grpc-timeout`), shorter than the tower
    // timeout around it: the tunnel enforces it and it wins.
    let timed = ServiceBuilder::new()
        .map_err(deadline_status)
        .timeout(TEST_TIMEOUT)
        .service(chan);
    let tag = format!("{via}-grpc-timeout");
    let mut req = tonic::Request::new(slow(&tag));
    req.set_timeout(CLIENT_TIMEOUT);
    let err = EchoServiceClient::new(timed)
        .unary(req)
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{via}: {err:?}");
    assert_ne!(err.message(), "client deadline exceeded", "the tunnel's");
    assert_freed(side, tunnel, &tag).await;
    assert!(!tunnel.is_closed(), "{via}");
}

#[tokio::test]
async fn deadlines_compose_and_free_the_stream_on_both_ends() {
    both_directions!(deadline_check);
}

// ----- retry ------------------------------------------------------------------

/// Methods safe to send twice.
const IDEMPOTENT: &[&str] = &["/grpctunnel.testing.v1.EchoService/Unary"];

/// Retries idempotent calls that failed with UNAVAILABLE, up to a bound.
#[derive(Clone)]
struct RetryUnavailable {
    retries_left: usize,
}

type Buffered = Request<Full<Bytes>>;
type Collecting = Response<Collected<Bytes>>;

impl<E> Policy<Buffered, Collecting, E> for RetryUnavailable {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Buffered,
        result: &mut Result<Collecting, E>,
    ) -> Option<Self::Future> {
        // An `Err` is the tunnel itself failing: not this policy's business.
        let Ok(resp) = result else { return None };
        if grpc_code(resp) != Code::Unavailable || self.retries_left == 0 {
            return None;
        }
        self.retries_left -= 1;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, req: &Buffered) -> Option<Buffered> {
        if !IDEMPOTENT.contains(&req.uri().path()) {
            return None;
        }
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

/// The status of a collected response: in its headers (trailers-only) or
/// in its trailers. A tunnel client delivers a rejection before any
/// response as empty headers plus trailers, so the policy must look at both.
fn grpc_code(resp: &Collecting) -> Code {
    resp.headers()
        .get("grpc-status")
        .or_else(|| resp.body().trailers()?.get("grpc-status"))
        .map_or(Code::Unknown, |v| Code::from_bytes(v.as_bytes()))
}

/// Reads the whole response, so the retry policy can see its status.
async fn collect_response(resp: Response<ResponseBody>) -> Result<Collecting, BoxError> {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?;
    Ok(Response::from_parts(parts, body))
}

/// Reads the whole request body before calling `inner`, so the retry
/// policy can clone the request (tonic's body cannot be cloned).
#[derive(Clone)]
struct BufferRequest<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<Request<Body>> for BufferRequest<S>
where
    S: Service<Buffered, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The clone that was not polled replaces the one that was.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await?.to_bytes();
            inner
                .call(Request::from_parts(parts, Full::new(bytes)))
                .await
        })
    }
}

async fn retry_check<C: Channel>(via: &str, side: &Side, tunnel: &TunnelChannel, chan: C) {
    let retrying = ServiceBuilder::new()
        .layer_fn(|inner| BufferRequest { inner })
        .retry(RetryUnavailable {
            retries_left: MAX_RETRIES,
        })
        .and_then(collect_response)
        .map_request(|req: Buffered| req.map(Body::new))
        .service(chan);
    let mut client = EchoServiceClient::new(retrying);

    // Two failures, then success on the third attempt.
    side.fail_next(2);
    let before = side.calls();
    let resp = client
        .unary(EchoRequest {
            payload: "retried".into(),
            ..Default::default()
        })
        .await
        .expect("succeeds on a retry");
    assert_eq!(resp.into_inner().payload, "retried");
    assert_eq!(side.calls() - before, 3, "{via}: two retries");

    // More failures than retries: the last UNAVAILABLE is the answer.
    side.fail_next(MAX_RETRIES + 1);
    let before = side.calls();
    let err = client
        .unary(EchoRequest::default())
        .await
        .expect_err("retries exhausted");
    assert_eq!(err.code(), Code::Unavailable, "{via}: {err:?}");
    assert_eq!(err.message(), "flaky: try again");
    assert_eq!(side.calls() - before, MAX_RETRIES + 1, "{via}");

    // Not idempotent: never sent twice.
    side.fail_next(1);
    let before = side.calls();
    let err = client
        .client_stream(tokio_stream::iter([EchoRequest::default()]))
        .await
        .expect_err("not retried");
    assert_eq!(err.code(), Code::Unavailable, "{via}: {err:?}");
    assert_eq!(side.calls() - before, 1, "{via}: one attempt");

    assert_eq!(tunnel.active_calls(), 0, "{via}");
    assert!(!tunnel.is_closed(), "{via}");
}

#[tokio::test]
async fn retry_policy_retries_idempotent_unary_calls() {
    both_directions!(retry_check);
}

// ----- concurrency limit and buffer -------------------------------------------

async fn limit_check<C: Channel>(via: &str, side: &Side, tunnel: &TunnelChannel, chan: C) {
    // One queue in front of the limit, shared by every task.
    let shared = ServiceBuilder::new()
        .buffer(64)
        .concurrency_limit(LIMIT)
        .service(chan);
    side.set_gate(false);
    let calls: Vec<_> = (0..CALLS)
        .map(|seq| {
            let mut client = EchoServiceClient::new(shared.clone());
            tokio::spawn(async move {
                let req = EchoRequest {
                    seq,
                    ..Default::default()
                };
                client.unary(req).await.map(|r| r.into_inner().seq)
            })
        })
        .collect();

    // `LIMIT` calls reached the handler and are held there; the rest wait
    // in the buffer, without a stream on the tunnel.
    side.wait_in_flight(LIMIT).await;
    assert_eq!(tunnel.active_calls(), LIMIT, "{via}");
    side.set_gate(true);
    for (seq, call) in (0..CALLS).zip(calls) {
        let got = call.await.expect("task").expect("call");
        assert_eq!(got, seq, "{via}");
    }
    assert_eq!(side.max_in_flight(), LIMIT, "{via}: never more at once");
    assert_eq!(tunnel.active_calls(), 0, "{via}");
}

#[tokio::test]
async fn concurrency_limit_behind_a_buffer_bounds_calls_at_the_server() {
    both_directions!(limit_check);
}

// ----- interceptors -----------------------------------------------------------

#[allow(clippy::result_large_err)]
fn request_id(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    req.metadata_mut()
        .insert("x-request-id", "req-7".parse().expect("ascii"));
    Ok(req)
}

#[allow(clippy::result_large_err)]
fn tenant(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    req.metadata_mut()
        .insert("x-tenant", "blue".parse().expect("ascii"));
    Ok(req)
}

#[allow(clippy::result_large_err)]
fn refuse(_req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
    Err(Status::unauthenticated("no credentials"))
}

/// `with_interceptor` wants a response body that is `Default`; the tunnel's
/// is not (yet), tonic's is. See `response_body_is_default` below.
fn tonic_body(resp: Response<ResponseBody>) -> Response<Body> {
    resp.map(Body::new)
}

async fn interceptor_check<C: Channel>(via: &str, _side: &Side, tunnel: &TunnelChannel, chan: C) {
    let whoami = EchoRequest {
        echo_metadata: true,
        ..Default::default()
    };
    // As a tower layer, above a buffer and a timeout.
    let stack = ServiceBuilder::new()
        .layer(tonic::service::InterceptorLayer::new(tenant))
        .buffer(16)
        .timeout(CLIENT_TIMEOUT)
        .service(chan.clone());
    let resp = EchoServiceClient::new(stack)
        .unary(whoami.clone())
        .await
        .expect("intercepted call")
        .into_inner();
    assert_eq!(seen(&resp, "x-tenant").as_deref(), Some("blue"), "{via}");

    // As the generated client's own interceptor.
    let mapped = ServiceBuilder::new()
        .map_response(tonic_body)
        .service(chan.clone());
    let resp = EchoServiceClient::with_interceptor(mapped.clone(), request_id)
        .unary(whoami.clone())
        .await
        .expect("intercepted call")
        .into_inner();
    assert_eq!(
        seen(&resp, "x-request-id").as_deref(),
        Some("req-7"),
        "{via}"
    );

    // A refusing interceptor fails the call before any stream is opened.
    let streams = tunnel.stats().streams_total;
    let err = EchoServiceClient::with_interceptor(mapped, refuse)
        .unary(whoami)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{via}");
    assert_eq!(err.message(), "no credentials");
    assert_eq!(tunnel.stats().streams_total, streams, "{via}: no stream");
    assert!(!tunnel.is_closed(), "{via}");
}

#[tokio::test]
async fn interceptors_add_metadata_the_handler_sees() {
    both_directions!(interceptor_check);
}

/// Generated clients' `with_interceptor` requires the channel's response
/// body to be `Default`, as tonic's `Channel` body is: a `TunnelChannel`
/// goes straight in, no body mapping needed.
#[tokio::test]
async fn generated_client_with_interceptor_takes_a_tunnel_channel() {
    bounded(async {
        let server = tonic_server(grpctunnel::TunnelLayer::new(), Echo::new()).await;
        let tunnel = forward(server.addr).await;
        let mut client =
            EchoServiceClient::with_interceptor(tunnel, |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("x-intercepted", "yes".parse().unwrap());
                Ok(req)
            });
        let resp = client
            .unary(EchoRequest {
                echo_metadata: true,
                ..Default::default()
            })
            .await
            .expect("call through the interceptor")
            .into_inner();
        assert!(
            resp.metadata
                .iter()
                .any(|e| e.key == "x-intercepted" && e.value == "yes"),
            "{:?}",
            resp.metadata
        );
    })
    .await
}
