//! The per-call metrics' handles, resolved once per series.
//!
//! `metrics::counter!(name, labels...)` builds its key (owned label
//! strings) and looks it up in the recorder's registry every time: four
//! series a call made that a quarter of the hub's allocations per call
//! under load (27 of 98, counted with uprobes on the allocator). A call now
//! finds its key's series by the key label and its method's by the path,
//! without allocating; the registry is asked once per series, and the
//! handles are the registry's own (the same counters `/metrics` renders).
//!
//! Bounds are the labels' (`metrics.rs`): a [`KeySeries`] per `key` label
//! (the configured keys and `other`), a [`MethodSeries`] per method label
//! it saw (at most 1,000 and `other`), 17 status codes each.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
};

/// gRPC's status codes, 0 to 16: the `grpc_code` label's values.
pub(crate) const CODES: usize = 17;

/// The series of one `key` label: its byte counters and its methods'.
#[derive(Debug)]
pub(crate) struct KeySeries {
    /// The `key` label: a configured key, or `other`.
    pub(crate) key: String,
    /// `grpctunnel_received_bytes_total{key}`.
    pub(crate) received: metrics::Counter,
    /// `grpctunnel_sent_bytes_total{key}`.
    pub(crate) sent: metrics::Counter,
    /// By method label.
    methods: Mutex<HashMap<String, Arc<MethodSeries>>>,
}

impl KeySeries {
    pub(crate) fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            received: metrics::counter!("grpctunnel_received_bytes_total", "key" => key.to_owned()),
            sent: metrics::counter!("grpctunnel_sent_bytes_total", "key" => key.to_owned()),
            methods: Mutex::default(),
        }
    }

    /// The series of `path` if a call already gave it its method label.
    pub(crate) fn known(&self, path: &str) -> Option<Arc<MethodSeries>> {
        self.lock().get(path).cloned()
    }

    /// The series of method label `label` (`/pkg.Service/Method` or
    /// `other`), made on first use.
    pub(crate) fn method(&self, label: String) -> Arc<MethodSeries> {
        let mut methods = self.lock();
        if let Some(series) = methods.get(&label) {
            return series.clone();
        }
        let series = Arc::new(MethodSeries::new(&self.key, &label));
        methods.insert(label, series.clone());
        series
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<MethodSeries>>> {
        self.methods.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The series of one method label of one key.
#[derive(Debug)]
pub(crate) struct MethodSeries {
    /// The method label.
    pub(crate) label: String,
    service: String,
    method: String,
    key: String,
    /// `grpc_server_handling_seconds{grpc_service, grpc_method, key}`.
    handling: metrics::Histogram,
    /// `grpc_server_handled_total{..., grpc_code}`, by code, made when a
    /// call first ends with it.
    handled: [OnceLock<metrics::Counter>; CODES],
}

impl MethodSeries {
    fn new(key: &str, label: &str) -> Self {
        let (service, method) = service_and_method(label);
        Self {
            label: label.to_owned(),
            handling: metrics::histogram!(
                "grpc_server_handling_seconds",
                "grpc_service" => service.clone(),
                "grpc_method" => method.clone(),
                "key" => key.to_owned()
            ),
            service,
            method,
            key: key.to_owned(),
            handled: Default::default(),
        }
    }

    /// Counts a call that ended with status `code` (`0..CODES`, named
    /// `name`) after `seconds`.
    pub(crate) fn record(&self, code: usize, name: &'static str, seconds: f64) {
        let code = code.min(CODES - 1);
        self.handled[code]
            .get_or_init(|| {
                metrics::counter!(
                    "grpc_server_handled_total",
                    "grpc_service" => self.service.clone(),
                    "grpc_method" => self.method.clone(),
                    "grpc_code" => name,
                    "key" => self.key.clone()
                )
            })
            .increment(1);
        self.handling.record(seconds);
    }
}

/// The `grpc_service` and `grpc_method` labels of a `method` label.
pub(crate) fn service_and_method(label: &str) -> (String, String) {
    match label.strip_prefix('/').and_then(|p| p.split_once('/')) {
        Some((service, method)) => (service.to_owned(), method.to_owned()),
        None => ("other".to_owned(), "other".to_owned()),
    }
}
