//! Compression at the edge. A tunnel carries only uncompressed messages
//! (P-65), so the hub inflates what a caller compressed with gzip before
//! the call enters a tunnel, and the agent inflates what the upstream
//! compressed before the response enters it, checking each inflated message
//! against the message limit (no zip bombs). Another encoding is refused
//! with `UNIMPLEMENTED` (from a caller) or `INTERNAL` (from an upstream),
//! naming it. Toward a caller that accepts gzip (`grpc-accept-encoding`),
//! the hub compresses the response's messages.

use std::{
    io::Read,
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Body;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body::Frame;
use pin_project_lite::pin_project;

/// gRPC's message prefix: compressed flag and length.
const PREFIX: usize = 5;

/// The request, with a gzip-compressed body inflated on the way.
///
/// # Errors
///
/// `UNIMPLEMENTED` for an encoding other than `identity` and `gzip`.
pub(crate) fn inflate_request(
    mut req: http::Request<Body>,
    max_message_size: usize,
) -> Result<http::Request<Body>, tonic::Status> {
    let encoding = req
        .headers()
        .get("grpc-encoding")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match encoding.as_deref() {
        None | Some("identity") => Ok(req),
        Some("gzip") => {
            req.headers_mut().remove("grpc-encoding");
            Ok(req.map(|body| Body::new(Reframed::new(body, max_message_size, inflate))))
        }
        Some(other) => Err(tonic::Status::unimplemented(format!(
            "grpc-encoding {other:?} cannot cross a tunnel: send identity or gzip"
        ))),
    }
}

/// The upstream's response, with gzip-compressed messages inflated (each
/// at most `max_message_size`), for the agent.
pub(crate) fn inflate_response(
    mut resp: http::Response<tonic::body::Body>,
    max_message_size: usize,
) -> http::Response<tonic::body::Body> {
    let encoding = resp
        .headers()
        .get("grpc-encoding")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match encoding.as_deref() {
        None | Some("identity") => resp,
        Some("gzip") => {
            resp.headers_mut().remove("grpc-encoding");
            resp.map(|body| tonic::body::Body::new(Reframed::new(body, max_message_size, inflate)))
        }
        Some(other) => tonic::Status::internal(format!(
            "the upstream answered with grpc-encoding {other:?}, which cannot cross a tunnel"
        ))
        .into_http(),
    }
}

/// Cuts the next whole message out of `buf`: its compressed flag and its
/// bytes; `None` until one is complete. A length over `max` is refused
/// before the message arrives.
fn take_message(buf: &mut BytesMut, max: usize) -> Result<Option<(bool, BytesMut)>, tonic::Status> {
    if buf.len() < PREFIX {
        return Ok(None);
    }
    let compressed = buf[0] != 0;
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if len > max {
        return Err(tonic::Status::resource_exhausted(format!(
            "message larger than max ({len} vs. {max})"
        )));
    }
    if buf.len() < PREFIX + len {
        return Ok(None);
    }
    let mut message = buf.split_to(PREFIX + len);
    message.advance(PREFIX);
    Ok(Some((compressed, message)))
}

/// A message behind gRPC's prefix.
fn framed(compressed: bool, message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PREFIX + message.len());
    out.put_u8(u8::from(compressed));
    out.put_u32(message.len() as u32);
    out.put_slice(message);
    out.freeze()
}

/// Inflates a gzip message (at most `max` bytes once inflated); a plain one
/// passes as it is.
fn inflate(compressed: bool, message: BytesMut, max: usize) -> Result<Bytes, tonic::Status> {
    if !compressed {
        return Ok(framed(false, &message));
    }
    let mut inflated = Vec::new();
    let read = flate2::read::GzDecoder::new(&message[..])
        .take(max as u64 + 1)
        .read_to_end(&mut inflated)
        .map_err(|e| tonic::Status::internal(format!("gzip message does not inflate: {e}")))?;
    if read > max {
        return Err(tonic::Status::resource_exhausted(format!(
            "inflated message larger than max ({max})"
        )));
    }
    Ok(framed(false, &inflated))
}

/// Compresses a plain message with gzip; a compressed one passes as it is.
fn deflate(compressed: bool, message: BytesMut, _max: usize) -> Result<Bytes, tonic::Status> {
    use std::io::Write;
    if compressed {
        return Ok(framed(true, &message));
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let out = gz
        .write_all(&message)
        .and_then(|()| gz.finish())
        .map_err(|e| tonic::Status::internal(format!("gzip: {e}")))?;
    Ok(framed(true, &out))
}

/// Whether the caller accepts gzip-compressed responses.
pub(crate) fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers.get_all("grpc-accept-encoding").iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|e| e.trim_ascii() == b"gzip")
    })
}

/// The response with its messages gzip-compressed (and `grpc-encoding:
/// gzip`), unless it is trailers-only or already encoded.
pub(crate) fn deflate_response(mut resp: http::Response<Body>) -> http::Response<Body> {
    let headers = resp.headers();
    if headers.contains_key("grpc-status") || headers.contains_key("grpc-encoding") {
        return resp;
    }
    resp.headers_mut()
        .insert("grpc-encoding", http::HeaderValue::from_static("gzip"));
    resp.map(|body| Body::new(Reframed::new(body, u32::MAX as usize, deflate)))
}

/// What a [`Reframed`] body does to each message.
type Transform = fn(bool, BytesMut, usize) -> Result<Bytes, tonic::Status>;

pin_project! {
    /// A gRPC body whose messages pass through a transform (inflate or
    /// deflate); trailers pass as they are.
    struct Reframed<B> {
        #[pin]
        inner: B,
        buf: BytesMut,
        max: usize,
        transform: Transform,
    }
}

impl<B> Reframed<B> {
    fn new(inner: B, max: usize, transform: Transform) -> Self {
        Self {
            inner,
            buf: BytesMut::new(),
            max,
            transform,
        }
    }
}

impl<B> http_body::Body for Reframed<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let mut this = self.project();
        loop {
            if let Some((compressed, message)) = take_message(this.buf, *this.max)? {
                let message = (this.transform)(compressed, message, *this.max)?;
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => this.buf.extend_from_slice(&data),
                    Err(frame) => return Poll::Ready(Some(Ok(frame))),
                },
                Some(Err(e)) => return Poll::Ready(Some(Err(tonic::Status::from_error(e.into())))),
                None if this.buf.is_empty() => return Poll::Ready(None),
                None => {
                    return Poll::Ready(Some(Err(tonic::Status::internal(
                        "body ended inside a message",
                    ))))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).expect("gzip");
        enc.finish().expect("gzip")
    }

    /// One step of a body: the next whole message, transformed.
    fn next(buf: &mut BytesMut, max: usize, f: Transform) -> Result<Option<Bytes>, tonic::Status> {
        take_message(buf, max)?
            .map(|(c, m)| f(c, m, max))
            .transpose()
    }

    fn wire(compressed: bool, msg: &[u8]) -> BytesMut {
        BytesMut::from(&framed(compressed, msg)[..])
    }

    #[test]
    fn compressed_messages_come_out_inflated_and_plain_ones_as_they_are() {
        let mut buf = wire(true, &gzip(b"hello"));
        buf.extend_from_slice(&wire(false, b"plain"));
        buf.extend_from_slice(&wire(true, &gzip(b"wor")));
        let first = next(&mut buf, 100, inflate).expect("ok").expect("whole");
        assert_eq!(&first[..], &wire(false, b"hello")[..]);
        let second = next(&mut buf, 100, inflate).expect("ok").expect("whole");
        assert_eq!(&second[..], &wire(false, b"plain")[..]);
        // Not all there yet: wait for more.
        let mut partial = buf.split_to(7);
        assert!(next(&mut partial, 100, inflate).expect("ok").is_none());
    }

    #[test]
    fn a_message_that_inflates_past_the_limit_is_refused() {
        let bomb = gzip(&vec![0u8; 1 << 20]);
        let mut buf = wire(true, &bomb);
        let err = next(&mut buf, 1000, inflate).expect_err("too large");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        let mut junk = wire(true, b"not gzip");
        assert_eq!(
            next(&mut junk, 1000, inflate).expect_err("junk").code(),
            tonic::Code::Internal
        );
    }

    #[test]
    fn responses_are_compressed_and_inflate_back() {
        let mut buf = wire(false, b"a response message");
        let out = next(&mut buf, 100, deflate).expect("ok").expect("whole");
        assert_eq!(out[0], 1, "flagged compressed");
        let mut back = BytesMut::from(&out[..]);
        let plain = next(&mut back, 100, inflate).expect("ok").expect("whole");
        assert_eq!(&plain[..], &wire(false, b"a response message")[..]);
        let mut h = http::HeaderMap::new();
        h.insert(
            "grpc-accept-encoding",
            http::HeaderValue::from_static("identity, gzip"),
        );
        assert!(accepts_gzip(&h));
    }

    #[test]
    fn other_encodings_are_refused_by_name() {
        let req = http::Request::builder()
            .header("grpc-encoding", "zstd")
            .body(Body::empty())
            .expect("request");
        let err = inflate_request(req, 100).expect_err("zstd");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(err.message().contains("zstd"));
    }
}
