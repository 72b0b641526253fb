//! Limits of calls in flight. The agent's (`--max-calls`): a call beyond
//! it is refused with `RESOURCE_EXHAUSTED` before it reaches the upstream;
//! a call counts until its response body ends (or is dropped). And a
//! caller's at the hub ([`CallPermit`], `max_calls` of a `[[caller]]`).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Permits for calls in flight; `None`: no limit.
#[derive(Debug, Clone)]
pub(crate) struct CallLimit(Option<(Arc<Semaphore>, usize)>);

impl CallLimit {
    /// At most `max` calls in flight (`None`: no limit).
    pub(crate) fn new(max: Option<usize>) -> Self {
        Self(max.map(|n| (Arc::new(Semaphore::new(n)), n)))
    }

    /// A permit for one more call, or the status refusing it.
    pub(crate) fn acquire(&self) -> Result<Option<OwnedSemaphorePermit>, tonic::Status> {
        let Some((permits, max)) = &self.0 else {
            return Ok(None);
        };
        permits.clone().try_acquire_owned().map(Some).map_err(|_| {
            tracing::warn!(max, "call refused: --max-calls calls in flight");
            tonic::Status::resource_exhausted(format!(
                "this agent already has {max} calls in flight (its --max-calls)"
            ))
        })
    }
}

pin_project! {
    /// A response body that holds its call's permit (or any guard: a
    /// tunnel's place in its credential's quota) until it ends.
    pub(crate) struct Held<B, G = OwnedSemaphorePermit> {
        #[pin]
        inner: B,
        permit: Option<G>,
    }
}

impl<B, G> Held<B, G> {
    pub(crate) fn new(inner: B, permit: Option<G>) -> Self {
        Self { inner, permit }
    }
}

impl<B, G> http_body::Body for Held<B, G>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            // The call is over: free its place now, not at drop.
            *this.permit = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A caller's call in flight at the hub, counted against its credential's
/// limit (`max_calls` of a `[[caller]]`) until dropped.
#[derive(Debug)]
pub(crate) struct CallPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl CallPermit {
    /// A call of a caller without a limit.
    pub(crate) fn unlimited() -> Self {
        Self(None)
    }

    /// A call holding one of its caller's `permit`s.
    pub(crate) fn counted(permit: OwnedSemaphorePermit) -> Self {
        Self(Some(permit))
    }
}
