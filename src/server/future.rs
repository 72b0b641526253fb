//! [`ResponseFuture`] of [`TunnelService`](crate::server::TunnelService).

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;

use crate::server::TunnelBody;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future of [`TunnelService`](crate::server::TunnelService).
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Passthrough { #[pin] inner: F },
        Tunnel { fut: BoxFuture<http::Response<tonic::body::Body>> },
        Status { status: Option<tonic::Status> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn passthrough(inner: F) -> Self {
        Self {
            kind: Kind::Passthrough { inner },
        }
    }

    pub(crate) fn tunnel(
        fut: impl Future<Output = http::Response<tonic::body::Body>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Tunnel { fut: Box::pin(fut) },
        }
    }

    pub(crate) fn status(status: tonic::Status) -> Self {
        Self {
            kind: Kind::Status {
                status: Some(status),
            },
        }
    }
}

impl<F, E, ResBody> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    ResBody: TunnelBody,
{
    type Output = Result<http::Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { inner } => inner.poll(cx),
            KindProj::Tunnel { fut } => {
                let resp = ready!(fut.as_mut().poll(cx));
                Poll::Ready(Ok(resp.map(ResBody::from_tunnel)))
            }
            KindProj::Status { status } => {
                let status = status
                    .take()
                    .unwrap_or_else(|| tonic::Status::internal("polled after completion"));
                Poll::Ready(Ok(status.into_http().map(ResBody::from_tunnel)))
            }
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
