//! The `grpc-timeout` header (P-60): one rule for reading it, wherever a
//! deadline enters the crate, and its encoding.

use std::time::Duration;

use http::HeaderMap;

/// The `grpc-timeout` of a request's headers.
///
/// The one rule the crate applies everywhere a deadline enters it (a call
/// through a `TunnelChannel`, a tunneled request on
/// a tunnel server, a wait for a reverse tunnel): when the header appears
/// more than once, the **last** value counts, as in grpc-go's HTTP/2
/// transport, which lets each occurrence overwrite the previous one. A value
/// that does not parse is ignored (no deadline).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get_all("grpc-timeout")
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
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
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn the_last_of_two_values_counts() {
        let mut h = HeaderMap::new();
        h.append("grpc-timeout", "1S".parse().expect("valid"));
        h.append("grpc-timeout", "5m".parse().expect("valid"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(5)));
        // A last value that does not parse means no deadline, not the first.
        h.append("grpc-timeout", "soon".parse().expect("valid"));
        assert_eq!(grpc_timeout(&h), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

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

    }
}
