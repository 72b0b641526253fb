//! The tunnel layer inside a production-style server stack.
//!
//! Layers *in front of* the tunnel layer (trace, timeout, concurrency limit,
//! bearer auth) see each opening RPC once: they decide who may open a tunnel.
//! Layers *inside* it, on the service given to `TunnelLayer::tunnel_service`
//! (trace, per-call authorization, a deadline), see every tunneled call.
//!
//! ```text
//! trace -> timeout -> limit -> authenticate -> TunnelLayer --(plain calls)--> echo
//!                                                 |
//!                                                 +--(tunneled calls)--> trace -> authorize
//!                                                                   -> identity -> deadline -> echo
//! ```

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::*;
use grpctunnel::{TunnelChannel, TunnelLayer};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse},
    Echo,
};
use http::{header, Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::{wrappers::TcpListenerStream, StreamExt};
use tonic::{body::Body, service::Routes, transport::Server, Code, Status};
use tower::{timeout::error::Elapsed, util::BoxCloneSyncService, BoxError, ServiceBuilder};
use tower_http::{
    auth::AsyncRequireAuthorizationLayer, trace::TraceLayer,
    validate_request::ValidateRequestHeaderLayer,
};

const OPEN_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenTunnel";
const SERVER_STREAM: &str = "/grpctunnel.testing.v1.EchoService/ServerStream";
/// Timeout of the server-wide layer, in front of the tunnel layer. The
/// tunnel's opening must beat it on a loaded 2-core machine, and each gap
/// between these figures is a second or more, so that none of them is a
/// race.
const SERVER_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of each tunneled call, inside the tunnel layer.
const TUNNELED_DEADLINE: Duration = Duration::from_secs(4);
/// Concurrency limit in front of the tunnel layer: one request at a time.
const OUTER_LIMIT: usize = 1;
/// Longer than [`SERVER_TIMEOUT`], shorter than [`TUNNELED_DEADLINE`].
const MEDIUM_MS: u32 = 2_000;
/// Longer than any deadline here; cut short by cancellation.
const SLOW_MS: u32 = 30_000;

// ----- auth ----------------------------------------------------------------

/// Who a bearer token belongs to; inserted as a request extension.
#[derive(Clone, Debug, PartialEq)]
struct Identity {
    name: &'static str,
    admin: bool,
}

fn identity_for(token: &str) -> Option<Identity> {
    match token {
        "alice-token" => Some(Identity {
            name: "alice",
            admin: false,
        }),
        "root-token" => Some(Identity {
            name: "root",
            admin: true,
        }),
        _ => None,
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Bearer auth in front of everything. A rejected gRPC request gets a gRPC
/// answer (HTTP 200, trailers-only, `grpc-status: 16`), anything else an HTTP
/// 401. An accepted one carries the caller's [`Identity`].
async fn authenticate<B, R: Default>(mut req: Request<B>) -> Result<Request<B>, Response<R>> {
    let identity = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(identity_for);
    match identity {
        Some(identity) => {
            req.extensions_mut().insert(identity);
            Ok(req)
        }
        None if is_grpc(&req) => {
            Err(Status::unauthenticated("missing or unknown bearer token").into_http())
        }
        None => Err(Response::builder()
            .status(http::StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Bearer")
            .body(R::default())
            .expect("valid response")),
    }
}

/// Per-call authorization inside the tunnel: reads the [`Identity`] that the
/// tunnel copied from its opening RPC; `ServerStream` is for admins only.
async fn authorize<B, R: Default>(req: Request<B>) -> Result<Request<B>, Response<R>> {
    let Some(identity) = req.extensions().get::<Identity>() else {
        return Err(Status::unauthenticated("no identity on a tunneled call").into_http());
    };
    if req.uri().path() == SERVER_STREAM && !identity.admin {
        let msg = format!("{} may not call ServerStream", identity.name);
        return Err(Status::permission_denied(msg).into_http());
    }
    Ok(req)
}

/// Copies the caller's identity into a header, so that `echo_metadata`
/// reports what the handler saw.
fn expose_identity<B>(mut req: Request<B>) -> Request<B> {
    if let Some(identity) = req.extensions().get::<Identity>() {
        let name = http::HeaderValue::from_static(identity.name);
        req.headers_mut().insert("x-identity", name);
    }
    req
}

/// A tower timeout fails with `Elapsed`, which gRPC reports as UNKNOWN
/// `request timed out`; as a `Status` it is DEADLINE_EXCEEDED.
fn deadline_status(err: BoxError) -> BoxError {
    if err.is::<Elapsed>() {
        Status::deadline_exceeded("server deadline exceeded").into()
    } else {
        err
    }
}

// ----- servers -------------------------------------------------------------

/// Request paths seen by a trace layer.
#[derive(Clone, Default)]
struct PathLog(Arc<Mutex<Vec<String>>>);

impl PathLog {
    fn trace(&self) -> impl Fn(&Request<Body>, &tracing::Span) + Clone + Send + Sync + 'static {
        let log = self.0.clone();
        move |req: &Request<Body>, _span: &tracing::Span| {
            log.lock().unwrap().push(req.uri().path().to_owned())
        }
    }

    fn count(&self, path: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|p| *p == path).count()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn to_body<B>(resp: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    resp.map(Body::new)
}

type Tunneled = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// What serves tunneled calls: trace, per-call authorization, identity,
/// deadline, echo. With `map_deadline` false the bare tower timeout error
/// is left as it is.
fn tunneled(echo: &Echo, inner_log: &PathLog, map_deadline: bool) -> Tunneled {
    let routes = Routes::new(echo.clone().server());
    let stack = ServiceBuilder::new()
        .map_response(to_body)
        .layer(TraceLayer::new_for_grpc().on_request(inner_log.trace()))
        .layer(AsyncRequireAuthorizationLayer::new(authorize::<Body, Body>))
        .map_request(expose_identity::<Body>);
    if map_deadline {
        let svc = stack
            .map_err(deadline_status)
            .timeout(TUNNELED_DEADLINE)
            .service(routes);
        BoxCloneSyncService::new(svc)
    } else {
        BoxCloneSyncService::new(stack.timeout(TUNNELED_DEADLINE).service(routes))
    }
}

/// A server task on loopback; aborted when dropped.
struct Running {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Stack {
    server: Running,
    echo: Echo,
    layer: TunnelLayer,
    outer: PathLog,
    inner: PathLog,
}

/// A tonic server: trace, timeout, limit and auth in front of the tunnel
/// layer; the [`tunneled`] stack inside it.
async fn tonic_stack(map_deadline: bool) -> Stack {
    let (echo, outer, inner) = (Echo::new(), PathLog::default(), PathLog::default());
    let layer = TunnelLayer::new().tunnel_service(tunneled(&echo, &inner, map_deadline));
    let (listener, addr) = listener().await;
    let router = Server::builder()
        .layer(TraceLayer::new_for_grpc().on_request(outer.trace()))
        .layer(
            ServiceBuilder::new()
                .map_err(deadline_status)
                .timeout(SERVER_TIMEOUT),
        )
        .layer(tower::limit::ConcurrencyLimitLayer::new(OUTER_LIMIT))
        .layer(AsyncRequireAuthorizationLayer::new(
            authenticate::<Body, Body>,
        ))
        .layer(layer.clone())
        .add_service(echo.clone().server());
    let task = tokio::spawn(async move {
        router
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("server");
    });
    let server = Running { addr, task };
    Stack {
        server,
        echo,
        layer,
        outer,
        inner,
    }
}

async fn open_as(
    addr: std::net::SocketAddr,
    token: &str,
) -> Result<TunnelChannel, grpctunnel::Error> {
    TunnelChannel::builder()
        .metadata("authorization", &format!("Bearer {token}"))
        .open(connect(addr).await)
        .await
}

fn seen(resp: &EchoResponse, key: &str) -> Option<String> {
    resp.metadata
        .iter()
        .find(|e| e.key == key)
        .map(|e| String::from_utf8_lossy(&e.value).into_owned())
}

/// The status a server-streaming call failed with. Over plain HTTP/2 a
/// rejection before any response headers (trailers-only) fails the call
/// itself; through a tunnel it arrives with the first message, because the
/// tunnel server sends empty `response_headers` before `close_stream`
/// (P-63) and the tunnel client passes those headers on.
async fn stream_status(
    res: Result<tonic::Response<tonic::Streaming<EchoResponse>>, Status>,
) -> Status {
    match res {
        Err(status) => status,
        Ok(resp) => {
            let mut stream = resp.into_inner();
            match stream.message().await {
                Err(status) => status,
                Ok(msg) => panic!("expected the call to fail, got {msg:?}"),
            }
        }
    }
}

fn whoami() -> EchoRequest {
    EchoRequest {
        echo_metadata: true,
        ..Default::default()
    }
}

// ----- tests ---------------------------------------------------------------

#[tokio::test]
async fn opening_without_a_valid_token_fails_with_unauthenticated() {
    bounded(async {
        let s = tonic_stack(true).await;
        for builder in [
            TunnelChannel::builder(),
            TunnelChannel::builder().metadata("authorization", "Bearer wrong"),
        ] {
            let err = builder
                .open(connect(s.server.addr).await)
                .await
                .expect_err("rejected");
            let status = err.status().expect("rejected with a status");
            assert_eq!(status.code(), Code::Unauthenticated, "{err:?}");
            assert_eq!(status.message(), "missing or unknown bearer token");
        }
        // Rejected in front of the tunnel layer: no tunnel was ever served.
        assert_eq!(s.layer.stats().tunnels_total, 0);
        assert_eq!(s.outer.count(OPEN_TUNNEL), 2);
        // Plain calls need the token too.
        let err = EchoServiceClient::new(connect(s.server.addr).await)
            .unary(EchoRequest::default())
            .await
            .expect_err("plain call without token");
        assert_eq!(err.code(), Code::Unauthenticated);
    })
    .await
}

#[tokio::test]
async fn identity_from_auth_reaches_every_tunneled_handler() {
    bounded(async {
        let s = tonic_stack(true).await;
        let tunnel = open_as(s.server.addr, "alice-token").await.expect("open");
        let mut client = EchoServiceClient::new(tunnel.clone());
        for _ in 0..3 {
            let resp = client.unary(whoami()).await.expect("unary").into_inner();
            assert_eq!(seen(&resp, "x-identity").as_deref(), Some("alice"));
            // The token authenticated the tunnel; it is not on each call.
            assert_eq!(seen(&resp, "authorization"), None);
        }
        let mut bidi = client
            .bidi(tokio_stream::iter([whoami()]))
            .await
            .expect("bidi")
            .into_inner();
        let first = bidi.next().await.expect("a response").expect("ok");
        assert_eq!(seen(&first, "x-identity").as_deref(), Some("alice"));
        assert!(bidi.next().await.is_none());

        // The outer stack saw one request (the opening RPC), the inner one
        // every tunneled call.
        assert_eq!(s.outer.len(), 1);
        assert_eq!(s.outer.count(OPEN_TUNNEL), 1);
        assert_eq!(s.inner.count(raw::UNARY), 3);
        assert_eq!(s.inner.count(raw::BIDI), 1);
        assert_eq!(s.inner.count(OPEN_TUNNEL), 0);
    })
    .await
}

#[tokio::test]
async fn per_call_authorization_denies_some_calls_and_the_tunnel_stays_open() {
    bounded(async {
        let s = tonic_stack(true).await;
        let alice = open_as(s.server.addr, "alice-token").await.expect("open");
        let mut client = EchoServiceClient::new(alice.clone());
        for round in 0..2 {
            let tag = format!("denied-{round}");
            let err = stream_status(
                client
                    .server_stream(EchoRequest {
                        tag: tag.clone(),
                        ..Default::default()
                    })
                    .await,
            )
            .await;
            assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
            assert_eq!(err.message(), "alice may not call ServerStream");
            assert!(!s.echo.handler_state(&tag).started, "handler never ran");

            let resp = client.unary(whoami()).await.expect("unary allowed");
            assert_eq!(seen(resp.get_ref(), "x-identity").as_deref(), Some("alice"));
            assert!(!alice.is_closed(), "a denied call does not end the tunnel");
            assert_eq!(alice.active_calls(), 0);
        }

        // Another caller's tunnel on the same server: root may stream.
        let root = open_as(s.server.addr, "root-token").await.expect("open");
        let mut stream = EchoServiceClient::new(root)
            .server_stream(EchoRequest {
                repeat: 3,
                ..Default::default()
            })
            .await
            .expect("root may stream")
            .into_inner();
        let mut n = 0;
        while let Some(msg) = stream.next().await {
            msg.expect("message");
            n += 1;
        }
        assert_eq!(n, 3);
        assert!(!alice.is_closed());
    })
    .await
}

#[tokio::test]
async fn server_wide_timeout_and_limit_apply_to_opening_rpcs_not_to_tunnels() {
    bounded(async {
        let s = tonic_stack(true).await;
        let tunnel = open_as(s.server.addr, "alice-token").await.expect("open");
        let mut client = EchoServiceClient::new(tunnel.clone());

        // A tunneled call longer than the server-wide timeout succeeds: that
        // timeout bounds the opening RPC's response headers, which the tunnel
        // sent at once, and tunneled calls never pass through it.
        let slow = EchoRequest {
            sleep_ms: MEDIUM_MS,
            payload: "slow".into(),
            ..Default::default()
        };
        let resp = client
            .unary(slow.clone())
            .await
            .expect("tunneled slow call");
        assert_eq!(resp.into_inner().payload, "slow");
        assert!(!tunnel.is_closed(), "the tunnel outlived the timeout");

        // The same call without a tunnel is cut by the server-wide timeout.
        let mut plain = EchoServiceClient::new(connect(s.server.addr).await);
        let mut req = tonic::Request::new(slow);
        req.metadata_mut()
            .insert("authorization", "Bearer alice-token".parse().unwrap());
        let err = plain.unary(req).await.expect_err("plain slow call");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert_eq!(err.message(), "server deadline exceeded");

        // The concurrency limit (1) counts requests until their response
        // headers: an open tunnel holds no slot, so a second tunnel and a
        // plain call still get through while the first tunnel is open.
        let second = open_as(s.server.addr, "root-token").await.expect("open");
        let mut req = tonic::Request::new(EchoRequest::default());
        req.metadata_mut()
            .insert("authorization", "Bearer root-token".parse().unwrap());
        plain.unary(req).await.expect("plain call");
        EchoServiceClient::new(second.clone())
            .unary(EchoRequest::default())
            .await
            .expect("second tunnel");
        client
            .unary(EchoRequest::default())
            .await
            .expect("first tunnel");
        assert_eq!(s.layer.stats().tunnels_open, 2);
    })
    .await
}

#[tokio::test]
async fn deadline_inside_the_tunnel_ends_slow_calls_and_frees_the_stream() {
    bounded(async {
        // (stack with the timeout error mapped?, code and message expected)
        let cases = [
            (true, Code::DeadlineExceeded, "server deadline exceeded"),
            // The trap: a bare tower timeout fails with `Elapsed`, which
            // tonic's `Status::from_error` cannot place: UNKNOWN.
            (false, Code::Unknown, "request timed out"),
        ];
        for (map_deadline, code, message) in cases {
            let s = tonic_stack(map_deadline).await;
            let tunnel = open_as(s.server.addr, "alice-token").await.expect("open");
            let mut client = EchoServiceClient::new(tunnel.clone());
            let err = client
                .unary(EchoRequest {
                    sleep_ms: SLOW_MS,
                    tag: "slow".into(),
                    ..Default::default()
                })
                .await
                .expect_err("cut by the tunneled deadline");
            assert_eq!(err.code(), code, "{err:?}");
            assert_eq!(err.message(), message);
            assert_eq!(tunnel.active_calls(), 0, "client end of the stream freed");
            let state = s.echo.wait_handler("slow", TEST_TIMEOUT).await;
            assert!(state.started && state.cancelled, "{state:?}");
            client
                .unary(EchoRequest::default())
                .await
                .expect("tunnel still serves");
            assert!(!tunnel.is_closed());
        }

        // A caller's own deadline (`grpc-timeout`) is honoured as well, and
        // the shorter of the two wins.
        let s = tonic_stack(true).await;
        let tunnel = open_as(s.server.addr, "alice-token").await.expect("open");
        let mut req = tonic::Request::new(EchoRequest {
            sleep_ms: SLOW_MS,
            tag: "caller-deadline".into(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_millis(100));
        let err = EchoServiceClient::new(tunnel.clone())
            .unary(req)
            .await
            .expect_err("caller deadline");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert_eq!(tunnel.active_calls(), 0);
        let state = s.echo.wait_handler("caller-deadline", TEST_TIMEOUT).await;
        assert!(state.started && state.cancelled, "{state:?}");
    })
    .await
}

/// A bearer check that answers HTTP 401 (as tower-http's deprecated
/// `ValidateRequestHeaderLayer::bearer` does), not a gRPC status.
#[allow(clippy::result_large_err)]
fn http_401(req: &mut Request<Body>) -> Result<(), Response<Body>> {
    match req.headers().get(header::AUTHORIZATION) {
        Some(v) if v == "Bearer s3cret" => Ok(()),
        _ => Err(Response::builder()
            .status(http::StatusCode::UNAUTHORIZED)
            .body(Body::empty())
            .expect("valid response")),
    }
}

async fn http_401_server() -> Running {
    let (listener, addr) = listener().await;
    let task = tokio::spawn(async move {
        Server::builder()
            .layer(ValidateRequestHeaderLayer::custom(http_401))
            .layer(TunnelLayer::new())
            .add_service(Echo::new().server())
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .expect("server");
    });
    Running { addr, task }
}

/// tonic maps an HTTP 401 without `grpc-status` to UNAUTHENTICATED (gRPC's
/// HTTP status table), so a plain HTTP bearer check keeps tunnels out too,
/// with a less useful message than a real gRPC status. `open` itself does
/// not notice the 401 yet (see the ignored test below): the tunnel ends at
/// once, with that status as its terminal error.
#[tokio::test]
async fn http_401_from_a_plain_bearer_check_ends_the_tunnel_with_unauthenticated() {
    bounded(async {
        let server = http_401_server().await;
        let err = match TunnelChannel::builder()
            .open(connect(server.addr).await)
            .await
        {
            Err(err) => err,
            Ok(tunnel) => tunnel.closed().await,
        };
        let status = err.status().expect("a status");
        assert_eq!(status.code(), Code::Unauthenticated, "{err:?}");
        assert!(status.message().contains("401"), "{status:?}");

        let tunnel = TunnelChannel::builder()
            .metadata("authorization", "Bearer s3cret")
            .open(connect(server.addr).await)
            .await
            .expect("token accepted");
        EchoServiceClient::new(tunnel)
            .unary(EchoRequest::default())
            .await
            .expect("tunneled call");
    })
    .await
}

#[tokio::test]
async fn open_fails_when_the_opening_rpc_gets_http_401() {
    bounded(async {
        let server = http_401_server().await;
        let err = TunnelChannel::builder()
            .open(connect(server.addr).await)
            .await
            .expect_err("HTTP 401: no tunnel");
        let status = err.status().expect("a status");
        assert_eq!(status.code(), Code::Unauthenticated, "{err:?}");
    })
    .await
}

#[tokio::test]
async fn axum_router_with_auth_and_per_call_authz_serves_plain_http_too() {
    bounded(async {
        use axum::{routing::get, Extension};

        let echo = Echo::new();
        let router = axum::Router::new()
            .route(
                "/whoami",
                get(|Extension(id): Extension<Identity>| async move { id.name }),
            )
            .route_service(
                "/grpctunnel.testing.v1.EchoService/{*method}",
                ServiceBuilder::new()
                    .map_request(expose_identity::<axum::body::Body>)
                    .service(echo.clone().server()),
            );
        let tunneled = ServiceBuilder::new()
            .layer(AsyncRequireAuthorizationLayer::new(
                authorize::<Body, axum::body::Body>,
            ))
            .service(router.clone());
        // No body conversion: the tunnel layer answers in the router's own
        // body type.
        let app = ServiceBuilder::new()
            .layer(AsyncRequireAuthorizationLayer::new(
                authenticate::<axum::body::Body, axum::body::Body>,
            ))
            .layer(TunnelLayer::new().tunnel_service(tunneled))
            .service(router);
        let (listener, addr) = listener().await;
        tokio::spawn(async move { axum::serve(listener, tower::make::Shared::new(app)).await });

        // Plain HTTP on the same port: 401 without a token, the identity
        // with one.
        let text = http_get(addr, "/whoami", None).await;
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        let text = http_get(addr, "/whoami", Some("alice-token")).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("\r\n\r\nalice"), "{text}");

        // gRPC through a tunnel.
        let err = TunnelChannel::builder()
            .open(connect(addr).await)
            .await
            .expect_err("no token");
        assert_eq!(err.status().map(Status::code), Some(Code::Unauthenticated));
        let tunnel = open_as(addr, "alice-token").await.expect("open");
        let mut client = EchoServiceClient::new(tunnel.clone());
        let resp = client.unary(whoami()).await.expect("unary").into_inner();
        assert_eq!(seen(&resp, "x-identity").as_deref(), Some("alice"));
        let err = stream_status(
            client
                .server_stream(EchoRequest {
                    tag: "denied".into(),
                    ..Default::default()
                })
                .await,
        )
        .await;
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(!echo.handler_state("denied").started);
        client.unary(whoami()).await.expect("still allowed");
        assert!(!tunnel.is_closed());
        assert_eq!(tunnel.active_calls(), 0);
    })
    .await
}

/// A one-shot HTTP/1.1 GET; returns the whole response text.
async fn http_get(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> String {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\n{auth}connection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("read");
    text
}

#[tokio::test]
#[ignore = "needs the tunnel client to turn empty response_headers directly followed by close_stream into a trailers-only response (src/client/future.rs)"]
async fn tunneled_rejection_fails_a_streaming_call_itself_as_over_http2() {
    bounded(async {
        let s = tonic_stack(true).await;
        let alice = open_as(s.server.addr, "alice-token").await.expect("open");
        let err = EchoServiceClient::new(alice)
            .server_stream(EchoRequest::default())
            .await
            .expect_err("trailers-only: the call itself fails");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    })
    .await
}
