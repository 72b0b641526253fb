//! The hubs of a cluster, and calls between them that are not relayed
//! calls: an operator's question to every member (the gateway's
//! `ListAgents` on the whole cluster), sent over the relay links and
//! proved as relayed calls are.
//!
//! Each replica publishes, besides its keys, an entry under
//! [`MEMBERS_KEY`], a name no key can take (it holds a NUL byte, which no
//! header value can), renewed with its keys: the live entries of that key
//! are the members. Entries are sealed, so a forged member is ignored.

use super::{seal::Purpose, Cluster, ClusterInner, Entry};
use crate::error::BoxError;

/// The directory key under which every replica is listed.
pub(crate) const MEMBERS_KEY: &str = "\0members";

impl ClusterInner {
    /// This replica's membership entry, to publish with its keys.
    pub(crate) fn member_entry(&self) -> Entry {
        Entry::new(MEMBERS_KEY, self.advertise.clone(), 0)
    }
}

impl Cluster {
    /// The replicas alive in the cluster (their advertised URLs, this one
    /// included once it has published), as the directory lists them now.
    pub async fn members(&self) -> Result<Vec<String>, BoxError> {
        let mut members: Vec<String> = self
            .inner
            .directory
            .lookup(MEMBERS_KEY)
            .await?
            .into_iter()
            .filter(|e| self.inner.admits(e))
            .map(|e| e.replica)
            .collect();
        members.sort();
        members.dedup();
        Ok(members)
    }

    /// A call of `method` (the request's path, `/pkg.Service/Method`) to
    /// the member at `url`: the pooled connection to it, and the proof the
    /// call carries in [`RELAY_AUTH_HEADER`](crate::cluster::RELAY_AUTH_HEADER).
    /// The proof is good for that member and method only, once, within
    /// the relay window; the member checks it with
    /// [`check_member_call`](Self::check_member_call).
    pub fn member_call(
        &self,
        url: &str,
        method: &str,
    ) -> Result<(tonic::transport::Channel, http::HeaderValue), BoxError> {
        let peer = self.inner.peer(url)?;
        let purpose = Purpose::Call {
            key: MEMBERS_KEY,
            method,
        };
        Ok((
            peer.channel(),
            self.inner.sealer.relay_proof(peer.url(), purpose),
        ))
    }

    /// Checks the proof of a call another member made with
    /// [`member_call`](Self::member_call) to `method` (the request's path)
    /// on this replica: `UNAUTHENTICATED` when it is missing, forged, made
    /// for another replica or method, stale, or replayed.
    pub fn check_member_call(
        &self,
        headers: &http::HeaderMap,
        method: &str,
    ) -> Result<(), tonic::Status> {
        let proof = headers.get(crate::server::RELAY_AUTH_HEADER);
        let purpose = Purpose::Call {
            key: MEMBERS_KEY,
            method,
        };
        super::relay::check(&self.inner, proof, purpose, "member call")
    }
}
