//! Proofs of membership: what replicas of a cluster show each other, so
//! that the cluster secret itself never leaves a replica.
//!
//! - A relay tunnel's opening, and a call relayed as plain gRPC, carry
//!   `grpctunnel-relay-auth: v1.<unix ms>.<nonce>.<mac>`: an HMAC-SHA256,
//!   keyed by the secret, over what it is for (a tunnel, or a call of one
//!   key and method), the replica it is sent to, the time and a nonce
//!   never used before. The receiving replica checks the MAC against its
//!   own address, refuses a proof older (or newer) than the window
//!   ([`DEFAULT_RELAY_WINDOW`]) and one whose nonce it has seen: a
//!   captured header is worth nothing at another replica, for another key
//!   or method, twice, or later. Calls in a relay tunnel carry no proof of
//!   their own: the tunnel's opening proved the sender.
//! - A directory entry is sealed: a MAC over its key, replica URL, load
//!   and an expiry on the publishing replica's clock. An entry without a
//!   valid seal (written into the store by someone without the secret) is
//!   never dialled.
//!
//! Replicas' clocks must agree to within the window (NTP does).

use std::{
    collections::{HashSet, VecDeque},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::reverse::cluster::Entry;

/// How long a relay proof is accepted after (or before) the time it
/// names, by default.
pub const DEFAULT_RELAY_WINDOW: Duration = Duration::from_secs(30);

/// Nonces remembered at most; past this, the oldest are forgotten and
/// proofs no newer than them refused (see [`Seen`]).
const SEEN_MAX: usize = 1 << 18;

/// Domain separation: what a MAC is over, so that no proof of one kind
/// passes for another.
const RELAY: &[u8] = b"grpctunnel relay v1";
const ENTRY: &[u8] = b"grpctunnel entry v1";

/// What a relay proof is for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose<'a> {
    /// Opening a relay tunnel.
    Tunnel,
    /// One relayed call of `key`, to `method` (the request's path).
    Call { key: &'a str, method: &'a str },
}

/// Why a relay proof was refused (the status message names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    Missing,
    Malformed,
    /// Outside the window: replayed late, or clocks too far apart.
    Stale,
    /// Not made with this cluster's secret for this replica, key and method.
    Forged,
    /// Its nonce was used already.
    Replayed,
}

impl Refused {
    pub(crate) fn why(self, window: Duration) -> String {
        match self {
            Self::Missing => "no cluster proof".into(),
            Self::Malformed => "a malformed cluster proof".into(),
            Self::Stale => format!(
                "a cluster proof outside its {}s window (replayed, or the replicas' clocks disagree)",
                window.as_secs()
            ),
            Self::Forged => {
                "a cluster proof not made with this cluster's secret for this replica, key and method"
                    .into()
            }
            Self::Replayed => "a cluster proof already used".into(),
        }
    }
}

/// The cluster secret as a MAC key, and the nonces seen.
pub(crate) struct Sealer {
    key: Hmac<Sha256>,
    window: Duration,
    /// Nonces: a random prefix of this process, and a counter.
    prefix: u64,
    counter: AtomicU64,
    seen: Mutex<Seen>,
}

impl Sealer {
    pub(crate) fn new(secret: &[u8], window: Duration) -> Self {
        let mut prefix = [0u8; 8];
        // With no randomness the nonces of two replicas could collide: a
        // relayed call of one refused as replayed at worst, never a
        // forged one admitted.
        let _ = getrandom::fill(&mut prefix);
        Self {
            key: Hmac::new_from_slice(secret).expect("HMAC takes keys of any length"),
            window,
            prefix: u64::from_be_bytes(prefix),
            counter: AtomicU64::new(0),
            seen: Mutex::new(Seen::default()),
        }
    }

    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    pub(crate) fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    fn mac(&self, domain: &[u8], fields: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.key.clone();
        mac.update(domain);
        // Each field with its length first: no two field lists read alike.
        for field in fields {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field);
        }
        mac
    }

    fn relay_fields<'a>(
        target: &'a str,
        purpose: Purpose<'a>,
        time: &'a [u8],
        nonce: &'a [u8],
    ) -> [&'a [u8]; 6] {
        let (kind, key, method): (&[u8], &[u8], &[u8]) = match purpose {
            Purpose::Tunnel => (b"tunnel", b"", b""),
            Purpose::Call { key, method } => (b"call", key.as_bytes(), method.as_bytes()),
        };
        [kind, target.as_bytes(), key, method, time, nonce]
    }

    /// The proof to send with a relay to the replica `target` (its
    /// advertised URL).
    pub(crate) fn relay_proof(&self, target: &str, purpose: Purpose<'_>) -> http::HeaderValue {
        let time = unix_ms().to_string();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nonce = format!("{:016x}{n:016x}", self.prefix);
        let mac = self
            .mac(
                RELAY,
                &Self::relay_fields(target, purpose, time.as_bytes(), nonce.as_bytes()),
            )
            .finalize()
            .into_bytes();
        let value = format!("v1.{time}.{nonce}.{}", URL_SAFE_NO_PAD.encode(mac));
        http::HeaderValue::from_str(&value).expect("ASCII")
    }

    /// Checks a relay proof sent to this replica (`me`, its advertised URL),
    /// and remembers its nonce.
    pub(crate) fn check_relay(
        &self,
        value: Option<&http::HeaderValue>,
        me: &str,
        purpose: Purpose<'_>,
    ) -> Result<(), Refused> {
        let value = value.ok_or(Refused::Missing)?;
        let text = value.to_str().map_err(|_| Refused::Malformed)?;
        let mut parts = text.split('.');
        let (Some("v1"), Some(time), Some(nonce), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let at: u64 = time.parse().map_err(|_| Refused::Malformed)?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Refused::Malformed);
        }
        let mac = URL_SAFE_NO_PAD
            .decode(mac)
            .map_err(|_| Refused::Malformed)?;
        self.mac(
            RELAY,
            &Self::relay_fields(me, purpose, time.as_bytes(), nonce.as_bytes()),
        )
        .verify_slice(&mac)
        .map_err(|_| Refused::Forged)?;
        let now = unix_ms();
        let window = self.window.as_millis() as u64;
        if at.abs_diff(now) > window {
            return Err(Refused::Stale);
        }
        let nonce = u128::from_str_radix(nonce, 16).map_err(|_| Refused::Malformed)?;
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(at, nonce, now, window)
    }

    /// The seal of `entry`, valid until `expiry` (unix ms, this clock).
    fn seal_at(&self, entry: &Entry, expiry: u64) -> String {
        let expiry = expiry.to_string();
        let load = entry.load.to_string();
        let mac = self
            .mac(
                ENTRY,
                &[
                    entry.key.as_bytes(),
                    entry.replica.as_bytes(),
                    load.as_bytes(),
                    expiry.as_bytes(),
                ],
            )
            .finalize()
            .into_bytes();
        format!("{expiry}.{}", URL_SAFE_NO_PAD.encode(mac))
    }

    /// Seals `entry` for `ttl` from now.
    pub(crate) fn seal(&self, entry: &mut Entry, ttl: Duration) {
        entry.seal = self.seal_at(entry, unix_ms() + ttl.as_millis() as u64);
    }

    /// Whether `entry` carries a seal of this cluster, not expired (by more
    /// than the window, for clocks that disagree).
    pub(crate) fn check_entry(&self, entry: &Entry) -> bool {
        let Some((expiry, mac)) = entry.seal.split_once('.') else {
            return false;
        };
        let Ok(mac) = URL_SAFE_NO_PAD.decode(mac) else {
            return false;
        };
        let load = entry.load.to_string();
        let valid = self
            .mac(
                ENTRY,
                &[
                    entry.key.as_bytes(),
                    entry.replica.as_bytes(),
                    load.as_bytes(),
                    expiry.as_bytes(),
                ],
            )
            .verify_slice(&mac)
            .is_ok();
        valid
            && expiry
                .parse::<u64>()
                .is_ok_and(|e| e + self.window.as_millis() as u64 > unix_ms())
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The nonces of the proofs admitted within the window, oldest first. At
/// [`SEEN_MAX`] the oldest is forgotten, and `floor` (its time) keeps its
/// replay out: proofs no newer than it are refused.
#[derive(Default)]
struct Seen {
    order: VecDeque<(u64, u128)>,
    nonces: HashSet<u128>,
    floor: u64,
}

impl Seen {
    fn insert(&mut self, at: u64, nonce: u128, now: u64, window: u64) -> Result<(), Refused> {
        while let Some(&(t, n)) = self.order.front() {
            if t.saturating_add(window) >= now {
                break;
            }
            self.order.pop_front();
            self.nonces.remove(&n);
        }
        if self.nonces.contains(&nonce) {
            return Err(Refused::Replayed);
        }
        if at <= self.floor {
            return Err(Refused::Stale);
        }
        if self.order.len() >= SEEN_MAX {
            if let Some((t, n)) = self.order.pop_front() {
                self.nonces.remove(&n);
                self.floor = self.floor.max(t);
            }
        }
        self.order.push_back((at, nonce));
        self.nonces.insert(nonce);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "http://10.0.0.1:8443";
    const CALL: Purpose<'static> = Purpose::Call {
        key: "k1",
        method: "/a.B/C",
    };

    #[test]
    fn a_relay_proof_is_good_once_for_its_replica_key_and_method() {
        let sealer = Sealer::new(b"a secret of the cluster", DEFAULT_RELAY_WINDOW);
        let proof = sealer.relay_proof(ME, CALL);
        let other_key = Purpose::Call {
            key: "k2",
            method: "/a.B/C",
        };
        let other_method = Purpose::Call {
            key: "k1",
            method: "/a.B/D",
        };
        for (me, purpose) in [
            ("http://10.0.0.2:8443", CALL),
            (ME, other_key),
            (ME, other_method),
            (ME, Purpose::Tunnel),
        ] {
            assert_eq!(
                sealer.check_relay(Some(&proof), me, purpose),
                Err(Refused::Forged)
            );
        }
        let stranger = Sealer::new(b"another secret", DEFAULT_RELAY_WINDOW);
        assert_eq!(
            stranger.check_relay(Some(&proof), ME, CALL),
            Err(Refused::Forged)
        );
        assert_eq!(sealer.check_relay(Some(&proof), ME, CALL), Ok(()));
        assert_eq!(
            sealer.check_relay(Some(&proof), ME, CALL),
            Err(Refused::Replayed)
        );
        assert_eq!(sealer.check_relay(None, ME, CALL), Err(Refused::Missing));
        let bad = http::HeaderValue::from_static("v1.1.2.3");
        assert_eq!(
            sealer.check_relay(Some(&bad), ME, CALL),
            Err(Refused::Malformed)
        );
    }

    #[test]
    fn a_relay_proof_outside_its_window_is_stale() {
        let sealer = Sealer::new(b"s", Duration::from_millis(0));
        let old = sealer.relay_proof(ME, Purpose::Tunnel);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            sealer.check_relay(Some(&old), ME, Purpose::Tunnel),
            Err(Refused::Stale)
        );
    }

    #[test]
    fn a_full_nonce_memory_refuses_what_it_forgot() {
        let mut seen = Seen::default();
        for i in 0..SEEN_MAX as u128 {
            seen.insert(1_000, i, 1_000, 30_000).expect("fresh");
        }
        // The next one forgets nonce 0 and refuses its time from then on.
        seen.insert(1_001, u128::MAX, 1_001, 30_000).expect("fresh");
        assert_eq!(seen.insert(1_000, 0, 1_001, 30_000), Err(Refused::Stale));
        assert_eq!(seen.order.len(), SEEN_MAX);
        // Past the window, all are forgotten.
        seen.insert(40_000, 0, 40_000, 30_000).expect("fresh");
        assert_eq!(seen.order.len(), 1);
    }

    #[test]
    fn entries_are_sealed_for_their_key_replica_and_load() {
        let sealer = Sealer::new(b"s", DEFAULT_RELAY_WINDOW);
        let mut entry = Entry::new("k1", ME, 3);
        assert!(!sealer.check_entry(&entry), "unsealed");
        sealer.seal(&mut entry, Duration::from_secs(10));
        assert!(sealer.check_entry(&entry));
        for changed in [
            Entry {
                key: "k2".into(),
                ..entry.clone()
            },
            Entry {
                replica: "http://evil:1".into(),
                ..entry.clone()
            },
            Entry {
                load: 0,
                ..entry.clone()
            },
        ] {
            assert!(!sealer.check_entry(&changed), "{changed:?}");
        }
        let stranger = Sealer::new(b"t", DEFAULT_RELAY_WINDOW);
        assert!(!stranger.check_entry(&entry));
        // Expired longer ago than the window.
        let mut old = Entry::new("k1", ME, 3);
        old.seal = sealer.seal_at(&old, unix_ms() - 31_000);
        assert!(!sealer.check_entry(&old));
    }
}
