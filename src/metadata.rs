//! Bridging between HTTP/2-style gRPC and the tunnel's `Metadata`.
//!
//! On HTTP/2, gRPC metadata is a set of headers and a call's outcome travels
//! in the `grpc-status`, `grpc-message` and `grpc-status-details-bin`
//! trailers. Inside a tunnel, metadata is a [`pb::Metadata`] map and the
//! outcome is a complete `google.rpc.Status` in `close_stream` (PROTOCOL.md
//! §5). This module converts between the two:
//!
//! - [`headers_to_metadata`] / [`metadata_to_headers`]: headers and trailers
//!   (P-56, P-58). Binary (`-bin`) values are base64 on HTTP/2 but raw bytes
//!   in the tunnel (P-57), so they are decoded on the way in and encoded on
//!   the way out.
//! - [`parse_grpc_timeout`] / [`encode_grpc_timeout`]: the `grpc-timeout`
//!   header (P-60).
//! - [`status_from_trailers`] / [`status_to_trailers`]: the status trailers
//!   (P-62, P-63), and [`tonic_status_to_pb`] for statuses that exist as
//!   [`tonic::Status`] values.
//!
//! Nothing here does I/O and nothing panics on input from the wire: bad
//! input becomes a [`tonic::Status`] (`INTERNAL`) or is skipped with a
//! `debug!` event.

use std::time::Duration;

use base64::{
    alphabet,
    engine::{
        general_purpose::{GeneralPurpose, GeneralPurposeConfig},
        DecodePaddingMode,
    },
    Engine as _,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message as _;

use crate::pb;

/// Base64 as gRPC uses it on HTTP/2: standard alphabet, written without
/// padding (as tonic does), read with or without it.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Suffix of the keys whose values are binary.
const BIN_SUFFIX: &str = "-bin";

/// `grpc-status` trailer.
const GRPC_STATUS: &str = "grpc-status";
/// `grpc-message` trailer.
const GRPC_MESSAGE: &str = "grpc-message";
/// `grpc-status-details-bin` trailer.
const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";

/// Headers that never go into a tunnel [`pb::Metadata`] (P-58).
///
/// They describe one HTTP/2 call rather than the application's metadata:
/// gRPC transport headers (content type, deadline, compression, status) and
/// HTTP hop-by-hop headers. `grpc-timeout` is among them because the tunnel
/// client enforces the deadline itself (P-60); the engine may add it back
/// explicitly.
const SKIP_INTO_METADATA: &[&str] = &[
    "content-type",
    "te",
    "user-agent",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    GRPC_STATUS,
    GRPC_MESSAGE,
    GRPC_STATUS_DETAILS,
    "host",
    "connection",
    "content-length",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "accept-encoding",
];

/// Metadata keys that are never turned into headers.
///
/// A peer (for example the Go reference implementation, which passes
/// metadata through untouched, P-58) may send any of them, but copying them
/// would corrupt the HTTP/2 bridging:
///
/// - `grpc-status`, `grpc-message`, `grpc-status-details-bin`: the outcome
///   of a call comes only from `close_stream.status` (P-62); a stray copy in
///   headers or trailers would override or contradict it.
/// - `content-type`, `te`: set by the engine for the gRPC request or
///   response it builds; a second value confuses the receiving gRPC stack.
/// - `grpc-encoding`, `grpc-accept-encoding`: messages inside a tunnel are
///   never compressed (P-65); a `grpc-encoding` header would make the
///   receiving gRPC stack try (and fail) to decompress them.
/// - `content-length`, `connection`, `transfer-encoding`, `keep-alive`,
///   `proxy-connection`, `upgrade`, `host`: HTTP framing and hop-by-hop
///   headers. HTTP/2 forbids the connection-specific ones (hyper refuses to
///   send them and fails the whole stream), and a `content-length` would not
///   match the body.
///
/// `grpc-timeout` is passed through: a tunnel server reads it (P-60).
const SKIP_INTO_HEADERS: &[&str] = &[
    GRPC_STATUS,
    GRPC_MESSAGE,
    GRPC_STATUS_DETAILS,
    "content-type",
    "te",
    "grpc-encoding",
    "grpc-accept-encoding",
    "content-length",
    "connection",
    "transfer-encoding",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "host",
];

/// Whether `key` names a binary (`-bin`) metadata entry.
fn is_bin_key(key: &str) -> bool {
    key.ends_with(BIN_SUFFIX)
}

/// Converts request headers, response headers or trailers into tunnel
/// metadata.
///
/// Pseudo-headers and the transport and hop-by-hop headers of P-58 are not
/// copied. Values keep their order per key. `-bin` values are base64-decoded
/// (padded or not, and several comma-separated values in one header are
/// split) and carried raw (P-57).
///
/// # Errors
///
/// `INTERNAL`, naming the key, when a value cannot be carried in a proto
/// `string`: a `-bin` value that is not valid base64 or whose bytes are not
/// valid UTF-8, or a text value that is not valid UTF-8. Only the call that
/// carries it should fail (P-57).
pub(crate) fn headers_to_metadata(headers: &HeaderMap) -> Result<pb::Metadata, tonic::Status> {
    let mut md = pb::Metadata::default();
    for key in headers.keys() {
        let name = key.as_str();
        if name.starts_with(':') || SKIP_INTO_METADATA.contains(&name) {
            continue;
        }
        let mut values = Vec::new();
        for value in headers.get_all(key) {
            if is_bin_key(name) {
                decode_bin_value(name, value, &mut values)?;
            } else {
                values.push(text_value(name, value)?);
            }
        }
        if !values.is_empty() {
            md.md.entry(name.to_owned()).or_default().val.extend(values);
        }
    }
    Ok(md)
}

/// Decodes one `-bin` header value into raw values, one per comma-separated
/// part.
fn decode_bin_value(
    key: &str,
    value: &HeaderValue,
    out: &mut Vec<String>,
) -> Result<(), tonic::Status> {
    for part in value.as_bytes().split(|b| *b == b',') {
        let part = part.trim_ascii();
        let bytes = BASE64.decode(part).map_err(|err| {
            tracing::debug!(key, error = %err, "invalid base64 in binary metadata");
            tonic::Status::internal(format!(
                "metadata value of {key:?} is not valid base64: {err}"
            ))
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            tracing::debug!(key, "binary metadata is not valid UTF-8");
            tonic::Status::internal(format!(
                "binary metadata value of {key:?} is not valid UTF-8 and cannot cross a tunnel"
            ))
        })?;
        out.push(text);
    }
    Ok(())
}

/// Converts one text header value into a `String`.
fn text_value(key: &str, value: &HeaderValue) -> Result<String, tonic::Status> {
    if let Ok(s) = value.to_str() {
        return Ok(s.to_owned());
    }
    match std::str::from_utf8(value.as_bytes()) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => {
            tracing::debug!(key, "metadata value is not valid UTF-8");
            Err(tonic::Status::internal(format!(
                "metadata value of {key:?} is not valid UTF-8 and cannot cross a tunnel"
            )))
        }
    }
}

/// Most entries put into one header map from tunnel metadata.
const MAX_ENTRIES: usize = 16 * 1024;

/// Adds tunnel metadata to `headers` (a request handed to a server, or
/// response headers or trailers handed to a caller).
///
/// Entries are appended, keeping their order. Pseudo-headers and the keys of
/// `SKIP_INTO_HEADERS` are dropped (see there for why); `grpc-timeout` is
/// kept. `-bin` values are base64-encoded (standard alphabet, no padding).
/// A key that is not a valid lowercase header name, or a text value that is
/// not a valid header value, is skipped with a `debug!` event. Never panics.
pub(crate) fn metadata_to_headers(md: &pb::Metadata, headers: &mut HeaderMap) {
    for (key, values) in &md.md {
        if key.starts_with(':') || SKIP_INTO_HEADERS.contains(&key.as_str()) {
            tracing::debug!(key = %key, "dropping reserved metadata key");
            continue;
        }
        let name = match HeaderName::from_lowercase(key.as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                tracing::debug!(key = %key, "skipping metadata key that is not a lowercase header name");
                continue;
            }
        };
        let bin = is_bin_key(key);
        for value in &values.val {
            let value = if bin {
                HeaderValue::from_str(&BASE64.encode(value.as_bytes()))
            } else {
                HeaderValue::from_str(value)
            };
            match value {
                Ok(value) => {
                    // A map holds at most 32 768 entries; the metadata limit
                    // keeps a peer far below that, and past half of it
                    // entries are dropped (room stays for the headers we add)
                    // rather than panicking.
                    if headers.len() >= MAX_ENTRIES
                        || headers.try_append(name.clone(), value).is_err()
                    {
                        tracing::debug!(key = %key, "too many metadata entries: rest dropped");
                        return;
                    }
                }
                Err(_) => {
                    tracing::debug!(key = %key, "skipping metadata value that is not a valid header value");
                }
            }
        }
    }
}

/// Longest duration [`parse_grpc_timeout`] returns: `i64::MAX` nanoseconds
/// (about 292 years), the largest deadline the Go reference implementation
/// can represent.
const MAX_TIMEOUT_NANOS: u64 = i64::MAX as u64;

/// `grpc-timeout` unit letters and their length in nanoseconds, smallest
/// first.
const TIMEOUT_UNITS: [(u8, u64); 6] = [
    (b'n', 1),
    (b'u', 1_000),
    (b'm', 1_000_000),
    (b'S', 1_000_000_000),
    (b'M', 60_000_000_000),
    (b'H', 3_600_000_000_000),
];

/// Nanoseconds per unit of a `grpc-timeout` unit letter.
fn timeout_unit_nanos(unit: u8) -> Option<u64> {
    TIMEOUT_UNITS
        .iter()
        .find(|(letter, _)| *letter == unit)
        .map(|(_, nanos)| *nanos)
}

/// Parses a `grpc-timeout` value as the Go reference server does (P-60).
///
/// Accepts an optional sign, one or more decimal digits (no limit on their
/// number) and one unit letter (`H`, `M`, `S`, `m`, `u`, `n`). A negative
/// value is a zero duration; a value too large to represent saturates at
/// about 292 years. Anything else is `None` (the header is then ignored).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let bytes = value.as_bytes();
    let (&unit, number) = bytes.split_last()?;
    let unit_nanos = timeout_unit_nanos(unit)?;
    let (negative, digits) = match number.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, number),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    let count = digits.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    let nanos = count.saturating_mul(unit_nanos).min(MAX_TIMEOUT_NANOS);
    Some(Duration::from_nanos(nanos))
}

/// Encodes a duration as a `grpc-timeout` value: at most 8 digits and a
/// unit, in the smallest unit that fits, rounded up so the deadline is never
/// shortened. Durations beyond `99999999H` saturate there.
pub(crate) fn encode_grpc_timeout(d: Duration) -> String {
    const MAX_VALUE: u128 = 99_999_999;
    let nanos = d.as_nanos();
    for (unit, per) in TIMEOUT_UNITS {
        let count = nanos.div_ceil(u128::from(per));
        if count <= MAX_VALUE {
            return format!("{count}{}", char::from(unit));
        }
    }
    format!("{MAX_VALUE}H")
}

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
    trailers.insert(GRPC_STATUS, HeaderValue::from(status.code));
    if status.message.is_empty() {
        trailers.remove(GRPC_MESSAGE);
    } else {
        match HeaderValue::from_str(&percent_encode(&status.message)) {
            Ok(value) => {
                trailers.insert(GRPC_MESSAGE, value);
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
                trailers.insert(GRPC_STATUS_DETAILS, value);
            }
            // Unreachable: base64 only yields visible ASCII.
            Err(_) => tracing::debug!("grpc-status-details-bin could not be encoded"),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn md(entries: &[(&str, &[&str])]) -> pb::Metadata {
        let mut md = pb::Metadata::default();
        for (k, vs) in entries {
            md.md.insert(
                (*k).to_owned(),
                pb::metadata::Values {
                    val: vs.iter().map(|v| (*v).to_owned()).collect(),
                },
            );
        }
        md
    }

    fn headers(entries: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in entries {
            h.append(
                HeaderName::from_static(k),
                HeaderValue::from_bytes(v).expect("valid header value"),
            );
        }
        h
    }

    fn values<'a>(md: &'a pb::Metadata, key: &str) -> Option<&'a [String]> {
        md.md.get(key).map(|v| v.val.as_slice())
    }

    #[test]
    fn text_values_keep_order() {
        let h = headers(&[
            ("x-multi", b"one"),
            ("x-other", b"z"),
            ("x-multi", b"two"),
            ("x-multi", b"three"),
        ]);
        let md = headers_to_metadata(&h).expect("converts");
        assert_eq!(
            values(&md, "x-multi"),
            Some(&["one".to_owned(), "two".to_owned(), "three".to_owned()][..])
        );
        assert_eq!(values(&md, "x-other"), Some(&["z".to_owned()][..]));

        let mut back = HeaderMap::new();
        metadata_to_headers(&md, &mut back);
        let got: Vec<_> = back.get_all("x-multi").iter().collect();
        assert_eq!(got, ["one", "two", "three"]);
    }

    #[test]
    fn bin_values_padded_unpadded_and_comma_separated() {
        // "hi" = aGk= ; "abc" = YWJj ; "a" = YQ==
        let h = headers(&[
            ("x-data-bin", b"aGk="),
            ("x-data-bin", b"aGk"),
            ("x-data-bin", b"YWJj, YQ==,YQ"),
        ]);
        let md = headers_to_metadata(&h).expect("converts");
        assert_eq!(
            values(&md, "x-data-bin").expect("present"),
            ["hi", "hi", "abc", "a", "a"]
        );
    }

    #[test]
    fn bin_values_are_encoded_unpadded() {
        let mut h = HeaderMap::new();
        metadata_to_headers(&md(&[("x-data-bin", &["hi", "", "\u{1}\u{7f}é"])]), &mut h);
        let got: Vec<_> = h.get_all("x-data-bin").iter().collect();
        assert_eq!(got, ["aGk", "", "AX/DqQ"]);
        let md = headers_to_metadata(&h).expect("converts");
        assert_eq!(
            values(&md, "x-data-bin").expect("present"),
            ["hi", "", "\u{1}\u{7f}é"]
        );
    }

    #[test]
    fn bin_value_not_utf8_is_internal() {
        // 0xff 0xfe
        let h = headers(&[("x-raw-bin", b"//4")]);
        let err = headers_to_metadata(&h).expect_err("not UTF-8");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("x-raw-bin"), "{}", err.message());
    }

    #[test]
    fn bin_value_bad_base64_is_internal() {
        let h = headers(&[("x-raw-bin", b"not base64!")]);
        let err = headers_to_metadata(&h).expect_err("bad base64");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("x-raw-bin"), "{}", err.message());
    }

    #[test]
    fn text_value_utf8_and_non_utf8() {
        let h = headers(&[("x-name", "grüße".as_bytes())]);
        let md = headers_to_metadata(&h).expect("UTF-8 is fine");
        assert_eq!(values(&md, "x-name").expect("present"), ["grüße"]);

        let h = headers(&[("x-name", b"\xff\xfe")]);
        let err = headers_to_metadata(&h).expect_err("not UTF-8");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("x-name"));
    }

    #[test]
    fn reserved_headers_not_copied_into_metadata() {
        let mut h = HeaderMap::new();
        for key in SKIP_INTO_METADATA {
            h.insert(
                HeaderName::from_static(key),
                HeaderValue::from_static("AAAA"),
            );
        }
        h.insert("grpctunnel-negotiate", HeaderValue::from_static("on"));
        h.insert("x-app", HeaderValue::from_static("1"));
        let md = headers_to_metadata(&h).expect("converts");
        let mut keys: Vec<_> = md.md.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["grpctunnel-negotiate", "x-app"]);
    }

    #[test]
    fn reserved_keys_not_copied_into_headers() {
        let mut entries: Vec<(&str, &[&str])> =
            SKIP_INTO_HEADERS.iter().map(|k| (*k, &["x"][..])).collect();
        entries.push((":authority", &["example.com"]));
        entries.push((":path", &["/a/b"]));
        entries.push(("grpc-timeout", &["5S"]));
        entries.push(("x-app", &["1"]));
        let mut h = HeaderMap::new();
        metadata_to_headers(&md(&entries), &mut h);
        let mut keys: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        keys.sort();
        assert_eq!(keys, ["grpc-timeout", "x-app"]);
    }

    #[test]
    fn invalid_keys_and_values_skipped() {
        let mut h = HeaderMap::new();
        metadata_to_headers(
            &md(&[
                ("X-Upper", &["1"]),
                ("", &["1"]),
                ("bad key", &["1"]),
                ("x-ctl", &["a\nb", "ok", "\u{7f}"]),
            ]),
            &mut h,
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-ctl").expect("kept"), "ok");
    }

    #[test]
    fn empty_values_list_adds_nothing() {
        let mut h = HeaderMap::new();
        metadata_to_headers(&md(&[("x-none", &[])]), &mut h);
        assert!(h.is_empty());
    }

    #[test]
    fn timeout_parse_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("+5S", Some(Duration::from_secs(5))),
            ("5S", Some(Duration::from_secs(5))),
            ("0n", Some(Duration::ZERO)),
            (
                "100000000000m",
                Some(Duration::from_millis(100_000_000_000)),
            ),
            ("-3S", Some(Duration::ZERO)),
            ("-0n", Some(Duration::ZERO)),
            ("2H", Some(Duration::from_secs(7200))),
            ("3M", Some(Duration::from_secs(180))),
            ("7u", Some(Duration::from_micros(7))),
            ("12n", Some(Duration::from_nanos(12))),
            ("1x", None),
            ("", None),
            ("S", None),
            ("+S", None),
            ("-S", None),
            ("1 S", None),
            (" 1S", None),
            ("1.5S", None),
            ("1s", None),
            ("+-1S", None),
            ("1é", None),
            ("éS", None),
            (
                "99999999999999999999999999999H",
                Some(Duration::from_nanos(MAX_TIMEOUT_NANOS)),
            ),
            ("9999999999H", Some(Duration::from_nanos(MAX_TIMEOUT_NANOS))),
        ];
        for (input, want) in cases {
            assert_eq!(parse_grpc_timeout(input), *want, "input {input:?}");
        }
    }

    #[test]
    fn timeout_encode_table() {
        let cases: &[(Duration, &str)] = &[
            (Duration::ZERO, "0n"),
            (Duration::from_nanos(1), "1n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_000), "100000u"),
            (Duration::from_nanos(100_000_001), "100001u"),
            (Duration::from_millis(999), "999000u"),
            (Duration::from_secs(1), "1000000u"),
            (Duration::from_millis(100_000_000), "100000S"),
            (
                Duration::from_millis(100_000_000) + Duration::from_nanos(1),
                "100001S",
            ),
            (Duration::from_secs(99_999_999 * 60), "99999999M"),
            (Duration::from_secs(99_999_999 * 60 + 1), "1666667H"),
            (Duration::from_secs(99_999_999 * 3600), "99999999H"),
            (Duration::from_secs(99_999_999 * 3600 + 1), "99999999H"),
            (Duration::MAX, "99999999H"),
        ];
        for (d, want) in cases {
            assert_eq!(encode_grpc_timeout(*d), *want, "duration {d:?}");
        }
    }

    #[test]
    fn timeout_encode_then_parse_never_shortens() {
        for nanos in [1u64, 999, 1_000_001, 123_456_789_012, 10_u64.pow(17)] {
            let d = Duration::from_nanos(nanos);
            let back = parse_grpc_timeout(&encode_grpc_timeout(d)).expect("parses");
            assert!(back >= d, "{d:?} -> {back:?}");
        }
    }

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
        let md = headers_to_metadata(&trailers).expect("converts");
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

    fn key_strategy() -> impl Strategy<Value = String> {
        "[a-z0-9_.-]{1,12}".prop_filter("not reserved, not binary", |k| {
            !SKIP_INTO_METADATA.contains(&k.as_str())
                && !SKIP_INTO_HEADERS.contains(&k.as_str())
                && !is_bin_key(k)
        })
    }

    fn metadata_strategy() -> impl Strategy<Value = pb::Metadata> {
        let text = (
            key_strategy(),
            prop::collection::vec("[\t -~\u{80}-\u{10FFFF}]{0,12}", 1..4),
        );
        let bin = (
            "[a-z0-9_.-]{0,8}".prop_map(|k| format!("{k}-bin")),
            prop::collection::vec(any::<String>(), 1..4),
        );
        prop::collection::vec(prop_oneof![text, bin], 0..6).prop_map(|entries| {
            let mut md = pb::Metadata::default();
            for (k, val) in entries {
                md.md.insert(k, pb::metadata::Values { val });
            }
            md
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn metadata_round_trips(md in metadata_strategy()) {
            let mut h = HeaderMap::new();
            metadata_to_headers(&md, &mut h);
            let back = headers_to_metadata(&h).expect("round trip");
            prop_assert_eq!(back, md);
        }

        #[test]
        fn parse_grpc_timeout_never_panics(s in any::<String>()) {
            let _ = parse_grpc_timeout(&s);
        }

        #[test]
        fn parse_grpc_timeout_accepts_encoded(nanos in any::<u64>()) {
            let d = Duration::from_nanos(nanos);
            let enc = encode_grpc_timeout(d);
            prop_assert!(enc.len() <= 9);
            let back = parse_grpc_timeout(&enc).expect("parses");
            // Parsing saturates at MAX_TIMEOUT_NANOS (about 292 years).
            prop_assert!(back >= d.min(Duration::from_nanos(MAX_TIMEOUT_NANOS)));
        }

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

        #[test]
        fn headers_to_metadata_never_panics(
            entries in prop::collection::vec(
                ("[a-z-]{1,6}(-bin)?", prop::collection::vec(any::<u8>(), 0..20)),
                0..6,
            )
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in entries {
                let v: Vec<u8> = v.into_iter().filter(|b| *b >= 0x20 && *b != 0x7f).collect();
                h.append(
                    HeaderName::from_bytes(k.as_bytes()).expect("valid name"),
                    HeaderValue::from_bytes(&v).expect("valid value"),
                );
            }
            let _ = headers_to_metadata(&h);
        }
    }
}
