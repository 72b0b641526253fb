//! The agent's admin port (`grpctunnel agent --admin 127.0.0.1:9091`):
//! Prometheus `/metrics` and `/healthz`, as the hub's.
//!
//! | Metric | Kind | Labels |
//! |---|---|---|
//! | `grpctunnel_agent_tunnels_open` | gauge | `hub` (as given in `--hub`) |
//! | `grpc_server_handled_total` | counter | `grpc_service`, `grpc_method`, `grpc_code`, `key` (the calls hubs sent) |
//! | `grpc_server_handling_seconds` | histogram | `grpc_service`, `grpc_method`, `key` |
//! | `grpctunnel_received_bytes_total`, `grpctunnel_sent_bytes_total` | counter | `key` (request and response bytes) |
//!
//! `/healthz` answers 200 while a tunnel to some hub is open, else 503:
//! an agent that reaches no hub is not serving.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use crate::{
    metrics::{code_of, CallRecord, Labels, Metered},
    Failure,
};

/// The agent's metrics, recorded only with `--admin`.
#[derive(Clone)]
pub(crate) struct AgentMetrics {
    labels: Labels,
    key: String,
    /// Tunnels open now, to any hub.
    open: Arc<AtomicUsize>,
}

impl AgentMetrics {
    /// Serves the admin port on `addr` (loopback only, as the hub's) for
    /// the agent of `key`; prints `ADMIN <address>` on stdout.
    pub(crate) async fn serve(addr: SocketAddr, key: &str) -> Result<Self, Failure> {
        crate::metrics::check_admin(addr)?;
        let handle = crate::metrics::install()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Failure::Run(format!("cannot listen on {addr}: {e}")))?;
        let local = listener
            .local_addr()
            .map_err(|e| Failure::Run(format!("admin listener: {e}")))?;
        tracing::info!(addr = %local, "admin port listening");
        println!("ADMIN {local}");
        let open = Arc::new(AtomicUsize::new(0));
        let serving = open.clone();
        let health = move || {
            if serving.load(Ordering::Relaxed) > 0 {
                (http::StatusCode::OK, "ok")
            } else {
                (
                    http::StatusCode::SERVICE_UNAVAILABLE,
                    "no tunnel to any hub is open",
                )
            }
        };
        tokio::spawn(crate::metrics::serve_plain(
            listener,
            crate::metrics::endpoints(move || handle.render(), health),
            std::future::pending(),
        ));
        Ok(Self {
            labels: Labels::new([key.to_owned()]),
            key: key.to_owned(),
            open,
        })
    }

    /// A tunnel to `hub` opened (`true`) or closed.
    pub(crate) fn tunnel(&self, hub: &str, open: bool) {
        let gauge = metrics::gauge!("grpctunnel_agent_tunnels_open", "hub" => hub.to_owned());
        if open {
            gauge.increment(1.0);
            self.open.fetch_add(1, Ordering::Relaxed);
        } else {
            gauge.decrement(1.0);
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// A call a hub sent: its request body counted, and its record, for
    /// [`finish`](Self::finish).
    pub(crate) fn start(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> (http::Request<tonic::body::Body>, CallRecord) {
        let record = CallRecord::start(&self.labels, &self.key, req.uri().path(), None);
        let req = req.map(|body| {
            tonic::body::Body::new(Metered::request(axum::body::Body::new(body), &record))
        });
        (req, record)
    }

    /// The call's response: recorded when its status passes (at once for
    /// a trailers-only response).
    pub(crate) fn finish(
        resp: http::Response<tonic::body::Body>,
        mut record: CallRecord,
    ) -> http::Response<tonic::body::Body> {
        if let Some(code) = code_of(resp.headers()) {
            record.finish(&code);
            return resp;
        }
        resp.map(|body| {
            tonic::body::Body::new(Metered::response(axum::body::Body::new(body), record))
        })
    }
}
