//! Protocol violations against our tunnel server, tunnel-level: stream IDs,
//! frames for unknown streams, revisions, negotiation, undecodable frames
//! and the end of the opening RPC; plus what a raw peer can check of the
//! server's own frames (window of `new_stream`, `grpc-timeout`, raw binary
//! metadata). A raw tunnel client writes frames by hand over a real
//! `OpenTunnel` RPC (PROTOCOL.md §2, §3.1, §3.2, §4, §5, §6).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{raw::*, *};
use grpctunnel::{
    pb::{self, client_to_server::Frame as C2S, server_to_client::Frame as S2C},
    Revision, TunnelLayer, DEFAULT_INITIAL_WINDOW_SIZE,
};
use grpctunnel_testing::{
    pb::{EchoRequest, EchoResponse},
    Echo,
};
use prost::Message;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// Starts a full-duplex bidi call tagged `tag` on stream `id` and waits for
/// its first answer, so that its handler is known to be running.
async fn start_bidi(raw: &mut RawClient, id: i64, tag: &str) {
    raw.send(id, new_stream(BIDI, raw.revision));
    let first = EchoRequest {
        tag: tag.to_owned(),
        ..Default::default()
    };
    raw.send(id, request(&first.encode_to_vec()));
    assert!(matches!(raw.next_for(id).await, S2C::ResponseHeaders(_)));
    assert!(matches!(raw.next_for(id).await, S2C::ResponseMessage(_)));
}

#[tokio::test]
async fn new_stream_with_id_of_active_stream_is_fatal() {
    bounded(async {
        let echo = Echo::new();
        let server = tonic_server(TunnelLayer::new(), echo.clone()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        start_bidi(&mut raw, 1, "dup-active").await;
        raw.send(1, new_stream(UNARY, 1));
        raw.expect_fatal("cannot create stream ID 1: already exists")
            .await;
        // The end of the tunnel cancels the handlers it was running.
        let state = echo.wait_handler("dup-active", WAIT).await;
        assert!(state.cancelled && !state.finished, "{state:?}");
    })
    .await
}

#[tokio::test]
async fn new_stream_with_decreasing_id_is_fatal() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.unary(5, 1).await;
        raw.send(3, new_stream(UNARY, 1));
        raw.expect_fatal("cannot create stream ID 3: that ID has already been used")
            .await;
    })
    .await
}

#[tokio::test]
async fn new_stream_reusing_finished_id_is_fatal() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.unary(1, 1).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.expect_fatal("cannot create stream ID 1: that ID has already been used")
            .await;
    })
    .await
}

#[tokio::test]
async fn new_stream_with_negative_id_is_fatal() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(-1, new_stream(UNARY, 1));
        raw.expect_fatal("cannot create stream ID -1: that ID has already been used")
            .await;

        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(-42, new_stream(UNARY, 1));
        raw.expect_fatal("cannot create stream ID -42: that ID has already been used")
            .await;
    })
    .await
}

#[tokio::test]
async fn first_stream_may_have_id_zero() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.unary(0, 1).await;
        raw.unary(7, 2).await; // gaps are fine (P-19)
    })
    .await
}

#[tokio::test]
async fn frame_for_never_created_id_is_fatal() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.unary(1, 1).await;
        raw.send(2, request(&echo_request(2)));
        raw.expect_fatal("received frame for stream ID 2: stream never created")
            .await;

        // Also when no stream was ever created, and for any frame kind.
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(0, C2S::WindowUpdate(10));
        raw.expect_fatal("received frame for stream ID 0: stream never created")
            .await;
    })
    .await
}

#[tokio::test]
async fn frames_for_finished_id_are_dropped() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.unary(1, 1).await;
        raw.unary(2, 2).await;
        for id in [1, 2] {
            raw.send(id, request(&echo_request(9)));
            raw.send(id, C2S::MoreRequestData(Bytes::from_static(b"late")));
            raw.send(id, envelope(3, &b"abcdef"[..]));
            raw.send(id, C2S::HalfClose(()));
            raw.send(id, C2S::WindowUpdate(1000));
            raw.send(id, C2S::Cancel(()));
            raw.send_raw(pb::ClientToServer {
                stream_id: id,
                frame: None,
            });
        }
        // Negative IDs are never created and always "past" (P-23).
        raw.send(-1, C2S::WindowUpdate(5));
        raw.send(-9, request(&echo_request(9)));
        raw.unary(3, 3).await;
        // Nothing was answered for the dropped frames.
        assert!(raw.take_backlog().is_empty());
    })
    .await
}

#[tokio::test]
async fn window_update_for_past_id_is_dropped() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.unary(4, 1).await;
        // ID 2 was skipped, ID 4 is finished: both are "past".
        raw.send(2, C2S::WindowUpdate(65536));
        raw.send(4, C2S::WindowUpdate(u32::MAX));
        raw.unary(5, 2).await;
    })
    .await
}

#[tokio::test]
async fn unsupported_revision_is_rejected_and_its_id_recorded() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(1, new_stream(UNARY, 7));
        // A unary caller sends its request right after new_stream: with the
        // ID recorded (unlike Go's B-1) it is dropped, not fatal.
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        assert_eq!(frames.len(), 1, "only close_stream, no headers: {frames:?}");
        let S2C::CloseStream(close) = &frames[0] else {
            unreachable!()
        };
        assert_eq!(close.response_trailers, None, "P-28: only a status");
        let status = close.status.as_ref().expect("status");
        assert_eq!(status.code, Code::Unavailable as i32);
        assert_eq!(
            status.message,
            "server does not support protocol revision 7"
        );
        raw.send(1, C2S::WindowUpdate(5));
        raw.unary(2, 2).await;
        // And the ID counts as used.
        raw.send(1, new_stream(UNARY, 1));
        raw.expect_fatal("cannot create stream ID 1: that ID has already been used")
            .await;
    })
    .await
}

#[tokio::test]
async fn revision_one_stream_is_accepted_without_negotiation() {
    bounded(async {
        // §10 item 8: the server decides per stream (P-17).
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let mut raw = RawClient::open(server.addr, false).await;
        raw.revision = 1;
        raw.unary(1, 1).await;
    })
    .await
}

#[tokio::test]
async fn settings_are_the_first_frame_when_negotiated() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, settings) = RawClient::negotiated(server.addr).await;
        assert_eq!(
            raw.headers.get(NEGOTIATE).and_then(|v| v.to_str().ok()),
            Some("on")
        );
        assert_eq!(settings.supported_protocol_revisions, vec![0, 1]);
        assert_eq!(settings.initial_window_size, DEFAULT_INITIAL_WINDOW_SIZE);
        raw.unary(1, 1).await;
        raw.unary(2, 2).await;
        let leftovers = raw.take_backlog();
        assert!(
            leftovers.iter().all(|f| f.stream_id != -1),
            "exactly one settings frame: {leftovers:?}"
        );
    })
    .await
}

#[tokio::test]
async fn no_settings_without_negotiate_header() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let mut raw = RawClient::open(server.addr, false).await;
        // The server still offers revision one in its headers (P-9)...
        assert_eq!(
            raw.headers.get(NEGOTIATE).and_then(|v| v.to_str().ok()),
            Some("on")
        );
        // ...but the first frame is the answer to our first stream.
        raw.send(1, new_stream(UNARY, 0));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::HalfClose(()));
        let first = raw.next().await;
        assert_eq!(first.stream_id, 1, "{first:?}");
        assert!(matches!(first.frame, Some(S2C::ResponseHeaders(_))));
    })
    .await
}

#[tokio::test]
async fn opening_rpc_headers_arrive_before_any_frame_is_sent() {
    bounded(async {
        // `RawClient::open` returns when the response headers arrived; it
        // has sent no frame and read none (P-9).
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let raw = RawClient::open(server.addr, true).await;
        assert_eq!(
            raw.headers.get(NEGOTIATE).and_then(|v| v.to_str().ok()),
            Some("on")
        );
    })
    .await
}

#[tokio::test]
async fn revision_zero_server_sends_no_negotiate_header_and_no_settings() {
    bounded(async {
        let layer = TunnelLayer::new().max_revision(Revision::Zero);
        let server = tonic_server(layer, Echo::new()).await;
        let mut raw = RawClient::open(server.addr, true).await;
        assert!(raw.headers.get(NEGOTIATE).is_none(), "{:?}", raw.headers);
        raw.send(1, new_stream(UNARY, 0));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::HalfClose(()));
        let first = raw.next().await;
        assert_eq!(first.stream_id, 1, "no settings: {first:?}");
        assert!(matches!(first.frame, Some(S2C::ResponseHeaders(_))));
    })
    .await
}

#[tokio::test]
async fn successful_close_stream_has_no_status() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        let close = frames.last().expect("close_stream").clone();
        let S2C::CloseStream(c) = &close else {
            unreachable!()
        };
        assert_eq!(c.status, None, "P-44: OK is an absent status");
        assert_eq!(c.response_trailers, Some(pb::Metadata::default()));
        // Byte for byte what the Go reference sends (P-44).
        let bytes = pb::ServerToClient {
            stream_id: 1,
            frame: Some(close),
        }
        .encode_to_vec();
        assert_eq!(bytes, [0x08, 0x01, 0x2A, 0x02, 0x0A, 0x00]);
    })
    .await
}

#[tokio::test]
async fn end_of_input_ends_the_tunnel_with_ok_and_cancels_handlers() {
    bounded(async {
        let echo = Echo::new();
        let server = tonic_server(TunnelLayer::new(), echo.clone()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        start_bidi(&mut raw, 1, "eof-a").await;
        start_bidi(&mut raw, 2, "eof-b").await;
        raw.close_input();
        let (frames, status) = raw.end().await;
        assert_eq!(status.code(), Code::Ok, "{status:?}");
        // P-67: teardown, not drain: the cancelled streams are not closed.
        assert!(
            frames
                .iter()
                .all(|f| !matches!(f.frame, Some(S2C::CloseStream(_)))),
            "{frames:?}"
        );
        for tag in ["eof-a", "eof-b"] {
            let state = echo.wait_handler(tag, WAIT).await;
            assert!(state.cancelled && !state.finished, "{tag}: {state:?}");
        }
    })
    .await
}

#[tokio::test]
async fn tunnel_keeps_working_after_a_rejected_stream_with_data() {
    bounded(async {
        // A rejected stream followed by everything a caller would send.
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(1, new_stream("no-slash", 1));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::MoreRequestData(Bytes::from_static(b"x")));
        raw.send(1, C2S::HalfClose(()));
        raw.send(1, C2S::Cancel(()));
        let frames = raw.until_close(1).await;
        assert_eq!(frames.len(), 1, "{frames:?}");
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn response_data_respects_the_window_of_new_stream() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let ask = EchoRequest {
            response_size: 5000,
            ..Default::default()
        };
        raw.send(
            1,
            C2S::NewStream(pb::NewStream {
                method_name: UNARY.into(),
                request_headers: None,
                initial_window_size: 1000,
                protocol_revision: 1,
            }),
        );
        raw.send(1, request(&ask.encode_to_vec()));
        raw.send(1, C2S::HalfClose(()));
        // Credit is granted only once the first 1000 bytes are all here, so
        // any byte beyond them would be an overrun (P-49).
        let (mut received, mut credit, mut size) = (0usize, 1000usize, 0usize);
        loop {
            let chunk = match raw.next_for(1).await {
                S2C::ResponseHeaders(_) => continue,
                S2C::ResponseMessage(m) => {
                    size = m.size as usize;
                    m.data.len()
                }
                S2C::MoreResponseData(d) => d.len(),
                S2C::CloseStream(c) => {
                    assert_eq!(c.status, None);
                    break;
                }
                other => panic!("unexpected {other:?}"),
            };
            received += chunk;
            assert!(received <= credit, "{received} bytes sent, credit {credit}");
            if received == 1000 {
                raw.send(1, C2S::WindowUpdate(100_000));
                credit += 100_000;
            }
        }
        assert!(size > 5000 && received == size, "{received} of {size}");
    })
    .await
}

#[tokio::test]
async fn grpc_timeout_in_request_headers_ends_the_stream() {
    bounded(async {
        let echo = Echo::new();
        let server = tonic_server(TunnelLayer::new(), echo.clone()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let slow = EchoRequest {
            sleep_ms: 60_000,
            tag: "timeout".into(),
            ..Default::default()
        };
        raw.send(
            1,
            C2S::NewStream(pb::NewStream {
                method_name: UNARY.into(),
                request_headers: Some(headers(&[("grpc-timeout", "50m")])),
                initial_window_size: RAW_WINDOW,
                protocol_revision: 1,
            }),
        );
        raw.send(1, request(&slow.encode_to_vec()));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((
                Code::DeadlineExceeded as i32,
                "context deadline exceeded".into()
            ))
        );
        let state = echo.wait_handler("timeout", WAIT).await;
        assert!(state.cancelled && !state.finished, "{state:?}");
        // An unparsable value is ignored (P-60).
        raw.send(
            2,
            C2S::NewStream(pb::NewStream {
                method_name: UNARY.into(),
                request_headers: Some(headers(&[("grpc-timeout", "soon")])),
                initial_window_size: RAW_WINDOW,
                protocol_revision: 1,
            }),
        );
        raw.send(2, request(&echo_request(2)));
        raw.send(2, C2S::HalfClose(()));
        let frames = raw.until_close(2).await;
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
    })
    .await
}

#[tokio::test]
async fn request_metadata_reaches_the_handler_with_raw_binary_values() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let ask = EchoRequest {
            echo_metadata: true,
            ..Default::default()
        };
        let md = headers(&[
            ("x-text", "a"),
            ("x-text", "b"),
            ("x-raw-bin", "\u{1}\u{2}é"),
            // Not valid in HTTP/2: skipped, not fatal (P-58).
            ("bad key", "v"),
            (":authority", "elsewhere"),
        ]);
        raw.send(
            1,
            C2S::NewStream(pb::NewStream {
                method_name: UNARY.into(),
                request_headers: Some(md),
                initial_window_size: RAW_WINDOW,
                protocol_revision: 1,
            }),
        );
        raw.send(1, request(&ask.encode_to_vec()));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        let resp = frames
            .iter()
            .find_map(|f| match f {
                S2C::ResponseMessage(m) => Some(EchoResponse::decode(m.data.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{frames:?}"))
            .expect("echo response");
        let seen: Vec<(String, Vec<u8>)> = resp
            .metadata
            .iter()
            .filter(|e| e.key.starts_with("x-"))
            .map(|e| (e.key.clone(), e.value.to_vec()))
            .collect();
        assert!(
            seen.contains(&("x-raw-bin".into(), "\u{1}\u{2}é".as_bytes().to_vec())),
            "{seen:?}"
        );
        let texts: Vec<_> = seen
            .iter()
            .filter(|(k, _)| k == "x-text")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(texts, [b"a".to_vec(), b"b".to_vec()]);
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn binary_response_headers_travel_raw_and_non_utf8_fails_only_that_stream() {
    bounded(async {
        // A raw peer does not offer base64 binary metadata; with the `Fail`
        // policy a value it cannot carry fails its stream.
        let layer = TunnelLayer::new().binary_metadata(grpctunnel::BinaryMetadata::Fail);
        let server = tonic_server(layer, Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let entry = |value: &[u8]| grpctunnel_testing::pb::MetadataEntry {
            key: "r-raw-bin".into(),
            value: Bytes::copy_from_slice(value),
        };
        let good = EchoRequest {
            response_headers: vec![entry(b"\x01\x02ok")],
            ..Default::default()
        };
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, request(&good.encode_to_vec()));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        let S2C::ResponseHeaders(md) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(
            md.md["r-raw-bin"].val,
            ["\u{1}\u{2}ok"],
            "P-57: raw, not base64"
        );
        // P-57: a value that is not UTF-8 cannot be sent; only this stream fails.
        let bad = EchoRequest {
            response_headers: vec![entry(&[0xff, 0xfe])],
            ..Default::default()
        };
        raw.send(2, new_stream(UNARY, 1));
        raw.send(2, request(&bad.encode_to_vec()));
        raw.send(2, C2S::HalfClose(()));
        let frames = raw.until_close(2).await;
        let (code, _) = close_status(frames.last().expect("close")).expect("close");
        assert_eq!(code, Code::Internal as i32, "{frames:?}");
        raw.unary(3, 3).await;
    })
    .await
}

/// A message whose field 2 (`new_stream` in `ClientToServer`) holds bytes
/// that are not a valid `NewStream`.
#[derive(Clone, PartialEq, Message)]
struct Undecodable {
    #[prost(int64, tag = "1")]
    stream_id: i64,
    #[prost(bytes = "vec", tag = "2")]
    new_stream: Vec<u8>,
}

#[tokio::test]
async fn undecodable_frame_fails_the_opening_rpc() {
    bounded(async {
        // P-6: a frame that cannot be decoded ends the whole tunnel, and
        // the peer must learn that it was not a clean end.
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let mut grpc = tonic::client::Grpc::new(connect(server.addr).await);
        grpc.ready().await.expect("ready");
        // The input stays open: only the bad frame can end the tunnel.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Undecodable {
            stream_id: 1,
            new_stream: vec![0x0a, 0x05, 0xff],
        })
        .expect("queued");
        let frames = tokio_stream::wrappers::UnboundedReceiverStream::new(rx);
        let codec = tonic_prost::ProstCodec::<Undecodable, pb::ServerToClient>::default();
        let path = http::uri::PathAndQuery::from_static("/grpctunnel.v1.TunnelService/OpenTunnel");
        let result = async {
            let mut stream = grpc
                .streaming(tonic::Request::new(frames), path, codec)
                .await?
                .into_inner();
            while stream.message().await?.is_some() {}
            Ok::<_, tonic::Status>(())
        }
        .await;
        // The decoding error itself, as the opening RPC's status (P-6):
        // `INTERNAL`, saying what failed.
        let status = result.expect_err("the tunnel must not end with OK");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(status.message().contains("decode"), "{status:?}");
        drop(tx);
    })
    .await
}

/// A trailers-only answer whose trailers cannot cross (a text value that
/// is not UTF-8) fails its stream with INTERNAL naming the key (P-57,
/// P-63); the trailers were dropped silently, keeping the handler's code.
#[tokio::test]
async fn trailers_only_answer_with_trailers_that_cannot_cross_fails_internal() {
    bounded(async {
        let trailers_only = tower::service_fn(|_req: http::Request<tonic::body::Body>| async {
            let mut resp = http::Response::new(tonic::body::Body::empty());
            let h = resp.headers_mut();
            h.insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", http::HeaderValue::from_static("9"));
            h.insert(
                "x-bad",
                http::HeaderValue::from_bytes(&[0xff, 0xfe]).expect("obs-text"),
            );
            Ok::<_, std::convert::Infallible>(resp)
        });
        let layer = TunnelLayer::new().tunnel_service(trailers_only);
        let server = tonic_server(layer, Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        let (code, message) = close_status(frames.last().expect("close")).expect("a status");
        assert_eq!(code, Code::Internal as i32, "{frames:?}");
        assert!(message.contains("x-bad"), "{message}");
    })
    .await
}

/// P-5: a revision-zero stream cannot carry a message of 2^31 bytes or
/// more (the Go reference's limit there), so the tunnel server refuses to
/// send one with RESOURCE_EXHAUSTED; revision one carries up to 2^32 - 1.
#[tokio::test]
async fn revision_zero_streams_refuse_to_send_messages_of_2_gib() {
    bounded(async {
        // A handler that starts a 2 GiB message: just its prefix, then ends.
        let huge = tower::service_fn(|_req: http::Request<tonic::body::Body>| async {
            let body = http_body_util::Full::new(Bytes::from_static(&[0, 0x80, 0, 0, 0]));
            let mut resp = http::Response::new(tonic::body::Body::new(body));
            resp.headers_mut().insert(
                "content-type",
                http::HeaderValue::from_static("application/grpc"),
            );
            Ok::<_, std::convert::Infallible>(resp)
        });
        let server = tonic_server(TunnelLayer::new().tunnel_service(huge), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        for (id, revision, want) in [(1, 0, Code::ResourceExhausted), (3, 1, Code::Internal)] {
            raw.send(id, new_stream(UNARY, revision));
            raw.send(id, C2S::HalfClose(()));
            let frames = raw.until_close(id).await;
            let (code, message) = close_status(frames.last().expect("close")).expect("a status");
            assert_eq!(code, want as i32, "revision {revision}: {message}");
        }
    })
    .await
}
