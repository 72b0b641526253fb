//! [`TunnelService`]: routes the tunnel paths, passes everything else on.

use std::{
    convert::Infallible,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tower_service::Service;

use crate::{
    engine::accept::accept,
    error::BoxError,
    pb,
    server::{
        dispatch::{dispatch, Dispatch},
        future::ResponseFuture,
        layer::Config,
        open::serve_tunnel,
        InRelayTunnel, RequestBody, ReverseAcceptor, TunnelBody, RELAY_AUTH_HEADER,
    },
};

/// Path of the forward-tunnel method (P-1).
pub(crate) const OPEN_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenTunnel";
/// Path of the reverse-tunnel method (P-1).
pub(crate) const OPEN_REVERSE_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenReverseTunnel";

/// A service with `grpctunnel.v1.TunnelService` in front of `S`; made by
/// [`TunnelLayer`](crate::TunnelLayer).
///
/// The inner service's errors pass through untouched; the tunnel paths
/// never fail at this level (a failed tunnel is a gRPC status).
#[derive(Clone)]
pub struct TunnelService<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> TunnelService<S> {
    pub(crate) fn new(inner: S, config: Arc<Config>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes `self`, returning the wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<http::Request<B>> for TunnelService<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + From<RequestBody> + Send + 'static,
    B::Error: Into<BoxError> + Send,
    ResBody: TunnelBody,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if (path == OPEN_TUNNEL || path == OPEN_REVERSE_TUNNEL)
            && self.config.counters.snapshot().tunnels_open >= self.config.max_tunnels
        {
            return ResponseFuture::status(tonic::Status::resource_exhausted(format!(
                "too many tunnels (max {})",
                self.config.max_tunnels
            )));
        }
        let config = &self.config;
        // A call relayed by another replica of a cluster, or a tunnel it
        // relays calls through: the reverse acceptor checks and serves each
        // call; none reaches the inner service.
        if let Some(acceptor) = &config.reverse {
            if req.headers().contains_key(RELAY_AUTH_HEADER) {
                if req.uri().path() != OPEN_TUNNEL {
                    let relayed = acceptor.relay(req.map(tonic::body::Body::new));
                    return ResponseFuture::tunnel(relayed);
                }
                if let Err(status) = acceptor.admit_relay(req.headers()) {
                    return ResponseFuture::status(status);
                }
                let dispatch = relay_dispatch(acceptor.clone());
                let (opts, shutdown, grace) = (config.opts, config.shutdown.clone(), config.grace);
                return ResponseFuture::tunnel(accept::<pb::ClientToServer, _, _>(
                    req,
                    opts,
                    config.counters.clone(),
                    move |tunnel| serve_tunnel(tunnel, opts, dispatch, shutdown, grace),
                ));
            }
        }
        match req.uri().path() {
            OPEN_TUNNEL => {
                let dispatch = match &config.tunnel_service {
                    Some(d) => d.clone(),
                    None => dispatch(self.inner.clone()),
                };
                let (opts, shutdown, grace) = (config.opts, config.shutdown.clone(), config.grace);
                ResponseFuture::tunnel(accept::<pb::ClientToServer, _, _>(
                    req,
                    opts,
                    config.counters.clone(),
                    move |tunnel| serve_tunnel(tunnel, opts, dispatch, shutdown, grace),
                ))
            }
            OPEN_REVERSE_TUNNEL => match &config.reverse {
                Some(acceptor) => {
                    if let Err(status) = acceptor.admit(req.headers(), req.extensions()) {
                        return ResponseFuture::status(status);
                    }
                    let acceptor = acceptor.clone();
                    let (opts, shutdown, grace) =
                        (config.opts, config.shutdown.clone(), config.grace);
                    ResponseFuture::tunnel(accept::<pb::ServerToClient, _, _>(
                        req,
                        opts,
                        config.counters.clone(),
                        move |tunnel| acceptor.accept(tunnel, opts, shutdown, grace),
                    ))
                }
                // P-18: rejected before any headers (trailers-only).
                None => ResponseFuture::status(tonic::Status::unimplemented(
                    "reverse tunnels not supported",
                )),
            },
            _ => {
                // The clone that was not polled replaces the one that was.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::passthrough(inner.call(req))
            }
        }
    }
}

impl<S> tonic::server::NamedService for TunnelService<S> {
    const NAME: &'static str = "grpctunnel.v1.TunnelService";
}

impl<S: fmt::Debug> fmt::Debug for TunnelService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// The calls of a tunnel another replica relays through: each one to the
/// reverse acceptor's `relay`, which checks its secret and serves it from a
/// local tunnel.
fn relay_dispatch(acceptor: Arc<dyn ReverseAcceptor>) -> Dispatch {
    tower::util::BoxCloneSyncService::new(tower::service_fn(
        move |mut req: http::Request<RequestBody>| {
            req.extensions_mut().insert(InRelayTunnel);
            let relayed = acceptor.relay(req.map(tonic::body::Body::new));
            async move { Ok::<_, BoxError>(relayed.await) }
        },
    ))
}

/// A service that answers every request with `UNIMPLEMENTED`; the inner
/// service of a standalone [`TunnelService`] (see
/// [`TunnelLayer::into_service`](crate::TunnelLayer::into_service)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Unimplemented {
    _priv: (),
}

impl<B> Service<http::Request<B>> for Unimplemented {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let status = tonic::Status::unimplemented(format!(
            "{} not implemented",
            req.uri().path().trim_start_matches('/')
        ));
        std::future::ready(Ok(status.into_http()))
    }
}
