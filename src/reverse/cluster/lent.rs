//! A relayed call's request body, lent to one attempt at a time: the
//! replicas holding a key are tried in turn, and a call one of them
//! refuses (it lacks the key: it drained, or its agent just left) goes to
//! the next with its body intact.
//!
//! The data an attempt reads is kept (as `Bytes` clones: no copy) up to
//! [`REPLAY_LIMIT`]; the next attempt reads that again, then the rest of
//! the body. Past the limit nothing is kept, and a refused call fails as
//! before: a replica's refusal never costs more memory than that.

use std::{
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;

/// Most request bytes kept for another attempt.
pub(crate) const REPLAY_LIMIT: usize = 64 * 1024;

struct Shared {
    /// The rest of the body, not read yet (`None` once it ended).
    rest: Option<tonic::body::Body>,
    /// Data frames read so far, while within the limit.
    kept: Vec<Bytes>,
    kept_len: usize,
    /// The body ended with these trailers.
    trailers: Option<http::HeaderMap>,
    /// Something read was not kept: no other attempt can have the body.
    spilled: bool,
    /// The attempt reading it (0: none yet).
    holder: u64,
    /// The last attempt lent.
    lent: u64,
}

/// A request body lent to one attempt at a time.
pub(crate) struct Lent {
    shared: Arc<Mutex<Shared>>,
}

impl Lent {
    pub(crate) fn new(body: tonic::body::Body) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                rest: Some(body),
                kept: Vec::new(),
                kept_len: 0,
                trailers: None,
                spilled: false,
                holder: 0,
                lent: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A body for one more attempt; an earlier attempt that still reads
    /// fails from now on (its stream is reset).
    pub(crate) fn lend(&self) -> Borrowed {
        let mut shared = self.lock();
        shared.lent += 1;
        shared.holder = 0;
        Borrowed {
            shared: self.shared.clone(),
            attempt: shared.lent,
            at: 0,
        }
    }

    /// Whether another attempt can have the whole body: none read it, or
    /// what was read is kept.
    pub(crate) fn replayable(&self) -> bool {
        !self.lock().spilled
    }

    /// The body for a last attempt (served locally), if it can have it.
    pub(crate) fn take_back(self) -> Option<tonic::body::Body> {
        self.replayable()
            .then(|| tonic::body::Body::new(self.lend()))
    }
}

/// The body of one attempt.
pub(crate) struct Borrowed {
    shared: Arc<Mutex<Shared>>,
    attempt: u64,
    /// The next kept frame to replay.
    at: usize,
}

impl http_body::Body for Borrowed {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let mut shared = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        match shared.holder {
            0 if shared.lent == this.attempt && (this.at == 0 && !shared.spilled) => {
                shared.holder = this.attempt
            }
            holder if holder == this.attempt => {}
            _ => {
                return Poll::Ready(Some(Err(tonic::Status::internal(
                    "request body taken by another attempt",
                ))))
            }
        }
        if let Some(data) = shared.kept.get(this.at) {
            let data = data.clone();
            this.at += 1;
            return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
        }
        let Some(rest) = shared.rest.as_mut() else {
            return Poll::Ready(
                shared
                    .trailers
                    .clone()
                    .map(|t| Ok(http_body::Frame::trailers(t))),
            );
        };
        let frame = std::task::ready!(Pin::new(rest).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    if !shared.spilled && shared.kept_len + data.len() <= REPLAY_LIMIT {
                        shared.kept_len += data.len();
                        shared.kept.push(data.clone());
                        this.at += 1;
                    } else {
                        shared.spilled = true;
                        shared.kept = Vec::new();
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    shared.rest = None;
                }
            }
            Some(Err(_)) => shared.spilled = true,
            None => shared.rest = None,
        }
        Poll::Ready(frame)
    }

    // Passed through so that hyper ends the stream with the last DATA
    // frame: a separate empty END_STREAM frame after each small request
    // would spend the peer's h2 budget for small DATA frames (h2 0.4
    // ends a connection with ENHANCE_YOUR_CALM once it is spent).
    fn is_end_stream(&self) -> bool {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        self.at >= shared.kept.len()
            && shared.trailers.is_none()
            && shared
                .rest
                .as_ref()
                .is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let kept: usize = shared.kept[self.at.min(shared.kept.len())..]
            .iter()
            .map(Bytes::len)
            .sum();
        let mut hint = shared
            .rest
            .as_ref()
            .map(http_body::Body::size_hint)
            .unwrap_or_else(|| http_body::SizeHint::with_exact(0));
        hint.set_lower(hint.lower() + kept as u64);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + kept as u64);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn body(chunks: &[&'static [u8]]) -> tonic::body::Body {
        let frames: Vec<Result<http_body::Frame<Bytes>, tonic::Status>> = chunks
            .iter()
            .map(|c| Ok(http_body::Frame::data(Bytes::from_static(c))))
            .collect();
        tonic::body::Body::new(http_body_util::StreamBody::new(futures_util::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn a_refused_attempt_s_body_goes_whole_to_the_next() {
        let lent = Lent::new(body(&[b"ab", b"cd"]));
        let mut first = lent.lend();
        let frame = first.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "ab");
        let second = lent.lend();
        // The first attempt is over: it may not read on.
        assert!(first.frame().await.expect("a frame").is_err());
        let all = second.collect().await.expect("the body").to_bytes();
        assert_eq!(all, "abcd");
        assert!(lent.replayable());
        let last = lent.take_back().expect("kept whole");
        assert_eq!(last.collect().await.expect("body").to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn past_the_limit_nothing_is_kept_and_no_attempt_follows() {
        static BIG: [u8; REPLAY_LIMIT + 1] = [7; REPLAY_LIMIT + 1];
        let lent = Lent::new(body(&[&BIG]));
        let first = lent.lend();
        assert_eq!(
            first.collect().await.expect("read").to_bytes().len(),
            REPLAY_LIMIT + 1
        );
        assert!(!lent.replayable());
        assert!(lent.take_back().is_none());
    }
}
