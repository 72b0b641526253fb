//! Traces (`--otlp-endpoint`, hub and agent): each call gets a span on
//! every process it crosses, exported over OTLP/gRPC, continuing the
//! caller's W3C `traceparent`: the hub's span is a child of the caller's;
//! it passes its own on, so a relaying hub's span and then the agent's are
//! children of the previous hop's, and the upstream receives the agent's
//! span as its parent.
//!
//! Spans are batched and exported every second by the SDK's own thread;
//! one that the collector cannot take is dropped by the SDK (counted in
//! its own logs), never a call delayed.

use std::time::Duration;

use opentelemetry::{
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _},
    Context, KeyValue,
};
use opentelemetry_sdk::{
    propagation::TraceContextPropagator,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider},
    Resource,
};

use crate::Failure;

/// How often finished spans are sent.
const EXPORT_EVERY: Duration = Duration::from_secs(1);

/// The process's tracer.
#[derive(Clone)]
pub(crate) struct Tracing {
    tracer: SdkTracer,
    provider: SdkTracerProvider,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing").finish_non_exhaustive()
    }
}

impl Tracing {
    /// Exports spans of `service` (`grpctunnel-hub`, `grpctunnel-agent`)
    /// to the OTLP/gRPC collector at `endpoint`. Call it on the runtime:
    /// the exporter's channel lives there.
    pub(crate) fn to(endpoint: &str, service: &'static str) -> Result<Self, Failure> {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| Failure::Usage(format!("--otlp-endpoint {endpoint}: {e}")))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(EXPORT_EVERY)
                    .build(),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        Ok(Self {
            tracer: provider.tracer("grpctunnel"),
            provider,
        })
    }

    /// Starts the span `name` of a call: a child of the request's
    /// `traceparent` (a new trace without one), which it replaces with its
    /// own for the next hop.
    pub(crate) fn start(
        &self,
        name: &'static str,
        headers: &mut http::HeaderMap,
        attributes: Vec<KeyValue>,
    ) -> CallSpan {
        let propagator = TraceContextPropagator::new();
        let parent = propagator.extract(&Headers(headers));
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        propagator.inject_context(&cx, &mut HeadersMut(headers));
        CallSpan(Some(cx))
    }

    /// Sends the spans still waiting (at exit).
    pub(crate) fn shutdown(&self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// The attributes of a call to `path` (`/pkg.Service/Method`) for `key`.
pub(crate) fn call_attributes(path: &str, key: &str) -> Vec<KeyValue> {
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
        KeyValue::new("grpctunnel.key", key.to_owned()),
    ]
}

/// A call's span, ended with its status ([`end`](Self::end)), or as
/// cancelled when dropped first.
#[derive(Debug)]
pub(crate) struct CallSpan(Option<Context>);

impl CallSpan {
    /// Adds an attribute.
    pub(crate) fn set(&self, attribute: KeyValue) {
        if let Some(cx) = &self.0 {
            cx.span().set_attribute(attribute);
        }
    }

    /// Ends the span with the call's `code` (a gRPC status code, or a word
    /// for a call with none).
    pub(crate) fn end(&mut self, code: &str) {
        let Some(cx) = self.0.take() else { return };
        let span = cx.span();
        let numeric = code.parse::<i64>().unwrap_or(2);
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", numeric));
        if numeric != 0 {
            span.set_status(Status::error(format!("gRPC status {code}")));
        }
        span.end();
    }
}

impl Drop for CallSpan {
    fn drop(&mut self) {
        self.end("1");
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}
