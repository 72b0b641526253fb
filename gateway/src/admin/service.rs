//! `grpctunnel.admin.v1.Admin` on the hub: the agents it holds, their
//! events, ending one, draining the hub, the last minute's calls.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use futures_util::{stream, Stream, StreamExt};
use grpctunnel::{reverse::ReverseTunnel, ReverseTunnelRegistry, TunnelEvent};
use tonic::{Request, Response, Status};

use super::{
    agents::{page, row, unix_ms, why_closed},
    pb::{self, agent_event::Kind},
};
use crate::{metrics::Labels, session::Session};

/// Most `WatchAgents` streams open at once.
const MAX_WATCHERS: usize = 64;

/// Longest drain grace an operator may ask for.
const MAX_GRACE: Duration = Duration::from_secs(3600);

/// The hub's admin service.
#[derive(Clone)]
pub(crate) struct AdminApi {
    registry: ReverseTunnelRegistry<String>,
    /// This hub, as rows name it.
    hub: String,
    labels: Labels,
    /// Set by a drain (or SIGTERM): `/healthz` answers 503.
    draining: Arc<AtomicBool>,
    health: tonic_health::server::HealthReporter,
    /// The drain grace when a request gives none (`--drain`).
    grace: Duration,
    watchers: Arc<tokio::sync::Semaphore>,
    /// The cluster whose members `ListAgents` may ask.
    cluster: Option<grpctunnel::cluster::Cluster>,
    /// The last tunnels that closed, newest last.
    disconnects: Arc<std::sync::Mutex<std::collections::VecDeque<Disconnect>>>,
}

/// A tunnel that closed, for the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Disconnect {
    pub(crate) key: String,
    pub(crate) tunnel_id: u64,
    pub(crate) peer: String,
    pub(crate) reason: String,
    pub(crate) unix_ms: i64,
}

/// Disconnects the dashboard remembers.
const RECENT_DISCONNECTS: usize = 50;

impl AdminApi {
    pub(crate) fn new(
        registry: ReverseTunnelRegistry<String>,
        hub: String,
        labels: Labels,
        draining: Arc<AtomicBool>,
        health: tonic_health::server::HealthReporter,
        grace: Duration,
    ) -> Self {
        let disconnects = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        tokio::spawn(remember_disconnects(
            registry.subscribe(),
            Arc::downgrade(&disconnects),
        ));
        Self {
            disconnects,
            registry,
            hub,
            labels,
            draining,
            health,
            grace,
            watchers: Arc::new(tokio::sync::Semaphore::new(MAX_WATCHERS)),
            cluster: None,
        }
    }

    /// This hub's name, as rows give it.
    pub(crate) fn hub(&self) -> &str {
        &self.hub
    }

    /// Whether the hub drains.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// This hub's agents whose keys start with `prefix`.
    pub(crate) fn local_agents(&self, prefix: &str) -> Vec<pb::Agent> {
        let mut rows: Vec<_> = self
            .registry
            .tunnels()
            .iter()
            .filter(|t| t.key().starts_with(prefix))
            .map(|t| row(t, &self.hub))
            .collect();
        rows.sort_by(|a, b| (&a.key, a.tunnel_id).cmp(&(&b.key, b.tunnel_id)));
        rows
    }

    /// The last minute's calls, by key and method.
    pub(crate) fn last_minute(&self) -> Vec<crate::call_stats::Summary> {
        self.labels.last_minute("")
    }

    /// The tunnels that closed lately, newest last.
    pub(crate) fn recent_disconnects(&self) -> Vec<Disconnect> {
        self.disconnects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    /// The hubs of the cluster (just this one outside a cluster).
    pub(crate) async fn hubs(&self) -> Vec<String> {
        match &self.cluster {
            Some(cluster) => cluster
                .members()
                .await
                .unwrap_or_else(|_| vec![self.hub.clone()]),
            None => vec![self.hub.clone()],
        }
    }

    /// Agent events from now on.
    pub(crate) fn subscribe(&self) -> grpctunnel::reverse::TunnelEvents<String> {
        self.registry.subscribe()
    }

    /// A place among the live watchers (watches and dashboards).
    pub(crate) fn watcher(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.watchers.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "too many agent watches open on this hub (max {MAX_WATCHERS})"
            ))
        })
    }

    /// `ListAgents` may cover every member of `cluster`.
    pub(crate) fn in_cluster(mut self, cluster: grpctunnel::cluster::Cluster) -> Self {
        self.cluster = Some(cluster);
        self
    }

    /// The agents of every other member whose keys start with `prefix`,
    /// and the members that did not answer (asked all at once).
    async fn members_agents(&self, prefix: &str) -> Result<(Vec<pb::Agent>, Vec<String>), Status> {
        let Some(cluster) = &self.cluster else {
            return Ok((Vec::new(), Vec::new()));
        };
        let members = cluster.members().await.map_err(|e| {
            Status::unavailable(format!(
                "cannot list the cluster's hubs from its store: {e}"
            ))
        })?;
        let asked = members
            .iter()
            .filter(|m| m.as_str() != cluster.advertise())
            .map(|member| async move {
                (
                    member,
                    super::members::agents_of(cluster, member, prefix).await,
                )
            });
        let mut agents = Vec::new();
        let mut unreachable = Vec::new();
        for (member, answer) in futures_util::future::join_all(asked).await {
            match answer {
                Ok(theirs) => agents.extend(theirs),
                Err(why) => {
                    tracing::warn!(hub = %member, %why, "a hub did not list its agents");
                    unreachable.push(member.clone());
                }
            }
        }
        Ok((agents, unreachable))
    }

    /// The snapshot a watch starts with (and resyncs with), by key.
    fn snapshot(&self, prefix: &str) -> Vec<pb::AgentEvent> {
        let now = unix_ms(SystemTime::now());
        let mut events: Vec<_> = self
            .local_agents(prefix)
            .into_iter()
            .map(|a| event(Kind::Snapshot, Some(a), now, String::new()))
            .collect();
        events.push(event(Kind::SnapshotEnd, None, now, String::new()));
        events
    }

    /// The events one registry event becomes for a watcher of `prefix`.
    fn on_event(&self, prefix: &str, e: TunnelEvent<String>) -> Vec<pb::AgentEvent> {
        let now = unix_ms(SystemTime::now());
        let one = |kind, t: &ReverseTunnel<String>, reason: String| {
            if t.key().starts_with(prefix) {
                vec![event(kind, Some(row(t, &self.hub)), now, reason)]
            } else {
                Vec::new()
            }
        };
        match e {
            TunnelEvent::Opened(t) => one(Kind::Connected, &t, String::new()),
            TunnelEvent::Draining(t) => one(Kind::Draining, &t, String::new()),
            TunnelEvent::Closed(t) => one(Kind::Disconnected, &t, why_closed(&t)),
            TunnelEvent::Lagged(_) => {
                let mut events = vec![event(Kind::Resync, None, now, String::new())];
                events.extend(self.snapshot(prefix));
                events
            }
            _ => Vec::new(),
        }
    }
}

/// Keeps the last [`RECENT_DISCONNECTS`] closed tunnels while the API
/// lives.
async fn remember_disconnects(
    mut events: grpctunnel::reverse::TunnelEvents<String>,
    into: std::sync::Weak<std::sync::Mutex<std::collections::VecDeque<Disconnect>>>,
) {
    while let Some(e) = events.next().await {
        let TunnelEvent::Closed(t) = e else { continue };
        let Some(into) = into.upgrade() else { return };
        let mut recent = into.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == RECENT_DISCONNECTS {
            recent.pop_front();
        }
        recent.push_back(Disconnect {
            key: t.key().clone(),
            tunnel_id: t.id(),
            peer: t.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
            reason: why_closed(&t),
            unix_ms: unix_ms(SystemTime::now()),
        });
    }
}

fn event(kind: Kind, agent: Option<pb::Agent>, unix_ms: i64, reason: String) -> pb::AgentEvent {
    pb::AgentEvent {
        kind: kind as i32,
        agent,
        unix_ms,
        reason,
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<pb::AgentEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let req = request.into_inner();
        let mut rows = self.local_agents(&req.key_prefix);
        let mut unreachable_hubs = Vec::new();
        if req.cluster {
            let (theirs, unreachable) = self.members_agents(&req.key_prefix).await?;
            rows.extend(theirs);
            unreachable_hubs = unreachable;
        }
        let (agents, next_page_token) = page(rows, req.page_size, &req.page_token)?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents,
            next_page_token,
            unreachable_hubs,
        }))
    }

    type WatchAgentsStream = Events;

    async fn watch_agents(
        &self,
        request: Request<pb::WatchAgentsRequest>,
    ) -> Result<Response<Events>, Status> {
        let permit = self.watcher()?;
        let prefix = request.into_inner().key_prefix;
        // Subscribed before the snapshot: nothing falls between them.
        let events = self.registry.subscribe();
        let snapshot = self.snapshot(&prefix);
        let api = self.clone();
        let live = events.flat_map(move |e| {
            let _held = &permit;
            stream::iter(api.on_event(&prefix, e))
        });
        let all = stream::iter(snapshot).chain(live).map(Ok);
        Ok(Response::new(Box::pin(all)))
    }

    async fn disconnect_agent(
        &self,
        request: Request<pb::DisconnectAgentRequest>,
    ) -> Result<Response<pb::DisconnectAgentResponse>, Status> {
        use pb::disconnect_agent_request::Target;
        let req = request.into_inner();
        let tunnels = self.registry.tunnels();
        let chosen: Vec<_> = match &req.target {
            Some(Target::TunnelId(id)) => tunnels.iter().filter(|t| t.id() == *id).collect(),
            Some(Target::Key(key)) => tunnels.iter().filter(|t| t.key() == key).collect(),
            None => {
                return Err(Status::invalid_argument(
                    "name a tunnel_id or a key to disconnect",
                ))
            }
        };
        if chosen.is_empty() {
            return Err(Status::not_found(
                "no agent tunnel on this hub matches (tunnel ids are per hub)",
            ));
        }
        let mut disconnected = 0;
        for tunnel in chosen {
            tracing::warn!(
                key = %tunnel.key(),
                tunnel = tunnel.id(),
                reason = %req.reason,
                reconnect = req.reconnect,
                "agent tunnel disconnected by the admin API"
            );
            match tunnel.extensions().get::<Session>() {
                Some(session) => {
                    if session.disconnect(&req.reason, req.reconnect) {
                        disconnected += 1;
                    }
                }
                None => {
                    tunnel.channel().close();
                    disconnected += 1;
                }
            }
        }
        Ok(Response::new(pb::DisconnectAgentResponse { disconnected }))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let grace = match request.into_inner().grace_seconds {
            0 => self.grace,
            s => Duration::from_secs(s.into()).min(MAX_GRACE),
        };
        tracing::warn!(?grace, "draining, as the admin API asked");
        self.draining.store(true, Ordering::Relaxed);
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let tunnels = self.registry.drain(grace).await;
        tracing::info!(tunnels, "drained: no agent tunnel left");
        Ok(Response::new(pb::DrainResponse {
            tunnels: tunnels as u32,
        }))
    }

    async fn ping(
        &self,
        request: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        let key = request.into_inner().key;
        if key.is_empty() {
            return Err(Status::invalid_argument("name the key to ping"));
        }
        super::ping::ping(&self.registry, &self.hub, &key)
            .await
            .map(Response::new)
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let prefix = request.into_inner().key_prefix;
        let methods = self
            .labels
            .last_minute(&prefix)
            .into_iter()
            .map(|s| pb::MethodStats {
                key: s.key,
                method: s.method,
                calls_by_code: s
                    .codes
                    .into_iter()
                    .map(|(code, n)| (code.to_owned(), n))
                    .collect(),
                p50_seconds: s.p50,
                p99_seconds: s.p99,
                bytes_received: s.bytes_received,
                bytes_sent: s.bytes_sent,
            })
            .collect();
        Ok(Response::new(pb::StatsResponse {
            window_seconds: crate::call_stats::WINDOW_SECS,
            methods,
        }))
    }
}
