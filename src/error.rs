//! The crate's error type and the statuses the engine produces.
//!
//! A tunneled RPC fails with a [`tonic::Status`] carried in its response
//! trailers, never with an [`Error`]. [`Error`] is for the tunnel itself: it
//! could not be opened, or it is closed. Codes and texts that a peer can see
//! follow PROTOCOL.md exactly; local ones follow gRPC's status-code guidance:
//!
//! | Situation | Code |
//! |---|---|
//! | tunnel ended (closed, opening RPC failed, protocol error) before the call finished | `UNAVAILABLE` |
//! | caller dropped the call | `CANCELLED` (local) |
//! | caller's deadline passed | `DEADLINE_EXCEEDED` |
//! | received message above the configured maximum | `RESOURCE_EXHAUSTED` |
//! | flow-control window overrun by the peer | `RESOURCE_EXHAUSTED` `flow control window exceeded` |
//! | reassembly violation (P-33) | `INVALID_ARGUMENT` (tunnel server) / `INTERNAL` (tunnel client) |
//! | metadata that cannot cross a tunnel (non-UTF-8 `-bin` value, P-57) | `INTERNAL` |

use std::{error::Error as StdError, fmt, sync::Arc};

/// Type-erased error, as used by tower.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// An error of the tunnel itself (as opposed to one tunneled call).
///
/// `Display` is one lowercase phrase; the cause, when there is one, is the
/// [`source`](StdError::source).
#[derive(Clone)]
pub struct Error {
    kind: Kind,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The tunnel is closed (locally, by the peer, or because its opening RPC ended).
    Closed,
    /// The peer broke the protocol.
    Protocol,
    /// The opening RPC or the revision negotiation failed.
    Negotiation,
}

impl Error {
    pub(crate) fn closed(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Closed, Some(source.into()))
    }

    pub(crate) fn closed_locally() -> Self {
        Self::new(Kind::Closed, None)
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> Self {
        Self::new(Kind::Protocol, Some(Box::new(ProtocolError(msg.into()))))
    }

    pub(crate) fn negotiation(source: impl Into<BoxError>) -> Self {
        Self::new(Kind::Negotiation, Some(source.into()))
    }

    fn new(kind: Kind, source: Option<BoxError>) -> Self {
        Self {
            kind,
            source: source.map(Arc::from),
        }
    }

    /// The tunnel is closed: locally, by the peer, or because its opening RPC ended.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }

    /// The peer broke the tunnel protocol.
    pub fn is_protocol(&self) -> bool {
        self.kind == Kind::Protocol
    }

    /// How a protocol error ends the opening RPC when we answer it (P-22):
    /// `UNKNOWN` with the violation's text; `None` for other errors.
    pub(crate) fn protocol_status(&self) -> Option<tonic::Status> {
        if self.kind != Kind::Protocol {
            return None;
        }
        let text = self
            .source
            .as_ref()
            .map(|e| e.to_string())
            .unwrap_or_default();
        Some(tonic::Status::unknown(text))
    }

    /// Opening the tunnel or negotiating its revision failed.
    pub fn is_negotiation(&self) -> bool {
        self.kind == Kind::Negotiation
    }

    /// The [`tonic::Status`] behind this error, if the opening RPC ended with one.
    pub fn status(&self) -> Option<&tonic::Status> {
        let mut cur: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(err) = cur {
            if let Some(status) = err.downcast_ref::<tonic::Status>() {
                return Some(status);
            }
            cur = err.source();
        }
        None
    }

    /// The status that calls failing because of this error report.
    pub(crate) fn to_status(&self) -> tonic::Status {
        match self.kind {
            // "tunnel closed: <why>", once.
            Kind::Closed => tonic::Status::unavailable(self.chain()),
            _ => tonic::Status::unavailable(format!("tunnel closed: {}", self.chain())),
        }
    }

    /// This error and its sources as one line, for logs: `tunnel closed:
    /// ResourceExhausted: too many reverse tunnels (max 10)`.
    ///
    /// A source whose text the chain already holds is left out: a
    /// `tonic::Status` made from an h2 error, say, repeats its source's text
    /// in its message.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut cur: Option<&(dyn StdError + 'static)> = self.source.as_deref().map(|e| e as _);
        while let Some(err) = cur {
            // What this source says, and the part of it that may repeat.
            let (text, own) = match err.downcast_ref::<tonic::Status>() {
                Some(s) if s.message().is_empty() => (format!("{:?}", s.code()), None),
                Some(s) => (
                    format!("{:?}: {}", s.code(), s.message()),
                    Some(s.message().to_owned()),
                ),
                None => (err.to_string(), Some(err.to_string())),
            };
            if own.is_none_or(|own| !out.contains(&own)) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cur = err.source();
        }
        out
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("grpctunnel::Error");
        d.field("kind", &self.kind);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            Kind::Closed => "tunnel closed",
            Kind::Protocol => "tunnel protocol error",
            Kind::Negotiation => "tunnel negotiation failed",
        })
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// A protocol violation, with the text PROTOCOL.md gives for it.
#[derive(Debug)]
pub(crate) struct ProtocolError(pub(crate) String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl StdError for ProtocolError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_found_in_the_source_chain() {
        let err = Error::closed(tonic::Status::permission_denied("no"));
        assert!(err.is_closed());
        assert_eq!(
            err.status().map(|s| s.code()),
            Some(tonic::Code::PermissionDenied)
        );
        assert_eq!(err.to_string(), "tunnel closed");
        assert!(err.chain().contains("PermissionDenied: no"));
        assert_eq!(err.to_status().code(), tonic::Code::Unavailable);
    }

    /// A tonic status made from a transport error repeats the error's text;
    /// the chain says each thing once ("tunnel closed: tunnel closed: ..."
    /// and a repeated h2 text are gone).
    #[test]
    fn status_text_says_each_thing_once() {
        #[derive(Debug)]
        struct H2(&'static str);
        impl fmt::Display for H2 {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0)
            }
        }
        impl StdError for H2 {}
        let mut status = tonic::Status::unknown("h2 protocol error: stream no longer needed");
        status.set_source(Arc::new(H2("stream no longer needed")));
        let err = Error::closed(status);
        let text = err.to_status().message().to_owned();
        assert_eq!(
            text,
            "tunnel closed: Unknown: h2 protocol error: stream no longer needed"
        );
        assert_eq!(text.matches("tunnel closed").count(), 1, "{text}");
        assert_eq!(
            Error::closed_locally().to_status().message(),
            "tunnel closed"
        );
        let refused = Error::closed(tonic::Status::permission_denied(""));
        assert_eq!(
            refused.to_status().message(),
            "tunnel closed: PermissionDenied"
        );
    }

    #[test]
    fn protocol_errors_keep_their_text() {
        let err = Error::protocol("received frame for stream ID 7: stream never created");
        assert!(err.is_protocol());
        assert!(err.status().is_none());
        assert!(err.to_status().message().ends_with("stream never created"));
    }
}
