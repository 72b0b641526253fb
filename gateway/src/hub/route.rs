//! Routing a caller's gRPC call to an agent by key: the key comes from a
//! request header (`grpctunnel-key` unless configured), or else from the
//! `:authority` (`plant-7.hub.example` with `--authority-suffix
//! hub.example`); with `grpctunnel-wait: true` a call waits, up to its own
//! deadline and at most `--max-wait`, for an agent of that key to connect
//! (at most `--max-waiters` calls wait at once); without it, a call
//! still waits (briefly) for an agent whose tunnel is opening. Several agents with one
//! key share the calls (the registry picks per call). A call with no key
//! to `grpc.health.v1.Health` is the hub's own health service, with at
//! most `--max-health-watches` `Watch` calls open at once (it needs no
//! credential).

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use axum::body::Body;
use grpctunnel::ReverseTunnelRegistry;

use crate::{
    access_log::{header_text, AccessLog, Line},
    admin::ping::AGENT_ADMIN_PREFIX,
    auth::{Live, CALLER_HEADER, RELAY_AUTH_HEADER, RELAY_KEY_HEADER},
    compression::{accepts_gzip, deflate_response, inflate_request},
    metrics::{code_of, CallRecord, Labels, Metered},
    trace::{call_attributes, Tracing},
};
use tower::{Service, ServiceExt};

/// Header that asks a call to wait for its agent.
pub(crate) const WAIT_HEADER: &str = "grpctunnel-wait";

/// The hub's own services (health), for calls that name no agent.
pub(crate) type Local =
    tower::util::BoxCloneSyncService<http::Request<Body>, http::Response<Body>, Infallible>;

/// The hub's service for every call that is not a tunnel of its own.
#[derive(Clone)]
pub(crate) struct RouteByKey {
    registry: ReverseTunnelRegistry<String>,
    key_header: http::HeaderName,
    /// `.hub.example`: `plant-7.hub.example` routes to key `plant-7`.
    authority_suffix: Option<String>,
    local: Local,
    /// When any are listed, calls must present a caller credential bound
    /// to the key.
    callers: Live,
    /// Largest message; compressed ones are inflated up to it.
    max_message_size: usize,
    /// Longest a call waits for its agent.
    max_wait: std::time::Duration,
    /// The metric label values calls may create.
    labels: Labels,
    /// Where each call's line goes, if anywhere.
    access_log: Option<AccessLog>,
    /// Where each call's span goes, if anywhere.
    tracing: Option<Tracing>,
    /// A permit for each call waiting for its agent.
    waiters: Arc<tokio::sync::Semaphore>,
    max_waiters: usize,
    /// A permit for each health `Watch` open.
    watches: Arc<tokio::sync::Semaphore>,
    max_health_watches: usize,
}

impl std::fmt::Debug for RouteByKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteByKey")
            .field("key_header", &self.key_header)
            .field("authority_suffix", &self.authority_suffix)
            .finish_non_exhaustive()
    }
}

/// How the hub names and admits a call's agent: [`RouteByKey::new`].
pub(crate) struct RouteConfig {
    /// The header naming the key (`grpctunnel-key` unless configured).
    pub(crate) key_header: http::HeaderName,
    /// `hub.example`: `plant-7.hub.example` routes to key `plant-7`.
    pub(crate) authority_suffix: Option<String>,
    /// When any are listed, calls must present a caller credential bound
    /// to the key.
    pub(crate) callers: Live,
    /// Largest message; compressed ones are inflated up to it.
    pub(crate) max_message_size: usize,
    /// Longest a call waits for its agent (`--max-wait`).
    pub(crate) max_wait: std::time::Duration,
    /// Most calls waiting for their agents at once (`--max-waiters`).
    pub(crate) max_waiters: usize,
    /// Most health `Watch` calls open at once (`--max-health-watches`).
    pub(crate) max_health_watches: usize,
    /// The metric label values calls may create.
    pub(crate) labels: Labels,
    /// `--access-log`.
    pub(crate) access_log: Option<AccessLog>,
    /// `--otlp-endpoint`.
    pub(crate) tracing: Option<Tracing>,
}

impl RouteByKey {
    /// Routes calls to `registry`'s agents as `config` says; calls that
    /// name no agent go to `local` (the hub's health service).
    pub(crate) fn new(
        registry: ReverseTunnelRegistry<String>,
        local: Local,
        config: RouteConfig,
    ) -> Self {
        let RouteConfig {
            key_header,
            authority_suffix,
            callers,
            max_message_size,
            max_wait,
            max_waiters,
            max_health_watches,
            labels,
            access_log,
            tracing,
        } = config;
        let authority_suffix = authority_suffix.map(|s| format!(".{}", s.trim_start_matches('.')));
        Self {
            registry,
            key_header,
            authority_suffix,
            local,
            callers,
            max_message_size,
            max_wait,
            labels,
            access_log,
            tracing,
            waiters: Arc::new(tokio::sync::Semaphore::new(max_waiters)),
            max_waiters,
            watches: Arc::new(tokio::sync::Semaphore::new(
                max_health_watches.min(tokio::sync::Semaphore::MAX_PERMITS),
            )),
            max_health_watches,
        }
    }

    /// The key a call names: its key header, or the first label of its
    /// authority under the configured suffix.
    fn key(&self, req: &http::Request<Body>) -> Option<String> {
        if let Some(key) = req
            .headers()
            .get(&self.key_header)
            .and_then(|v| v.to_str().ok())
        {
            return (!key.is_empty()).then(|| key.to_owned());
        }
        let suffix = self.authority_suffix.as_deref()?;
        let host = match req.uri().host() {
            Some(host) => host.to_owned(),
            None => {
                let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
                host.split(':').next().unwrap_or_default().to_owned()
            }
        };
        let key = host.to_ascii_lowercase().strip_suffix(suffix)?.to_owned();
        (!key.is_empty() && !key.contains('.')).then_some(key)
    }

    /// A call to the hub's own health service; a `Watch` holds one of
    /// `--max-health-watches` permits until its response ends.
    fn health(&self, req: http::Request<Body>) -> BoxFuture {
        let local = self.local.clone();
        if req.uri().path() != HEALTH_WATCH {
            return Box::pin(local.oneshot(req));
        }
        let Ok(permit) = self.watches.clone().try_acquire_owned() else {
            let max = self.max_health_watches;
            crate::log_budget::limit_refused(
                "max_health_watches",
                crate::refusals::peer(req.extensions()),
                &format!("health watch refused: {max} are open (--max-health-watches)"),
            );
            return answer(tonic::Status::resource_exhausted(format!(
                "{max} health watches are already open (the hub's --max-health-watches)"
            )));
        };
        Box::pin(async move {
            let resp = local.oneshot(req).await?;
            Ok(resp.map(|body| Body::new(crate::limit::Held::new(body, Some(permit)))))
        })
    }
}

/// The health service's streaming call, which stays open.
const HEALTH_WATCH: &str = "/grpc.health.v1.Health/Watch";

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
        let Some(key) = self.key(&req) else {
            if req.uri().path().starts_with("/grpc.health.v1.Health/") {
                return self.health(req);
            }
            return answer(tonic::Status::invalid_argument(format!(
                "missing {} header: which agent should answer?",
                self.key_header
            )));
        };
        // The agents' own service is for the hub (`grpctunnel ping`).
        if req.uri().path().starts_with(AGENT_ADMIN_PREFIX) {
            return answer(tonic::Status::permission_denied(
                "grpctunnel.admin.v1.AgentAdmin is the hub's to call, not callers'",
            ));
        }
        // Only the hub names the caller to the upstream; relay headers from
        // a caller mean nothing past the hub (the library took real relays
        // before they got here).
        let headers = req.headers_mut();
        headers.remove(CALLER_HEADER);
        headers.remove(RELAY_AUTH_HEADER);
        headers.remove(RELAY_KEY_HEADER);
        headers.remove(grpctunnel::cluster::RELAY_FROM_HEADER);
        let callers = self.callers.get();
        let permit = if callers.is_empty() {
            None
        } else {
            match callers.check_call(req.headers(), req.extensions(), &key) {
                Ok(admitted) => {
                    admitted.edge_headers(req.headers_mut());
                    Some(admitted.permit)
                }
                Err(status) => return answer(status),
            }
        };
        let wait = req
            .headers_mut()
            .remove(WAIT_HEADER)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let waiting = match wait.then(|| self.waiters.clone().try_acquire_owned()) {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(_)) => {
                let max = self.max_waiters;
                crate::log_budget::limit_refused(
                    "max_waiters",
                    crate::refusals::peer(req.extensions()),
                    &format!(
                        "call for {key:?} refused: {max} calls wait for agents (--max-waiters)"
                    ),
                );
                return answer(tonic::Status::resource_exhausted(format!(
                    "{max} calls already wait for agents (the hub's --max-waiters)"
                )));
            }
        };
        let mut record = CallRecord::start(&self.labels, &key, req.uri().path(), permit);
        if let Some(log) = &self.access_log {
            let line = Line {
                caller: header_text(req.headers(), CALLER_HEADER),
                key: key.clone(),
                ..Line::arriving(&req)
            };
            record.log_to(log, line);
        }
        if let Some(tracing) = &self.tracing {
            let attributes = call_attributes(req.uri().path(), &key);
            record.trace(tracing.start("grpctunnel.hub", req.headers_mut(), attributes));
        }
        let req = req.map(|body| Body::new(Metered::request(body, &record)));
        // A tunnel carries no compressed message: inflate gzip here.
        let req = match inflate_request(req, self.max_message_size) {
            Ok(req) => req,
            Err(status) => {
                record.finish(&(status.code() as i32).to_string());
                return answer(status);
            }
        };
        // In a cluster another hub may hold the key: the channel looks. An
        // agent whose tunnel is opening is waited for by the channel.
        if !wait
            && !self.registry.in_cluster()
            && self.registry.tunnels_for(key.as_str()).is_empty()
            && !self.registry.is_opening(Some(&key))
        {
            let status = tonic::Status::unavailable(format!("no agent connected for key {key:?}"));
            record.finish(&(status.code() as i32).to_string());
            return answer(status);
        }
        let gzip = accepts_gzip(req.headers());
        let registry = self.registry.clone();
        let max_wait = self.max_wait;
        Box::pin(async move {
            // The wait, bounded by --max-wait (the caller's own deadline
            // cancels it sooner); then the call goes to what was found.
            let channel = match waiting {
                None => registry.get(key.as_str()),
                Some(permit) => {
                    let found = tokio::time::timeout(max_wait, registry.wait_for_key(&key)).await;
                    drop(permit);
                    match found {
                        Ok(channel) => channel,
                        Err(_) => {
                            let status = tonic::Status::unavailable(format!(
                                "no agent for key {key:?} within the hub's --max-wait ({max_wait:?})"
                            ));
                            record.finish(&(status.code() as i32).to_string());
                            return Ok(status.into_http());
                        }
                    }
                }
            };
            match channel.oneshot(req).await {
                Ok(resp) => {
                    record.served_by(resp.extensions().get());
                    if let Some(code) = code_of(resp.headers()) {
                        // Trailers-only: the call is over.
                        record.finish(&code);
                        return Ok(resp.map(Body::new));
                    }
                    let resp = resp.map(Body::new);
                    let resp = if gzip { deflate_response(resp) } else { resp };
                    Ok(resp.map(|body| Body::new(Metered::response(body, record))))
                }
                Err(err) => {
                    record.finish(&(tonic::Code::Unavailable as i32).to_string());
                    Ok(
                        tonic::Status::unavailable(format!("agent for key {key:?}: {err}"))
                            .into_http(),
                    )
                }
            }
        })
    }
}
