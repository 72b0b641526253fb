//! Routing a caller's gRPC call to an agent by key: the key comes from a
//! request header (`grpctunnel-key` unless configured); with
//! `grpctunnel-wait: true` a call waits, up to its own deadline, for an
//! agent of that key to connect. Several agents with one key share the
//! calls (the registry picks per call).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use axum::body::Body;
use grpctunnel::ReverseTunnelRegistry;
use tower::{Service, ServiceExt};

/// Header that asks a call to wait for its agent.
pub(crate) const WAIT_HEADER: &str = "grpctunnel-wait";

/// The hub's service for every call that is not a tunnel of its own.
#[derive(Debug, Clone)]
pub(crate) struct RouteByKey {
    registry: ReverseTunnelRegistry<String>,
    key_header: http::HeaderName,
}

impl RouteByKey {
    pub(crate) fn new(
        registry: ReverseTunnelRegistry<String>,
        key_header: http::HeaderName,
    ) -> Self {
        Self {
            registry,
            key_header,
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

fn answer(status: tonic::Status) -> BoxFuture {
    Box::pin(std::future::ready(Ok(status.into_http())))
}

impl Service<http::Request<Body>> for RouteByKey {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: http::Request<Body>) -> BoxFuture {
        let Some(key) = req
            .headers()
            .get(&self.key_header)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
        else {
            return answer(tonic::Status::invalid_argument(format!(
                "missing {} header: which agent should answer?",
                self.key_header
            )));
        };
        let wait = req
            .headers_mut()
            .remove(WAIT_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        if !wait && self.registry.tunnels_for(key.as_str()).is_empty() {
            return answer(tonic::Status::unavailable(format!(
                "no agent connected for key {key:?}"
            )));
        }
        let channel = self.registry.get(key.as_str()).wait_for_ready(wait);
        Box::pin(async move {
            match channel.oneshot(req).await {
                Ok(resp) => Ok(resp.map(Body::new)),
                Err(err) => Ok(
                    tonic::Status::unavailable(format!("agent for key {key:?}: {err}")).into_http(),
                ),
            }
        })
    }
}
