//! What the gateway tells of itself: Prometheus metrics, the last
//! minute's call figures, access logs, traces, and rate-limited refusal
//! logs. Leaves: nothing here uses the hub, the agent or the admin API.

pub(crate) mod access_log;
pub(crate) mod call_series;
pub(crate) mod call_stats;
pub(crate) mod log_budget;
pub(crate) mod metrics;
pub(crate) mod refusals;
pub(crate) mod trace;
