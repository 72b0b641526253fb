//! Bridging between HTTP/2-style gRPC metadata and the tunnel's `Metadata`.
//!
//! On HTTP/2, gRPC metadata is a set of headers; inside a tunnel it is a
//! [`pb::Metadata`] map. [`headers_to_metadata`] and [`metadata_to_headers`]
//! convert headers and trailers (P-56, P-58). Binary (`-bin`) values are
//! base64 on HTTP/2 but raw bytes in the tunnel (P-57), so they are decoded
//! on the way in and encoded on the way out. The call's outcome is in
//! [`super::status`], its deadline in [`super::timeout`].
//!
//! Nothing here does I/O and nothing panics on input from the wire: bad
//! input becomes a [`tonic::Status`] (`INTERNAL`) or is skipped with a
//! `debug!` event.

use base64::{
    alphabet,
    engine::{
        general_purpose::{GeneralPurpose, GeneralPurposeConfig},
        DecodePaddingMode,
    },
    Engine as _,
};
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::pb;

/// Base64 as gRPC uses it on HTTP/2: standard alphabet, written without
/// padding (as tonic does), read with or without it.
pub(crate) const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Suffix of the keys whose values are binary.
const BIN_SUFFIX: &str = "-bin";

/// `grpc-status` trailer.
pub(crate) const GRPC_STATUS: &str = "grpc-status";
/// `grpc-message` trailer.
pub(crate) const GRPC_MESSAGE: &str = "grpc-message";
/// `grpc-status-details-bin` trailer.
pub(crate) const GRPC_STATUS_DETAILS: &str = "grpc-status-details-bin";

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

/// What to do with a `-bin` metadata value whose bytes are not valid UTF-8
/// when the peer can only carry raw bytes in the protocol's `string`s (the
/// Go reference, P-57).
///
/// Between two ends of this crate the question does not arise: they agree
/// on the opening RPC (header `grpctunnel-extensions: metadata`, which the
/// Go reference ignores) to carry `-bin` values as base64, as HTTP/2 does,
/// so any bytes cross. With a peer that does not agree:
///
/// - [`Drop`](Self::Drop) (the default) leaves the value out and the call
///   goes on. Such values are mostly optional telemetry that arrives on
///   every call of an instrumented client or server (`grpc-trace-bin` from
///   OpenCensus/OpenTelemetry tracing, `endpoint-load-metrics-bin` from
///   ORCA load reports); failing the call would break every traced call.
///   Each drop is counted (`Stats::metadata_dropped`) and the first drop of
///   each key is logged with a `warn!` naming it.
/// - [`Fail`](Self::Fail) fails the call with `INTERNAL`, naming the key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BinaryMetadata {
    /// Leave the value out, count it, warn once per key.
    #[default]
    Drop,
    /// Fail the call with `INTERNAL`.
    Fail,
}

/// How a tunnel maps headers to its `Metadata` and back.
///
/// With `extended` (both ends are this crate and agreed on the opening
/// RPC), `-bin` values travel as their base64 text, so any bytes cross, and
/// `content-type` (with its subtype, `application/grpc+json`) and
/// `user-agent` travel too. Otherwise the protocol's own mapping holds:
/// `-bin` values as raw bytes (P-57), and neither header (P-58).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Mapping {
    /// Both ends agreed on the extended mapping.
    pub(crate) extended: bool,
    /// What happens to a value raw bytes cannot carry.
    pub(crate) policy: BinaryMetadata,
}

/// Headers the extended mapping carries although P-58 keeps them out.
const EXTENDED_KEYS: &[&str] = &["content-type", "user-agent"];

/// Whether `key` names a binary (`-bin`) metadata entry.
fn is_bin_key(key: &str) -> bool {
    key.ends_with(BIN_SUFFIX)
}

/// Converts request headers, response headers or trailers into tunnel
/// metadata.
///
/// Pseudo-headers and the transport and hop-by-hop headers of P-58 are not
/// copied (the extended mapping keeps `content-type` and `user-agent`). Values keep their order per key. `-bin` values are split at
/// commas (several values in one header) and checked to be base64 (padded
/// or not); they are carried as that base64 text when the tunnel agreed to
/// (`bin.extended`), otherwise decoded and carried raw (P-57). A raw value
/// that is not valid UTF-8 is, by `bin.policy`, left out with its key
/// pushed to `dropped`, or an error.
///
/// # Errors
///
/// `INTERNAL`, naming the key, when a value cannot be carried in a proto
/// `string`: a `-bin` value that is not valid base64, one whose bytes are
/// not valid UTF-8 under [`BinaryMetadata::Fail`], or a text value that is
/// not valid UTF-8. Only the call that carries it should fail (P-57).
pub(crate) fn headers_to_metadata(
    headers: &HeaderMap,
    bin: Mapping,
    dropped: &mut Vec<String>,
) -> Result<pb::Metadata, tonic::Status> {
    let mut md = pb::Metadata::default();
    for key in headers.keys() {
        let name = key.as_str();
        let carried = bin.extended && EXTENDED_KEYS.contains(&name);
        if name.starts_with(':') || (SKIP_INTO_METADATA.contains(&name) && !carried) {
            continue;
        }
        let mut values = Vec::new();
        for value in headers.get_all(key) {
            if is_bin_key(name) {
                decode_bin_value(name, value, bin, &mut values, dropped)?;
            } else {
                values.push(text_value(name, value)?);
            }
        }
        if !values.is_empty() {
            // Each key comes once from `keys()`: the vector moves in whole.
            md.md
                .insert(name.to_owned(), pb::metadata::Values { val: values });
        }
    }
    Ok(md)
}

/// Turns one `-bin` header value into tunnel values, one per
/// comma-separated part: its base64 text, or its raw bytes.
fn decode_bin_value(
    key: &str,
    value: &HeaderValue,
    bin: Mapping,
    out: &mut Vec<String>,
    dropped: &mut Vec<String>,
) -> Result<(), tonic::Status> {
    for part in value.as_bytes().split(|b| *b == b',') {
        let part = part.trim_ascii();
        let bytes = BASE64.decode(part).map_err(|err| {
            tracing::debug!(key, error = %err, "invalid base64 in binary metadata");
            tonic::Status::internal(format!(
                "metadata value of {key:?} is not valid base64: {err}"
            ))
        })?;
        if bin.extended {
            // Checked above: visible ASCII, so valid UTF-8.
            out.push(String::from_utf8_lossy(part).into_owned());
            continue;
        }
        match String::from_utf8(bytes) {
            Ok(text) => out.push(text),
            Err(_) if bin.policy == BinaryMetadata::Drop => dropped.push(key.to_owned()),
            Err(_) => {
                tracing::debug!(key, "binary metadata is not valid UTF-8");
                return Err(tonic::Status::internal(format!(
                    "binary metadata value of {key:?} is not valid UTF-8 and cannot cross a tunnel to this peer"
                )));
            }
        }
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
/// `SKIP_INTO_HEADERS` are left out by design (see there for why);
/// `grpc-timeout` is kept. `-bin` values are base64-encoded (standard
/// alphabet, no padding). Text values are written as their UTF-8 bytes, so
/// a value beyond ASCII (HTTP's obs-text, which HTTP/2 carries) arrives as
/// it left. What no header can carry (a key that is not a valid lowercase
/// header name, a value with control characters, a peer's `-bin` value that
/// is not base64 under the extended mapping, entries past the map's bound)
/// is left out with its key pushed to `dropped`, for the caller to count
/// and log. Never panics.
pub(crate) fn metadata_to_headers(
    md: &pb::Metadata,
    bin: Mapping,
    headers: &mut HeaderMap,
    dropped: &mut Vec<String>,
) {
    for (key, values) in &md.md {
        let carried = bin.extended && EXTENDED_KEYS.contains(&key.as_str());
        if key.starts_with(':') || (SKIP_INTO_HEADERS.contains(&key.as_str()) && !carried) {
            tracing::debug!(key = %key, "dropping reserved metadata key");
            continue;
        }
        let name = match HeaderName::from_lowercase(key.as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                dropped.extend(values.val.iter().map(|_| key.clone()));
                continue;
            }
        };
        let is_bin = is_bin_key(key);
        // The name moves into the map with the last value: a clone of a
        // name that is not a standard header costs an allocation.
        let mut name = Some(name);
        let last = values.val.len().saturating_sub(1);
        for (i, value) in values.val.iter().enumerate() {
            let value = if !is_bin {
                // `from_bytes`, not `from_str`: obs-text (bytes from 0x80)
                // is a valid HTTP/2 header value, and UTF-8 beyond ASCII is
                // made of such bytes.
                HeaderValue::from_bytes(value.as_bytes())
            } else if bin.extended {
                // Already base64 text; checked, so that a peer cannot make
                // us send a value our caller's gRPC stack cannot decode.
                match BASE64.decode(value.trim_ascii()) {
                    Ok(_) => HeaderValue::from_str(value.trim_ascii()),
                    Err(_) => {
                        dropped.push(key.clone());
                        continue;
                    }
                }
            } else {
                HeaderValue::from_str(&BASE64.encode(value.as_bytes()))
            };
            match value {
                Ok(value) => {
                    // A map holds at most 32 768 entries; the metadata limit
                    // keeps a peer far below that, and past half of it
                    // entries are dropped (room stays for the headers we add)
                    // rather than panicking.
                    let this = if i == last { name.take() } else { name.clone() };
                    let appended = match this {
                        Some(name) if headers.len() < MAX_ENTRIES => {
                            headers.try_append(name, value).is_ok()
                        }
                        _ => false,
                    };
                    if !appended {
                        dropped.push(key.clone());
                    }
                }
                Err(_) => dropped.push(key.clone()),
            }
        }
    }
}

/// Per-entry overhead charged by the metadata limit, as HTTP/2 counts a
/// header list (RFC 9113 §6.5.2): empty values are not free.
const ENTRY_OVERHEAD: usize = 32;

/// Size of a call's metadata as the limits count it: for each value, its
/// key, the value and 32 bytes of overhead.
pub(crate) fn metadata_size(md: &pb::Metadata) -> usize {
    md.md
        .iter()
        .map(|(k, v)| {
            v.val
                .iter()
                .map(|val| k.len() + val.len() + ENTRY_OVERHEAD)
                .sum::<usize>()
                .max(k.len() + ENTRY_OVERHEAD)
        })
        .sum()
}

/// Builds a header map from `(name, value)` pairs (tests only).
#[cfg(test)]
pub(crate) fn test_headers(entries: &[(&'static str, &[u8])]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in entries {
        h.append(
            HeaderName::from_static(k),
            HeaderValue::from_bytes(v).expect("valid header value"),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Raw bytes, failing on what they cannot carry: the protocol's own
    /// mapping (P-57), which most tests check.
    const RAW: Mapping = Mapping {
        extended: false,
        policy: BinaryMetadata::Fail,
    };

    fn to_md(h: &HeaderMap) -> Result<pb::Metadata, tonic::Status> {
        headers_to_metadata(h, RAW, &mut Vec::new())
    }

    #[test]
    fn binary_values_cross_as_base64_when_agreed() {
        let b64 = Mapping {
            extended: true,
            policy: BinaryMetadata::Fail,
        };
        let h = headers(&[("grpc-trace-bin", b"AP/+AA"), ("x-two-bin", b"AQ==, Ag")]);
        let got = headers_to_metadata(&h, b64, &mut Vec::new()).expect("any bytes cross");
        assert_eq!(
            values(&got, "grpc-trace-bin"),
            Some(&["AP/+AA".to_owned()][..])
        );
        assert_eq!(
            values(&got, "x-two-bin"),
            Some(&["AQ==".to_owned(), "Ag".to_owned()][..])
        );
        let mut back = HeaderMap::new();
        metadata_to_headers(&got, b64, &mut back, &mut Vec::new());
        let trace = back.get("grpc-trace-bin").expect("kept");
        assert_eq!(
            BASE64.decode(trace.as_bytes()).expect("base64"),
            [0, 0xff, 0xfe, 0]
        );
        // A peer's value that is not base64 is not passed on.
        let (mut bad, mut dropped) = (HeaderMap::new(), Vec::new());
        metadata_to_headers(
            &md(&[("x-bad-bin", &["not base64!"])]),
            b64,
            &mut bad,
            &mut dropped,
        );
        assert!(bad.is_empty());
        assert_eq!(dropped, ["x-bad-bin"]);
        // Invalid base64 from the caller still fails its call.
        let h = headers(&[("x-bad-bin", b"!!")]);
        assert!(headers_to_metadata(&h, b64, &mut Vec::new()).is_err());
    }

    #[test]
    fn non_utf8_binary_values_are_dropped_and_named_by_default() {
        let drop = Mapping::default();
        assert_eq!(drop.policy, BinaryMetadata::Drop);
        let h = headers(&[
            ("grpc-trace-bin", b"AP/+AA"),
            ("x-ok-bin", b"aGk"),
            ("x-t", b"1"),
        ]);
        let mut dropped = Vec::new();
        let got = headers_to_metadata(&h, drop, &mut dropped).expect("the call goes on");
        assert_eq!(dropped, ["grpc-trace-bin"]);
        assert!(values(&got, "grpc-trace-bin").is_none());
        assert_eq!(values(&got, "x-ok-bin"), Some(&["hi".to_owned()][..]));
        assert_eq!(values(&got, "x-t"), Some(&["1".to_owned()][..]));
    }

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

    use super::test_headers as headers;

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
        let md = to_md(&h).expect("converts");
        assert_eq!(
            values(&md, "x-multi"),
            Some(&["one".to_owned(), "two".to_owned(), "three".to_owned()][..])
        );
        assert_eq!(values(&md, "x-other"), Some(&["z".to_owned()][..]));

        let mut back = HeaderMap::new();
        metadata_to_headers(&md, RAW, &mut back, &mut Vec::new());
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
        let md = to_md(&h).expect("converts");
        assert_eq!(
            values(&md, "x-data-bin").expect("present"),
            ["hi", "hi", "abc", "a", "a"]
        );
    }

    #[test]
    fn bin_values_are_encoded_unpadded() {
        let mut h = HeaderMap::new();
        metadata_to_headers(
            &md(&[("x-data-bin", &["hi", "", "\u{1}\u{7f}é"])]),
            RAW,
            &mut h,
            &mut Vec::new(),
        );
        let got: Vec<_> = h.get_all("x-data-bin").iter().collect();
        assert_eq!(got, ["aGk", "", "AX/DqQ"]);
        let md = to_md(&h).expect("converts");
        assert_eq!(
            values(&md, "x-data-bin").expect("present"),
            ["hi", "", "\u{1}\u{7f}é"]
        );
    }

    #[test]
    fn bin_value_not_utf8_is_internal() {
        // 0xff 0xfe
        let h = headers(&[("x-raw-bin", b"//4")]);
        let err = to_md(&h).expect_err("not UTF-8");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("x-raw-bin"), "{}", err.message());
    }

    #[test]
    fn bin_value_bad_base64_is_internal() {
        let h = headers(&[("x-raw-bin", b"not base64!")]);
        let err = to_md(&h).expect_err("bad base64");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("x-raw-bin"), "{}", err.message());
    }

    #[test]
    fn text_value_utf8_and_non_utf8() {
        let h = headers(&[("x-name", "grüße".as_bytes())]);
        let md = to_md(&h).expect("UTF-8 is fine");
        assert_eq!(values(&md, "x-name").expect("present"), ["grüße"]);

        let h = headers(&[("x-name", b"\xff\xfe")]);
        let err = to_md(&h).expect_err("not UTF-8");
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
        let md = to_md(&h).expect("converts");
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
        metadata_to_headers(&md(&entries), RAW, &mut h, &mut Vec::new());
        let mut keys: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        keys.sort();
        assert_eq!(keys, ["grpc-timeout", "x-app"]);
    }

    #[test]
    fn invalid_keys_and_values_skipped() {
        let (mut h, mut dropped) = (HeaderMap::new(), Vec::new());
        metadata_to_headers(
            &md(&[
                ("X-Upper", &["1"]),
                ("", &["1"]),
                ("bad key", &["1"]),
                ("x-ctl", &["a\nb", "ok", "\u{7f}"]),
            ]),
            RAW,
            &mut h,
            &mut dropped,
        );
        assert_eq!(h.len(), 1);
        assert_eq!(h.get("x-ctl").expect("kept"), "ok");
        // Nothing is left out unseen: each value that could not become a
        // header is named, for the meter to count and log.
        dropped.sort();
        assert_eq!(dropped, ["", "X-Upper", "bad key", "x-ctl", "x-ctl"]);
    }

    /// A text value beyond ASCII (obs-text on HTTP/2, here UTF-8) crosses
    /// both ways unchanged, in every mapping; bytes that are not UTF-8
    /// cannot be a proto `string` and fail the call where they enter.
    #[test]
    fn obs_text_values_cross_both_ways() {
        for bin in [
            Mapping::default(),
            RAW,
            Mapping {
                extended: true,
                policy: BinaryMetadata::Fail,
            },
        ] {
            let h = headers(&[("x-name", "ذ grüße".as_bytes()), ("5", b"\xd8\xb0")]);
            let md = headers_to_metadata(&h, bin, &mut Vec::new()).expect("UTF-8 crosses");
            assert_eq!(values(&md, "5").expect("kept"), ["ذ"]);
            let (mut back, mut dropped) = (HeaderMap::new(), Vec::new());
            metadata_to_headers(&md, bin, &mut back, &mut dropped);
            assert!(dropped.is_empty(), "{dropped:?}");
            assert_eq!(back, h);
        }
        let err = to_md(&headers(&[("x-name", b"\xd8")])).expect_err("not UTF-8");
        assert_eq!(err.code(), tonic::Code::Internal);
        assert!(err.message().contains("x-name"), "{}", err.message());
    }

    #[test]
    fn empty_values_list_adds_nothing() {
        let mut h = HeaderMap::new();
        metadata_to_headers(&md(&[("x-none", &[])]), RAW, &mut h, &mut Vec::new());
        assert!(h.is_empty());
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
            let mut dropped = Vec::new();
            metadata_to_headers(&md, RAW, &mut h, &mut dropped);
            prop_assert!(dropped.is_empty(), "{:?}", dropped);
            let back = to_md(&h).expect("round trip");
            prop_assert_eq!(back, md);
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
            let _ = to_md(&h);
        }
    }
}
