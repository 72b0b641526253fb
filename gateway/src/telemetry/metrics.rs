//! The hub's operations surface: Prometheus `/metrics` and `/healthz` on
//! an admin port, and the metrics the hub records.
//!
//! | Metric | Kind | Labels |
//! |---|---|---|
//! | `grpctunnel_agents_connected` | gauge | |
//! | `grpctunnel_tunnels` | gauge | `key` |
//! | `grpc_server_handled_total` | counter | `grpc_service`, `grpc_method`, `grpc_code`, `key` |
//! | `grpc_server_handling_seconds` | histogram | `grpc_service`, `grpc_method`, `key` |
//! | `grpctunnel_received_bytes_total` | counter | `key` (request bytes from callers, as sent) |
//! | `grpctunnel_sent_bytes_total` | counter | `key` (response bytes to callers, as sent) |
//! | `grpctunnel_auth_failures_total` | counter | `who` (agent, caller), `reason` |
//! | `grpctunnel_limit_hits_total` | counter | `limit`: the hub flag that refused something (`max_waiters`, `max_connections`, `handshake_timeout`, `max_health_watches`) |
//! | `grpctunnel_tasks_alive` | gauge | (the hub's Tokio tasks: a leak shows here) |
//!
//! Label values are bounded, whatever callers send (each new value is a
//! series the hub keeps):
//!
//! - `key`: a key some `[[agent]]` of the config may register; any other
//!   key a caller names is `other`.
//! - `grpc_service`, `grpc_method`: the call's path (`/pkg.Service/Method`)
//!   once some call to it succeeded (an agent serves it), at most 1,000 of
//!   them; until then, and for paths not of that form or longer than 128
//!   bytes, both `other`.
//! - `grpc_code`: the status code's name as gRPC spells it (`OK`,
//!   `Unavailable`, ...); `Canceled` also when the caller went away
//!   without one, and `Unknown` for anything else an agent sends.
//!
//! The call metrics follow go-grpc-prometheus, whose names existing gRPC
//! dashboards and alerts already chart (`sum by (grpc_code)
//! (rate(grpc_server_handled_total[1m]))`), rather than OpenTelemetry's
//! RPC conventions (numeric `rpc_grpc_status_code`, milliseconds), which
//! fewer Prometheus dashboards use; `key` is added. go-grpc-prometheus's
//! `grpc_type` label is left out: a hub that relays bytes cannot tell a
//! unary call from a stream without the service's schema.
//!
//! Latencies are histograms with fixed buckets (not summaries, whose
//! memory grows with the values seen: calling 500 keys grew a hub by
//! 1.5 MiB a round in `cluster_scale.rs`).

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Instant,
};

use axum::{body::Body, routing::get, Router};
use bytes::Bytes;
use grpctunnel::ReverseTunnelRegistry;
use http_body::Frame;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pin_project_lite::pin_project;

use crate::{
    access_log::{AccessLog, Line},
    call_series::{KeySeries, MethodSeries, CODES},
    call_stats::{Call, CallStats, Summary, LATENCY_BUCKETS},
    Failure,
};

/// Most distinct `method` label values.
const MAX_METHODS: usize = 1000;

/// The label values calls may create (see the module docs): shared by
/// every call of the hub.
#[derive(Debug, Clone, Default)]
pub(crate) struct Labels(Arc<LabelSets>);

#[derive(Debug, Default)]
struct LabelSets {
    /// Keys some agent may register (replaced on a reload).
    keys: std::sync::RwLock<Arc<HashSet<String>>>,
    /// Methods some call succeeded on.
    methods: Mutex<HashSet<String>>,
    /// The calls of the last minute, by the same labels.
    stats: CallStats,
    /// The metrics' handles, by `key` label (emptied on a reload).
    series: std::sync::RwLock<HashMap<String, Arc<KeySeries>>>,
}

impl Labels {
    /// Labels for the keys agents may register.
    pub(crate) fn new(keys: impl IntoIterator<Item = String>) -> Self {
        Self(Arc::new(LabelSets {
            keys: std::sync::RwLock::new(Arc::new(keys.into_iter().collect())),
            methods: Mutex::default(),
            stats: CallStats::default(),
            series: Default::default(),
        }))
    }

    /// The calls of the last minute for keys starting with `prefix`, by
    /// key and method.
    pub(crate) fn last_minute(&self, prefix: &str) -> Vec<Summary> {
        self.0.stats.snapshot(prefix)
    }

    /// The keys agents may register from now on (a reload).
    pub(crate) fn set_keys(&self, keys: impl IntoIterator<Item = String>) {
        *self.0.keys.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(keys.into_iter().collect());
        // Keys no longer configured fall to `other` from now on.
        self.0
            .series
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The series of `key`'s label: the key when configured, else `other`.
    fn series(&self, key: &str) -> Arc<KeySeries> {
        let label = {
            let keys = self.0.keys.read().unwrap_or_else(|p| p.into_inner());
            if keys.contains(key) {
                key
            } else {
                "other"
            }
        };
        if let Some(series) = self
            .0
            .series
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(label)
        {
            return series.clone();
        }
        self.0
            .series
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(label.to_owned())
            .or_insert_with(|| Arc::new(KeySeries::new(label)))
            .clone()
    }

    /// The method series of a call to `path` that ended with `code`: the
    /// path's own once a call to it succeeded, else `other`.
    fn method_series(&self, key: &KeySeries, path: &str, code: &str) -> Arc<MethodSeries> {
        match key.known(path) {
            Some(series) => series,
            None => key.method(self.method(path, code)),
        }
    }

    /// The label of `path` for a call that ended with `code`.
    fn method(&self, path: &str, code: &str) -> String {
        let label = method_label(path);
        if label == "other" {
            return label;
        }
        let mut methods = self.0.methods.lock().unwrap_or_else(|p| p.into_inner());
        if methods.contains(&label) {
            return label;
        }
        if code == "0" && methods.len() < MAX_METHODS {
            methods.insert(label.clone());
            return label;
        }
        "other".to_owned()
    }
}

/// The `grpc_code` label: the name of status code `code` (`0` to `16`),
/// `Canceled` for `cancelled` (the caller went away), else `Unknown`.
fn code_label(code: &str) -> &'static str {
    CODE_NAMES[code_index(code)]
}

/// The status code `code` stands for: itself (`0` to `16`), `1` (cancelled)
/// for `cancelled`, else `2` (unknown).
fn code_index(code: &str) -> usize {
    match code.parse::<usize>() {
        Ok(n) if n < CODES => n,
        _ if code == "cancelled" => 1,
        _ => 2,
    }
}

/// gRPC's names of its status codes, as go-grpc-prometheus labels them.
const CODE_NAMES: [&str; CODES] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Installs the Prometheus recorder for this process.
pub(crate) fn install() -> Result<PrometheusHandle, Failure> {
    // Gauges not set for 5 minutes (a key whose agents left) are dropped,
    // so churning keys do not grow the scrape forever.
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .map_err(|e| Failure::Run(format!("metrics: {e}")))?
        .idle_timeout(
            metrics_util::MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(300)),
        )
        .install_recorder()
        .map_err(|e| Failure::Run(format!("metrics: {e}")))?;
    // The recorder keeps every histogram sample (each call's latency) until
    // upkeep drains it into the summaries: without this, a process nobody
    // scrapes grows with every call. Every 5 s, as the exporter's own
    // listener does.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// The hub's `/metrics` and `/healthz`.
pub(crate) fn admin_router(
    handle: PrometheusHandle,
    registry: ReverseTunnelRegistry<String>,
    cluster: Option<grpctunnel::cluster::Cluster>,
    draining: Arc<AtomicBool>,
) -> Router {
    let previous = Mutex::new(HashSet::new());
    let render = move || {
        record_tunnels(&registry, &previous);
        if let Some(cluster) = &cluster {
            metrics::counter!("grpctunnel_cluster_refused_entries_total")
                .absolute(cluster.refused_entries());
        }
        handle.render()
    };
    let health = move || {
        if draining.load(Ordering::Relaxed) {
            (http::StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else {
            (http::StatusCode::OK, "ok")
        }
    };
    endpoints(render, health)
}

/// `/metrics` (what `render` returns) and `/healthz` (what `health`
/// says): the admin port of the hub and of the agent.
pub(crate) fn endpoints(
    render: impl Fn() -> String + Send + Sync + 'static,
    health: impl Fn() -> (http::StatusCode, &'static str) + Send + Sync + 'static,
) -> Router {
    let render = Arc::new(render);
    let health = Arc::new(health);
    let metrics = move || {
        let render = render.clone();
        async move { render() }
    };
    let healthz = move || {
        let health = health.clone();
        async move { health() }
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
}

/// Serves `app` in plaintext on `listener` (a loopback address) until
/// `stop` resolves.
pub(crate) async fn serve_plain(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Failure> {
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .map_err(|e| Failure::Run(format!("admin port: {e}")))
}

/// Admin addresses follow the hub's rule: loopback only for now.
pub(crate) fn check_admin(addr: SocketAddr) -> Result<(), Failure> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(Failure::Usage(format!(
            "refusing to serve the admin port on {addr}: it has no authentication; use a loopback address"
        )))
    }
}

/// The gauges read at scrape time: tunnels (in all, and by key: a key
/// whose tunnels are gone reads 0 once, then its series idles out) and the
/// runtime's tasks alive.
fn record_tunnels(registry: &ReverseTunnelRegistry<String>, previous: &Mutex<HashSet<String>>) {
    let tunnels = registry.tunnels();
    metrics::gauge!("grpctunnel_agents_connected").set(tunnels.len() as f64);
    metrics::gauge!("grpctunnel_tasks_alive").set(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as f64,
    );
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for t in &tunnels {
        *by_key.entry(t.key().as_str()).or_default() += 1;
    }
    let mut previous = previous.lock().unwrap_or_else(|p| p.into_inner());
    for gone in previous.iter().filter(|k| !by_key.contains_key(k.as_str())) {
        metrics::gauge!("grpctunnel_tunnels", "key" => gone.clone()).set(0.0);
    }
    for (key, n) in &by_key {
        metrics::gauge!("grpctunnel_tunnels", "key" => (*key).to_owned()).set(*n as f64);
    }
    *previous = by_key.keys().map(|k| (*k).to_owned()).collect();
}

/// Counts a limit that refused something: `limit` names its flag.
pub(crate) fn limit_hit(limit: &'static str) {
    metrics::counter!("grpctunnel_limit_hits_total", "limit" => limit).increment(1);
}

/// Counts a refused credential: `who` is `agent` or `caller`.
pub(crate) fn auth_failure(who: &'static str, reason: &'static str) {
    metrics::counter!("grpctunnel_auth_failures_total", "who" => who, "reason" => reason)
        .increment(1);
}

/// The `method` label of a call's path.
fn method_label(path: &str) -> String {
    let well_formed = path.len() <= 128
        && path.starts_with('/')
        && path[1..].split('/').count() == 2
        && path[1..].split('/').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_')
        });
    if well_formed {
        path.to_owned()
    } else {
        "other".to_owned()
    }
}

/// Records a call's outcome once: its gRPC status code and duration. It
/// holds the caller's permit for the call (its limit of calls in flight)
/// until then.
#[derive(Debug)]
pub(crate) struct CallRecord {
    labels: Labels,
    /// The series of the call's `key` label.
    series: Arc<KeySeries>,
    path: String,
    start: Instant,
    permit: Option<crate::limit::CallPermit>,
    done: bool,
    /// Request bytes, counted by the request body.
    received: Arc<AtomicU64>,
    /// Response bytes.
    sent: u64,
    /// Counted in the metrics (a call another hub relayed here is not:
    /// that hub counted it).
    metered: bool,
    /// Its access-log line, when the hub writes them.
    access: Option<Box<(AccessLog, Line)>>,
    /// Its span, when the process exports traces.
    span: Option<crate::trace::CallSpan>,
}

impl CallRecord {
    pub(crate) fn start(
        labels: &Labels,
        key: &str,
        path: &str,
        permit: Option<crate::limit::CallPermit>,
    ) -> Self {
        Self {
            labels: labels.clone(),
            series: labels.series(key),
            path: path.to_owned(),
            start: Instant::now(),
            permit,
            done: false,
            received: Arc::default(),
            sent: 0,
            metered: true,
            access: None,
            span: None,
        }
    }

    /// The call's span ends with it.
    pub(crate) fn trace(&mut self, span: crate::trace::CallSpan) {
        self.span = Some(span);
    }

    /// A call recorded only for its access-log line or span, not counted:
    /// one another hub relayed here (that hub counts it), or an agent's
    /// call with no admin port.
    pub(crate) fn unmetered(labels: &Labels, key: &str, path: &str) -> Self {
        let mut record = Self::start(labels, key, path, None);
        record.metered = false;
        record
    }

    /// The call gets a line in `log` when it ends; `line` holds what is
    /// known now (caller, key, method, peer, where it came from).
    pub(crate) fn log_to(&mut self, log: &AccessLog, line: Line) {
        self.access = Some(Box::new((log.clone(), line)));
    }

    /// Where the call went, for its access-log line.
    pub(crate) fn served_by(&mut self, by: Option<&grpctunnel::reverse::ServedBy>) {
        use grpctunnel::reverse::ServedBy;
        if let Some((_, line)) = self.access.as_deref_mut() {
            match by {
                Some(ServedBy::Tunnel(id)) => line.tunnel_id = Some(*id),
                Some(ServedBy::Replica(url)) => line.relayed_to = url.clone(),
                _ => {}
            }
        }
        if let (Some(span), Some(by)) = (&self.span, by) {
            span.set(match by {
                ServedBy::Tunnel(id) => {
                    opentelemetry::KeyValue::new("grpctunnel.tunnel_id", *id as i64)
                }
                ServedBy::Replica(url) => {
                    opentelemetry::KeyValue::new("grpctunnel.relayed_to", url.clone())
                }
                _ => opentelemetry::KeyValue::new("grpctunnel.served_by", "other"),
            });
        }
    }

    /// The call ended with `code` (a gRPC status code, or a word).
    pub(crate) fn finish(&mut self, code: &str) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        self.permit = None;
        let seconds = self.start.elapsed().as_secs_f64();
        if let Some(mut span) = self.span.take() {
            span.end(code);
        }
        if let Some(access) = self.access.take() {
            let (log, mut line) = *access;
            line.status = code_label(code).to_owned();
            line.duration_ms = seconds * 1e3;
            line.bytes_received = self.received.load(Ordering::Relaxed);
            line.bytes_sent = self.sent;
            log.write(line);
        }
        if !self.metered {
            return;
        }
        let method = self.labels.method_series(&self.series, &self.path, code);
        self.labels.0.stats.record(Call {
            key: &self.series.key,
            method: &method.label,
            code: code_label(code),
            seconds,
            bytes_received: self.received.load(Ordering::Relaxed),
            bytes_sent: self.sent,
        });
        method.record(code_index(code), code_label(code), seconds);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // Dropped before its end: the caller went away.
        self.finish("cancelled");
    }
}

/// The status code of a trailers (or trailers-only headers) block.
pub(crate) fn code_of(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

pin_project! {
    /// A body whose data bytes are counted (the counter resolved once, not
    /// per frame); a response body also records its call when its
    /// trailers, an error or its end pass.
    pub(crate) struct Metered {
        #[pin]
        inner: Body,
        bytes: metrics::Counter,
        record: Option<CallRecord>,
        // A request body's count, for its call's record.
        received: Option<Arc<AtomicU64>>,
    }
}

impl Metered {
    /// A caller's request body: bytes received for `record`'s key.
    pub(crate) fn request(inner: Body, record: &CallRecord) -> Self {
        Self {
            inner,
            bytes: record.series.received.clone(),
            record: None,
            received: Some(record.received.clone()),
        }
    }

    /// A response body toward the caller: bytes sent, and the call's end.
    pub(crate) fn response(inner: Body, record: CallRecord) -> Self {
        Self {
            inner,
            bytes: record.series.sent.clone(),
            record: Some(record),
            received: None,
        }
    }
}

impl http_body::Body for Metered {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Ok(Some(data))) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let n = data.len() as u64;
            this.bytes.increment(n);
            if let Some(received) = this.received {
                received.fetch_add(n, Ordering::Relaxed);
            }
            if let Some(record) = this.record.as_mut() {
                record.sent += n;
            }
        }
        if let Some(record) = this.record {
            match &frame {
                Some(Ok(f)) => {
                    if let Some(code) = f.trailers_ref().and_then(code_of) {
                        record.finish(&code);
                    }
                }
                Some(Err(_)) => record.finish("error"),
                None => record.finish("no-status"),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::{code_label, method_label};
    use crate::call_series::service_and_method;

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_label("0"), "OK");
        assert_eq!(code_label("14"), "Unavailable");
        assert_eq!(code_label("16"), "Unauthenticated");
        assert_eq!(code_label("cancelled"), "Canceled");
        for other in ["17", "-1", "", "ok"] {
            assert_eq!(code_label(other), "Unknown", "{other}");
        }
        assert_eq!(
            service_and_method("/grpc.testing.TestService/UnaryCall"),
            (
                "grpc.testing.TestService".to_owned(),
                "UnaryCall".to_owned()
            )
        );
        assert_eq!(
            service_and_method("other"),
            ("other".to_owned(), "other".to_owned())
        );
    }

    #[test]
    fn only_well_formed_paths_become_method_labels() {
        assert_eq!(
            method_label("/grpc.testing.TestService/UnaryCall"),
            "/grpc.testing.TestService/UnaryCall"
        );
        for junk in [
            "/a/b/c",
            "nope",
            "/svc/",
            "/a b/c",
            &format!("/a/{}", "x".repeat(200)),
        ] {
            assert_eq!(method_label(junk), "other", "{junk}");
        }
    }
}
