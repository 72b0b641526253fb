//! Who may hold a key: per `[[agent]]`, `key_policy` says what happens when
//! another agent comes for a key that already has one.
//!
//! - `share` (the default): agents of one key share its calls, as
//!   replicas of a service do. What a user running two agents for
//!   availability, or one agent with `--tunnels 2`, expects; outlier
//!   ejection keeps a broken (or hostile) agent that fails its calls from
//!   drawing them.
//! - `replace`: a new agent of the key, with the same credential, ends the
//!   tunnels of the older one once its own tunnel is ready: a restarted
//!   agent takes over at once from a connection its predecessor left
//!   half-open (which keepalive would only find within a minute).
//! - `refuse`: while an agent holds the key, another is refused
//!   (`ALREADY_EXISTS`): nobody, a leaked token included, can join or take
//!   over the key; a restarted agent waits until its old tunnel is gone.
//!
//! "Agent" means one agent process: the `grpctunnel agent` sends a random
//! `grpctunnel-agent-instance` with each tunnel it opens, so that its own
//! tunnels (`--tunnels N`, reconnects) are never counted as another
//! agent's. A tunnel without that header is an agent of its own.

use crate::{auth::CallerKeys, config::KeyPolicy};
use grpctunnel::{
    reverse::{ReverseTunnel, TunnelEvents},
    ReverseTunnelRegistry, TunnelEvent,
};

/// The header naming the agent process a tunnel comes from.
pub(crate) const INSTANCE_HEADER: &str = "grpctunnel-agent-instance";

/// A random name for this agent process (std's `RandomState` is seeded
/// from the OS's randomness).
pub(crate) fn new_instance() -> String {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    let a = state.hash_one(std::process::id());
    let b = state.hash_one(std::time::SystemTime::now());
    format!("{a:016x}{b:016x}")
}

/// Whether two tunnels come from one agent process.
fn same_agent(a: &http::HeaderMap, b: &http::HeaderMap) -> bool {
    match (a.get(INSTANCE_HEADER), b.get(INSTANCE_HEADER)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// At an agent's opening: with `refuse`, whether another agent holds the
/// key already (`ALREADY_EXISTS`).
pub(crate) fn admit(
    registry: &ReverseTunnelRegistry<String>,
    key: &str,
    grant: &CallerKeys,
    headers: &http::HeaderMap,
) -> Result<(), tonic::Status> {
    if grant.key_policy() != KeyPolicy::Refuse {
        return Ok(());
    }
    let taken = registry
        .tunnels_for(key)
        .iter()
        .any(|t| !same_agent(t.metadata(), headers));
    if taken {
        crate::metrics::limit_hit("key_policy_refuse");
        return Err(tonic::Status::already_exists(format!(
            "key {key:?} is held by another agent (key_policy = \"refuse\")"
        )));
    }
    Ok(())
}

/// Applies the key policies as tunnels open, until the registry is gone:
/// `replace` ends the older agent's tunnels; `refuse` ends a tunnel that
/// won a race with another agent's (both admitted before either was ready).
pub(crate) async fn enforce(
    registry: ReverseTunnelRegistry<String>,
    mut events: TunnelEvents<String>,
) {
    use futures_util::StreamExt;
    while let Some(event) = events.next().await {
        let TunnelEvent::Opened(new) = event else {
            continue;
        };
        let Some(grant) = new.extensions().get::<CallerKeys>() else {
            continue;
        };
        let others: Vec<ReverseTunnel<String>> = registry
            .tunnels_for(new.key())
            .into_iter()
            .filter(|t| t.id() != new.id() && !same_agent(t.metadata(), new.metadata()))
            .collect();
        match grant.key_policy() {
            KeyPolicy::Share => {}
            KeyPolicy::Replace => {
                for old in others.iter().filter(|t| {
                    t.extensions()
                        .get::<CallerKeys>()
                        .is_some_and(|g| g.credential() == grant.credential())
                }) {
                    tracing::info!(key = %old.key(), tunnel = old.id(), by = new.id(), "agent replaced by a newer one of its credential (key_policy = \"replace\")");
                    old.channel().close();
                }
            }
            KeyPolicy::Refuse => {
                // The older agent keeps the key.
                if others.iter().any(|t| t.id() < new.id()) {
                    tracing::warn!(key = %new.key(), tunnel = new.id(), "agent refused: another holds the key (key_policy = \"refuse\")");
                    new.channel().close();
                }
            }
        }
    }
}
