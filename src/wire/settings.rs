//! Revision negotiation: the `grpctunnel-negotiate` header, `Settings`, and
//! the choice of revision (PROTOCOL.md §2).

use std::fmt;

use crate::{
    pb,
    wire::{
        frame::frame_name,
        metadata::{BinaryMetadata, Mapping},
    },
};

/// Name of the negotiation header of the opening RPC (P-8).
pub(crate) const NEGOTIATE_HEADER: &str = "grpctunnel-negotiate";
/// Its only value.
pub(crate) const NEGOTIATE_ON: &str = "on";

/// The header on which two ends of this crate agree on extensions the Go
/// reference does not know (it ignores the header): offered on the opening
/// RPC's request as a comma-separated list, echoed with what the network
/// server takes up on its response.
pub(crate) const EXTENSIONS_HEADER: &str = "grpctunnel-extensions";
/// The extended metadata mapping: `-bin` values as base64 (any bytes
/// cross, P-57), `content-type` and `user-agent` carried (P-58).
pub(crate) const EXTENDED_METADATA: &str = "metadata";

/// Default receive window advertised per stream and direction (revision one).
///
/// Larger than the Go reference's fixed 65536 so that one stream can fill a
/// loopback or LAN link; a peer honours whatever we advertise (P-48). It is
/// the stream window of a tonic client's HTTP/2 connection, which carries a
/// forward tunnel's responses: a tunnel stream may keep as much in flight as
/// one direct call could (with 1 MiB, a stream of 1 MiB messages stalled
/// on every credit round trip: 827 against 958 MB/s, median of 5 alternating
/// runs of `benches/cpu_per_mb.sh`).
pub const DEFAULT_INITIAL_WINDOW_SIZE: u32 = 2 * 1024 * 1024;

/// Default maximum size of a received message, as in gRPC.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Default maximum number of concurrent streams on one tunnel, in each role.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: usize = 10_000;

/// Default maximum size of the metadata of one call (request headers, or
/// response headers, or trailers): keys plus values, in bytes.
pub const DEFAULT_MAX_METADATA_SIZE: usize = 64 * 1024;

/// Default bound on the bytes a revision-zero stream may have waiting for its
/// consumer before the tunnel stops reading (revision zero has no windows).
pub const DEFAULT_REVISION_ZERO_BUFFER: usize = 1024 * 1024;

/// How long the tunnel client waits for the peer's `Settings`, by default.
pub(crate) const DEFAULT_SETTINGS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A protocol revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Revision {
    /// Revision zero: no flow control, no settings.
    Zero,
    /// Revision one: per-stream windows and `window_update` frames.
    One,
}

impl Revision {
    pub(crate) fn to_pb(self) -> pb::ProtocolRevision {
        match self {
            Revision::Zero => pb::ProtocolRevision::RevisionZero,
            Revision::One => pb::ProtocolRevision::RevisionOne,
        }
    }

    pub(crate) fn from_i32(v: i32) -> Option<Self> {
        match v {
            0 => Some(Revision::Zero),
            1 => Some(Revision::One),
            _ => None,
        }
    }

    /// Whether streams of this revision use windows.
    pub fn is_flow_controlled(self) -> bool {
        self == Revision::One
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Revision::Zero => "0",
            Revision::One => "1",
        })
    }
}

/// Options shared by both ends of a tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Highest revision we offer; `Revision::Zero` disables negotiation
    /// unless `negotiate_zero` is set.
    pub(crate) max_revision: Revision,
    /// Negotiate even when offering only revision zero (as the Go
    /// reference's `WithDisableFlowControl` does).
    pub(crate) negotiate_zero: bool,
    /// Receive window we advertise per stream (revision one).
    pub(crate) initial_window_size: u32,
    /// Largest message we accept.
    pub(crate) max_message_size: usize,
    /// Most streams open at once on one tunnel.
    pub(crate) max_concurrent_streams: usize,
    /// Largest metadata of one call we accept.
    pub(crate) max_metadata_size: usize,
    /// Bytes a revision-zero stream may buffer before reads pause.
    pub(crate) revision_zero_buffer: usize,
    /// What happens to `-bin` values a peer cannot carry.
    pub(crate) binary_metadata: BinaryMetadata,
    /// How long the tunnel client waits for the peer's `Settings`.
    pub(crate) settings_timeout: std::time::Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            max_revision: Revision::One,
            negotiate_zero: false,
            initial_window_size: DEFAULT_INITIAL_WINDOW_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
            revision_zero_buffer: DEFAULT_REVISION_ZERO_BUFFER,
            binary_metadata: BinaryMetadata::Drop,
            settings_timeout: DEFAULT_SETTINGS_TIMEOUT,
        }
    }
}

impl Options {
    /// Largest frame accepted on the opening RPC: a chunk of a message (any
    /// length up to the message limit, P-30) or a frame with metadata.
    pub(crate) fn max_frame_size(&self) -> usize {
        self.max_message_size
            .max(self.max_metadata_size)
            .saturating_add(64 * 1024)
    }

    /// Whether we send the negotiation header (and, as tunnel server,
    /// `Settings`).
    pub(crate) fn advertises(&self) -> bool {
        self.max_revision >= Revision::One || self.negotiate_zero
    }

    /// Offers at most `revision`; revision zero turns negotiation off.
    pub(crate) fn set_max_revision(&mut self, revision: Revision) {
        self.max_revision = revision;
        self.negotiate_zero = false;
    }

    /// Negotiates, but offers only revision zero.
    pub(crate) fn disable_flow_control(&mut self) {
        self.max_revision = Revision::Zero;
        self.negotiate_zero = true;
    }

    /// The `Settings` frame a tunnel server sends when both sides advertised.
    pub(crate) fn settings(&self) -> pb::Settings {
        let mut revisions = vec![pb::ProtocolRevision::RevisionZero as i32];
        if self.max_revision >= Revision::One {
            revisions.push(pb::ProtocolRevision::RevisionOne as i32);
        }
        pb::Settings {
            supported_protocol_revisions: revisions,
            initial_window_size: self.initial_window_size,
        }
    }
}

/// The response to an opening RPC: `body`, with the negotiation header when
/// we offer revision one (P-9: the headers go out at once), and the binary
/// extensions header echoed when the network client offered one we know.
pub(crate) fn opening_response<T>(opts: &Options, extended: bool, body: T) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(body);
    if opts.advertises() {
        resp.metadata_mut().insert(
            NEGOTIATE_HEADER,
            tonic::metadata::MetadataValue::from_static(NEGOTIATE_ON),
        );
    }
    if extended {
        resp.metadata_mut().insert(
            EXTENSIONS_HEADER,
            tonic::metadata::MetadataValue::from_static(EXTENDED_METADATA),
        );
    }
    resp
}

/// Whether the opening RPC's headers list the extended metadata mapping:
/// the request's when the network client offers it, the response's when
/// the network server took it up.
pub(crate) fn offers_extended_metadata(headers: &http::HeaderMap) -> bool {
    headers.get_all(EXTENSIONS_HEADER).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|token| token.trim_ascii() == EXTENDED_METADATA.as_bytes())
    })
}

impl Options {
    /// How a tunnel maps metadata, once the ends agreed on the extended
    /// mapping or not.
    pub(crate) fn bin(&self, extended: bool) -> Mapping {
        Mapping {
            extended,
            policy: self.binary_metadata,
        }
    }
}

/// Appends an opening-RPC header given as text.
///
/// # Panics
///
/// If the name or value is not valid HTTP header text.
#[track_caller]
pub(crate) fn append_metadata(map: &mut http::HeaderMap, key: &str, value: &str) {
    let name = http::HeaderName::from_bytes(key.as_bytes()).expect("valid metadata key");
    let value = http::HeaderValue::from_bytes(value.as_bytes()).expect("valid metadata value");
    map.append(name, value);
}

/// Whether a peer's metadata advertises revision one (P-10: the first value
/// is exactly `on`).
pub(crate) fn peer_advertises(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(NEGOTIATE_HEADER)
        .iter()
        .next()
        .is_some_and(|v| v.as_bytes() == NEGOTIATE_ON.as_bytes())
}

/// Validates the first frame a tunnel client reads when it expects
/// `Settings` (P-14) and picks the revision (P-15). Errors carry the
/// texts of P-14.
pub(crate) fn accept_settings(
    frame: pb::ServerToClient,
    ours: &Options,
) -> Result<(Revision, u32), String> {
    if frame.stream_id != -1 {
        return Err(format!(
            "protocol error: settings frame had bad stream ID ({})",
            frame.stream_id
        ));
    }
    let settings = match frame.frame {
        Some(pb::server_to_client::Frame::Settings(s)) => s,
        other => {
            return Err(format!(
                "protocol error: first frame was not settings (instead was {})",
                frame_name(other.as_ref())
            ))
        }
    };
    let best = settings
        .supported_protocol_revisions
        .iter()
        .filter_map(|&r| Revision::from_i32(r))
        .filter(|&r| r <= ours.max_revision)
        .max();
    match best {
        Some(rev) => Ok((rev, settings.initial_window_size)),
        None => Err(format!(
            "protocol error: server support revisions {:?}, but client supports revisions {:?}",
            settings.supported_protocol_revisions,
            ours.settings().supported_protocol_revisions
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings_frame(id: i64, revs: Vec<i32>) -> pb::ServerToClient {
        pb::ServerToClient {
            stream_id: id,
            frame: Some(pb::server_to_client::Frame::Settings(pb::Settings {
                supported_protocol_revisions: revs,
                initial_window_size: 65536,
            })),
        }
    }

    #[test]
    fn highest_common_revision_wins() {
        let ours = Options::default();
        assert_eq!(
            accept_settings(settings_frame(-1, vec![0, 1, 7]), &ours),
            Ok((Revision::One, 65536))
        );
        assert_eq!(
            accept_settings(settings_frame(-1, vec![0]), &ours),
            Ok((Revision::Zero, 65536))
        );
    }

    #[test]
    fn bad_settings_have_the_texts_of_p14() {
        let ours = Options::default();
        let err = accept_settings(settings_frame(3, vec![1]), &ours).unwrap_err();
        assert_eq!(err, "protocol error: settings frame had bad stream ID (3)");
        let err = accept_settings(settings_frame(-1, vec![]), &ours).unwrap_err();
        assert!(err.starts_with("protocol error: server support revisions []"));
        let frame = pb::ServerToClient {
            stream_id: -1,
            frame: Some(pb::server_to_client::Frame::WindowUpdate(1)),
        };
        let err = accept_settings(frame, &ours).unwrap_err();
        assert!(err.starts_with("protocol error: first frame was not settings"));
    }

    #[test]
    fn negotiation_header_must_be_first_and_exact() {
        let mut h = http::HeaderMap::new();
        assert!(!peer_advertises(&h));
        h.append(NEGOTIATE_HEADER, "On".parse().unwrap());
        h.append(NEGOTIATE_HEADER, "on".parse().unwrap());
        assert!(!peer_advertises(&h));
        let mut h = http::HeaderMap::new();
        h.append(NEGOTIATE_HEADER, "on".parse().unwrap());
        assert!(peer_advertises(&h));
    }
}
