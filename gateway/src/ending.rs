//! A response body that a cancellation ends early, with trailers made at
//! that moment: a revoked caller's forward tunnel (`hub/revoke.rs`), an
//! agent's tunnel disconnected by an operator (`admin/session.rs`). The
//! library then tears the tunnel down, as when its peer goes away.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::Frame;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Why a body ends early: the trailers it ends with (asked once, when
/// the cancellation comes).
pub(crate) trait EndWith {
    fn trailers(&self) -> http::HeaderMap;
}

pin_project! {
    /// `inner`, ended with `why`'s trailers once its token is cancelled;
    /// `why` lives as long as the body.
    pub(crate) struct Ending<B, W> {
        #[pin]
        inner: B,
        cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
        done: bool,
        why: W,
    }
}

impl<B, W> Ending<B, W> {
    pub(crate) fn new(inner: B, token: CancellationToken, why: W) -> Self {
        Self {
            inner,
            cancelled: Box::pin(token.cancelled_owned()),
            done: false,
            why,
        }
    }
}

impl<B, W> http_body::Body for Ending<B, W>
where
    B: http_body::Body<Data = Bytes>,
    W: EndWith,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        if this.cancelled.as_mut().poll(cx).is_ready() {
            *this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(this.why.trailers()))));
        }
        this.inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}
