//! The live dashboard at `/` on the hub's admin port: one page, served
//! from the binary with no external asset (no CDN, no font, no script
//! from elsewhere), readable on a phone. It shows this hub's agents
//! (searchable), calls per second, error rate and p50/p99 per key and
//! method over the last minute, recent disconnects, and the hubs of the
//! cluster.
//!
//! The page reads `/api/state` once, then follows `/api/events`:
//! server-sent events carrying the same state, sent when an agent
//! connects, leaves or drains (at most every 250 ms) and every 2 s for
//! the call figures. Dashboards open at once share the admin API's bound
//! on watchers.

use std::{convert::Infallible, time::Duration};

use axum::{
    extract::State,
    response::{
        sse::{Event, KeepAlive, Sse},
        Html, IntoResponse, Response,
    },
    routing::get,
    Router,
};
use futures_util::{Stream, StreamExt};
use serde::Serialize;

use super::{
    agents::{unix_ms, AgentJson},
    service::{AdminApi, Disconnect},
};

/// The page.
const PAGE: &str = include_str!("dashboard.html");

/// How often the state is sent with no agent event.
const EVERY: Duration = Duration::from_secs(2);

/// How long agent events are gathered into one update.
const COALESCE: Duration = Duration::from_millis(250);

/// The dashboard's routes.
pub(crate) fn router(api: AdminApi) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/state", get(state))
        .route("/api/events", get(events))
        .with_state(api)
}

async fn page() -> impl IntoResponse {
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing but this page's own inline style and script.
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        ],
        Html(PAGE),
    )
}

/// What the page shows.
#[derive(Serialize)]
struct Snapshot<'a> {
    hub: &'a str,
    draining: bool,
    unix_ms: i64,
    window_seconds: u32,
    hubs: Vec<String>,
    agents: Vec<AgentJson<'a>>,
    methods: Vec<MethodJson>,
    disconnects: Vec<Disconnect>,
}

#[derive(Serialize)]
struct MethodJson {
    key: String,
    method: String,
    calls: u64,
    errors: u64,
    calls_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// The state as JSON text.
async fn snapshot(api: &AdminApi) -> String {
    let rows = api.local_agents("");
    let window = crate::call_stats::WINDOW_SECS;
    let methods = api
        .last_minute()
        .into_iter()
        .map(|s| {
            let calls: u64 = s.codes.iter().map(|(_, n)| n).sum();
            let ok = s
                .codes
                .iter()
                .find(|(c, _)| *c == "OK")
                .map_or(0, |(_, n)| *n);
            MethodJson {
                key: s.key,
                method: s.method,
                calls,
                errors: calls - ok,
                calls_per_second: calls as f64 / f64::from(window),
                p50_ms: s.p50 * 1e3,
                p99_ms: s.p99 * 1e3,
            }
        })
        .collect();
    let state = Snapshot {
        hub: api.hub(),
        draining: api.is_draining(),
        unix_ms: unix_ms(std::time::SystemTime::now()),
        window_seconds: window,
        hubs: api.hubs().await,
        agents: rows.iter().map(AgentJson::from).collect(),
        methods,
        disconnects: api.recent_disconnects(),
    };
    serde_json::to_string(&state).unwrap_or_else(|_| "{}".to_owned())
}

async fn state(State(api): State<AdminApi>) -> Response {
    let text = snapshot(&api).await;
    ([(http::header::CONTENT_TYPE, "application/json")], text).into_response()
}

async fn events(State(api): State<AdminApi>) -> Response {
    let permit = match api.watcher() {
        Ok(permit) => permit,
        Err(status) => {
            return (
                http::StatusCode::TOO_MANY_REQUESTS,
                status.message().to_owned(),
            )
                .into_response()
        }
    };
    Sse::new(updates(api, permit))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The state after each burst of agent events, and every [`EVERY`].
fn updates(
    api: AdminApi,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let events = api.subscribe();
    let tick = tokio::time::interval(EVERY);
    futures_util::stream::unfold(
        (api, events, tick, permit),
        |(api, mut events, mut tick, permit)| async move {
            tokio::select! {
                _ = tick.tick() => {}
                event = events.next() => {
                    event?;
                    // Gather the burst: a fleet reconnecting is one update.
                    let until = tokio::time::Instant::now() + COALESCE;
                    while let Ok(Some(_)) = tokio::time::timeout_at(until, events.next()).await {}
                    tick.reset();
                }
            }
            let data = snapshot(&api).await;
            Some((
                Ok(Event::default().event("state").data(data)),
                (api, events, tick, permit),
            ))
        },
    )
}
