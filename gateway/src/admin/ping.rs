//! `Ping`: a round trip from the hub, through the key's tunnel (and the
//! relay hop to the hub that holds it, in a cluster), to the agent, which
//! answers `grpctunnel.admin.v1.AgentAdmin/Ping` itself after a round trip
//! to its upstream.

use std::time::{Duration, Instant};

use grpctunnel::{reverse::ServedBy, ReverseTunnelRegistry};
use tonic::{Request, Response, Status};

use super::pb::{self, agent_admin_client::AgentAdminClient};

/// The agent's service's path prefix, which callers may not call.
pub(crate) const AGENT_ADMIN_PREFIX: &str = "/grpctunnel.admin.v1.AgentAdmin/";

/// Longest a ping may take, every leg.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest the agent waits for its upstream's answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// The hub's side: pings an agent of `key`; `hub` names this hub.
pub(crate) async fn ping(
    registry: &ReverseTunnelRegistry<String>,
    hub: &str,
    key: &str,
) -> Result<pb::PingResponse, Status> {
    let mut client = AgentAdminClient::new(registry.get(key));
    let mut req = Request::new(pb::AgentPingRequest {});
    req.set_timeout(PING_TIMEOUT);
    let started = Instant::now();
    let resp = client.ping(req).await?;
    let round_trip = started.elapsed().as_secs_f64();
    let (relayed, holder) = match resp.extensions().get::<ServedBy>() {
        Some(ServedBy::Replica(url)) => (true, url.clone()),
        _ => (false, hub.to_owned()),
    };
    let agent = resp.into_inner();
    Ok(pb::PingResponse {
        hub: holder,
        relayed,
        hub_round_trip_seconds: round_trip,
        upstream_seconds: agent.upstream_seconds,
        upstream_status: agent.upstream_status,
        agent_version: agent.version,
    })
}

/// The agent's side: answers pings with its version and a round trip to
/// its upstream.
#[derive(Clone)]
pub(crate) struct AgentPing {
    upstream: tonic::transport::Channel,
}

impl AgentPing {
    pub(crate) fn new(upstream: tonic::transport::Channel) -> Self {
        Self { upstream }
    }

    /// As a service for the agent's calls.
    pub(crate) fn server(self) -> pb::agent_admin_server::AgentAdminServer<Self> {
        pb::agent_admin_server::AgentAdminServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::agent_admin_server::AgentAdmin for AgentPing {
    async fn ping(
        &self,
        _: Request<pb::AgentPingRequest>,
    ) -> Result<Response<pb::AgentPingResponse>, Status> {
        use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
        let mut health = HealthClient::new(self.upstream.clone());
        let mut req = Request::new(HealthCheckRequest::default());
        req.set_timeout(UPSTREAM_TIMEOUT);
        let started = Instant::now();
        let answer = tokio::time::timeout(UPSTREAM_TIMEOUT, health.check(req)).await;
        let upstream_seconds = started.elapsed().as_secs_f64();
        let upstream_status = match answer {
            Ok(Ok(_)) => "OK".to_owned(),
            // Any status is an answer: the upstream is there.
            Ok(Err(status)) if !is_transport(&status) => format!("{:?}", status.code()),
            Ok(Err(status)) => format!("unreachable: {}", status.message()),
            Err(_) => format!("no answer within {UPSTREAM_TIMEOUT:?}"),
        };
        Ok(Response::new(pb::AgentPingResponse {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            upstream_seconds,
            upstream_status,
        }))
    }
}

/// Whether `status` is the channel's own failure to reach the upstream,
/// not the upstream's answer.
fn is_transport(status: &Status) -> bool {
    use std::error::Error as _;
    status.code() == tonic::Code::Unavailable
        && status
            .source()
            .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some())
}
