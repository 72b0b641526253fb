//! Admission on the hub's opening RPCs, in front of the tunnel service:
//! an agent's `OpenReverseTunnel` needs a credential bound to its key, a
//! place in its credential's tunnel quota and its key policy's consent; a
//! caller's `OpenTunnel` (when callers are listed) a known credential and a
//! place in its quota, and it ends when the credential is revoked. Another
//! hub's relay tunnel is for the tunnel layer to check (its proof).

use std::{
    convert::Infallible,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use tower::Service;

use crate::{
    auth::{CallerKeys, Live, RELAY_AUTH_HEADER},
    limit::Held,
    quota::{TunnelQuota, TunnelSlot},
    revoke::OpenForward,
    session::Session,
};

const OPEN_REVERSE_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenReverseTunnel";
const OPEN_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenTunnel";

/// Checks credentials on the opening RPCs, in front of the tunnel service.
#[derive(Debug, Clone)]
pub(crate) struct Auth<S> {
    inner: S,
    agents: Live,
    /// None listed: callers need no credential.
    callers: Live,
    key_header: http::HeaderName,
    /// The tunnels each credential holds.
    quota: std::sync::Arc<TunnelQuota>,
    /// The agents' tunnels, for key policies.
    registry: grpctunnel::ReverseTunnelRegistry<String>,
    /// Callers' forward tunnels, ended when their credential is revoked.
    forward: Arc<OpenForward>,
}

impl<S> Auth<S> {
    pub(crate) fn new(
        inner: S,
        agents: Live,
        callers: Live,
        key_header: http::HeaderName,
        quota: std::sync::Arc<TunnelQuota>,
        registry: grpctunnel::ReverseTunnelRegistry<String>,
        forward: Arc<OpenForward>,
    ) -> Self {
        Self {
            inner,
            agents,
            callers,
            key_header,
            quota,
            registry,
            forward,
        }
    }
}

impl<S> Service<http::Request<Body>> for Auth<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<
        std::future::Ready<Result<http::Response<Body>, Infallible>>,
        Slotted<S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        let admitted = match req.uri().path() {
            OPEN_REVERSE_TUNNEL => self
                .agents
                .get()
                .check_agent(req.headers(), req.extensions(), &self.key_header)
                .and_then(|grant| {
                    let key = req
                        .headers()
                        .get(&self.key_header)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    crate::key_policy::admit(&self.registry, key, &grant, req.headers())?;
                    let slot = self.tunnel_slot(&grant, "agent", req.extensions())?;
                    // The tunnel keeps its grant (key policies compare
                    // credentials) and its session (the admin API reads
                    // it, and ends the tunnel through it).
                    req.extensions_mut().insert(grant);
                    let session = Session::new();
                    req.extensions_mut().insert(session.clone());
                    Ok(Some((slot, Watch::Agent(session))))
                }),
            // Another hub's relay tunnel: the tunnel service checks the
            // proof of membership it carries, and serves its calls from this
            // hub's own agents only.
            OPEN_TUNNEL if req.headers().contains_key(RELAY_AUTH_HEADER) => Ok(None),
            OPEN_TUNNEL => match self.callers.get() {
                callers if callers.is_empty() => Ok(None),
                // The caller's keys ride along with each tunneled call.
                callers => callers
                    .grant(
                        req.headers(),
                        req.extensions(),
                        "caller",
                        "a forward tunnel",
                    )
                    .and_then(|keys| {
                        let slot = self.tunnel_slot(&keys, "caller", req.extensions())?;
                        let credential = keys.credential().clone();
                        req.extensions_mut().insert(keys);
                        Ok(Some((
                            slot,
                            Watch::Caller(self.forward.clone(), credential),
                        )))
                    }),
            },
            _ => Ok(None),
        };
        match admitted {
            Err(status) => {
                futures_util::future::Either::Left(std::future::ready(Ok(status.into_http())))
            }
            Ok(Some((slot, watch))) => futures_util::future::Either::Right(Slotted {
                inner: self.inner.call(req),
                slot: Some(slot),
                watch: Some(watch),
            }),
            Ok(None) => futures_util::future::Either::Right(Slotted {
                inner: self.inner.call(req),
                slot: None,
                watch: None,
            }),
        }
    }
}

impl<S> Auth<S> {
    /// A place in the quota of `grant`'s credential for the tunnel it
    /// opens; a refusal is logged (rate-limited) with the peer.
    fn tunnel_slot(
        &self,
        grant: &CallerKeys,
        who: &'static str,
        extensions: &http::Extensions,
    ) -> Result<TunnelSlot, tonic::Status> {
        self.quota
            .take(grant.credential(), grant.max_tunnels(), who)
            .inspect_err(|status| {
                crate::refusals::refused(
                    extensions,
                    who,
                    "max_tunnels",
                    "a tunnel",
                    status.message(),
                );
            })
    }
}

/// What ends an admitted tunnel early.
#[derive(Debug)]
pub(crate) enum Watch {
    /// An agent's tunnel: its session's disconnect.
    Agent(Session),
    /// A caller's forward tunnel: its credential's revocation.
    Caller(Arc<OpenForward>, crate::auth::CredentialId),
}

pin_project_lite::pin_project! {
    /// The response to an admitted request; an opening RPC's body holds
    /// its tunnel's place in its credential's quota until it ends.
    pub(crate) struct Slotted<F> {
        #[pin]
        inner: F,
        slot: Option<TunnelSlot>,
        // What ends the tunnel early.
        watch: Option<Watch>,
    }
}

impl<F> std::future::Future for Slotted<F>
where
    F: std::future::Future<Output = Result<http::Response<Body>, Infallible>>,
{
    type Output = Result<http::Response<Body>, Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = std::task::ready!(this.inner.poll(cx))?;
        let resp = match this.slot.take() {
            Some(slot) => resp.map(|body| Body::new(Held::new(body, Some(slot)))),
            None => resp,
        };
        Poll::Ready(Ok(match this.watch.take() {
            Some(Watch::Caller(forward, credential)) => {
                resp.map(|body| Body::new(forward.watch(credential, body)))
            }
            Some(Watch::Agent(session)) => resp.map(|body| Body::new(session.watch(body))),
            None => resp,
        }))
    }
}
