//! Traces across every hop (`--otlp-endpoint` on hubs and agent): one
//! trace spans caller -> hub -> relaying hub... -> agent -> upstream, each
//! span the child of the hop before. A real OTLP/gRPC receiver (the
//! collector's trace service, served by the test), real hub and agent
//! processes, a real `redis-server`, and an upstream that records the
//! `traceparent` it receives.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{cluster::*, recorder::Recorder, store::Store, *};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};

/// A span as the receiver got it: its service, name, ids (hex).
#[derive(Debug, Clone)]
struct Got {
    service: String,
    trace: String,
    id: String,
    parent: String,
}

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let mut got = self.0.lock().expect("not poisoned");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(s),
                    ) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    got.push(Got {
                        service: service.clone(),
                        trace: hex(&span.trace_id),
                        id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Starts the receiver; its URL and what it got.
async fn receiver() -> (String, Receiver) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got = Receiver::default();
    let serve = TraceServiceServer::new(got.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(serve)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), got)
}

#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_caller_hub_relay_hub_agent_and_upstream() {
    let store = Store::start().await;
    bounded(async {
        let (otlp, got) = receiver().await;
        let upstream = Recorder::start().await;
        let dir = temp_dir();
        let files = cluster_files(&dir, &["traced-0".to_owned()]);
        let (port_a, port_b) = (free_port(), free_port());
        let extra = ["--otlp-endpoint", otlp.as_str()];
        let (_a, a) = cluster_hub_with(
            &files,
            &store.url(),
            port_a,
            &format!("http://127.0.0.1:{port_a}"),
            &extra,
        )
        .await;
        let (_b, b) = cluster_hub_with(
            &files,
            &store.url(),
            port_b,
            &format!("http://127.0.0.1:{port_b}"),
            &extra,
        )
        .await;
        let token = dir.join("agent.token");
        std::fs::write(&token, TOKEN).expect("token");
        let mut agent = Process::spawn(&[
            "agent",
            "--hub",
            &format!("http://{b}"),
            "--key",
            "traced-0",
            "--token-file",
            &token.display().to_string(),
            "--upstream",
            &format!("http://{}", upstream.addr),
            "--otlp-endpoint",
            &otlp,
        ]);
        agent.log_line("tunnel open").await;

        // The caller's own span: trace 4bf9...4736, span 00f0...02b7.
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let caller_span = "00f067aa0ba902b7";
        let mut c = caller(a, "traced-0", true).await;
        let mut req = hello("traced");
        req.metadata_mut().insert(
            "traceparent",
            format!("00-{trace}-{caller_span}-01")
                .parse()
                .expect("ascii"),
        );
        // The recorder answers UNAVAILABLE: the call's outcome is not what
        // is tested, its trace is.
        let _ = c.unary(req).await;

        let spans = grpctunnel_testing::eventually(
            "the hub's, relaying hub's and agent's spans",
            Duration::from_secs(15),
            || async {
                let got = got.0.lock().expect("not poisoned").clone();
                let of = |service: &str| -> Vec<Got> {
                    got.iter()
                        .filter(|s| s.trace == trace && s.service == service)
                        .cloned()
                        .collect()
                };
                let (hubs, agents) = (of("grpctunnel-hub"), of("grpctunnel-agent"));
                (hubs.len() == 2 && agents.len() == 1).then_some((hubs, agents))
            },
        )
        .await;
        let (hubs, agents) = spans;
        let entry = hubs
            .iter()
            .find(|s| s.parent == caller_span)
            .unwrap_or_else(|| panic!("no hub span whose parent is the caller's: {hubs:?}"));
        let relay = hubs
            .iter()
            .find(|s| s.parent == entry.id)
            .unwrap_or_else(|| panic!("no relaying hub span under the entry hub's: {hubs:?}"));
        let agent_span = &agents[0];
        assert_eq!(
            agent_span.parent, relay.id,
            "the agent's span is the relay hop's child"
        );
        let seen = upstream.drain();
        let traceparent = seen
            .iter()
            .find_map(|r| r.headers.get("traceparent"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("the upstream got a traceparent");
        assert_eq!(
            traceparent,
            format!("00-{trace}-{}-01", agent_span.id),
            "the upstream's parent is the agent's span"
        );
        println!(
            "caller {caller_span} -> hub {} -> hub {} -> agent {} -> upstream",
            entry.id, relay.id, agent_span.id
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}
