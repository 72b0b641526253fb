//! Raw tunnel peers for the protocol-violation tests: a tunnel client and a
//! tunnel server that write frames by hand over a real `OpenTunnel` RPC on
//! loopback, and hand every frame they receive to the test.

use std::{collections::VecDeque, net::SocketAddr};

use bytes::Bytes;
use grpctunnel::pb::{
    self,
    client_to_server::Frame as C2S,
    server_to_client::Frame as S2C,
    tunnel_service_client::TunnelServiceClient,
    tunnel_service_server::{TunnelService, TunnelServiceServer},
};
use grpctunnel::TunnelChannel;
use grpctunnel_testing::pb::{echo_service_client::EchoServiceClient, EchoRequest, EchoResponse};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{metadata::MetadataMap, transport::Server, Request, Response, Status, Streaming};

use super::{connect, listener, TestServer};

pub const UNARY: &str = "/grpctunnel.testing.v1.EchoService/Unary";
pub const CLIENT_STREAM: &str = "/grpctunnel.testing.v1.EchoService/ClientStream";
pub const BIDI: &str = "/grpctunnel.testing.v1.EchoService/Bidi";
/// Receive window the raw tunnel client advertises in `new_stream`.
pub const RAW_WINDOW: u32 = 65536;
pub const NEGOTIATE: &str = "grpctunnel-negotiate";

// ----- frames ----------------------------------------------------------

pub fn c2s(id: i64, frame: C2S) -> pb::ClientToServer {
    pb::ClientToServer {
        stream_id: id,
        frame: Some(frame),
    }
}

pub fn s2c(id: i64, frame: S2C) -> pb::ServerToClient {
    pb::ServerToClient {
        stream_id: id,
        frame: Some(frame),
    }
}

pub fn new_stream(method: &str, revision: i32) -> C2S {
    C2S::NewStream(pb::NewStream {
        method_name: method.to_owned(),
        request_headers: Some(pb::Metadata::default()),
        initial_window_size: RAW_WINDOW,
        protocol_revision: revision,
    })
}

/// A whole request message in one envelope.
pub fn request(msg: &[u8]) -> C2S {
    envelope(msg.len() as u32, msg.to_vec())
}

/// A request envelope announcing `size` bytes and carrying `data`.
pub fn envelope(size: u32, data: impl Into<Bytes>) -> C2S {
    C2S::RequestMessage(pb::MessageData {
        size,
        data: data.into(),
    })
}

/// A whole response message in one envelope.
pub fn response(msg: &[u8]) -> S2C {
    S2C::ResponseMessage(pb::MessageData {
        size: msg.len() as u32,
        data: Bytes::copy_from_slice(msg),
    })
}

pub fn headers(entries: &[(&str, &str)]) -> pb::Metadata {
    let mut md = pb::Metadata::default();
    for (k, v) in entries {
        md.md
            .entry((*k).to_owned())
            .or_default()
            .val
            .push((*v).to_owned());
    }
    md
}

/// `close_stream` with trailers and, unless OK, a status.
pub fn close(code: i32, message: &str) -> S2C {
    S2C::CloseStream(pb::CloseStream {
        response_trailers: Some(pb::Metadata::default()),
        status: (code != 0).then(|| tonic_types::Status {
            code,
            message: message.to_owned(),
            details: Vec::new(),
        }),
    })
}

pub fn echo_request(seq: u64) -> Vec<u8> {
    EchoRequest {
        seq,
        ..Default::default()
    }
    .encode_to_vec()
}

/// The status a `close_stream` frame carries: (code, message).
pub fn close_status(frame: &S2C) -> Option<(i32, String)> {
    match frame {
        S2C::CloseStream(c) => Some(
            c.status
                .as_ref()
                .map_or((0, String::new()), |s| (s.code, s.message.clone())),
        ),
        _ => None,
    }
}

/// Checks that stream `id` was refused at `new_stream` (P-28): one
/// `close_stream` with only a status, no headers, no trailers.
pub async fn expect_rejected(raw: &mut RawClient, id: i64, code: tonic::Code, text: &str) {
    let frames = raw.until_close(id).await;
    assert_eq!(frames.len(), 1, "only close_stream: {frames:?}");
    let S2C::CloseStream(close) = &frames[0] else {
        unreachable!()
    };
    assert_eq!(close.response_trailers, None, "{close:?}");
    assert_eq!(
        close_status(&frames[0]),
        Some((code as i32, text.to_owned()))
    );
}

/// A short name of a frame, for assertion messages.
pub fn kind(frame: &Option<S2C>) -> &'static str {
    match frame {
        None => "none",
        Some(S2C::ResponseHeaders(_)) => "response_headers",
        Some(S2C::ResponseMessage(_)) => "response_message",
        Some(S2C::MoreResponseData(_)) => "more_response_data",
        Some(S2C::CloseStream(_)) => "close_stream",
        Some(S2C::Settings(_)) => "settings",
        Some(S2C::WindowUpdate(_)) => "window_update",
    }
}

/// The error and its sources as one line.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        out.push_str(": ");
        out.push_str(&e.to_string());
        cur = e.source();
    }
    out
}

// ----- raw tunnel client -------------------------------------------------

/// A hand-driven tunnel client on an `OpenTunnel` RPC.
pub struct RawClient {
    tx: Option<mpsc::UnboundedSender<pb::ClientToServer>>,
    rx: Streaming<pb::ServerToClient>,
    /// Response headers of the opening RPC.
    pub headers: MetadataMap,
    /// Frames read but not asked for yet (other streams).
    backlog: VecDeque<pb::ServerToClient>,
    /// Revision used by [`RawClient::unary`]: 1 once settings were read.
    pub revision: i32,
}

impl RawClient {
    /// Opens `OpenTunnel` to `addr`, with `grpctunnel-negotiate: on` if
    /// `negotiate`; returns once the response headers arrived, without
    /// sending or reading any frame.
    pub async fn open(addr: SocketAddr, negotiate: bool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut req = Request::new(UnboundedReceiverStream::new(rx));
        if negotiate {
            req.metadata_mut()
                .insert(NEGOTIATE, "on".parse().expect("ascii"));
        }
        let resp = TunnelServiceClient::new(connect(addr).await)
            .open_tunnel(req)
            .await
            .expect("OpenTunnel accepted");
        let headers = resp.metadata().clone();
        Self {
            tx: Some(tx),
            rx: resp.into_inner(),
            headers,
            backlog: VecDeque::new(),
            revision: 0,
        }
    }

    /// Opens a negotiated tunnel and reads its `Settings` frame.
    pub async fn negotiated(addr: SocketAddr) -> (Self, pb::Settings) {
        let mut raw = Self::open(addr, true).await;
        let first = raw.next().await;
        assert_eq!(first.stream_id, -1, "settings frame has stream ID -1");
        let Some(S2C::Settings(settings)) = first.frame else {
            panic!("first frame is not settings: {}", kind(&first.frame));
        };
        raw.revision = 1;
        (raw, settings)
    }

    pub fn send(&self, id: i64, frame: C2S) {
        self.send_raw(c2s(id, frame));
    }

    pub fn send_raw(&self, frame: pb::ClientToServer) {
        self.tx
            .as_ref()
            .expect("tunnel not half-closed")
            .send(frame)
            .expect("request stream open");
    }

    /// Half-closes the opening RPC (end of input for the server).
    pub fn close_input(&mut self) {
        self.tx = None;
    }

    /// The next frame, from the backlog first.
    pub async fn next(&mut self) -> pb::ServerToClient {
        if let Some(f) = self.backlog.pop_front() {
            return f;
        }
        match self.rx.message().await {
            Ok(Some(f)) => f,
            Ok(None) => panic!("opening RPC ended with OK, expected a frame"),
            Err(status) => panic!("opening RPC failed, expected a frame: {status:?}"),
        }
    }

    /// The next frame for stream `id`; frames of other streams are kept.
    pub async fn next_for(&mut self, id: i64) -> S2C {
        if let Some(i) = self.backlog.iter().position(|f| f.stream_id == id) {
            let f = self.backlog.remove(i).expect("present");
            return f.frame.expect("recognized frame");
        }
        loop {
            let f = match self.rx.message().await {
                Ok(Some(f)) => f,
                Ok(None) => panic!("opening RPC ended with OK, expected a frame for {id}"),
                Err(status) => {
                    panic!("opening RPC failed, expected a frame for {id}: {status:?}")
                }
            };
            if f.stream_id == id {
                return f.frame.expect("recognized frame");
            }
            self.backlog.push_back(f);
        }
    }

    /// Frames of stream `id` up to and including its `close_stream`.
    pub async fn until_close(&mut self, id: i64) -> Vec<S2C> {
        let mut frames = Vec::new();
        loop {
            let f = self.next_for(id).await;
            let done = matches!(f, S2C::CloseStream(_));
            frames.push(f);
            if done {
                return frames;
            }
        }
    }

    /// Frames of other streams read while waiting for one stream.
    pub fn take_backlog(&mut self) -> Vec<pb::ServerToClient> {
        self.backlog.drain(..).collect()
    }

    /// Reads to the end of the opening RPC: the frames that were still
    /// sent, and its status (`Code::Ok` when it ended normally).
    pub async fn end(&mut self) -> (Vec<pb::ServerToClient>, Status) {
        let mut frames: Vec<_> = self.backlog.drain(..).collect();
        loop {
            match self.rx.message().await {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, Status::ok("")),
                Err(status) => return (frames, status),
            }
        }
    }

    /// Reads to the end of the opening RPC and checks it failed with
    /// UNKNOWN and exactly `text` (P-22).
    pub async fn expect_fatal(&mut self, text: &str) {
        let (_, status) = self.end().await;
        assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
        assert_eq!(status.message(), text);
    }

    /// Runs a successful unary echo call on stream `id` and checks its
    /// frames: optional credit, headers, one message, `close_stream`
    /// without status.
    pub async fn unary(&mut self, id: i64, seq: u64) {
        self.send(id, new_stream(UNARY, self.revision));
        self.send(id, request(&echo_request(seq)));
        self.send(id, C2S::HalfClose(()));
        let frames = self.until_close(id).await;
        let frames: Vec<_> = frames
            .into_iter()
            .filter(|f| !matches!(f, S2C::WindowUpdate(_)))
            .collect();
        assert_eq!(frames.len(), 3, "headers, message, close: {frames:?}");
        assert!(matches!(frames[0], S2C::ResponseHeaders(_)), "{frames:?}");
        let S2C::ResponseMessage(msg) = &frames[1] else {
            panic!("expected a response message: {frames:?}");
        };
        assert_eq!(msg.size as usize, msg.data.len());
        let resp = EchoResponse::decode(msg.data.clone()).expect("echo response");
        assert_eq!(resp.seq, seq);
        assert_eq!(close_status(&frames[2]), Some((0, String::new())));
    }
}

// ----- raw tunnel server -----------------------------------------------

/// How the raw tunnel server answers `OpenTunnel`.
#[derive(Clone, Debug)]
pub enum Script {
    /// Response headers with `grpctunnel-negotiate: on`.
    Negotiate,
    /// Response headers without the negotiation header (revision zero).
    NoNegotiate,
    /// Fails the opening RPC before any headers (trailers-only).
    Reject(Status),
}

/// One accepted `OpenTunnel` RPC, driven by the test.
pub struct RawPeer {
    /// Request headers of the opening RPC.
    pub headers: MetadataMap,
    inbound: Streaming<pb::ClientToServer>,
    out: Option<mpsc::UnboundedSender<Result<pb::ServerToClient, Status>>>,
}

impl RawPeer {
    pub fn send(&self, id: i64, frame: S2C) {
        self.send_raw(s2c(id, frame));
    }

    pub fn send_raw(&self, frame: pb::ServerToClient) {
        self.out
            .as_ref()
            .expect("opening RPC not ended")
            .send(Ok(frame))
            .expect("response stream open");
    }

    pub fn settings(&self, revisions: Vec<i32>, window: u32) {
        self.send(
            -1,
            S2C::Settings(pb::Settings {
                supported_protocol_revisions: revisions,
                initial_window_size: window,
            }),
        );
    }

    /// Ends the opening RPC: OK with `None`, or with the status.
    pub fn end_rpc(&mut self, status: Option<Status>) {
        if let (Some(out), Some(status)) = (self.out.take(), status) {
            let _ = out.send(Err(status));
        }
    }

    /// The next frame, or `None` once the client's input ended.
    pub async fn next_or_end(&mut self) -> Option<pb::ClientToServer> {
        self.inbound.message().await.ok().flatten()
    }

    pub async fn next(&mut self) -> pb::ClientToServer {
        self.next_or_end().await.expect("a frame from the client")
    }

    /// Next frame for stream `id`, skipping credit for other streams.
    pub async fn next_for(&mut self, id: i64) -> C2S {
        loop {
            let f = self.next().await;
            if f.stream_id == id {
                return f.frame.expect("recognized frame");
            }
            assert!(
                matches!(f.frame, Some(C2S::WindowUpdate(_))),
                "unexpected frame for stream {}: {f:?}",
                f.stream_id
            );
        }
    }

    /// A whole call as a unary caller sends it: `new_stream`, one
    /// request message in one envelope, `half_close`. Returns the
    /// stream ID, the `new_stream` and the request bytes.
    pub async fn expect_unary(&mut self) -> (i64, pb::NewStream, Bytes) {
        let f = self.next().await;
        let id = f.stream_id;
        let Some(C2S::NewStream(new)) = f.frame else {
            panic!("expected new_stream, got {f:?}");
        };
        let C2S::RequestMessage(msg) = self.next_for(id).await else {
            panic!("expected the request message");
        };
        assert_eq!(
            msg.size as usize,
            msg.data.len(),
            "small request, one chunk"
        );
        let half = self.next_for(id).await;
        assert_eq!(
            half,
            C2S::HalfClose(()),
            "half_close right after the request"
        );
        (id, new, msg.data)
    }

    /// Answers stream `id` with empty headers, `resp` and an OK close.
    pub fn answer(&self, id: i64, resp: &EchoResponse) {
        self.send(id, S2C::ResponseHeaders(pb::Metadata::default()));
        self.send(id, response(&resp.encode_to_vec()));
        self.send(id, close(0, ""));
    }

    /// Runs one unary call with `seq` through `tunnel` and answers it;
    /// checks both messages and that the tunnel is still up. Returns the
    /// call's stream ID.
    pub async fn unary_ok(&mut self, tunnel: &TunnelChannel, seq: u64) -> i64 {
        let mut client = EchoServiceClient::new(tunnel.clone());
        let req = EchoRequest {
            seq,
            ..Default::default()
        };
        let call = tokio::spawn(async move { client.unary(req).await });
        let (id, _, req) = self.expect_unary().await;
        assert_eq!(EchoRequest::decode(req).expect("echo request").seq, seq);
        self.answer(
            id,
            &EchoResponse {
                seq,
                ..Default::default()
            },
        );
        let resp = call.await.expect("call task").expect("unary call");
        assert_eq!(resp.into_inner().seq, seq);
        assert!(!tunnel.is_closed(), "{:?}", tunnel.terminal_error());
        id
    }
}

struct RawService {
    script: Script,
    accepted: mpsc::UnboundedSender<RawPeer>,
}

#[tonic::async_trait]
impl TunnelService for RawService {
    type OpenTunnelStream = UnboundedReceiverStream<Result<pb::ServerToClient, Status>>;
    type OpenReverseTunnelStream = UnboundedReceiverStream<Result<pb::ClientToServer, Status>>;

    async fn open_tunnel(
        &self,
        request: Request<Streaming<pb::ClientToServer>>,
    ) -> Result<Response<Self::OpenTunnelStream>, Status> {
        if let Script::Reject(status) = &self.script {
            return Err(status.clone());
        }
        let (out, rx) = mpsc::unbounded_channel();
        let (headers, _, inbound) = request.into_parts();
        let _ = self.accepted.send(RawPeer {
            headers,
            inbound,
            out: Some(out),
        });
        let mut resp = Response::new(UnboundedReceiverStream::new(rx));
        if matches!(self.script, Script::Negotiate) {
            resp.metadata_mut()
                .insert(NEGOTIATE, "on".parse().expect("ascii"));
        }
        Ok(resp)
    }

    async fn open_reverse_tunnel(
        &self,
        _request: Request<Streaming<pb::ServerToClient>>,
    ) -> Result<Response<Self::OpenReverseTunnelStream>, Status> {
        Err(Status::unimplemented("reverse tunnels not supported"))
    }
}

/// A tonic server on loopback whose tunnel service is scripted; each
/// accepted `OpenTunnel` arrives on the receiver.
pub async fn raw_server(script: Script) -> (TestServer, mpsc::UnboundedReceiver<RawPeer>) {
    let (listener, addr) = listener().await;
    let (accepted, peers) = mpsc::unbounded_channel();
    let svc = TunnelServiceServer::new(RawService { script, accepted });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            })
            .await
            .expect("server");
    });
    let server = TestServer {
        addr,
        stop: Some(stop),
        task,
    };
    (server, peers)
}

/// Opens our `TunnelChannel` built by `builder` against a raw server
/// that negotiates and sends `Settings` listing revisions 0 and 1 with
/// a window of `window`.
pub async fn negotiated_channel(
    builder: grpctunnel::TunnelChannelBuilder,
    window: u32,
) -> (TestServer, grpctunnel::TunnelChannel, RawPeer) {
    let (server, mut peers) = raw_server(Script::Negotiate).await;
    let open = tokio::spawn(builder.open(connect(server.addr).await));
    let peer = peers.recv().await.expect("tunnel accepted");
    peer.settings(vec![0, 1], window);
    let tunnel = open.await.expect("open task").expect("tunnel opened");
    (server, tunnel, peer)
}
