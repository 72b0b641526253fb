//! Ending the forward tunnels of revoked callers: a caller's forward tunnel
//! outlives the check made when it opened, so the hub keeps each open one
//! with its credential, and a reload (SIGHUP) that revokes the credential
//! ends the tunnel: its response ends with `UNAUTHENTICATED` (the library
//! then tears the tunnel down, as when a client goes away).

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::CredentialId,
    ending::{EndWith, Ending},
};

/// What a revoked caller's forward tunnel ends with.
const REVOKED: &str = "the credential this forward tunnel opened with was revoked";

/// The callers' forward tunnels open now.
#[derive(Debug, Default)]
pub(crate) struct OpenForward {
    next: AtomicU64,
    tunnels: Mutex<HashMap<u64, (CredentialId, CancellationToken)>>,
}

/// One forward tunnel's entry, removed when dropped (its response over).
#[derive(Debug)]
pub(crate) struct Entry {
    id: u64,
    owner: Arc<OpenForward>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.owner
            .tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl OpenForward {
    /// Keeps a forward tunnel of `credential`; its token is cancelled when
    /// the credential is revoked.
    fn open(self: &Arc<Self>, credential: CredentialId) -> (Entry, CancellationToken) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        self.tunnels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (credential, token.clone()));
        let entry = Entry {
            id,
            owner: self.clone(),
        };
        (entry, token)
    }

    /// Ends the tunnels whose credential `valid` no longer admits; how many.
    pub(crate) fn revoke(&self, valid: impl Fn(&CredentialId) -> bool) -> usize {
        let tunnels = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = 0;
        for (credential, token) in tunnels.values() {
            if !valid(credential) && !token.is_cancelled() {
                token.cancel();
                ended += 1;
            }
        }
        ended
    }

    /// `body`, the response of a forward tunnel of `credential`, ended with
    /// `UNAUTHENTICATED` once the credential is revoked.
    pub(crate) fn watch<B>(self: &Arc<Self>, credential: CredentialId, body: B) -> Revocable<B> {
        let (entry, token) = self.open(credential);
        Ending::new(body, token, entry)
    }
}

/// A forward tunnel's response body, ended when its credential is revoked
/// (its entry removed when the body goes).
pub(crate) type Revocable<B> = Ending<B, Entry>;

impl EndWith for Entry {
    fn trailers(&self) -> http::HeaderMap {
        tracing::warn!("forward tunnel closed: its caller's credential was revoked");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("16"));
        trailers.insert("grpc-message", http::HeaderValue::from_static(REVOKED));
        trailers
    }
}
