//! Agent authentication on the hub: an agent opens `OpenReverseTunnel` with
//! `authorization: Bearer <token>` and its key in the key header; the token
//! must be known and bound to that key. A refused claim never reaches the
//! registry: it fails with `UNAUTHENTICATED` (unknown token) or
//! `PERMISSION_DENIED` (a key the token is not bound to), and is logged.

use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use tower::Service;

/// Tokens and the keys each may register.
#[derive(Debug, Default)]
pub(crate) struct AgentTable {
    keys_by_token: HashMap<String, HashSet<String>>,
}

impl AgentTable {
    pub(crate) fn insert(&mut self, token: String, keys: impl IntoIterator<Item = String>) {
        self.keys_by_token.entry(token).or_default().extend(keys);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys_by_token.is_empty()
    }

    /// Whether the opening RPC's credential may register the key it claims.
    fn check(
        &self,
        headers: &http::HeaderMap,
        key_header: &http::HeaderName,
    ) -> Result<(), tonic::Status> {
        let key = headers
            .get(key_header)
            .and_then(|v| v.to_str().ok())
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                tonic::Status::invalid_argument(format!("missing {key_header} header"))
            })?;
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(keys) = token.and_then(|t| self.keys_by_token.get(t)) else {
            tracing::warn!(key, "agent refused: unknown or missing bearer token");
            crate::metrics::auth_failure("unknown_token");
            return Err(tonic::Status::unauthenticated(
                "unknown or missing bearer token",
            ));
        };
        if !keys.contains(key) {
            tracing::warn!(
                key,
                "agent refused: its credential is not bound to this key"
            );
            crate::metrics::auth_failure("key_not_bound");
            return Err(tonic::Status::permission_denied(format!(
                "this credential may not register key {key:?}"
            )));
        }
        Ok(())
    }
}

/// Checks agents' credentials in front of the tunnel service.
#[derive(Debug, Clone)]
pub(crate) struct AgentAuth<S> {
    inner: S,
    agents: Arc<AgentTable>,
    key_header: http::HeaderName,
}

impl<S> AgentAuth<S> {
    pub(crate) fn new(inner: S, agents: Arc<AgentTable>, key_header: http::HeaderName) -> Self {
        Self {
            inner,
            agents,
            key_header,
        }
    }
}

const OPEN_REVERSE_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenReverseTunnel";

impl<S> Service<http::Request<Body>> for AgentAuth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<http::Response<Body>, Infallible>>,
        S::Future,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == OPEN_REVERSE_TUNNEL {
            if let Err(status) = self.agents.check(req.headers(), &self.key_header) {
                return futures_util::future::Either::Left(std::future::ready(Ok(
                    status.into_http()
                )));
            }
        }
        futures_util::future::Either::Right(self.inner.call(req))
    }
}
