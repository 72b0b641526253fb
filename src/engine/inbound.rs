//! The frames an end receives on its opening RPC, decoded straight from the
//! HTTP body.
//!
//! tonic's `Streaming` copies every body chunk into one growing buffer and
//! hands out messages that share it. A tunnel keeps those messages (chunks
//! of data waiting for their stream's consumer), so the buffer is never
//! unique again, and every message header made it reallocate and copy what
//! was left: on a saturated 1 MiB stream that was more CPU than the copy
//! itself. Here a message that lies within one body chunk is decoded in
//! place (its data is a slice of that chunk, no copy), and one that spans
//! chunks is gathered once into a buffer of exactly its size.
//!
//! The gRPC framing is cut by the crate's [`MessageSplitter`] (the one that
//! splits handlers' bodies), so a compressed frame, one over the limit or a
//! body cut short fail as any tunneled message would; an undecodable frame
//! and, on a response, the `grpc-status` trailer fail as tonic would.

use std::{
    fmt,
    marker::PhantomData,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
};

use bytes::{Bytes, BytesMut};
use futures_core::Stream;
use http_body::Body as _;

use crate::wire::message::{MessageSplitter, Piece};

/// Which end of the opening RPC the body comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The request body (this end is the network server): it ends without a
    /// status, and a cancelled request is simply its end.
    Request,
    /// The response body (this end is the network client): its trailers
    /// carry the RPC's status.
    Response,
}

/// The decoded frames of an opening RPC's body.
pub(crate) struct Inbound<M> {
    body: tonic::body::Body,
    side: Side,
    splitter: MessageSplitter,
    /// Pieces of the latest body chunk not taken yet, last first.
    pieces: Vec<Piece>,
    /// The message in progress when it spans body chunks: its size, and
    /// its bytes so far.
    gather_size: usize,
    gather: BytesMut,
    /// What broke the framing, once the pieces before it are taken.
    broken: Option<tonic::Status>,
    trailers: Option<http::HeaderMap>,
    done: bool,
    _message: PhantomData<fn() -> M>,
}

impl<M> Inbound<M> {
    fn new(body: tonic::body::Body, side: Side, max: usize) -> Self {
        Self {
            body,
            side,
            splitter: MessageSplitter::new(max),
            pieces: Vec::new(),
            gather_size: 0,
            gather: BytesMut::new(),
            broken: None,
            trailers: None,
            done: false,
            _message: PhantomData,
        }
    }

    /// The frames of a request body; none may be larger than `max`.
    pub(crate) fn request(body: tonic::body::Body, max: usize) -> Self {
        Self::new(body, Side::Request, max)
    }

    /// The frames of a response body; none may be larger than `max`.
    pub(crate) fn response(body: tonic::body::Body, max: usize) -> Self {
        Self::new(body, Side::Response, max)
    }

    /// Takes the body of `req` to decode, leaving tonic an empty one (tonic
    /// still checks the request's headers).
    pub(crate) fn split_request<B>(
        req: http::Request<B>,
        max: usize,
    ) -> (http::Request<tonic::body::Body>, Self)
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<crate::error::BoxError>,
    {
        let (parts, body) = req.into_parts();
        let inbound = Self::request(tonic::body::Body::new(body), max);
        (
            http::Request::from_parts(parts, tonic::body::Body::empty()),
            inbound,
        )
    }
}

impl<M: prost::Message + Default> Inbound<M> {
    /// The next whole message of what was received, if there is one.
    fn decode_next(&mut self) -> Result<Option<M>, tonic::Status> {
        while let Some(piece) = self.pieces.pop() {
            let message = match piece {
                // Within one body chunk: decoded in place.
                Piece::Start { size, data } if data.len() == size as usize => data,
                Piece::Start { size, data } => {
                    self.gather_size = size as usize;
                    self.gather.reserve(self.gather_size);
                    self.gather.extend_from_slice(&data);
                    continue;
                }
                Piece::More(data) => {
                    self.gather.extend_from_slice(&data);
                    if self.gather.len() < self.gather_size {
                        continue;
                    }
                    std::mem::take(&mut self.gather).freeze()
                }
            };
            return M::decode(message)
                .map(Some)
                .map_err(|e| tonic::Status::internal(e.to_string()));
        }
        match self.broken.take() {
            Some(status) => Err(status),
            None => Ok(None),
        }
    }

    /// Cuts a body chunk into pieces; `decode_next` took all earlier ones.
    /// Frames before a framing error still come out, then the error.
    fn split(&mut self, data: Bytes) {
        if let Err(e) = self.splitter.push(data, &mut self.pieces) {
            self.broken = Some(e.to_status());
        }
        self.pieces.reverse();
    }

    /// How the body's end ends the frames.
    fn end(&mut self) -> Option<tonic::Status> {
        if let Err(e) = self.splitter.finish() {
            return Some(e.to_status());
        }
        if self.side == Side::Request {
            return None;
        }
        match self
            .trailers
            .take()
            .and_then(|t| tonic::Status::from_header_map(&t))
        {
            Some(status) if status.code() == tonic::Code::Ok => None,
            Some(status) => Some(status),
            None => Some(tonic::Status::unknown(
                "protocol error: missing grpc-status trailer, stream was terminated without a final status",
            )),
        }
    }
}

impl<M: prost::Message + Default> Stream for Inbound<M> {
    type Item = Result<M, tonic::Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.decode_next() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.split(data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            match &mut this.trailers {
                                Some(all) => all.extend(trailers),
                                None => this.trailers = Some(trailers),
                            }
                        }
                    }
                },
                Some(Err(status)) => {
                    this.done = true;
                    if this.side == Side::Request && status.code() == tonic::Code::Cancelled {
                        // The peer reset its request: the end of input.
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.done = true;
                    return Poll::Ready(this.end().map(Err));
                }
            }
        }
    }
}

impl<M> fmt::Debug for Inbound<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inbound")
            .field("side", &self.side)
            .field("gathered", &self.gather.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// Where a transport wrapper leaves the response body of an opening RPC
/// for [`Inbound::response`], while tonic gets an empty one (tonic still
/// reads the response headers: a trailers-only answer fails the call).
#[derive(Clone, Default)]
pub(crate) struct BodySlot(Arc<Mutex<Option<tonic::body::Body>>>);

impl BodySlot {
    pub(crate) fn put(&self, body: tonic::body::Body) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(body);
    }

    /// The frames of the response body put here, once the opening RPC's
    /// headers are in.
    pub(crate) fn take_response<M>(&self, max: usize) -> Result<Inbound<M>, crate::Error> {
        let body = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        let body = body.ok_or_else(|| {
            crate::Error::closed(tonic::Status::internal(
                "the transport answered the opening RPC without a response body",
            ))
        })?;
        Ok(Inbound::response(body, max))
    }
}

impl fmt::Debug for BodySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodySlot").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use prost::Message;

    use crate::pb;

    fn framed(messages: &[pb::ClientToServer]) -> Vec<u8> {
        let mut out = Vec::new();
        for m in messages {
            let bytes = m.encode_to_vec();
            out.push(0);
            out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
            out.extend_from_slice(&bytes);
        }
        out
    }

    fn data_frame(id: i64, data: &[u8]) -> pb::ClientToServer {
        pb::ClientToServer {
            stream_id: id,
            frame: Some(pb::client_to_server::Frame::MoreRequestData(
                Bytes::copy_from_slice(data),
            )),
        }
    }

    fn body_of(chunks: Vec<Bytes>, trailers: Option<http::HeaderMap>) -> tonic::body::Body {
        let mut frames: Vec<Result<http_body::Frame<Bytes>, tonic::Status>> = chunks
            .into_iter()
            .map(|c| Ok(http_body::Frame::data(c)))
            .collect();
        if let Some(t) = trailers {
            frames.push(Ok(http_body::Frame::trailers(t)));
        }
        tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    async fn decode_all(
        chunks: Vec<Bytes>,
        side: Side,
        trailers: Option<http::HeaderMap>,
    ) -> (Vec<pb::ClientToServer>, Option<tonic::Status>) {
        let mut inbound =
            Inbound::<pb::ClientToServer>::new(body_of(chunks, trailers), side, 1 << 20);
        let mut got = Vec::new();
        while let Some(item) = inbound.next().await {
            match item {
                Ok(m) => got.push(m),
                Err(status) => return (got, Some(status)),
            }
        }
        (got, None)
    }

    fn ok_trailers() -> http::HeaderMap {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", http::HeaderValue::from_static("0"));
        t
    }

    /// Every way of cutting the body into chunks decodes to the same frames.
    #[tokio::test]
    async fn any_chunking_decodes_the_same_frames() {
        let messages = vec![
            data_frame(1, &[7; 40_000]),
            pb::ClientToServer::default(),
            data_frame(3, b"abc"),
            data_frame(5, &[9; 16 * 1024]),
        ];
        let wire = framed(&messages);
        for cut in [1, 2, 4, 5, 6, 7, 100, 16 * 1024, 16 * 1024 + 5, wire.len()] {
            let chunks = wire.chunks(cut).map(Bytes::copy_from_slice).collect();
            let (got, err) = decode_all(chunks, Side::Response, Some(ok_trailers())).await;
            assert!(err.is_none(), "cut {cut}: {err:?}");
            assert_eq!(got, messages, "cut {cut}");
        }
    }

    /// A message within one chunk keeps pointing into that chunk.
    #[tokio::test]
    async fn a_message_within_one_chunk_is_not_copied() {
        let wire = Bytes::from(framed(&[data_frame(1, &[1; 1000])]));
        let range = wire.as_ptr() as usize..wire.as_ptr() as usize + wire.len();
        let (got, _) = decode_all(vec![wire], Side::Request, None).await;
        let Some(pb::client_to_server::Frame::MoreRequestData(data)) = &got[0].frame else {
            panic!("not message data: {got:?}");
        };
        assert!(range.contains(&(data.as_ptr() as usize)));
    }

    #[tokio::test]
    async fn response_ends_with_its_trailers_status() {
        let wire = Bytes::from(framed(&[data_frame(1, b"x")]));
        let (got, err) = decode_all(vec![wire.clone()], Side::Response, Some(ok_trailers())).await;
        assert_eq!(got.len(), 1);
        assert!(err.is_none(), "{err:?}");

        let mut failed = http::HeaderMap::new();
        failed.insert("grpc-status", http::HeaderValue::from_static("14"));
        failed.insert("grpc-message", http::HeaderValue::from_static("going away"));
        let (_, err) = decode_all(vec![wire.clone()], Side::Response, Some(failed)).await;
        let err = err.expect("status from trailers");
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::Unavailable, "going away")
        );

        let (_, err) = decode_all(vec![wire.clone()], Side::Response, None).await;
        assert_eq!(err.expect("no trailers").code(), tonic::Code::Unknown);

        // A request has no status to wait for.
        let (got, err) = decode_all(vec![wire], Side::Request, None).await;
        assert_eq!(got.len(), 1);
        assert!(err.is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn broken_bodies_fail_with_the_splitters_codes() {
        let wire = framed(&[data_frame(1, b"abc")]);
        let cut = Bytes::copy_from_slice(&wire[..wire.len() - 1]);
        let (_, err) = decode_all(vec![cut], Side::Request, None).await;
        assert_eq!(err.expect("cut short").code(), tonic::Code::Internal);

        let mut compressed = wire.clone();
        compressed[0] = 1;
        let (_, err) = decode_all(vec![compressed.into()], Side::Request, None).await;
        assert_eq!(err.expect("compressed").code(), tonic::Code::Internal);

        let huge = Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]);
        let (_, err) = decode_all(vec![huge], Side::Request, None).await;
        assert_eq!(
            err.expect("too large").code(),
            tonic::Code::ResourceExhausted
        );

        // The frames before a broken one still come out, then the error.
        let mut then_compressed = wire.clone();
        then_compressed.extend_from_slice(&[1, 0, 0, 0, 0]);
        let (got, err) = decode_all(vec![then_compressed.into()], Side::Request, None).await;
        assert_eq!(got.len(), 1);
        assert_eq!(err.expect("compressed").code(), tonic::Code::Internal);

        let garbage = Bytes::from_static(&[0, 0, 0, 0, 2, 0xff, 0xff]);
        let (_, err) = decode_all(vec![garbage], Side::Request, None).await;
        assert_eq!(err.expect("undecodable").code(), tonic::Code::Internal);
    }
}
