//! Connections to the other replicas: one pooled HTTP/2 connection each,
//! and over it, by default, one forward tunnel that relayed calls travel in.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use tonic::transport::Channel;
use tower::ServiceExt;
use tower_service::Service;

use super::seal::{Purpose, Sealer};
use crate::{client::TunnelChannel, error::BoxError, server::RELAY_AUTH_HEADER};

/// How a replica carries the calls it relays to another
/// ([`Cluster::relay_over`](crate::cluster::Cluster::relay_over)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayTransport {
    /// One forward tunnel (`OpenTunnel`, opened with a proof of membership) per
    /// replica, each relayed call a stream in it: the default, because it
    /// measured faster (relayed throughput 0.73-0.87x of a same-replica
    /// call against 0.66-0.77x for [`Grpc`](Self::Grpc) in the gateway
    /// benchmark's `relayed` and `relayed-grpc` setups).
    #[default]
    Tunnel,
    /// Each relayed call its own HTTP/2 stream (plain gRPC) on the
    /// replica's pooled connection.
    Grpc,
}

/// Another replica: its pooled connection, and the tunnel in it.
pub(crate) struct Peer {
    /// Its advertised URL: what relay proofs are made for.
    url: String,
    channel: Channel,
    /// When a call last went there (since the cluster was made, in ms).
    last_used: AtomicU64,
    /// The open relay tunnel, if any (replaced once it closes).
    tunnel: Mutex<Option<TunnelChannel>>,
    /// Held while a tunnel opens, so that one opens at a time.
    opening: tokio::sync::Mutex<()>,
    /// Until then (since the cluster was made, in ms) it is tried last: it
    /// could not be reached lately.
    unreachable_until: AtomicU64,
}

/// How long a replica that could not be reached is tried last.
pub(crate) const UNREACHABLE_FOR: Duration = Duration::from_secs(5);

/// What one relayed call goes out on.
pub(crate) enum Sender {
    Grpc(Channel),
    Tunnel(TunnelChannel),
}

/// How relayed calls go out: the transport, and a relay tunnel's opening.
pub(crate) struct RelayConfig<'a> {
    pub(crate) transport: RelayTransport,
    pub(crate) sealer: &'a Sealer,
    pub(crate) max_message_size: usize,
}

impl Peer {
    pub(crate) fn new(url: String, channel: Channel, now: Duration) -> Self {
        Self {
            url,
            channel,
            last_used: AtomicU64::new(now.as_millis() as u64),
            tunnel: Mutex::new(None),
            opening: tokio::sync::Mutex::new(()),
            unreachable_until: AtomicU64::new(0),
        }
    }

    /// It could not be reached at `now`: try it last for a while.
    pub(crate) fn unreachable(&self, now: Duration) {
        let until = (now + UNREACHABLE_FOR).as_millis() as u64;
        self.unreachable_until.store(until, Ordering::Relaxed);
    }

    /// Whether it could not be reached lately, at `now`.
    pub(crate) fn is_unreachable(&self, now: Duration) -> bool {
        (now.as_millis() as u64) < self.unreachable_until.load(Ordering::Relaxed)
    }

    /// Notes a call going there at `now` (since the cluster was made).
    pub(crate) fn used(&self, now: Duration) {
        self.last_used
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn last_used(&self) -> Duration {
        Duration::from_millis(self.last_used.load(Ordering::Relaxed))
    }

    /// The replica's advertised URL.
    /// The pooled HTTP/2 connection to the replica.
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    fn open_tunnel(&self) -> Option<TunnelChannel> {
        self.tunnel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|t| !t.is_closed())
            .cloned()
    }

    /// What the next relayed call goes out on, ready to take it: the
    /// connection itself, or its relay tunnel (opened now when there is
    /// none or the last one closed).
    pub(crate) async fn sender(&self, how: &RelayConfig<'_>) -> Result<Sender, BoxError> {
        if how.transport == RelayTransport::Grpc {
            let mut channel = self.channel.clone();
            channel.ready().await?;
            return Ok(Sender::Grpc(channel));
        }
        if let Some(tunnel) = self.open_tunnel() {
            return Ok(Sender::Tunnel(tunnel));
        }
        let _opening = self.opening.lock().await;
        if let Some(tunnel) = self.open_tunnel() {
            return Ok(Sender::Tunnel(tunnel));
        }
        let proof = how.sealer.relay_proof(&self.url, Purpose::Tunnel);
        let tunnel = TunnelChannel::builder()
            .max_message_size(how.max_message_size)
            .metadata(RELAY_AUTH_HEADER, proof.to_str().expect("ASCII"))
            .open(self.channel.clone())
            .await?;
        *self.tunnel.lock().unwrap_or_else(|p| p.into_inner()) = Some(tunnel.clone());
        Ok(Sender::Tunnel(tunnel))
    }
}

impl Sender {
    /// Whether each call needs a proof of its own (a call in a relay
    /// tunnel is proved by the tunnel's opening).
    pub(crate) fn is_grpc(&self) -> bool {
        matches!(self, Self::Grpc(_))
    }

    /// Sends a relayed call. An error means the call did not reach the
    /// replica's service (the connection or the tunnel failed), so, when
    /// its body was not read, another replica may take it.
    pub(crate) async fn call(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, BoxError> {
        match self {
            Self::Grpc(mut channel) => Ok(channel.call(req).await?.map(tonic::body::Body::new)),
            Self::Tunnel(mut tunnel) => {
                let resp = tunnel.call(req).await?;
                // A tunnel that closed under the call answers it at once,
                // trailers-only: the call never reached the replica.
                if resp.headers().contains_key("grpc-status") {
                    if let Some(err) = tunnel.terminal_error() {
                        return Err(format!("relay tunnel closed: {err}").into());
                    }
                }
                Ok(resp.map(tonic::body::Body::new))
            }
        }
    }
}
