//! An agent tunnel's session on the hub: when it opened, and the handle an
//! operator ends it with (`grpctunnel disconnect`).
//!
//! Admission puts a [`Session`] in the opening RPC's extensions (the
//! registry keeps them with the tunnel) and wraps the RPC's response body
//! in [`Session::watch`]: a disconnect ends that body with `UNAVAILABLE`,
//! the operator's reason as its message and `grpctunnel-reconnect: true`
//! or `false` in its trailers. The agent logs the reason and dials this
//! hub again only when told to; the library tears the tunnel down as when
//! an agent goes away (its calls in flight fail with `UNAVAILABLE`).

use std::{
    sync::{Arc, Mutex},
    time::SystemTime,
};

use tokio_util::sync::CancellationToken;

use crate::ending::{EndWith, Ending};

/// Trailer telling an agent whether it may dial this hub again after a
/// disconnect (`true` or `false`).
pub(crate) const RECONNECT_HEADER: &str = "grpctunnel-reconnect";

/// Header an agent sends its version in when it connects.
pub(crate) const AGENT_VERSION_HEADER: &str = "grpctunnel-agent-version";

/// Longest reason passed on to an agent, in bytes.
const MAX_REASON: usize = 512;

/// One agent tunnel's session (a request extension of its opening RPC).
#[derive(Debug, Clone)]
pub(crate) struct Session(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    since: SystemTime,
    ended: CancellationToken,
    /// The operator's reason, and whether the agent may reconnect.
    why: Mutex<Option<(String, bool)>>,
}

impl Session {
    pub(crate) fn new() -> Self {
        Self(Arc::new(Inner {
            since: SystemTime::now(),
            ended: CancellationToken::new(),
            why: Mutex::new(None),
        }))
    }

    /// When the tunnel's opening RPC was admitted.
    pub(crate) fn since(&self) -> SystemTime {
        self.0.since
    }

    /// Ends the tunnel, telling the agent `reason`; `false` when it was
    /// ended already.
    pub(crate) fn disconnect(&self, reason: &str, reconnect: bool) -> bool {
        {
            let mut why = self.0.why.lock().unwrap_or_else(|p| p.into_inner());
            if why.is_some() {
                return false;
            }
            let mut reason = reason.to_owned();
            if reason.len() > MAX_REASON {
                let mut end = MAX_REASON;
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                reason.truncate(end);
            }
            *why = Some((reason, reconnect));
        }
        self.0.ended.cancel();
        true
    }

    /// The operator's reason, once the tunnel was disconnected.
    pub(crate) fn reason(&self) -> Option<String> {
        self.0
            .why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(reason, _)| reason.clone())
    }

    /// `body`, the response of the tunnel's opening RPC, ended by
    /// [`disconnect`](Self::disconnect).
    pub(crate) fn watch<B>(&self, body: B) -> Ending<B, Session> {
        Ending::new(body, self.0.ended.clone(), self.clone())
    }

    /// The trailers that end a disconnected tunnel's opening RPC.
    fn disconnect_trailers(&self) -> http::HeaderMap {
        let (reason, reconnect) = self
            .0
            .why
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        let text = if reason.is_empty() {
            "disconnected by the hub's operator".to_owned()
        } else {
            format!("disconnected by the hub's operator: {reason}")
        };
        let mut status = tonic::Status::unavailable(text);
        status.metadata_mut().insert(
            RECONNECT_HEADER,
            tonic::metadata::MetadataValue::from_static(if reconnect { "true" } else { "false" }),
        );
        let mut trailers = http::HeaderMap::new();
        if status.add_header(&mut trailers).is_err() {
            trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
        }
        trailers
    }
}

impl EndWith for Session {
    fn trailers(&self) -> http::HeaderMap {
        self.disconnect_trailers()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disconnect_ends_once_with_the_reason_and_the_reconnect_word() {
        let session = Session::new();
        assert!(session.disconnect(&"é".repeat(400), false));
        assert!(!session.disconnect("again", true));
        let trailers = session.disconnect_trailers();
        assert_eq!(trailers["grpc-status"], "14");
        assert_eq!(trailers[RECONNECT_HEADER], "false");
        let status = tonic::Status::from_header_map(&trailers).expect("a status");
        assert!(status
            .message()
            .starts_with("disconnected by the hub's operator: é"));
        assert!(status.message().len() < MAX_REASON + 64);
    }
}
