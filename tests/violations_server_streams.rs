//! Protocol violations against our tunnel server, stream-level: method
//! names, reassembly, flow control, misplaced and unrecognized frames,
//! `half_close` and `cancel` (PROTOCOL.md §3.2 to §3.8, §4). Every outcome
//! here ends one stream only; each test then checks that a normal call on
//! the same tunnel still works.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{raw::*, *};
use grpctunnel::{
    pb::{self, client_to_server::Frame as C2S, server_to_client::Frame as S2C},
    TunnelLayer,
};
use grpctunnel_testing::{
    pb::{EchoRequest, EchoResponse},
    Echo,
};
use prost::Message;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(10);

/// Checks that an accepted stream `id` was failed by the tunnel (P-33):
/// an empty `response_headers` (none were sent before), then `close_stream`
/// with the status and (empty) trailers. Credit frames are skipped.
async fn expect_failed(raw: &mut RawClient, id: i64, code: Code, text: &str) {
    let frames: Vec<_> = raw
        .until_close(id)
        .await
        .into_iter()
        .filter(|f| !matches!(f, S2C::WindowUpdate(_)))
        .collect();
    assert_eq!(frames.len(), 2, "headers then close: {frames:?}");
    assert_eq!(frames[0], S2C::ResponseHeaders(pb::Metadata::default()));
    let S2C::CloseStream(close) = &frames[1] else {
        panic!("expected close_stream: {frames:?}")
    };
    assert!(close.response_trailers.is_some(), "{close:?}");
    assert_eq!(
        close_status(&frames[1]),
        Some((code as i32, text.to_owned()))
    );
}

async fn negotiated(layer: TunnelLayer) -> (TestServer, RawClient) {
    let server = tonic_server(layer, Echo::new()).await;
    let (raw, _) = RawClient::negotiated(server.addr).await;
    (server, raw)
}

#[tokio::test]
async fn method_name_without_slash_is_invalid_argument() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        raw.send(1, new_stream("Unary", 1));
        expect_rejected(
            &mut raw,
            1,
            Code::InvalidArgument,
            "Unary is not a well-formed method name",
        )
        .await;
        // One leading slash is removed before the check (P-24).
        raw.send(2, new_stream("/grpctunnel.testing.v1.EchoService", 1));
        expect_rejected(
            &mut raw,
            2,
            Code::InvalidArgument,
            "grpctunnel.testing.v1.EchoService is not a well-formed method name",
        )
        .await;
        raw.unary(3, 3).await;
    })
    .await
}

#[tokio::test]
async fn empty_method_name_is_invalid_argument() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        raw.send(1, new_stream("", 1));
        expect_rejected(
            &mut raw,
            1,
            Code::InvalidArgument,
            " is not a well-formed method name",
        )
        .await;
        raw.send(2, new_stream("/", 1));
        expect_rejected(
            &mut raw,
            2,
            Code::InvalidArgument,
            " is not a well-formed method name",
        )
        .await;
        raw.unary(3, 3).await;
    })
    .await
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        for (id, method) in [
            (1, "/grpctunnel.testing.v1.EchoService/Missing"),
            (2, "/pkg.Nope/Method"),
            (3, "pkg.Nope/Method"),
        ] {
            raw.send(id, new_stream(method, 1));
            raw.send(id, request(&echo_request(1)));
            raw.send(id, C2S::HalfClose(()));
            let frames = raw.until_close(id).await;
            let (code, _) = close_status(frames.last().expect("close")).expect("close");
            assert_eq!(code, Code::Unimplemented as i32, "{method}: {frames:?}");
        }
        raw.unary(4, 4).await;
    })
    .await
}

#[tokio::test]
async fn method_name_with_and_without_leading_slash_are_accepted() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        for (id, method) in [
            (1, "/grpctunnel.testing.v1.EchoService/Unary"),
            (2, "grpctunnel.testing.v1.EchoService/Unary"),
        ] {
            raw.send(id, new_stream(method, 1));
            raw.send(id, request(&echo_request(id as u64)));
            raw.send(id, C2S::HalfClose(()));
            let frames = raw.until_close(id).await;
            let msg = frames
                .iter()
                .find_map(|f| match f {
                    S2C::ResponseMessage(m) => Some(m.data.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{method}: no response: {frames:?}"));
            let resp = EchoResponse::decode(msg).expect("echo response");
            assert_eq!(resp.seq, id as u64);
            assert_eq!(
                close_status(frames.last().expect("close")),
                Some((0, String::new()))
            );
        }
    })
    .await
}

#[tokio::test]
async fn envelope_before_previous_message_finished_is_invalid_argument() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, envelope(10, &b"abc"[..]));
        raw.send(1, envelope(2, &b"de"[..]));
        expect_failed(
            &mut raw,
            1,
            Code::InvalidArgument,
            "received request message envelope before previous message finished (3/10)",
        )
        .await;
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn continuation_without_envelope_is_invalid_argument() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, C2S::MoreRequestData(Bytes::from_static(b"abc")));
        expect_failed(
            &mut raw,
            1,
            Code::InvalidArgument,
            "never received envelope for request message",
        )
        .await;
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn more_data_than_envelope_size_is_invalid_argument() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        // Too much in the envelope itself...
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, envelope(2, &b"abc"[..]));
        let text = "received more data than indicated by request message envelope";
        expect_failed(&mut raw, 1, Code::InvalidArgument, text).await;
        // ...or in a continuation.
        raw.send(2, new_stream(UNARY, 1));
        raw.send(2, envelope(4, &b"abc"[..]));
        raw.send(2, C2S::MoreRequestData(Bytes::from_static(b"de")));
        expect_failed(&mut raw, 2, Code::InvalidArgument, text).await;
        raw.unary(3, 3).await;
    })
    .await
}

#[tokio::test]
async fn window_overrun_is_resource_exhausted() {
    bounded(async {
        let layer = TunnelLayer::new().initial_window_size(1024);
        let server = tonic_server(layer, Echo::new()).await;
        let (mut raw, settings) = RawClient::negotiated(server.addr).await;
        assert_eq!(settings.initial_window_size, 1024);
        raw.send(1, new_stream(UNARY, 1));
        // 2024 bytes in all, more than the window, but never more than the
        // credit granted: the handler consumes each chunk, and we wait for
        // the credit before sending on.
        raw.send(1, envelope(5000, vec![0u8; 1000]));
        assert_eq!(raw.next_for(1).await, S2C::WindowUpdate(1000));
        raw.send(1, C2S::MoreRequestData(vec![0u8; 1024].into()));
        assert_eq!(raw.next_for(1).await, S2C::WindowUpdate(1024));
        // One byte more than the whole window can never fit.
        raw.send(1, C2S::MoreRequestData(vec![0u8; 1025].into()));
        expect_failed(
            &mut raw,
            1,
            Code::ResourceExhausted,
            "flow control window exceeded",
        )
        .await;
        // Also in a first envelope, before anything was consumed.
        raw.send(2, new_stream(UNARY, 1));
        raw.send(2, envelope(1025, vec![0u8; 1025]));
        expect_failed(
            &mut raw,
            2,
            Code::ResourceExhausted,
            "flow control window exceeded",
        )
        .await;
        raw.unary(3, 3).await;
    })
    .await
}

#[tokio::test]
async fn revision_zero_stream_has_no_window() {
    bounded(async {
        // The window is not enforced on revision-zero streams (P-55).
        let layer = TunnelLayer::new().initial_window_size(1024);
        let (_server, mut raw) = negotiated(layer).await;
        let big = EchoRequest {
            payload: vec![7u8; 4000].into(),
            seq: 1,
            ..Default::default()
        }
        .encode_to_vec();
        raw.send(1, new_stream(UNARY, 0));
        raw.send(1, request(&big));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        assert!(
            frames.iter().all(|f| !matches!(f, S2C::WindowUpdate(_))),
            "no credit on revision zero (P-55): {frames:?}"
        );
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
    })
    .await
}

#[tokio::test]
async fn window_updates_credit_consumed_request_data_on_revision_one() {
    bounded(async {
        let layer = TunnelLayer::new().initial_window_size(1024);
        let (_server, mut raw) = negotiated(layer).await;
        let msg = EchoRequest {
            payload: vec![7u8; 1500].into(),
            seq: 1,
            ..Default::default()
        }
        .encode_to_vec();
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, envelope(msg.len() as u32, msg[..1000].to_vec()));
        assert_eq!(raw.next_for(1).await, S2C::WindowUpdate(1000));
        raw.send(1, C2S::MoreRequestData(msg[1000..].to_vec().into()));
        // P-35: a unary call half-closes right after its request.
        raw.send(1, C2S::HalfClose(()));
        // The response proves the whole message arrived; any further
        // credit is optional (P-53).
        let frames = raw.until_close(1).await;
        let credit: u32 = frames
            .iter()
            .map(|f| match f {
                S2C::WindowUpdate(n) => *n,
                _ => 0,
            })
            .sum();
        assert!(credit <= (msg.len() - 1000) as u32, "{frames:?}");
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn message_larger_than_max_message_size_is_resource_exhausted() {
    bounded(async {
        let layer = TunnelLayer::new().max_message_size(100);
        let (_server, mut raw) = negotiated(layer).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send(1, envelope(101, vec![0u8; 10]));
        let frames = raw.until_close(1).await;
        assert_eq!(frames[0], S2C::ResponseHeaders(pb::Metadata::default()));
        let (code, text) = close_status(frames.last().expect("close")).expect("close");
        assert_eq!(code, Code::ResourceExhausted as i32, "{frames:?}");
        assert!(text.contains("101") && text.contains("100"), "{text}");
        // Exactly the maximum is fine.
        let at_max = EchoRequest {
            payload: vec![1u8; 96].into(),
            seq: 2,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(at_max.len(), 100);
        raw.send(2, new_stream(UNARY, 1));
        raw.send(2, request(&at_max));
        raw.send(2, C2S::HalfClose(()));
        let frames = raw.until_close(2).await;
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
        raw.unary(3, 3).await;
    })
    .await
}

#[tokio::test]
async fn unrecognized_frame_on_active_stream_ends_the_stream() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        raw.send(1, new_stream(UNARY, 1));
        raw.send_raw(pb::ClientToServer {
            stream_id: 1,
            frame: None,
        });
        expect_failed(
            &mut raw,
            1,
            Code::Unknown,
            "protocol error: unrecognized frame type",
        )
        .await;
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn data_after_half_close_is_dropped() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        let msg = |seq| {
            EchoRequest {
                payload: Bytes::from_static(b"abc"),
                seq,
                ..Default::default()
            }
            .encode_to_vec()
        };
        raw.send(1, new_stream(CLIENT_STREAM, 1));
        raw.send(1, request(&msg(1)));
        raw.send(1, C2S::HalfClose(()));
        raw.send(1, request(&msg(2)));
        raw.send(1, C2S::MoreRequestData(Bytes::from_static(b"junk")));
        let frames = raw.until_close(1).await;
        let resp = frames
            .iter()
            .find_map(|f| match f {
                S2C::ResponseMessage(m) => Some(EchoResponse::decode(m.data.clone())),
                _ => None,
            })
            .expect("a response")
            .expect("echo response");
        assert_eq!((resp.count, resp.seq, resp.total_bytes), (1, 1, 3));
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn repeated_half_close_is_ignored() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        raw.send(1, new_stream(CLIENT_STREAM, 1));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, C2S::HalfClose(()));
        raw.send(1, C2S::HalfClose(()));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
        raw.send(1, C2S::HalfClose(()));
        raw.unary(2, 2).await;
    })
    .await
}

#[tokio::test]
async fn cancel_cancels_the_handler() {
    bounded(async {
        let echo = Echo::new();
        let server = tonic_server(TunnelLayer::new(), echo.clone()).await;
        let (mut raw, _) = RawClient::negotiated(server.addr).await;
        // A full-duplex call answers its first request at once: once that
        // answer is here the handler runs; the second request makes it sleep.
        raw.send(1, new_stream(BIDI, 1));
        let first = EchoRequest {
            tag: "cancel-me".into(),
            ..Default::default()
        };
        raw.send(1, request(&first.encode_to_vec()));
        assert!(matches!(raw.next_for(1).await, S2C::ResponseHeaders(_)));
        assert!(matches!(raw.next_for(1).await, S2C::ResponseMessage(_)));
        let sleepy = EchoRequest {
            sleep_ms: 60_000,
            ..Default::default()
        };
        raw.send(1, request(&sleepy.encode_to_vec()));
        raw.send(1, C2S::Cancel(()));
        let state = echo.wait_handler("cancel-me", WAIT).await;
        assert!(
            state.started && state.cancelled && !state.finished,
            "{state:?}"
        );
        // Whatever follows for the cancelled stream is dropped.
        raw.send(1, request(&echo_request(3)));
        raw.send(1, C2S::Cancel(()));
        raw.unary(2, 2).await;
        // A close_stream for the cancelled stream is allowed (P-38) but
        // must not carry a success.
        for f in raw.take_backlog() {
            if let Some(frame) = &f.frame {
                assert_ne!(close_status(frame), Some((0, String::new())), "{f:?}");
            }
        }
    })
    .await
}

#[tokio::test]
async fn huge_window_updates_do_not_break_the_stream() {
    bounded(async {
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        let ask = EchoRequest {
            response_size: 200_000,
            seq: 1,
            ..Default::default()
        }
        .encode_to_vec();
        raw.send(1, new_stream(UNARY, 1));
        // Overflowing increments (B-13) saturate; they must not panic the
        // reader or wrap the window below zero.
        for _ in 0..4 {
            raw.send(1, C2S::WindowUpdate(u32::MAX));
        }
        raw.send(1, request(&ask));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        let data: usize = frames
            .iter()
            .map(|f| match f {
                S2C::ResponseMessage(m) => m.data.len(),
                S2C::MoreResponseData(d) => d.len(),
                _ => 0,
            })
            .sum();
        assert!(data > 200_000, "{} bytes", data);
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
        // Also on a revision-zero stream, where credit is ignored.
        raw.send(2, new_stream(UNARY, 0));
        raw.send(2, C2S::WindowUpdate(u32::MAX));
        raw.send(2, request(&echo_request(2)));
        raw.send(2, C2S::HalfClose(()));
        let frames = raw.until_close(2).await;
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
        raw.unary(3, 3).await;
    })
    .await
}

#[tokio::test]
async fn method_name_with_empty_method_part_is_unimplemented() {
    bounded(async {
        // P-24: only a name with no `/` left is malformed; `pkg.Svc/` splits
        // into a service and an (unknown, empty) method.
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        for (id, method) in [(1, "/grpctunnel.testing.v1.EchoService/"), (2, "//Unary")] {
            raw.send(id, new_stream(method, 1));
            raw.send(id, request(&echo_request(1)));
            raw.send(id, C2S::HalfClose(()));
            let frames = raw.until_close(id).await;
            let (code, text) = close_status(frames.last().expect("close")).expect("close");
            assert_eq!(code, Code::Unimplemented as i32, "{method}: {text}");
        }
        raw.unary(3, 3).await;
    })
    .await
}

#[tokio::test]
async fn half_close_in_the_middle_of_a_message_discards_it() {
    bounded(async {
        // P-34: the partial message is dropped without error; the handler
        // sees a normal end of input.
        let (_server, mut raw) = negotiated(TunnelLayer::new()).await;
        raw.send(1, new_stream(CLIENT_STREAM, 1));
        raw.send(1, request(&echo_request(1)));
        raw.send(1, envelope(10, &b"abc"[..]));
        raw.send(1, C2S::HalfClose(()));
        let frames = raw.until_close(1).await;
        let resp = frames
            .iter()
            .find_map(|f| match f {
                S2C::ResponseMessage(m) => Some(EchoResponse::decode(m.data.clone())),
                _ => None,
            })
            .unwrap_or_else(|| panic!("a response: {frames:?}"))
            .expect("echo response");
        assert_eq!((resp.count, resp.seq), (1, 1));
        assert_eq!(
            close_status(frames.last().expect("close")),
            Some((0, String::new()))
        );
        raw.unary(2, 2).await;
    })
    .await
}
