//! The wire layer, driven directly: message framing against a reference
//! model, the reassembly rules against theirs, and the metadata, status,
//! timeout and frame codecs for panics and round trips.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;

use super::Input;
use crate::{
    pb,
    wire::{
        message::{start_frames, FrameError, MessageSplitter, Piece, PREFIX_LEN},
        metadata::{headers_to_metadata, metadata_to_headers, BinaryMetadata, Mapping},
        reassembly::Reassembly,
        status::{status_from_trailers, status_to_trailers},
        timeout::{encode_grpc_timeout, grpc_timeout},
    },
};

/// Runs one input through the wire layer; the first byte picks the part.
///
/// # Panics
///
/// When an invariant breaks (that is what it looks for).
pub fn wire(data: &[u8]) {
    let mut input = Input::new(data);
    match input.u8() % 6 {
        0 => splitter(&mut input),
        1 => reassembly(&mut input),
        2 => metadata(&mut input),
        3 => status(&mut input),
        4 => timeout(&mut input),
        _ => frames(&mut input),
    }
}

/// What a gRPC body holds, by the spec: the messages, then either a clean
/// end, a bad prefix, or a cut-short message.
fn reference(body: &[u8], max: usize) -> (Vec<&[u8]>, Option<FrameError>) {
    let mut messages = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if rest.len() < PREFIX_LEN {
            let received = rest.len() as u64;
            let expected = PREFIX_LEN as u64;
            return (messages, Some(FrameError::Truncated { expected, received }));
        }
        let size = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
        if rest[0] != 0 {
            return (messages, Some(FrameError::Compressed));
        }
        if u64::from(size) > max as u64 {
            return (
                messages,
                Some(FrameError::TooLarge {
                    size: u64::from(size),
                    max,
                }),
            );
        }
        let total = PREFIX_LEN + size as usize;
        if rest.len() < total {
            let (expected, received) = (total as u64, rest.len() as u64);
            return (messages, Some(FrameError::Truncated { expected, received }));
        }
        messages.push(&rest[PREFIX_LEN..total]);
        rest = &rest[total..];
    }
    (messages, None)
}

/// Any body, cut anywhere, splits into exactly the messages of the spec,
/// and each message's first chunk reframes to its own prefix.
fn splitter(input: &mut Input<'_>) {
    let max = usize::from(input.u16());
    let cuts: Vec<usize> = (0..input.u8() % 16)
        .map(|_| usize::from(input.u8()))
        .collect();
    let body = Bytes::copy_from_slice(input.rest());
    let mut splitter = MessageSplitter::new(max);
    let mut pieces = Vec::new();
    let mut rest = body.clone();
    let mut failed = None;
    for cut in cuts.into_iter().chain(std::iter::once(usize::MAX)) {
        let chunk = rest.split_to(cut.min(rest.len()));
        if let Err(e) = splitter.push(chunk, &mut pieces) {
            failed = Some(e);
            break;
        }
    }
    let failed = failed.or_else(|| splitter.finish().err());
    let (want, want_err) = reference(&body, max);
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut open: Option<usize> = None;
    for piece in pieces {
        match piece {
            Piece::Start { size, data } => {
                assert!(open.is_none(), "a message started before the last ended");
                assert!(data.len() <= size as usize && (size == 0 || !data.is_empty()));
                let (prefix, more) = start_frames(size, data.clone());
                assert_eq!(&prefix[1..PREFIX_LEN], &size.to_be_bytes()[..]);
                assert_eq!(
                    prefix.len() - PREFIX_LEN + more.map_or(0, |m| m.len()),
                    data.len()
                );
                open = Some(size as usize);
                got.push(data.to_vec());
            }
            Piece::More(data) => {
                assert!(!data.is_empty(), "an empty continuation piece");
                let last = got.last_mut().expect("a continuation after a start");
                last.extend_from_slice(&data);
            }
        }
        let last = got.last().expect("a piece makes a message");
        let size = open.expect("inside a message");
        assert!(last.len() <= size, "a message longer than its prefix");
        if last.len() == size {
            open = None;
        }
    }
    // Every complete message of the spec comes out, whole and in order.
    let complete = got.len() - usize::from(open.is_some());
    assert_eq!(
        complete,
        want.len(),
        "the splitter and the spec disagree on the messages"
    );
    for (got, want) in got.iter().zip(&want) {
        assert_eq!(
            got.as_slice(),
            *want,
            "a message's bytes differ from the body's"
        );
    }
    assert_eq!(
        failed, want_err,
        "the splitter and the spec disagree on the end"
    );
}

/// Any sequence of envelopes and continuations is accepted exactly when the
/// reference rules of P-33 accept it.
fn reassembly(input: &mut Input<'_>) {
    let max = usize::from(input.u8());
    let mut r = Reassembly::default();
    // Bytes still expected for the open message, if any.
    let mut open: Option<usize> = None;
    while !input.is_empty() {
        let (envelope, a, b) = (
            input.u8().is_multiple_of(2),
            input.u8(),
            usize::from(input.u8()),
        );
        let (got, want) = if envelope {
            let size = u32::from(a);
            let want = match open {
                Some(_) => None,
                None if size as usize > max => None,
                None => (size as usize).checked_sub(b),
            };
            (r.on_envelope(size, b, max), want)
        } else {
            let want = open.and_then(|left| left.checked_sub(b));
            (r.on_continuation(b), want)
        };
        match (got, want) {
            (Ok(()), Some(left)) => open = (left > 0).then_some(left),
            (Err(e), None) => {
                // Every violation has its texts, in both roles.
                let _ = (e.server_status(), e.client_status());
                return;
            }
            (got, want) => panic!("reassembly said {got:?}, the rules say {want:?}"),
        }
        assert_eq!(r.is_idle(), open.is_none());
    }
}

/// Header maps of arbitrary names and values never panic the conversion,
/// and whatever converts round-trips.
fn metadata(input: &mut Input<'_>) {
    let mut headers = HeaderMap::new();
    for _ in 0..input.u8() % 8 {
        let name_len = usize::from(input.u8() % 12) + 1;
        let name: String = (0..name_len)
            .map(|_| char::from(b"abcdefghij-_.0123456789"[usize::from(input.u8()) % 23]))
            .collect();
        let name = if input.u8().is_multiple_of(3) {
            format!("{name}-bin")
        } else {
            name
        };
        let value: Vec<u8> = input
            .bytes(64)
            .iter()
            .copied()
            .filter(|b| (*b >= 0x20 && *b != 0x7f) || *b == b'\t')
            .collect();
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    // Each way a tunnel may carry `-bin` values: whatever converts comes
    // back the same, and base64 carries any bytes.
    for bin in [
        Mapping::default(),
        Mapping {
            extended: true,
            policy: BinaryMetadata::Fail,
        },
        Mapping {
            extended: false,
            policy: BinaryMetadata::Fail,
        },
    ] {
        let mut dropped = Vec::new();
        let Ok(md) = headers_to_metadata(&headers, bin, &mut dropped) else {
            continue;
        };
        assert!(bin.policy == BinaryMetadata::Drop || dropped.is_empty());
        let (mut back, mut lost) = (HeaderMap::new(), Vec::new());
        metadata_to_headers(&md, bin, &mut back, &mut lost);
        assert!(
            lost.is_empty(),
            "metadata from headers cannot be headers again: {lost:?}"
        );
        let again = headers_to_metadata(&back, bin, &mut Vec::new())
            .expect("converted metadata converts back");
        assert_eq!(again, md, "metadata does not round-trip");
    }
}

/// Arbitrary status trailers never panic, and what is read writes back to
/// the same status.
fn status(input: &mut Input<'_>) {
    let mut trailers = HeaderMap::new();
    for name in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        if input.u8().is_multiple_of(4) {
            continue;
        }
        let value: Vec<u8> = input
            .bytes(48)
            .iter()
            .copied()
            .filter(|b| *b >= 0x20 && *b != 0x7f)
            .collect();
        if let Ok(value) = HeaderValue::from_bytes(&value) {
            trailers.insert(name, value);
        }
    }
    let Some(status) = status_from_trailers(&trailers) else {
        assert!(!trailers.contains_key("grpc-status"));
        return;
    };
    let mut out = HeaderMap::new();
    status_to_trailers(&status, &mut out);
    assert_eq!(status_from_trailers(&out), Some(status));
}

/// Any `grpc-timeout` values never panic, the last one counts, and an
/// encoded deadline never comes back shorter.
fn timeout(input: &mut Input<'_>) {
    let mut headers = HeaderMap::new();
    let mut last = None;
    for _ in 0..input.u8() % 4 {
        let text = String::from_utf8_lossy(input.bytes(24)).into_owned();
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.append("grpc-timeout", value);
            last = Some(text);
        }
    }
    let parsed = grpc_timeout(&headers);
    let mut only_last = HeaderMap::new();
    if let Some(text) = &last {
        only_last.insert(
            "grpc-timeout",
            HeaderValue::from_str(text).expect("valid above"),
        );
    }
    assert_eq!(
        parsed,
        grpc_timeout(&only_last),
        "not the last value's deadline"
    );
    if let Some(d) = parsed {
        let mut again = HeaderMap::new();
        let encoded = encode_grpc_timeout(d);
        assert!(encoded.len() <= 9, "{encoded} is too long for gRPC");
        again.insert(
            "grpc-timeout",
            HeaderValue::from_str(&encoded).expect("ascii"),
        );
        assert!(
            grpc_timeout(&again).is_some_and(|back| back >= d),
            "{d:?} shortened"
        );
    }
}

/// Any bytes decode as a frame or fail, and a decoded frame re-encodes to
/// itself.
fn frames(input: &mut Input<'_>) {
    let bytes = input.rest();
    if let Ok(frame) = pb::ClientToServer::decode(bytes) {
        let again = pb::ClientToServer::decode(frame.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(&frame));
    }
    if let Ok(frame) = pb::ServerToClient::decode(bytes) {
        let again = pb::ServerToClient::decode(frame.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(&frame));
    }
}
