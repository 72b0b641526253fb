//! A call's outcome: `grpc-status`, `grpc-message` and
//! `grpc-status-details-bin` trailers on HTTP/2 (P-63), a complete
//! `google.rpc.Status` in the tunnel's `close_stream` (P-62).
//!
//! Nothing here panics on input from the wire: an unparsable status becomes
//! `UNKNOWN`, undecodable details are dropped with a `debug!` event.

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;

use super::metadata::{BASE64, GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS};

/// Reads a call's status from HTTP/2 gRPC trailers (or the headers of a
/// trailers-only response), as P-63 says.
///
/// Returns `None` when there is no `grpc-status`. An unparsable
/// `grpc-status` becomes `UNKNOWN` with a message saying so. `grpc-message`
/// is percent-decoded (invalid UTF-8 is replaced). `details` come from
/// `grpc-status-details-bin` (base64, padding optional, a serialized
/// `google.rpc.Status`); undecodable details are ignored with a `debug!`
/// event. Never panics.
pub(crate) fn status_from_trailers(trailers: &HeaderMap) -> Option<tonic_types::Status> {
    let raw_code = trailers.get(GRPC_STATUS)?;
    let message = trailers
        .get(GRPC_MESSAGE)
        .map(|v| percent_decode(v.as_bytes()))
        .unwrap_or_default();
    let parsed = std::str::from_utf8(raw_code.as_bytes())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok());
    let (code, message) = match parsed {
        Some(code) => (code, message),
        None => {
            let raw = String::from_utf8_lossy(raw_code.as_bytes());
            tracing::debug!(grpc_status = %raw, "unparsable grpc-status");
            let mut text = format!("unparsable grpc-status {raw:?} in trailers");
            if !message.is_empty() {
                text.push_str(": ");
                text.push_str(&message);
            }
            (tonic::Code::Unknown as i32, text)
        }
    };
    let details = trailers
        .get(GRPC_STATUS_DETAILS)
        .and_then(|v| decode_details(v.as_bytes()))
        .unwrap_or_default();
    Some(tonic_types::Status {
        code,
        message,
        details,
    })
}

/// Decodes `grpc-status-details-bin` into the details it carries.
fn decode_details(value: &[u8]) -> Option<Vec<prost_types::Any>> {
    let bytes = match BASE64.decode(value.trim_ascii()) {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::debug!(error = %err, "ignoring grpc-status-details-bin: invalid base64");
            return None;
        }
    };
    match tonic_types::Status::decode(bytes.as_slice()) {
        Ok(status) => Some(status.details),
        Err(err) => {
            tracing::debug!(error = %err, "ignoring grpc-status-details-bin: not a google.rpc.Status");
            None
        }
    }
}

/// Writes a call's status as HTTP/2 gRPC trailers (P-63): `grpc-status`,
/// `grpc-message` (percent-encoded, omitted when empty) and, when there are
/// details, `grpc-status-details-bin` holding the whole serialized status.
/// Existing values of those keys are replaced.
pub(crate) fn status_to_trailers(status: &tonic_types::Status, trailers: &mut HeaderMap) {
    // Static names and values: a `&str` key that is not a standard header,
    // or a number turned into text, each cost an allocation per call.
    trailers.insert(
        HeaderName::from_static(GRPC_STATUS),
        code_value(status.code),
    );
    if status.message.is_empty() {
        trailers.remove(GRPC_MESSAGE);
    } else {
        match HeaderValue::from_str(&percent_encode(&status.message)) {
            Ok(value) => {
                trailers.insert(HeaderName::from_static(GRPC_MESSAGE), value);
            }
            // Unreachable: percent_encode only yields visible ASCII.
            Err(_) => tracing::debug!("grpc-message could not be encoded"),
        }
    }
    if status.details.is_empty() {
        trailers.remove(GRPC_STATUS_DETAILS);
    } else {
        match HeaderValue::from_str(&BASE64.encode(status.encode_to_vec())) {
            Ok(value) => {
                trailers.insert(HeaderName::from_static(GRPC_STATUS_DETAILS), value);
            }
            // Unreachable: base64 only yields visible ASCII.
            Err(_) => tracing::debug!("grpc-status-details-bin could not be encoded"),
        }
    }
}

/// The `grpc-status` value of `code`: the 17 codes gRPC defines without
/// an allocation, any other number as its text.
fn code_value(code: i32) -> HeaderValue {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| CODES.get(i))
        .map_or_else(
            || HeaderValue::from(code),
            |text| HeaderValue::from_static(text),
        )
}

/// Converts a [`tonic::Status`] into the `google.rpc.Status` sent in
/// `close_stream`. Details come from [`tonic::Status::details`] when they
/// hold a serialized `google.rpc.Status` (as `tonic_types` writes them), and
/// are otherwise left empty.
pub(crate) fn tonic_status_to_pb(s: &tonic::Status) -> tonic_types::Status {
    let details = if s.details().is_empty() {
        Vec::new()
    } else {
        match tonic_types::Status::decode(s.details()) {
            Ok(status) => status.details,
            Err(err) => {
                tracing::debug!(error = %err, "status details are not a google.rpc.Status; dropping them");
                Vec::new()
            }
        }
    };
    tonic_types::Status {
        code: s.code() as i32,
        message: s.message().to_owned(),
        details,
    }
}

/// Percent-encodes a status message as the gRPC HTTP/2 spec says: bytes
/// outside `0x20..=0x7E`, and `%` itself, become `%XX`.
fn percent_encode(message: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7E).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0F)]));
        }
    }
    out
}

/// Percent-decodes a `grpc-message`. A `%` not followed by two hex digits is
/// kept as is (the spec forbids discarding the message); invalid UTF-8 in the
/// result is replaced.
fn percent_decode(value: &[u8]) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        let b = value[i];
        if b == b'%' {
            if let (Some(hi), Some(lo)) = (
                value.get(i + 1).copied().and_then(hex),
                value.get(i + 2).copied().and_then(hex),
            ) {
                out.push((hi << 4) | lo);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// gRPC's mapping for HTTP responses that carry no gRPC status.
pub(crate) fn http_status_to_grpc(status: http::StatusCode) -> tonic::Status {
    use http::StatusCode as S;
    let code = match status {
        S::BAD_REQUEST => tonic::Code::Internal,
        S::UNAUTHORIZED => tonic::Code::Unauthenticated,
        S::FORBIDDEN => tonic::Code::PermissionDenied,
        S::NOT_FOUND => tonic::Code::Unimplemented,
        S::TOO_MANY_REQUESTS | S::BAD_GATEWAY | S::SERVICE_UNAVAILABLE | S::GATEWAY_TIMEOUT => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::Unknown,
    };
    tonic::Status::new(code, format!("HTTP status {status}"))
}

/// The status of a call its caller cancelled, with an HTTP/2 `CANCEL` in
/// its source chain: a request body that fails with it makes hyper reset the
/// stream it feeds with `CANCEL` (hyper looks for an `h2::Reason` in a body
/// error's sources; without one it resets with `INTERNAL_ERROR`), so a proxy
/// behind a tunnel endpoint cancels its upstream call as its caller did.
pub(crate) fn cancelled(message: &'static str) -> tonic::Status {
    let mut status = tonic::Status::cancelled(message);
    status.set_source(std::sync::Arc::new(h2::Error::from(h2::Reason::CANCEL)));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::metadata::{headers_to_metadata, test_headers as headers, Mapping};
    use bytes::Bytes;
    use proptest::prelude::*;

    fn any_detail(type_url: &str, value: &[u8]) -> prost_types::Any {
        prost_types::Any {
            type_url: type_url.to_owned(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn status_round_trip_with_details() {
        let status = tonic_types::Status {
            code: tonic::Code::InvalidArgument as i32,
            message: "bad % input: ünïcode\r\n\tand \u{1F600}".to_owned(),
            details: vec![
                any_detail("type.googleapis.com/a.B", b"\x01\x02"),
                any_detail("type.googleapis.com/c.D", b""),
            ],
        };
        let mut trailers = HeaderMap::new();
        trailers.insert("x-app", HeaderValue::from_static("1"));
        status_to_trailers(&status, &mut trailers);
        let msg = trailers
            .get(GRPC_MESSAGE)
            .expect("message")
            .to_str()
            .expect("ascii");
        assert!(
            msg.starts_with("bad %25 input: %C3%BCn%C3%AFcode%0D%0A%09and %F0%9F%98%80"),
            "{msg}"
        );
        let details = trailers.get(GRPC_STATUS_DETAILS).expect("details");
        assert!(!details.as_bytes().contains(&b'='));
        assert_eq!(trailers.get(GRPC_STATUS).expect("status"), "3");
        assert_eq!(status_from_trailers(&trailers), Some(status));

        // The metadata part of the trailers carries none of the status keys.
        let md =
            headers_to_metadata(&trailers, Mapping::default(), &mut Vec::new()).expect("converts");
        assert_eq!(md.md.keys().collect::<Vec<_>>(), ["x-app"]);
    }

    #[test]
    fn status_without_message_or_details() {
        let status = tonic_types::Status {
            code: 0,
            message: String::new(),
            details: vec![],
        };
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("stale"));
        status_to_trailers(&status, &mut trailers);
        assert_eq!(trailers.len(), 1);
        assert_eq!(status_from_trailers(&trailers), Some(status));
    }

    #[test]
    fn status_from_trailers_cases() {
        assert_eq!(status_from_trailers(&HeaderMap::new()), None);
        assert_eq!(
            status_from_trailers(&headers(&[(GRPC_MESSAGE, b"no status")])),
            None
        );

        let s = status_from_trailers(&headers(&[(GRPC_STATUS, b"abc"), (GRPC_MESSAGE, b"oops")]))
            .expect("status");
        assert_eq!(s.code, 2);
        assert!(
            s.message.contains("grpc-status") && s.message.contains("oops"),
            "{}",
            s.message
        );

        // Invalid percent sequences are kept, invalid UTF-8 replaced.
        let s = status_from_trailers(&headers(&[
            (GRPC_STATUS, b"13"),
            (GRPC_MESSAGE, b"50%zz%4 %FFx%4A%"),
        ]))
        .expect("status");
        assert_eq!(s.code, 13);
        assert_eq!(s.message, "50%zz%4 \u{FFFD}xJ%");

        // Undecodable details are ignored; padded base64 is accepted.
        let s = status_from_trailers(&headers(&[
            (GRPC_STATUS, b"5"),
            (GRPC_STATUS_DETAILS, b"!!!"),
        ]))
        .expect("status");
        assert_eq!((s.code, s.details.len()), (5, 0));
        let s = status_from_trailers(&headers(&[
            (GRPC_STATUS, b"5"),
            (GRPC_STATUS_DETAILS, b"/w=="),
        ]))
        .expect("status");
        assert_eq!((s.code, s.details.len()), (5, 0));

        let encoded = base64::engine::general_purpose::STANDARD.encode(
            tonic_types::Status {
                code: 5,
                message: "inner".to_owned(),
                details: vec![any_detail("t/x", b"v")],
            }
            .encode_to_vec(),
        );
        let mut h = headers(&[(GRPC_STATUS, b"5"), (GRPC_MESSAGE, b"outer")]);
        h.insert(
            GRPC_STATUS_DETAILS,
            HeaderValue::from_str(&encoded).expect("ascii"),
        );
        let s = status_from_trailers(&h).expect("status");
        assert_eq!(s.message, "outer");
        assert_eq!(s.details, vec![any_detail("t/x", b"v")]);
    }

    #[test]
    fn a_cancelled_status_carries_an_http2_cancel() {
        use std::error::Error as _;
        let status = cancelled("stream cancelled by tunnel client");
        assert_eq!(status.code(), tonic::Code::Cancelled);
        let reason = status
            .source()
            .and_then(|e| e.downcast_ref::<h2::Error>())
            .and_then(h2::Error::reason);
        assert_eq!(reason, Some(h2::Reason::CANCEL));
    }

    /// Every code, gRPC's own and any other number a peer sends, is
    /// written as its decimal text.
    #[test]
    fn status_codes_written_as_text() {
        for code in [-7, 0, 1, 9, 10, 16, 17, 99, i32::MAX, i32::MIN] {
            let mut trailers = HeaderMap::new();
            let status = tonic_types::Status {
                code,
                ..Default::default()
            };
            status_to_trailers(&status, &mut trailers);
            assert_eq!(
                trailers.get(GRPC_STATUS).expect("set"),
                code.to_string().as_str()
            );
        }
    }

    #[test]
    fn percent_round_trip() {
        for msg in [
            "",
            "plain",
            "100%",
            "%25",
            "ünï\u{1F600}",
            "a\u{0}b\u{7f}~ ",
        ] {
            let enc = percent_encode(msg);
            assert!(enc.bytes().all(|b| (0x20..=0x7E).contains(&b)));
            assert_eq!(percent_decode(enc.as_bytes()), msg);
        }
        assert_eq!(percent_encode("100%"), "100%25");
    }

    #[test]
    fn tonic_status_conversions() {
        let pb_status = tonic_types::Status {
            code: tonic::Code::NotFound as i32,
            message: "missing".to_owned(),
            details: vec![any_detail("t/a", b"1"), any_detail("t/b", b"2")],
        };
        // A status that carries details holds the whole serialized
        // `google.rpc.Status`, as tonic writes `grpc-status-details-bin`.
        let status = tonic::Status::with_details(
            tonic::Code::NotFound,
            "missing",
            Bytes::from(pb_status.encode_to_vec()),
        );
        assert_eq!(tonic_status_to_pb(&status), pb_status);

        let plain = tonic::Status::unavailable("gone");
        let back = tonic_status_to_pb(&plain);
        assert_eq!(back.code, 14);
        assert!(back.details.is_empty());

        let junk =
            tonic::Status::with_details(tonic::Code::Aborted, "x", Bytes::from_static(b"\xff"));
        assert!(tonic_status_to_pb(&junk).details.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn status_from_trailers_never_panics(
            code in prop::collection::vec(any::<u8>(), 0..12),
            message in prop::collection::vec(any::<u8>(), 0..40),
            details in prop::collection::vec(any::<u8>(), 0..40),
            details_b64 in prop::collection::vec(any::<u8>(), 0..40),
        ) {
            let clean = |v: Vec<u8>| {
                v.into_iter().filter(|b| *b >= 0x20 && *b != 0x7f || *b == b'\t').collect::<Vec<u8>>()
            };
            let mut h = HeaderMap::new();
            h.insert(GRPC_STATUS, HeaderValue::from_bytes(&clean(code)).expect("valid"));
            h.insert(GRPC_MESSAGE, HeaderValue::from_bytes(&clean(message)).expect("valid"));
            let details = if details_b64.is_empty() {
                clean(details)
            } else {
                BASE64.encode(details_b64).into_bytes()
            };
            h.insert(GRPC_STATUS_DETAILS, HeaderValue::from_bytes(&details).expect("valid"));
            let status = status_from_trailers(&h).expect("has grpc-status");
            let mut out = HeaderMap::new();
            status_to_trailers(&status, &mut out);
            prop_assert_eq!(status_from_trailers(&out), Some(status));
        }

    }
}
