//! Hostile peers: frames that are legal on the wire but try to make our
//! endpoint or our channel allocate, hold or pass on too much (huge sizes,
//! huge method names and metadata, stream floods, peers that never read,
//! misplaced settings, malformed metadata, frames after cancel). A raw peer
//! writes the frames by hand over a real `OpenTunnel` RPC (PROTOCOL.md §3,
//! P-51, §3.8, §5); every outcome here is stream-level, so each test checks
//! that the tunnel keeps working.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{raw::*, *};
use grpctunnel::{
    pb::{self, client_to_server::Frame as C2S, server_to_client::Frame as S2C},
    Limits, TunnelChannel, TunnelLayer,
};
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse},
    Echo,
};
use prost::Message;
use tonic::{Code, Request};

const SERVER_STREAM: &str = "/grpctunnel.testing.v1.EchoService/ServerStream";

fn data_len(frame: &S2C) -> usize {
    match frame {
        S2C::ResponseMessage(m) => m.data.len(),
        S2C::MoreResponseData(d) => d.len(),
        _ => 0,
    }
}

fn request_data_len(frame: &C2S) -> usize {
    match frame {
        C2S::RequestMessage(m) => m.data.len(),
        C2S::MoreRequestData(d) => d.len(),
        _ => 0,
    }
}

/// A revision-one unary `new_stream` carrying `md` as request headers.
fn with_headers(md: pb::Metadata) -> C2S {
    C2S::NewStream(pb::NewStream {
        method_name: UNARY.into(),
        request_headers: Some(md),
        initial_window_size: RAW_WINDOW,
        protocol_revision: 1,
    })
}

/// The status of the `close_stream` ending stream `id` (other frames skipped).
async fn final_status(raw: &mut RawClient, id: i64) -> (i32, String) {
    let frames = raw.until_close(id).await;
    close_status(frames.last().expect("close")).expect("close_stream")
}

// ----- 1. sizes near u32::MAX ------------------------------------------------

#[tokio::test]
async fn server_envelope_of_u32_max_is_resource_exhausted() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, envelope(u32::MAX, &b"abc"[..]));
        let (code, text) = final_status(&mut raw, 1).await;
        assert_eq!(code, Code::ResourceExhausted as i32, "{text}");
        assert_eq!(
            text,
            "received request message larger than max (4294967295 vs. 4194304)"
        );
        raw.unary(2, 2).await;
        // Even with a limit that lets it in, a 4 GiB announcement with 3
        // bytes behind it allocates nothing and ends like any cut message.
        let layer = TunnelLayer::new().limits(Limits::new().max_message_size(u32::MAX as usize));
        let server = tonic_server(layer, Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, envelope(u32::MAX, &b"abc"[..]));
        raw.send(1, C2S::MoreRequestData(vec![7u8; 16384].into()));
        raw.send(1, C2S::HalfClose(()));
        let (code, _) = final_status(&mut raw, 1).await;
        assert_ne!(code, 0, "no complete request: the unary call fails");
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn channel_envelope_of_u32_max_is_resource_exhausted() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(EchoRequest::default()).await });
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, S2C::ResponseHeaders(headers(&[])));
        peer.send(
            id,
            S2C::ResponseMessage(pb::MessageData {
                size: u32::MAX,
                data: vec![1u8, 2, 3].into(),
            }),
        );
        let status = call.await.expect("task").expect_err("too large");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            "received response message larger than max (4294967295 vs. 4194304)"
        );
        assert_eq!(peer.next_for(id).await, C2S::Cancel(()));
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

// ----- 2. huge method names and metadata --------------------------------------

#[tokio::test]
async fn huge_method_name_is_resource_exhausted() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let name = format!(
            "/grpctunnel.testing.v1.EchoService/{}",
            "x".repeat(200 * 1024)
        );
        raw.send(1, new_stream(&name, 1));
        let text = format!(
            "request metadata too large ({} bytes, max 65536)",
            name.len()
        );
        expect_rejected(&mut raw, 1, Code::ResourceExhausted, &text).await;
        raw.unary(2, 2).await;
    })
    .await
}

fn many_keys(n: usize) -> pb::Metadata {
    let mut md = pb::Metadata::default();
    for i in 0..n {
        md.md.insert(
            format!("x-k{i}"),
            pb::metadata::Values {
                val: vec!["v".into()],
            },
        );
    }
    md
}

#[tokio::test]
async fn request_headers_with_many_keys_are_resource_exhausted() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let md = many_keys(20_000);
        let size: usize = md
            .md
            .iter()
            .map(|(k, v)| k.len() + v.val[0].len() + 32)
            .sum();
        raw.send(1, with_headers(md));
        let text = format!(
            "request metadata too large ({} bytes, max 65536)",
            size + UNARY.len()
        );
        expect_rejected(&mut raw, 1, Code::ResourceExhausted, &text).await;
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn many_request_keys_under_a_raised_metadata_limit_do_not_panic() {
    bounded(async {
        // 40 000 distinct keys fit in an 8 MiB limit but not in a HeaderMap
        // (at most 32 768 entries): the call goes on with the entries that
        // fit, the rest counted as dropped, and the process lives.
        let layer = TunnelLayer::new().limits(Limits::new().max_metadata_size(8 << 20));
        let server = tonic_server(layer.clone(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        raw.send(1, with_headers(many_keys(40_000)));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::HalfClose(()));
        let (code, text) = final_status(&mut raw, 1).await;
        assert_eq!(code, Code::Ok as i32, "{text}");
        assert_eq!(layer.stats().metadata_dropped, 40_000 - 16 * 1024);
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn many_response_keys_under_a_raised_metadata_limit_do_not_panic() {
    bounded(async {
        let builder = TunnelChannel::builder().limits(Limits::new().max_metadata_size(8 << 20));
        let (_server, tunnel, mut peer) = negotiated_channel(builder, 65536).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(EchoRequest::default()).await });
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, S2C::ResponseHeaders(many_keys(40_000)));
        peer.send(id, response(&EchoResponse::default().encode_to_vec()));
        peer.send(id, close(0, ""));
        // The call succeeds with the 16 384 entries a header map takes from
        // a peer (room stays for the headers the engine adds); the rest are
        // counted as dropped.
        let response = call.await.expect("call task must not panic").expect("call");
        let kept = response.metadata().len();
        assert!(kept >= 16 * 1024, "{kept} headers kept");
        assert_eq!(tunnel.stats().metadata_dropped, 40_000 - 16 * 1024);
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn many_empty_values_count_against_the_metadata_limit() {
    bounded(async {
        // 500 000 empty values under one key: 1 MB on the wire, 7 bytes for
        // the limit, half a million header values held for the handler.
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let mut md = pb::Metadata::default();
        md.md.insert(
            "x-empty".into(),
            pb::metadata::Values {
                val: vec![String::new(); 500_000],
            },
        );
        raw.send(1, with_headers(md));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::HalfClose(()));
        let (code, text) = final_status(&mut raw, 1).await;
        raw.unary(2, 2).await;
        assert_eq!(code, Code::ResourceExhausted as i32, "{text}");
    })
    .await
}

#[tokio::test]
async fn response_headers_with_many_keys_are_resource_exhausted() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(EchoRequest::default()).await });
        let (id, _, _) = peer.expect_unary().await;
        let md = many_keys(20_000);
        let size: usize = md
            .md
            .iter()
            .map(|(k, v)| k.len() + v.val[0].len() + 32)
            .sum();
        peer.send(id, S2C::ResponseHeaders(md));
        let status = call.await.expect("task").expect_err("too much metadata");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.message(),
            format!("response headers too large ({size} bytes, max 65536)")
        );
        assert_eq!(peer.next_for(id).await, C2S::Cancel(()));
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

// ----- 3. stream floods -----------------------------------------------------

#[tokio::test]
async fn stream_flood_is_refused_beyond_the_limit() {
    bounded(async {
        let layer = TunnelLayer::new().limits(Limits::new().max_concurrent_streams(100));
        let server = tonic_server(layer.clone(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        // Samples the open-stream count while the flood is processed.
        let peak = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let sampler = tokio::spawn({
            let (layer, peak, done) = (layer.clone(), peak.clone(), done.clone());
            async move {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(layer.stats().streams_open, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        });
        const FLOOD: i64 = 5000;
        for id in 1..=FLOOD {
            raw.send(id, new_stream(UNARY, 1));
        }
        let text = "too many concurrent streams on this tunnel (max 100)";
        let mut rejected = 0;
        while rejected < FLOOD - 100 {
            let f = raw.next().await;
            assert!(f.stream_id > 100, "stream {} refused: {f:?}", f.stream_id);
            let frame = f.frame.expect("frame");
            assert_eq!(
                close_status(&frame),
                Some((Code::ResourceExhausted as i32, text.to_owned())),
                "stream {}",
                f.stream_id
            );
            rejected += 1;
        }
        assert_eq!(layer.stats().streams_open, 100);
        for id in 1..=100 {
            raw.send(id, C2S::Cancel(()));
        }
        assert!(
            poll_until(Duration::from_secs(5), || layer.stats().streams_open == 0).await,
            "{}",
            layer.stats()
        );
        raw.unary(FLOOD + 1, 1).await;
        done.store(true, Ordering::Relaxed);
        sampler.await.expect("sampler");
        let peak = peak.load(Ordering::Relaxed);
        assert!(peak <= 100, "{peak} streams open at once");
    })
    .await
}

// ----- 4. peers that never read ------------------------------------------------

#[tokio::test]
async fn server_never_sends_beyond_the_window_of_a_peer_that_never_reads() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let ask = EchoRequest {
            response_size: 65536,
            repeat: 1000,
            ..Default::default()
        };
        raw.send(1, new_stream(SERVER_STREAM, 1));
        raw.send(1, request(&ask.encode_to_vec()));
        raw.send(1, C2S::HalfClose(()));
        let mut received = 0;
        while received < RAW_WINDOW as usize {
            let f = raw.next_for(1).await;
            assert!(!matches!(f, S2C::CloseStream(_)), "{f:?}");
            received += data_len(&f);
        }
        // Stream 1 is stalled; other streams are not blocked behind it.
        raw.unary(2, 2).await;
        raw.unary(3, 3).await;
        for f in raw.take_backlog() {
            assert_eq!(f.stream_id, 1, "{f:?}");
            received += data_len(&f.frame.expect("frame"));
        }
        assert_eq!(received, RAW_WINDOW as usize, "sent beyond the window");
        raw.send(1, C2S::Cancel(()));
        raw.unary(4, 4).await;
    })
    .await
}

#[tokio::test]
async fn channel_never_sends_beyond_the_window_of_a_peer_that_never_reads() {
    bounded(async {
        const WINDOW: usize = 20_000;
        let (_server, tunnel, mut peer) =
            negotiated_channel(TunnelChannel::builder(), WINDOW as u32).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let big = EchoRequest {
            payload: vec![3u8; 100_000].into(),
            ..Default::default()
        };
        let stuck = tokio::spawn(async move {
            client
                .client_stream(tokio_stream::iter(vec![big.clone(), big]))
                .await
        });
        let first = peer.next().await;
        let stuck_id = first.stream_id;
        assert!(matches!(first.frame, Some(C2S::NewStream(_))), "{first:?}");
        let mut sent = 0;
        while sent < WINDOW {
            let f = peer.next_for(stuck_id).await;
            assert_ne!(f, C2S::HalfClose(()));
            sent += request_data_len(&f);
        }
        // Another call goes through while the first waits for credit.
        let mut client = EchoServiceClient::new(tunnel.clone());
        let other = tokio::spawn(async move { client.unary(EchoRequest::default()).await });
        let id = loop {
            let f = peer.next().await;
            let frame = f.frame.expect("frame");
            if f.stream_id == stuck_id {
                sent += request_data_len(&frame);
            } else if matches!(frame, C2S::NewStream(_)) {
                break f.stream_id;
            }
        };
        loop {
            let f = peer.next().await;
            let frame = f.frame.expect("frame");
            if f.stream_id == stuck_id {
                sent += request_data_len(&frame);
            } else if f.stream_id == id && frame == C2S::HalfClose(()) {
                break;
            }
        }
        peer.answer(
            id,
            &EchoResponse {
                seq: 7,
                ..Default::default()
            },
        );
        let resp = other.await.expect("task").expect("other call");
        assert_eq!(resp.into_inner().seq, 7);
        assert_eq!(sent, WINDOW, "sent beyond the window");
        assert!(!stuck.is_finished());
        stuck.abort();
        // Dropping the stuck call cancels its stream (P-39).
        assert_eq!(peer.next_for(stuck_id).await, C2S::Cancel(()));
        peer.unary_ok(&tunnel, 8).await;
    })
    .await
}

// ----- 5. settings at the wrong time ------------------------------------------------

#[tokio::test]
async fn settings_after_streams_exist_are_dropped_as_past_frames() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        peer.unary_ok(&tunnel, 1).await;
        // P-23: -1 and the finished stream 1 are past IDs once a stream
        // exists: dropped, even though they are settings.
        peer.settings(vec![0, 1], 1);
        peer.send(
            1,
            S2C::Settings(pb::Settings {
                supported_protocol_revisions: vec![0],
                initial_window_size: 0,
            }),
        );
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn settings_for_a_never_created_id_are_fatal() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        peer.unary_ok(&tunnel, 1).await;
        peer.send(
            7,
            S2C::Settings(pb::Settings {
                supported_protocol_revisions: vec![0, 1],
                initial_window_size: 65536,
            }),
        );
        let err = tunnel.closed().await;
        assert!(err.is_protocol(), "{err:?}");
        let chain = chain(&err);
        assert!(
            chain.contains("received frame for stream ID 7: stream never created"),
            "{chain}"
        );
        assert_eq!(peer.next_or_end().await, None);
    })
    .await
}

// ----- 6. malformed metadata -------------------------------------------------

/// Keys and values no well-behaved peer sends.
fn hostile_metadata() -> pb::Metadata {
    headers(&[
        ("X-Upper", "upper"),
        ("bad key", "space"),
        ("x-ctl", "a\u{1}\nb"),
        ("x-data-bin", "h\u{e9}llo\u{0}\u{10ffff}"),
        ("grpc-status", "13"),
        ("grpc-message", "evil"),
        ("content-type", "text/html"),
        (":path", "/evil.Service/Method"),
        (":status", "500"),
        ("x-ok", "fine"),
    ])
}

#[tokio::test]
async fn malformed_request_metadata_is_not_passed_on() {
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        let ask = EchoRequest {
            echo_metadata: true,
            seq: 5,
            ..Default::default()
        };
        raw.send(1, with_headers(hostile_metadata()));
        raw.send(1, request(&ask.encode_to_vec()));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new())),
            "{frames:?}"
        );
        let msg = frames
            .iter()
            .find_map(|f| match f {
                S2C::ResponseMessage(m) => Some(m.data.clone()),
                _ => None,
            })
            .expect("response");
        let resp = EchoResponse::decode(msg).expect("echo response");
        assert_eq!(resp.seq, 5, "`:path` did not reroute the call");
        let seen: Vec<(String, Vec<u8>)> = resp
            .metadata
            .iter()
            .map(|e| (e.key.clone(), e.value.to_vec()))
            .collect();
        assert!(
            seen.contains(&("x-ok".into(), b"fine".to_vec())),
            "{seen:?}"
        );
        assert!(
            seen.contains(&(
                "x-data-bin".into(),
                "h\u{e9}llo\u{0}\u{10ffff}".as_bytes().to_vec()
            )),
            "{seen:?}"
        );
        for (key, _) in &seen {
            assert!(
                !key.eq_ignore_ascii_case("x-upper")
                    && key != "bad key"
                    && key != "x-ctl"
                    && !key.starts_with(':'),
                "{key} passed on: {seen:?}"
            );
        }
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn malformed_response_metadata_is_not_passed_on() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call =
            tokio::spawn(async move { client.unary(Request::new(EchoRequest::default())).await });
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, S2C::ResponseHeaders(hostile_metadata()));
        peer.send(
            id,
            response(
                &EchoResponse {
                    seq: 3,
                    ..Default::default()
                }
                .encode_to_vec(),
            ),
        );
        peer.send(
            id,
            S2C::CloseStream(pb::CloseStream {
                response_trailers: Some(hostile_metadata()),
                status: None,
            }),
        );
        let resp = call
            .await
            .expect("task")
            .expect("reserved trailers do not change the OK outcome");
        let md = resp.metadata().clone();
        assert_eq!(resp.into_inner().seq, 3);
        assert_eq!(md.get("x-ok").map(|v| v.to_str().unwrap()), Some("fine"));
        let bin = md.get_bin("x-data-bin").expect("bin header");
        assert_eq!(
            bin.to_bytes().expect("base64"),
            "h\u{e9}llo\u{0}\u{10ffff}".as_bytes()
        );
        assert!(
            md.get("x-upper").is_none() && md.get("x-ctl").is_none(),
            "{md:?}"
        );
        for v in md.get_all("content-type") {
            assert_ne!(v, "text/html", "{md:?}");
        }
        for v in md.get_all("grpc-status") {
            assert_eq!(v, "0", "{md:?}");
        }
        for v in md.get_all("grpc-message") {
            assert_ne!(v, "evil", "{md:?}");
        }
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

// ----- 7. frames after cancel ------------------------------------------------

#[tokio::test]
async fn frames_after_cancel_are_dropped() {
    bounded(async {
        let layer = TunnelLayer::new();
        let server = tonic_server(layer.clone(), Echo::new()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        // A running bidi stream, answered once.
        raw.send(1, new_stream(BIDI, 1));
        raw.send(1, request(&echo_request(1)));
        loop {
            if matches!(raw.next_for(1).await, S2C::ResponseMessage(_)) {
                break;
            }
        }
        raw.send(1, C2S::Cancel(()));
        raw.send(1, request(&echo_request(2)));
        raw.send(1, envelope(100, vec![0u8; 10]));
        raw.send(1, C2S::MoreRequestData(vec![0u8; 10].into()));
        raw.send(1, C2S::HalfClose(()));
        raw.send(1, C2S::WindowUpdate(65536));
        raw.send(1, C2S::Cancel(()));
        raw.unary(2, 2).await;
        // Only the end of stream 1 may follow its cancel (P-38): frames for
        // stream 1 alone (stream 2 was read whole by `unary`), no answer to
        // a request sent after the cancel (each echo carries the `seq` of
        // the request it answers), and nothing after a `close_stream`.
        let mut closed = false;
        for f in raw.take_backlog() {
            assert_eq!(f.stream_id, 1, "{f:?}");
            let frame = f.frame.expect("frame");
            assert!(!closed, "a frame after stream 1's close_stream: {frame:?}");
            match &frame {
                S2C::ResponseMessage(m) => {
                    let echo = EchoResponse::decode(m.data.clone()).expect("a whole echo response");
                    assert_eq!(echo.seq, 1, "answered a request sent after cancel");
                }
                S2C::CloseStream(_) => closed = true,
                S2C::WindowUpdate(_) => {}
                other => panic!("not the end of a cancelled stream: {other:?}"),
            }
        }
        assert_eq!(layer.stats().protocol_errors, 0, "{}", layer.stats());
        assert_eq!(layer.stats().streams_open, 0, "{}", layer.stats());
    })
    .await
}
