//! The whole case matrix against [`Echo`] over plain tonic (no tunnel): proves
//! the service and the runner agree.

use std::time::Duration;

use grpctunnel_testing::pb::{EchoRequest, EchoResponse, ErrorSpec, MetadataEntry};
use grpctunnel_testing::{run_cases, CaseOptions, Echo, CASE_NAMES};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Server};
use tonic_prost::ProstCodec;

/// A plain tonic server for `echo` on 127.0.0.1:0 and a channel to it. The
/// listener is bound before the server task starts, so the channel can
/// connect at once.
async fn serve(echo: Echo) -> (Channel, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        Server::builder()
            .add_service(echo.server())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            })
            .await
            .expect("server");
    });
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (channel, stop, server)
}

#[tokio::test]
async fn case_matrix_passes_over_plain_tonic() {
    let (channel, stop, server) = serve(Echo::new()).await;
    let opts = CaseOptions {
        // Plain tonic answers an expired deadline with CANCELLED.
        deadline_code: tonic::Code::Cancelled,
        flow_control: true,
        ..CaseOptions::default()
    };
    // Spawned, which also proves the runner's future is `Send`.
    let matrix = tokio::spawn(async move { run_cases(channel, &opts).await });
    let report = tokio::time::timeout(Duration::from_secs(300), matrix)
        .await
        .expect("matrix timed out")
        .expect("matrix task");
    print!("{report}");
    assert!(report.is_success(), "failures: {:?}", report.failures());
    assert_eq!(report.results.len(), CASE_NAMES.len());
    assert!(report.skipped.is_empty());
    stop.send(()).ok();
    server.await.expect("server task");
}

#[tokio::test]
async fn slow_consumer_is_skipped_without_flow_control() {
    let (channel, _stop, _server) = serve(Echo::new()).await;
    let opts = CaseOptions {
        flow_control: false,
        only: Some(vec!["slow_consumer".to_owned(), "unary".to_owned()]),
        ..CaseOptions::default()
    };
    let report = run_cases(channel, &opts).await;
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].0, "slow_consumer");
    assert_eq!(report.results.len(), 1);
    assert!(report.is_success(), "{report}");
    let text = report.to_string();
    assert!(text.contains("PASS unary\n"), "{text}");
    assert!(text.contains("SKIP slow_consumer: "), "{text}");
    assert!(text.ends_with("1 passed, 0 failed\n"), "{text}");
}

#[tokio::test]
async fn deadline_code_mismatch_fails_the_case() {
    let (channel, _stop, _server) = serve(Echo::new()).await;
    // Plain tonic reports CANCELLED, so insisting on DEADLINE_EXCEEDED fails.
    let opts = CaseOptions {
        only: Some(vec!["deadline".to_owned()]),
        ..CaseOptions::default()
    };
    let report = run_cases(channel, &opts).await;
    assert_eq!(report.failed(), 1, "{report}");
    let text = report.to_string();
    assert!(text.starts_with("FAIL deadline: "), "{text}");
}

#[tokio::test]
async fn handler_states_are_visible_locally() {
    let echo = Echo::new();
    let (channel, _stop, _server) = serve(echo.clone()).await;
    let mut client = grpctunnel_testing::client(channel);
    let req = EchoRequest {
        tag: "local-finished".to_owned(),
        ..Default::default()
    };
    client.unary(req).await.expect("unary");
    let state = echo
        .wait_handler("local-finished", Duration::from_secs(3))
        .await;
    assert!(
        state.started && state.finished && !state.cancelled,
        "{state:?}"
    );
    let unknown = echo.handler_state("never-used");
    assert_eq!(unknown, Default::default());
}

#[test]
fn echo_server_is_clone_send_sync() {
    fn assert_all<T: Clone + Send + Sync + 'static>() {}
    assert_all::<grpctunnel_testing::EchoServer>();
    assert_all::<Echo>();
    // Accepted by tonic's router as well as by `Server::add_service`.
    let _routes = tonic::service::Routes::new(Echo::new().server());
}

/// A raw `tonic::client::Grpc` for the echo paths, so headers, messages and
/// trailers can be observed separately whatever the call shape.
fn raw(channel: Channel) -> tonic::client::Grpc<Channel> {
    tonic::client::Grpc::new(channel)
}

fn entry(key: &str, value: &[u8]) -> MetadataEntry {
    MetadataEntry {
        key: key.to_owned(),
        value: bytes::Bytes::copy_from_slice(value),
    }
}

/// Unary errors go out as headers, then trailers (never trailers-only), so
/// that response headers and trailers both reach a caller that looks.
#[tokio::test]
async fn unary_error_is_headers_then_trailers() {
    let (channel, _stop, _server) = serve(Echo::new()).await;
    let mut grpc = raw(channel);
    grpc.ready().await.expect("ready");
    let req = EchoRequest {
        response_headers: vec![entry("x-h", b"h")],
        response_trailers: vec![entry("x-t", b"t")],
        error: Some(ErrorSpec {
            code: tonic::Code::NotFound as i32,
            message: "nope".to_owned(),
            details: vec![],
        }),
        ..Default::default()
    };
    let response = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![req])),
            PathAndQuery::from_static("/grpctunnel.testing.v1.EchoService/Unary"),
            ProstCodec::<EchoRequest, EchoResponse>::default(),
        )
        .await
        .expect("headers arrive before the error");
    assert_eq!(
        response.metadata().get("x-h").map(|v| v.as_bytes()),
        Some(&b"h"[..])
    );
    assert!(!response.metadata().contains_key("x-t"));
    let mut stream = response.into_inner();
    let status = stream.message().await.expect_err("error after headers");
    assert_eq!(status.code(), tonic::Code::NotFound);
    assert_eq!(status.message(), "nope");
    assert_eq!(
        status.metadata().get("x-t").map(|v| v.as_bytes()),
        Some(&b"t"[..])
    );
}

/// A successful unary call sends its trailers after the response message.
#[tokio::test]
async fn unary_success_sends_trailers() {
    let (channel, _stop, _server) = serve(Echo::new()).await;
    let mut grpc = raw(channel);
    grpc.ready().await.expect("ready");
    let req = EchoRequest {
        payload: bytes::Bytes::from_static(b"p"),
        response_trailers: vec![entry("x-t", b"t1"), entry("x-t", b"t2")],
        ..Default::default()
    };
    let response = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(vec![req])),
            PathAndQuery::from_static("/grpctunnel.testing.v1.EchoService/Unary"),
            ProstCodec::<EchoRequest, EchoResponse>::default(),
        )
        .await
        .expect("unary");
    let mut stream = response.into_inner();
    let m = stream
        .message()
        .await
        .expect("message")
        .expect("one message");
    assert_eq!(&m.payload[..], b"p");
    assert!(stream.message().await.expect("clean end").is_none());
    let trailers = stream
        .trailers()
        .await
        .expect("trailers")
        .expect("some trailers");
    let values: Vec<&[u8]> = trailers
        .get_all("x-t")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    assert_eq!(values, vec![&b"t1"[..], &b"t2"[..]]);
}

/// Bad requests are refused with INVALID_ARGUMENT, never a panic, and the
/// service keeps serving.
#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let (channel, _stop, _server) = serve(Echo::new()).await;
    let mut client = grpctunnel_testing::client(channel);
    let bad = [
        EchoRequest {
            response_headers: vec![entry("x-bad", b"line\nbreak")],
            ..Default::default()
        },
        EchoRequest {
            response_trailers: vec![entry("Bad Key", b"v")],
            ..Default::default()
        },
        EchoRequest {
            response_size: u32::MAX,
            ..Default::default()
        },
    ];
    for req in bad {
        let status = client.unary(req.clone()).await.expect_err("refused");
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{req:?}: {status:?}"
        );
    }
    let ok = client
        .unary(EchoRequest::default())
        .await
        .expect("still serving");
    assert_eq!(ok.into_inner().count, 1);
}
