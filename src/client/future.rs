//! [`ResponseFuture`]: waits for a tunneled call's response headers.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use crate::{
    client::{body::ResponseBody, call::CallGuard},
    engine::stream::Event,
};

/// Response future of [`TunnelChannel`](crate::TunnelChannel).
///
/// Resolves when the tunnel server sends the call's response headers, or
/// with a trailers-only response when the call ends before it has any.
///
/// # Cancellation
///
/// Dropping the future before it resolves sends `cancel` for the stream.
pub struct ResponseFuture {
    state: State,
}

enum State {
    Waiting(Option<CallGuard>),
    Ready(Option<http::Response<ResponseBody>>),
}

enum Next {
    Headers,
    Data,
    End,
}

impl ResponseFuture {
    pub(crate) fn waiting(guard: CallGuard) -> Self {
        Self {
            state: State::Waiting(Some(guard)),
        }
    }

    pub(crate) fn failed(status: tonic::Status) -> Self {
        Self {
            state: State::Ready(Some(trailers_only_from_status(&status))),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, crate::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let guard_slot = match &mut this.state {
            State::Ready(resp) => {
                let resp = resp.take().unwrap_or_else(|| {
                    trailers_only_from_status(&tonic::Status::internal("response taken twice"))
                });
                return Poll::Ready(Ok(resp));
            }
            State::Waiting(guard) => guard,
        };
        let Some(guard) = guard_slot.as_ref() else {
            let status = tonic::Status::internal("polled after completion");
            return Poll::Ready(Ok(trailers_only_from_status(&status)));
        };
        let next = match guard.stream.poll_peek(cx, |event| match event {
            Event::Headers(_) => Next::Headers,
            Event::Start { .. } | Event::More(_) => Next::Data,
            Event::End(_) | Event::Fail(_) => Next::End,
        }) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(next) => next,
        };
        // invariant: checked `Some` just above.
        #[allow(clippy::unwrap_used)]
        let guard = guard_slot.take().unwrap();
        let resp = match next {
            Next::Headers => {
                let Poll::Ready(Event::Headers(md)) = guard.stream.poll_event(cx) else {
                    unreachable!("peeked headers")
                };
                let mut headers = http::HeaderMap::new();
                guard.metadata_to_headers(&md, &mut headers);
                let mut resp = http::Response::new(ResponseBody::streaming(guard));
                *resp.headers_mut() = headers;
                set_content_type(resp.headers_mut());
                resp
            }
            Next::Data => {
                // P-42: data before headers is accepted, with empty headers.
                let mut resp = http::Response::new(ResponseBody::streaming(guard));
                set_content_type(resp.headers_mut());
                resp
            }
            Next::End => {
                let Poll::Ready(event) = guard.stream.poll_event(cx) else {
                    unreachable!("peeked end")
                };
                let trailers = match event {
                    Event::End(close) => ResponseBody::close_to_trailers(close, &guard),
                    Event::Fail(status) => ResponseBody::status_to_trailers(&status),
                    _ => unreachable!("peeked end"),
                };
                trailers_only(trailers)
            }
        };
        this.state = State::Ready(None);
        Poll::Ready(Ok(resp))
    }
}

/// `application/grpc`, unless the response carried its own content type
/// (with a subtype, such as `application/grpc+json`; the extended metadata
/// mapping lets it cross).
fn set_content_type(headers: &mut http::HeaderMap) {
    headers
        .entry(http::header::CONTENT_TYPE)
        .or_insert(http::HeaderValue::from_static("application/grpc"));
}

/// A trailers-only response: the status travels in the headers block.
fn trailers_only(mut trailers: http::HeaderMap) -> http::Response<ResponseBody> {
    let mut resp = http::Response::new(ResponseBody::empty());
    set_content_type(&mut trailers);
    *resp.headers_mut() = trailers;
    resp
}

fn trailers_only_from_status(status: &tonic::Status) -> http::Response<ResponseBody> {
    trailers_only(ResponseBody::status_to_trailers(status))
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
