//! Span and event names and fields are API: checked by capturing them.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use grpctunnel::TunnelLayer;
use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tracing::{
    field::{Field, Visit},
    span, Event, Subscriber,
};
use tracing_subscriber::{layer::Context, prelude::*, registry::LookupSpan, Layer};

#[derive(Debug, Clone, Default)]
struct Record {
    name: String,
    fields: Vec<(String, String)>,
}

impl Record {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl Visit for Record {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.fields.push((
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        ));
    }
}

/// An event and the names of the spans it happened in, innermost first.
type Scoped = (Record, Vec<String>);

#[derive(Clone, Default)]
struct Capture {
    spans: Arc<Mutex<Vec<Record>>>,
    events: Arc<Mutex<Vec<Scoped>>>,
}

/// Span data kept in the registry's extensions so recorded fields land there.
struct Fields(Record);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut rec = Record {
            name: attrs.metadata().name().to_owned(),
            ..Default::default()
        };
        attrs.record(&mut rec);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Fields(rec));
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(Fields(rec)) = span.extensions_mut().get_mut::<Fields>() {
                values.record(rec);
            }
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(Fields(rec)) = span.extensions().get::<Fields>() {
                self.spans.lock().unwrap().push(rec.clone());
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut rec = Record {
            name: event.metadata().target().to_owned(),
            ..Default::default()
        };
        event.record(&mut rec);
        let scope = ctx
            .event_scope(event)
            .map(|s| s.map(|span| span.name().to_owned()).collect())
            .unwrap_or_default();
        self.events.lock().unwrap().push((rec, scope));
    }
}

#[tokio::test]
async fn tunnels_and_streams_have_spans_with_their_fields() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::registry().with(
        capture
            .clone()
            .with_filter(tracing_subscriber::filter::LevelFilter::DEBUG),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    bounded(async {
        let server = tonic_server(TunnelLayer::new(), Echo::new()).await;
        let tunnel = forward(server.addr).await;
        let mut client = EchoServiceClient::new(tunnel.clone());
        client.unary(EchoRequest::default()).await.expect("unary");
        tunnel.close();
        tunnel.closed().await;
        server.stop().await;
    })
    .await;

    let spans = capture.spans.lock().unwrap().clone();
    let tunnels: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "grpctunnel.tunnel")
        .collect();
    let client = tunnels
        .iter()
        .find(|s| s.get("role") == Some("client"))
        .expect("client tunnel span");
    let server = tunnels
        .iter()
        .find(|s| s.get("role") == Some("server"))
        .expect("server tunnel span");
    for span in [client, server] {
        assert_eq!(span.get("direction"), Some("forward"), "{span:?}");
        assert_eq!(span.get("revision"), Some("1"), "{span:?}");
        assert!(span.get("tunnel_id").is_some(), "{span:?}");
    }
    assert!(
        server
            .get("peer")
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{server:?}"
    );
    let streams: Vec<_> = spans
        .iter()
        .filter(|s| s.name == "grpctunnel.stream")
        .collect();
    assert_eq!(streams.len(), 2, "one stream span per side: {streams:?}");
    for span in streams {
        assert_eq!(span.get("stream_id"), Some("1"));
        assert_eq!(
            span.get("method"),
            Some("/grpctunnel.testing.v1.EchoService/Unary")
        );
    }

    let events = capture.events.lock().unwrap().clone();
    let message = |m: &str| {
        events
            .iter()
            .filter(|(e, _)| e.get("message") == Some(m))
            .collect::<Vec<_>>()
    };
    assert_eq!(message("tunnel open").len(), 2, "{events:?}");
    let opened = message("stream opened");
    assert!(opened
        .iter()
        .any(|(_, scope)| scope.first().map(String::as_str) == Some("grpctunnel.stream")));
    let closed = message("stream closed");
    assert!(
        closed.iter().all(|(e, _)| e.get("code") == Some("0")),
        "{closed:?}"
    );
    assert!(closed.len() >= 2, "closed on both sides: {closed:?}");
}
