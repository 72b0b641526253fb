//! Tunnels per credential: each agent or caller credential may hold at
//! most so many tunnels at once (opening or open), its `max_tunnels` in the
//! config or else `--max-tunnels-per-credential`. So one credential (a
//! leaked token, a broken agent in a reconnect loop, a caller opening
//! forward tunnels it never uses) cannot take the hub's `--max-tunnels`
//! from the others: past its quota it is refused `RESOURCE_EXHAUSTED`,
//! naming the limit, and the refusal is counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::auth::CredentialId;

/// The tunnels each credential holds now.
#[derive(Debug)]
pub(crate) struct TunnelQuota {
    held: Mutex<HashMap<CredentialId, usize>>,
    /// For credentials without a `max_tunnels` of their own.
    default_max: usize,
}

/// One tunnel's place in its credential's quota, given back when dropped
/// (when the tunnel's opening RPC ends).
#[derive(Debug)]
pub(crate) struct TunnelSlot {
    quota: Arc<TunnelQuota>,
    id: CredentialId,
}

impl TunnelQuota {
    pub(crate) fn new(default_max: usize) -> Arc<Self> {
        Arc::new(Self {
            held: Mutex::default(),
            default_max,
        })
    }

    /// A place for one more tunnel of `id`, whose own limit is `max` (else
    /// the default); the status refusing it when the credential holds its
    /// quota already.
    pub(crate) fn take(
        self: &Arc<Self>,
        id: &CredentialId,
        max: Option<usize>,
        who: &str,
    ) -> Result<TunnelSlot, tonic::Status> {
        let max = max.unwrap_or(self.default_max);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(id.clone()).or_default();
        if *n >= max {
            if *n == 0 {
                held.remove(id);
            }
            crate::metrics::limit_hit("max_tunnels_per_credential");
            return Err(tonic::Status::resource_exhausted(format!(
                "this {who} credential already holds {max} tunnels (its max_tunnels, or --max-tunnels-per-credential)"
            )));
        }
        *n += 1;
        Ok(TunnelSlot {
            quota: self.clone(),
            id: id.clone(),
        })
    }

    /// Tunnels `id` holds now.
    #[cfg(test)]
    fn held(&self, id: &CredentialId) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(id).copied().unwrap_or(0)
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut held = self.quota.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_holds_at_most_its_quota_and_gets_places_back() {
        let quota = TunnelQuota::new(2);
        let a = CredentialId::Cert("a".into());
        let b = CredentialId::Cert("b".into());
        let one = quota.take(&a, None, "agent").expect("first");
        let _two = quota.take(&a, None, "agent").expect("second");
        let err = quota.take(&a, None, "agent").expect_err("third");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("max_tunnels"), "{err:?}");
        // Another credential is not affected; its own limit wins.
        let _b = quota.take(&b, Some(1), "agent").expect("b");
        assert!(quota.take(&b, Some(1), "agent").is_err());
        drop(one);
        assert_eq!(quota.held(&a), 1);
        quota.take(&a, None, "agent").expect("a place given back");
    }
}
