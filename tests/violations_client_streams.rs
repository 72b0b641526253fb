//! Protocol violations against our tunnel client, stream-level: reassembly,
//! flow control, misplaced and unrecognized frames, response headers and
//! `close_stream`, deadlines and metadata (PROTOCOL.md §3.3 to §3.8, §4,
//! §5). A raw tunnel server answers by hand; every outcome here fails one
//! call only, so each test then checks that the tunnel still works.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{raw::*, *};
use grpctunnel::{
    pb::{self, client_to_server::Frame as C2S, server_to_client::Frame as S2C},
    TunnelChannel,
};
use grpctunnel_testing::pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse};
use prost::Message;
use tokio::task::JoinHandle;
use tonic::{metadata::BinaryMetadataValue, Code, Request, Response, Status};

type Call = JoinHandle<Result<Response<EchoResponse>, Status>>;

fn start_unary(tunnel: &TunnelChannel, req: Request<EchoRequest>) -> Call {
    let mut client = EchoServiceClient::new(tunnel.clone());
    tokio::spawn(async move { client.unary(req).await })
}

fn plain(seq: u64) -> Request<EchoRequest> {
    Request::new(EchoRequest {
        seq,
        ..Default::default()
    })
}

fn encoded(seq: u64, payload: usize) -> Vec<u8> {
    EchoResponse {
        seq,
        payload: vec![5u8; payload].into(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Starts a call, lets `misbehave` answer it, and checks that the call
/// fails with `code` and exactly `text`, that our client sends `cancel` for
/// the stream, and that the tunnel still works.
async fn expect_call_failure(
    builder: grpctunnel::TunnelChannelBuilder,
    misbehave: impl FnOnce(&RawPeer, i64),
    code: Code,
    text: &str,
) {
    let (_server, tunnel, mut peer) = negotiated_channel(builder, 65536).await;
    let call = start_unary(&tunnel, plain(1));
    let (id, _, _) = peer.expect_unary().await;
    misbehave(&peer, id);
    let status = call.await.expect("call task").expect_err("violation");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(status.message(), text);
    assert_eq!(peer.next_for(id).await, C2S::Cancel(()), "cancel sent");
    // Anything more the server sends for the stream is dropped.
    peer.send(id, response(&encoded(1, 3)));
    peer.send(id, close(0, ""));
    peer.unary_ok(&tunnel, 2).await;
    assert!(!tunnel.is_closed());
}

#[tokio::test]
async fn response_envelope_before_previous_message_finished_is_internal() {
    bounded(async {
        expect_call_failure(
            TunnelChannel::builder(),
            |peer, id| {
                peer.send(id, S2C::ResponseHeaders(headers(&[])));
                peer.send(
                    id,
                    S2C::ResponseMessage(pb::MessageData {
                        size: 10,
                        data: Bytes::from_static(b"abc"),
                    }),
                );
                peer.send(id, response(&encoded(1, 0)));
            },
            Code::Internal,
            "server sent response message envelope before previous message finished (3/10)",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn response_continuation_without_envelope_is_internal() {
    bounded(async {
        expect_call_failure(
            TunnelChannel::builder(),
            |peer, id| {
                peer.send(id, S2C::ResponseHeaders(headers(&[])));
                peer.send(id, S2C::MoreResponseData(Bytes::from_static(b"abc")));
            },
            Code::Internal,
            "server never sent envelope for response message",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn more_response_data_than_envelope_size_is_internal() {
    bounded(async {
        let text = "server sent more data than indicated by response message envelope";
        expect_call_failure(
            TunnelChannel::builder(),
            |peer, id| {
                peer.send(id, S2C::ResponseHeaders(headers(&[])));
                peer.send(
                    id,
                    S2C::ResponseMessage(pb::MessageData {
                        size: 2,
                        data: Bytes::from_static(b"abc"),
                    }),
                );
            },
            Code::Internal,
            text,
        )
        .await;
        expect_call_failure(
            TunnelChannel::builder(),
            |peer, id| {
                peer.send(id, S2C::ResponseHeaders(headers(&[])));
                peer.send(
                    id,
                    S2C::ResponseMessage(pb::MessageData {
                        size: 4,
                        data: Bytes::from_static(b"abc"),
                    }),
                );
                peer.send(id, S2C::MoreResponseData(Bytes::from_static(b"de")));
            },
            Code::Internal,
            text,
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn response_window_overrun_is_resource_exhausted() {
    bounded(async {
        // Our window is 1024: a single chunk of 1025 bytes can never fit.
        expect_call_failure(
            TunnelChannel::builder().initial_window_size(1024),
            |peer, id| {
                peer.send(id, S2C::ResponseHeaders(headers(&[])));
                peer.send(
                    id,
                    S2C::ResponseMessage(pb::MessageData {
                        size: 2000,
                        data: vec![0u8; 1025].into(),
                    }),
                );
            },
            Code::ResourceExhausted,
            "flow control window exceeded",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn response_data_within_granted_credit_is_accepted() {
    bounded(async {
        // 2500 bytes through a 1024-byte window: the server waits for our
        // credit before each chunk, as the window it sees allows.
        let builder = TunnelChannel::builder().initial_window_size(1024);
        let (_server, tunnel, mut peer) = negotiated_channel(builder, 65536).await;
        let call = start_unary(&tunnel, plain(1));
        let (id, new, _) = peer.expect_unary().await;
        assert_eq!(new.initial_window_size, 1024);
        let msg = encoded(1, 2500);
        peer.send(id, S2C::ResponseHeaders(headers(&[])));
        peer.send(
            id,
            S2C::ResponseMessage(pb::MessageData {
                size: msg.len() as u32,
                data: msg[..1000].to_vec().into(),
            }),
        );
        assert_eq!(peer.next_for(id).await, C2S::WindowUpdate(1000));
        peer.send(id, S2C::MoreResponseData(msg[1000..2024].to_vec().into()));
        assert_eq!(peer.next_for(id).await, C2S::WindowUpdate(1024));
        peer.send(id, S2C::MoreResponseData(msg[2024..].to_vec().into()));
        peer.send(id, close(0, ""));
        let resp = call.await.expect("task").expect("call").into_inner();
        assert_eq!(resp.payload.len(), 2500);
    })
    .await
}

#[tokio::test]
async fn unrecognized_frame_on_active_stream_fails_the_call() {
    bounded(async {
        expect_call_failure(
            TunnelChannel::builder(),
            |peer, id| {
                peer.send_raw(pb::ServerToClient {
                    stream_id: id,
                    frame: None,
                })
            },
            Code::Unknown,
            "protocol error: unrecognized frame type",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn settings_on_active_stream_fails_the_call() {
    bounded(async {
        expect_call_failure(
            TunnelChannel::builder(),
            |peer, id| {
                peer.send(id, S2C::ResponseHeaders(headers(&[])));
                peer.send(
                    id,
                    S2C::Settings(pb::Settings {
                        supported_protocol_revisions: vec![0, 1],
                        initial_window_size: 65536,
                    }),
                );
            },
            Code::Unknown,
            "protocol error: unexpected settings frame",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn second_response_headers_are_ignored() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let call = start_unary(&tunnel, plain(1));
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, S2C::ResponseHeaders(headers(&[("x-first", "1")])));
        peer.send(id, S2C::ResponseHeaders(headers(&[("x-second", "2")])));
        peer.send(id, response(&encoded(1, 3)));
        peer.send(id, close(0, ""));
        let resp = call.await.expect("task").expect("call");
        assert_eq!(
            resp.metadata().get("x-first").map(|v| v.to_str().ok()),
            Some(Some("1"))
        );
        assert!(
            resp.metadata().get("x-second").is_none(),
            "{:?}",
            resp.metadata()
        );
        assert_eq!(resp.into_inner().seq, 1);
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn response_data_before_headers_is_accepted() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let call = start_unary(&tunnel, plain(1));
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, response(&encoded(1, 7)));
        peer.send(id, close(0, ""));
        let resp = call.await.expect("task").expect("call").into_inner();
        assert_eq!((resp.seq, resp.payload.len()), (1, 7));
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn close_stream_status_details_and_trailers_reach_the_caller() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let call = start_unary(&tunnel, plain(1));
        let (id, _, _) = peer.expect_unary().await;
        let details = vec![
            prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: b"\x0a\x03why".to_vec(),
            },
            prost_types::Any {
                type_url: "type.example.com/x.Y".into(),
                value: vec![0xff, 0x00, 0x01],
            },
        ];
        peer.send(id, S2C::ResponseHeaders(headers(&[("x-h", "h")])));
        peer.send(
            id,
            S2C::CloseStream(pb::CloseStream {
                response_trailers: Some(headers(&[("x-t", "t1"), ("x-t", "t2")])),
                status: Some(tonic_types::Status {
                    code: Code::NotFound as i32,
                    message: "nope: ünïcode".into(),
                    details: details.clone(),
                }),
            }),
        );
        let status = call.await.expect("task").expect_err("failed call");
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "nope: ünïcode");
        let carried = tonic_types::Status::decode(status.details()).expect("details");
        assert_eq!(carried.details, details);
        let trailers: Vec<_> = status
            .metadata()
            .get_all("x-t")
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect();
        assert_eq!(trailers, ["t1", "t2"]);
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn close_stream_with_code_zero_is_success() {
    bounded(async {
        // P-43: code 0 is OK, whatever the message says.
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let call = start_unary(&tunnel, plain(1));
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, S2C::ResponseHeaders(headers(&[])));
        peer.send(id, response(&encoded(1, 1)));
        peer.send(
            id,
            S2C::CloseStream(pb::CloseStream {
                response_trailers: None,
                status: Some(tonic_types::Status {
                    code: 0,
                    message: "ignored".into(),
                    details: Vec::new(),
                }),
            }),
        );
        assert_eq!(call.await.expect("task").expect("ok").into_inner().seq, 1);
    })
    .await
}

#[tokio::test]
async fn deadline_fails_the_call_sends_cancel_and_grpc_timeout() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut req = plain(1);
        req.set_timeout(Duration::from_millis(200));
        let call = start_unary(&tunnel, req);
        let (id, new, _) = peer.expect_unary().await;
        let md = new.request_headers.expect("request headers").md;
        let timeout = md.get("grpc-timeout").expect("grpc-timeout sent (P-60)");
        assert_eq!(timeout.val.len(), 1, "{timeout:?}");
        let v = &timeout.val[0];
        assert!(
            v.len() <= 9 && v[..v.len() - 1].bytes().all(|b| b.is_ascii_digit()),
            "{v}"
        );
        // The peer never answers: the deadline is enforced locally.
        let status = call.await.expect("task").expect_err("deadline");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(peer.next_for(id).await, C2S::Cancel(()));
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn binary_metadata_travels_raw_in_the_tunnel() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut req = plain(1);
        req.metadata_mut().insert_bin(
            "x-raw-bin",
            BinaryMetadataValue::from_bytes(b"\x01\x02ab\xc3\xa9"),
        );
        let call = start_unary(&tunnel, req);
        let (id, new, _) = peer.expect_unary().await;
        let md = new.request_headers.expect("request headers").md;
        // Raw bytes in the proto string, not base64 (P-57).
        assert_eq!(md["x-raw-bin"].val, ["\u{1}\u{2}abé"]);
        peer.send(
            id,
            S2C::ResponseHeaders(headers(&[("y-raw-bin", "héllo\u{0}")])),
        );
        peer.send(id, response(&encoded(1, 0)));
        peer.send(id, close(0, ""));
        let resp = call.await.expect("task").expect("call");
        let value = resp.metadata().get_bin("y-raw-bin").expect("bin header");
        assert_eq!(value.to_bytes().expect("base64"), "héllo\u{0}".as_bytes());
    })
    .await
}

#[tokio::test]
async fn non_utf8_binary_metadata_fails_only_that_call() {
    bounded(async {
        // A raw peer does not offer base64 binary metadata; with the `Fail`
        // policy a value it cannot carry fails its call.
        let builder = TunnelChannel::builder().binary_metadata(grpctunnel::BinaryMetadata::Fail);
        let (_server, tunnel, mut peer) = negotiated_channel(builder, 65536).await;
        let mut req = plain(1);
        req.metadata_mut().insert_bin(
            "x-bad-bin",
            BinaryMetadataValue::from_bytes(&[0xff, 0xfe, 0x00]),
        );
        let status = start_unary(&tunnel, req)
            .await
            .expect("task")
            .expect_err("not UTF-8");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(!tunnel.is_closed());
        // Nothing of the failed call reached the peer: the next frame is
        // the next call's new_stream.
        let mut good = plain(2);
        good.metadata_mut()
            .insert("x-good", "1".parse().expect("ascii"));
        let call = start_unary(&tunnel, good);
        let (id, new, _) = peer.expect_unary().await;
        let headers = new.request_headers.expect("request headers").md;
        assert!(headers.contains_key("x-good") && !headers.contains_key("x-bad-bin"));
        peer.answer(
            id,
            &EchoResponse {
                seq: 2,
                ..Default::default()
            },
        );
        assert_eq!(call.await.expect("task").expect("call").into_inner().seq, 2);
    })
    .await
}

#[tokio::test]
async fn response_larger_than_max_message_size_is_resource_exhausted() {
    bounded(async {
        expect_call_failure(
            TunnelChannel::builder().max_message_size(100),
            |peer, id| {
                peer.send(id, S2C::ResponseHeaders(headers(&[])));
                peer.send(
                    id,
                    S2C::ResponseMessage(pb::MessageData {
                        size: 101,
                        data: vec![0u8; 10].into(),
                    }),
                );
            },
            Code::ResourceExhausted,
            "received response message larger than max (101 vs. 100)",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn huge_window_updates_do_not_break_the_call() {
    bounded(async {
        // Overflowing increments (B-13) must not panic our reader.
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let call = start_unary(&tunnel, plain(1));
        let (id, _, _) = peer.expect_unary().await;
        for _ in 0..4 {
            peer.send(id, S2C::WindowUpdate(u32::MAX));
        }
        peer.answer(
            id,
            &EchoResponse {
                seq: 1,
                ..Default::default()
            },
        );
        assert_eq!(call.await.expect("task").expect("call").into_inner().seq, 1);
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn window_update_on_revision_zero_stream_is_ignored() {
    bounded(async {
        let (server, mut peers) = raw_server(Script::NoNegotiate).await;
        let tunnel = TunnelChannel::builder()
            .open(connect(server.addr).await)
            .await
            .expect("opened");
        let mut peer = peers.recv().await.expect("tunnel accepted");
        let call = start_unary(&tunnel, plain(1));
        let (id, new, _) = peer.expect_unary().await;
        assert_eq!(new.protocol_revision, 0);
        peer.send(id, S2C::WindowUpdate(100));
        peer.send(id, S2C::WindowUpdate(u32::MAX));
        peer.answer(
            id,
            &EchoResponse {
                seq: 1,
                ..Default::default()
            },
        );
        assert_eq!(call.await.expect("task").expect("call").into_inner().seq, 1);
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn messages_received_before_close_stay_readable() {
    bounded(async {
        // P-45: messages already received come before the terminal status.
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move {
            let mut stream = client
                .server_stream(EchoRequest::default())
                .await?
                .into_inner();
            let mut seqs = Vec::new();
            loop {
                match stream.message().await {
                    Ok(Some(m)) => seqs.push(m.seq),
                    Ok(None) => return Ok((seqs, Status::ok(""))),
                    Err(status) => return Ok::<_, Status>((seqs, status)),
                }
            }
        });
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, S2C::ResponseHeaders(headers(&[])));
        peer.send(id, response(&encoded(1, 2)));
        peer.send(id, response(&encoded(2, 70_000)));
        peer.send(id, close(Code::Aborted as i32, "stop"));
        let (seqs, status) = call.await.expect("task").expect("headers");
        assert_eq!(seqs, [1, 2]);
        assert_eq!((status.code(), status.message()), (Code::Aborted, "stop"));
    })
    .await
}

#[tokio::test]
async fn close_in_the_middle_of_a_message_reports_the_close_status() {
    bounded(async {
        // P-34: the partial message is discarded; the caller sees the
        // status of the close_stream.
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let call = start_unary(&tunnel, plain(1));
        let (id, _, _) = peer.expect_unary().await;
        peer.send(id, S2C::ResponseHeaders(headers(&[])));
        peer.send(
            id,
            S2C::ResponseMessage(pb::MessageData {
                size: 10,
                data: Bytes::from_static(b"abc"),
            }),
        );
        peer.send(id, close(Code::NotFound as i32, "gone"));
        let status = call.await.expect("task").expect_err("failed");
        assert_eq!((status.code(), status.message()), (Code::NotFound, "gone"));
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}
