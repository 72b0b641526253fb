//! Protocol violations against our tunnel client, tunnel-level: the opening
//! RPC, `Settings` validation, stream IDs and frames for unknown streams. A
//! raw tunnel server, scripted per test, answers `OpenTunnel` over real
//! HTTP/2 on loopback and hands the test every frame our `TunnelChannel`
//! sends (PROTOCOL.md §2, §3.1, §6).

mod common;

use common::{raw::*, *};
use grpctunnel::{
    pb::{client_to_server::Frame as C2S, server_to_client::Frame as S2C},
    Revision, TunnelChannel,
};
use grpctunnel_testing::pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse};
use prost::Message;
use tonic::{Code, Status};

/// Opens our channel against a raw server that negotiates, lets `first`
/// send the server's first frame, and checks that `open` fails with a
/// protocol error whose chain contains `text` (P-14) and that the client
/// sent no frame before ending its input (P-13).
async fn expect_open_fails(first: impl FnOnce(&RawPeer), text: &str) {
    let (server, mut peers) = raw_server(Script::Negotiate).await;
    let open = tokio::spawn(TunnelChannel::builder().open(connect(server.addr).await));
    let mut peer = peers.recv().await.expect("tunnel accepted");
    first(&peer);
    let err = open
        .await
        .expect("open task")
        .expect_err("invalid first frame");
    assert!(err.is_protocol(), "{err:?}");
    let chain = chain(&err);
    assert!(chain.contains(text), "{chain:?} should contain {text:?}");
    assert!(err.status().is_none(), "{err:?}");
    // No frame was sent, and the opening RPC's input ends.
    assert_eq!(peer.next_or_end().await, None);
}

fn unary_request(seq: u64) -> EchoRequest {
    EchoRequest {
        seq,
        ..Default::default()
    }
}

fn answer(seq: u64) -> EchoResponse {
    EchoResponse {
        seq,
        ..Default::default()
    }
}

#[tokio::test]
async fn first_frame_not_settings_fails_open() {
    bounded(async {
        for frame in [
            S2C::ResponseHeaders(headers(&[])),
            S2C::WindowUpdate(10),
            close(0, ""),
        ] {
            expect_open_fails(
                move |peer| peer.send(-1, frame),
                "protocol error: first frame was not settings",
            )
            .await;
        }
        // The stream ID is checked first (P-14 order).
        expect_open_fails(
            |peer| peer.send(1, S2C::ResponseHeaders(headers(&[]))),
            "protocol error: settings frame had bad stream ID (1)",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn settings_with_bad_stream_id_fails_open() {
    bounded(async {
        for id in [0, 1, -2] {
            expect_open_fails(
                |peer| {
                    peer.send_raw(s2c(
                        id,
                        S2C::Settings(grpctunnel::pb::Settings {
                            supported_protocol_revisions: vec![0, 1],
                            initial_window_size: 65536,
                        }),
                    ))
                },
                &format!("protocol error: settings frame had bad stream ID ({id})"),
            )
            .await;
        }
    })
    .await
}

#[tokio::test]
async fn settings_with_empty_revision_list_fails_open() {
    bounded(async {
        // §10 item 4: not "assume revision zero".
        expect_open_fails(
            |peer| peer.settings(vec![], 65536),
            "protocol error: server support revisions [], but client supports revisions",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn settings_with_only_unknown_revisions_fails_open() {
    bounded(async {
        expect_open_fails(
            |peer| peer.settings(vec![7, 9], 65536),
            "protocol error: server support revisions [7",
        )
        .await;
    })
    .await
}

#[tokio::test]
async fn unknown_revisions_next_to_known_ones_are_ignored() {
    bounded(async {
        let (server, mut peers) = raw_server(Script::Negotiate).await;
        let open = tokio::spawn(TunnelChannel::builder().open(connect(server.addr).await));
        let mut peer = peers.recv().await.expect("tunnel accepted");
        peer.settings(vec![7, 0, 1, 2], 65536);
        let tunnel = open.await.expect("open task").expect("opened");
        assert_eq!(tunnel.revision(), Revision::One);
        peer.unary_ok(&tunnel, 1).await;
    })
    .await
}

#[tokio::test]
async fn settings_listing_only_revision_zero_gives_revision_zero_streams() {
    bounded(async {
        let (server, mut peers) = raw_server(Script::Negotiate).await;
        let open = tokio::spawn(TunnelChannel::builder().open(connect(server.addr).await));
        let mut peer = peers.recv().await.expect("tunnel accepted");
        peer.settings(vec![0], 65536);
        let tunnel = open.await.expect("open task").expect("opened");
        assert_eq!(tunnel.revision(), Revision::Zero);
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(unary_request(1)).await });
        let (id, new, _) = peer.expect_unary().await;
        assert_eq!(new.protocol_revision, 0);
        peer.answer(id, &answer(1));
        call.await.expect("call task").expect("unary call");
    })
    .await
}

#[tokio::test]
async fn no_negotiate_header_in_response_means_revision_zero_without_settings() {
    bounded(async {
        let (server, mut peers) = raw_server(Script::NoNegotiate).await;
        // `open` returns without waiting for any frame.
        let tunnel = TunnelChannel::builder()
            .open(connect(server.addr).await)
            .await
            .expect("opened");
        let mut peer = peers.recv().await.expect("tunnel accepted");
        // We still advertised (P-8).
        assert_eq!(
            peer.headers.get(NEGOTIATE).and_then(|v| v.to_str().ok()),
            Some("on")
        );
        assert_eq!(tunnel.revision(), Revision::Zero);
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(unary_request(1)).await });
        let (id, new, _) = peer.expect_unary().await;
        assert_eq!(new.protocol_revision, 0);
        peer.answer(id, &answer(1));
        assert_eq!(call.await.expect("task").expect("call").into_inner().seq, 1);
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}

#[tokio::test]
async fn opening_rpc_rejected_before_headers_reports_its_status() {
    bounded(async {
        let reject = Status::unimplemented("forward tunnels not supported");
        let (server, _peers) = raw_server(Script::Reject(reject)).await;
        let err = TunnelChannel::builder()
            .open(connect(server.addr).await)
            .await
            .expect_err("rejected");
        let status = err.status().expect("the opening RPC's status");
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "forward tunnels not supported");
    })
    .await
}

#[tokio::test]
async fn frame_for_never_created_id_closes_the_tunnel() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let in_flight = tokio::spawn(async move { client.unary(unary_request(1)).await });
        let (id, _, _) = peer.expect_unary().await;
        assert_eq!(id, 1);
        peer.send(5, S2C::ResponseHeaders(headers(&[])));
        let text = "received frame for stream ID 5: stream never created";
        let err = tunnel.closed().await;
        assert!(err.is_protocol(), "{err:?}");
        assert!(chain(&err).contains(text), "{}", chain(&err));
        let status = in_flight
            .await
            .expect("call task")
            .expect_err("tunnel died");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains(text), "{status:?}");
        // P-22: the client half-closes the opening RPC.
        assert_eq!(peer.next_or_end().await, None);
        assert!(tunnel.is_closed());
        // Later calls fail without reaching the peer.
        let later = EchoServiceClient::new(tunnel.clone())
            .unary(unary_request(2))
            .await;
        assert!(later.is_err(), "{later:?}");
    })
    .await
}

#[tokio::test]
async fn frame_before_any_stream_is_fatal() {
    bounded(async {
        // P-11: a second settings frame before any stream exists is a frame
        // for a never-created stream.
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        peer.settings(vec![0, 1], 65536);
        let err = tunnel.closed().await;
        assert!(err.is_protocol(), "{err:?}");
        let chain = chain(&err);
        assert!(
            chain.contains("received frame for stream ID -1: stream never created"),
            "{chain}"
        );
        assert_eq!(peer.next_or_end().await, None);
    })
    .await
}

#[tokio::test]
async fn late_frames_for_finished_id_are_dropped() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let id = peer.unary_ok(&tunnel, 1).await;
        peer.send(id, S2C::ResponseHeaders(headers(&[("x", "y")])));
        peer.send(id, response(&answer(9).encode_to_vec()));
        peer.send(id, S2C::MoreResponseData(b"more".to_vec().into()));
        peer.send(id, close(13, "late"));
        peer.send(id, S2C::WindowUpdate(1000));
        peer.send_raw(grpctunnel::pb::ServerToClient {
            stream_id: id,
            frame: None,
        });
        // Negative IDs are always "past" once a stream exists (P-23).
        peer.send(-1, S2C::WindowUpdate(1));
        let id2 = peer.unary_ok(&tunnel, 2).await;
        assert_eq!(id2, id + 1);
        assert!(!tunnel.is_closed(), "{:?}", tunnel.terminal_error());
    })
    .await
}

#[tokio::test]
async fn stream_ids_start_at_one_and_increase() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        for expected in 1..=3 {
            assert_eq!(peer.unary_ok(&tunnel, expected as u64).await, expected);
        }
        // Concurrent calls: new_stream frames still in increasing order,
        // whatever the interleaving of the other frames.
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let mut client = EchoServiceClient::new(tunnel.clone());
                tokio::spawn(async move { client.unary(unary_request(10 + i)).await })
            })
            .collect();
        let mut opened = Vec::new();
        let mut requests = std::collections::HashMap::new();
        let mut half_closed = 0;
        while half_closed < 5 {
            let f = peer.next().await;
            match f.frame {
                Some(C2S::NewStream(_)) => opened.push(f.stream_id),
                Some(C2S::RequestMessage(m)) => {
                    let seq = EchoRequest::decode(m.data).expect("request").seq;
                    requests.insert(f.stream_id, seq);
                }
                Some(C2S::HalfClose(())) => half_closed += 1,
                other => panic!("unexpected frame: {other:?}"),
            }
        }
        assert_eq!(opened, [4, 5, 6, 7, 8]);
        for (id, seq) in requests {
            peer.answer(id, &answer(seq));
        }
        for call in calls {
            call.await.expect("task").expect("call");
        }
    })
    .await
}

#[tokio::test]
async fn new_stream_carries_revision_one_and_our_window() {
    bounded(async {
        let builder = TunnelChannel::builder().initial_window_size(12345);
        let (_server, tunnel, mut peer) = negotiated_channel(builder, 65536).await;
        assert_eq!(tunnel.revision(), Revision::One);
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(unary_request(1)).await });
        let (id, new, _) = peer.expect_unary().await;
        assert_eq!(new.protocol_revision, 1);
        assert_eq!(new.initial_window_size, 12345);
        assert_eq!(new.method_name, UNARY, "with its leading slash (P-24)");
        assert!(new.request_headers.is_some(), "P-26");
        peer.answer(id, &answer(1));
        call.await.expect("task").expect("call");
    })
    .await
}

#[tokio::test]
async fn unary_and_server_streaming_calls_half_close_after_the_request() {
    bounded(async {
        // `expect_unary` checks new_stream, one request, half_close (P-35),
        // all sent before the peer answers anything.
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        peer.unary_ok(&tunnel, 1).await;

        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move {
            let mut stream = client.server_stream(unary_request(2)).await?.into_inner();
            let mut seqs = Vec::new();
            while let Some(m) = stream.message().await? {
                seqs.push(m.seq);
            }
            Ok::<_, Status>(seqs)
        });
        let (id, new, _) = peer.expect_unary().await;
        assert_eq!(
            new.method_name,
            "/grpctunnel.testing.v1.EchoService/ServerStream"
        );
        peer.send(id, S2C::ResponseHeaders(headers(&[])));
        peer.send(id, response(&answer(2).encode_to_vec()));
        peer.send(id, response(&answer(3).encode_to_vec()));
        peer.send(id, close(0, ""));
        assert_eq!(call.await.expect("task").expect("call"), vec![2, 3]);
    })
    .await
}

#[tokio::test]
async fn local_cancel_sends_cancel() {
    bounded(async {
        let (_server, tunnel, mut peer) = negotiated_channel(TunnelChannel::builder(), 65536).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        let call = tokio::spawn(async move { client.unary(unary_request(1)).await });
        let (id, _, _) = peer.expect_unary().await;
        call.abort(); // drops the call future
        assert!(call.await.expect_err("aborted").is_cancelled());
        assert_eq!(peer.next_for(id).await, C2S::Cancel(()));
        // A close_stream racing the cancel is dropped (P-23).
        peer.send(id, close(1, "context canceled"));
        peer.unary_ok(&tunnel, 2).await;
    })
    .await
}
