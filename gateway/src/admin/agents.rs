//! The admin API's view of agent tunnels: a row per tunnel, and the
//! listing's order and pages.

use std::time::{SystemTime, UNIX_EPOCH};

use grpctunnel::reverse::ReverseTunnel;
use serde::Serialize;

use super::pb;
use crate::{
    auth::CallerKeys,
    session::{Session, AGENT_VERSION_HEADER},
};

/// An agent as `grpctunnel agents --json` prints it and the dashboard
/// reads it.
#[derive(Debug, Serialize)]
pub(crate) struct AgentJson<'a> {
    pub(crate) key: &'a str,
    pub(crate) tunnel_id: u64,
    pub(crate) hub: &'a str,
    pub(crate) peer: &'a str,
    pub(crate) credential: &'a str,
    pub(crate) connected_unix_ms: i64,
    pub(crate) protocol_revision: u32,
    pub(crate) agent_version: &'a str,
    pub(crate) calls_in_flight: u64,
    pub(crate) calls: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) bytes_received: u64,
    pub(crate) last_error: &'a str,
    pub(crate) draining: bool,
}

impl<'a> From<&'a pb::Agent> for AgentJson<'a> {
    fn from(a: &'a pb::Agent) -> Self {
        Self {
            key: &a.key,
            tunnel_id: a.tunnel_id,
            hub: &a.hub,
            peer: &a.peer,
            credential: &a.credential,
            connected_unix_ms: a.connected_unix_ms,
            protocol_revision: a.protocol_revision,
            agent_version: &a.agent_version,
            calls_in_flight: a.calls_in_flight,
            calls: a.calls,
            bytes_sent: a.bytes_sent,
            bytes_received: a.bytes_received,
            last_error: &a.last_error,
            draining: a.draining,
        }
    }
}

/// Most agents in one page (the default too).
pub(crate) const MAX_PAGE: usize = 1000;

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// The row of `tunnel`, held by `hub`.
pub(crate) fn row(tunnel: &ReverseTunnel<String>, hub: &str) -> pb::Agent {
    let channel = tunnel.channel();
    let stats = channel.stats();
    let session = tunnel.extensions().get::<Session>();
    let text = |name: &str| {
        tunnel
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    pb::Agent {
        key: tunnel.key().clone(),
        tunnel_id: tunnel.id(),
        peer: tunnel
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        credential: tunnel
            .extensions()
            .get::<CallerKeys>()
            .map(|g| g.name().to_owned())
            .unwrap_or_default(),
        hub: hub.to_owned(),
        connected_unix_ms: session.map(|s| unix_ms(s.since())).unwrap_or_default(),
        protocol_revision: match channel.revision() {
            grpctunnel::Revision::Zero => 0,
            _ => 1,
        },
        agent_version: text(AGENT_VERSION_HEADER),
        calls_in_flight: channel.active_calls() as u64,
        calls: stats.streams_total,
        bytes_sent: stats.bytes_sent,
        bytes_received: stats.bytes_received,
        last_error: if tunnel.is_ejected() {
            "set aside: its agent failed calls in a row with server errors".to_owned()
        } else {
            String::new()
        },
        draining: tunnel.is_draining(),
    }
}

/// Why `tunnel` ended: the operator's reason, or the tunnel's error.
pub(crate) fn why_closed(tunnel: &ReverseTunnel<String>) -> String {
    if let Some(reason) = tunnel
        .extensions()
        .get::<Session>()
        .and_then(Session::reason)
    {
        return format!("disconnected by the hub's operator: {reason}");
    }
    tunnel
        .channel()
        .terminal_error()
        .map(|e| e.chain())
        .unwrap_or_default()
}

/// How rows are ordered: by key, hub, then tunnel id.
fn order(a: &pb::Agent) -> (&str, &str, u64) {
    (&a.key, &a.hub, a.tunnel_id)
}

/// A page of `rows` (sorted by key, hub, then tunnel id) after `token`:
/// the rows, and the token of the next page (empty on the last).
pub(crate) fn page(
    mut rows: Vec<pb::Agent>,
    size: u32,
    token: &str,
) -> Result<(Vec<pb::Agent>, String), tonic::Status> {
    rows.sort_by(|a, b| order(a).cmp(&order(b)));
    let size = match size as usize {
        0 => MAX_PAGE,
        n => n.min(MAX_PAGE),
    };
    let start = if token.is_empty() {
        0
    } else {
        // `<id> <hub> <key>`: ids and hubs hold no space, keys may.
        let mut parts = token.splitn(3, ' ');
        let (id, hub, key) = (parts.next(), parts.next(), parts.next());
        let after = match (id.and_then(|i| i.parse::<u64>().ok()), hub, key) {
            (Some(id), Some(hub), Some(key)) => (key, hub, id),
            _ => {
                return Err(tonic::Status::invalid_argument(
                    "page_token: not one this API gave",
                ))
            }
        };
        rows.partition_point(|a| order(a) <= after)
    };
    let end = (start + size).min(rows.len());
    let next = if end < rows.len() {
        let last = &rows[end - 1];
        format!("{} {} {}", last.tunnel_id, last.hub, last.key)
    } else {
        String::new()
    };
    Ok((rows.drain(start..end).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(key: &str, id: u64) -> pb::Agent {
        pb::Agent {
            key: key.to_owned(),
            tunnel_id: id,
            ..Default::default()
        }
    }

    #[test]
    fn pages_follow_on_from_their_token() {
        let rows: Vec<_> = (0..5).map(|i| agent(&format!("k {}", i % 2), i)).collect();
        let (first, next) = page(rows.clone(), 2, "").expect("page");
        assert_eq!(
            first.iter().map(|a| a.tunnel_id).collect::<Vec<_>>(),
            [0, 2]
        );
        let (second, next) = page(rows.clone(), 2, &next).expect("page");
        assert_eq!(
            second.iter().map(|a| a.tunnel_id).collect::<Vec<_>>(),
            [4, 1]
        );
        let (last, next) = page(rows.clone(), 2, &next).expect("page");
        assert_eq!(last.iter().map(|a| a.tunnel_id).collect::<Vec<_>>(), [3]);
        assert!(next.is_empty());
        assert_eq!(
            page(rows, 0, "nope").expect_err("bad token").code(),
            tonic::Code::InvalidArgument
        );
    }
}
