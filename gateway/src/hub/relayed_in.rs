//! The calls other hubs relay to this one, logged and traced: the library
//! serves them from this hub's tunnels without passing the hub's routing,
//! so the hub hands it this layer
//! ([`grpctunnel::ReverseTunnelRegistry::relayed_through`]) to write their
//! access-log lines, naming the hub they came from, and their spans. They
//! are not counted in this hub's metrics: the hub they came through counts
//! them.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use grpctunnel::cluster::{RelayedCalls, RELAY_FROM_HEADER, RELAY_KEY_HEADER};
use tower::Service;

use crate::{
    access_log::{header_text, AccessLog, Line},
    metrics::{code_of, CallRecord, Labels, Metered},
    trace::{call_attributes, Tracing},
};

/// Wraps the relayed calls' service in [`RelayedIn`].
#[derive(Clone)]
pub(crate) struct RelayedInLayer {
    pub(crate) log: Option<AccessLog>,
    pub(crate) tracing: Option<Tracing>,
    pub(crate) labels: Labels,
}

impl tower::Layer<RelayedCalls> for RelayedInLayer {
    type Service = RelayedIn;

    fn layer(&self, inner: RelayedCalls) -> RelayedIn {
        RelayedIn {
            inner,
            log: self.log.clone(),
            tracing: self.tracing.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// Relayed calls, each with its access-log line.
#[derive(Clone)]
pub(crate) struct RelayedIn {
    inner: RelayedCalls,
    log: Option<AccessLog>,
    tracing: Option<Tracing>,
    labels: Labels,
}

type Resp = http::Response<tonic::body::Body>;

impl Service<http::Request<tonic::body::Body>> for RelayedIn {
    type Response = Resp;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Resp, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let key = header_text(req.headers(), RELAY_KEY_HEADER);
        let from = header_text(req.headers(), RELAY_FROM_HEADER);
        let path = req.uri().path().to_owned();
        let mut record = CallRecord::unmetered(&self.labels, &key, &path);
        if let Some(tracing) = &self.tracing {
            let mut attributes = call_attributes(&path, &key);
            attributes.push(opentelemetry::KeyValue::new(
                "grpctunnel.relayed_from",
                from.clone(),
            ));
            record.trace(tracing.start("grpctunnel.hub", req.headers_mut(), attributes));
        }
        if let Some(log) = &self.log {
            let line = Line {
                key,
                relayed_from: from,
                ..Line::arriving(&req)
            };
            record.log_to(log, line);
        }
        let req = req.map(|body| {
            tonic::body::Body::new(Metered::request(axum::body::Body::new(body), &record))
        });
        let served = self.inner.call(req);
        Box::pin(async move {
            let resp = served.await?;
            record.served_by(resp.extensions().get());
            if let Some(code) = code_of(resp.headers()) {
                record.finish(&code);
                return Ok(resp);
            }
            Ok(resp.map(|body| {
                tonic::body::Body::new(Metered::response(axum::body::Body::new(body), record))
            }))
        })
    }
}
