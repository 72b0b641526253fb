//! Relaying a call to the replica that holds its key, and serving a call
//! another replica relayed.

use std::{
    hash::Hash,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tower_service::Service;
use tracing::{debug, warn};

use super::lent::Lent;
use crate::reverse::served::{served, ServedBy};
use crate::{
    client::{ResponseBody, ResponseFuture},
    error::Error,
    reverse::cluster::seal::Purpose,
    reverse::ReverseTunnelRegistry,
    server::{InRelayTunnel, RELAY_AUTH_HEADER, RELAY_KEY_HEADER},
    wire::timeout,
};

/// Response header of a relayed call the receiving replica refused because
/// it holds no tunnel of the key.
const RELAY_REFUSED_HEADER: &str = "grpctunnel-relay-refused";

/// How long a replica may take to accept a connection before the next one
/// that holds the key is tried (less when the call's deadline is nearer:
/// all attempts of one call share it).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

type Response = Result<http::Response<ResponseBody>, Error>;

fn failed(status: tonic::Status) -> ResponseFuture {
    ResponseFuture::failed(status)
}

/// A call for `key`, which no local tunnel serves now: relays it to the
/// least-loaded replica that holds the key; with `wait`, waits (up to the
/// call's deadline) for a local tunnel or a replica to have the key.
pub(crate) async fn forward<K>(
    registry: ReverseTunnelRegistry<K>,
    key: K,
    req: http::Request<tonic::body::Body>,
    wait: bool,
) -> Response
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    route(registry, key, req, wait, false).await
}

/// A call for `key` whose local tunnels are all busy: relayed to another
/// replica whose load (as published, plus the calls this replica relays
/// there) is lower than the least-loaded local tunnel's; else served
/// locally. Equal loads stay local.
pub(crate) async fn balance<K>(
    registry: ReverseTunnelRegistry<K>,
    key: K,
    req: http::Request<tonic::body::Body>,
    wait: bool,
) -> Response
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    route(registry, key, req, wait, true).await
}

async fn route<K>(
    registry: ReverseTunnelRegistry<K>,
    key: K,
    req: http::Request<tonic::body::Body>,
    wait: bool,
    compare: bool,
) -> Response
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    let Some(link) = registry.cluster_link() else {
        return failed(tonic::Status::unavailable("no channels ready")).await;
    };
    let cluster = link.cluster.inner.clone();
    let name = (link.name)(&key).to_owned();
    let deadline = timeout::grpc_timeout(req.headers()).map(|t| Instant::now() + t);
    let mut req = Some(req);
    loop {
        // Wake on a local tunnel or a replica publishing the key; subscribed
        // before looking, so neither is missed.
        let mut published = cluster.published.subscribe();
        let notify = registry.waker(Some(&key));
        let added = notify.notified();
        tokio::pin!(added);
        added.as_mut().enable();

        let local = registry.pick(Some(&key));
        if let Some(tunnel) = &local {
            if !compare {
                let req = req.take().expect("sent once");
                let resp = tunnel.channel().call(req).await;
                return served(resp, ServedBy::Tunnel(tunnel.id()));
            }
        }
        // A waiting call looks afresh: it must see a key that appears.
        let mut entries = match cluster.lookup(&name, !wait || local.is_some()).await {
            Ok(entries) => entries,
            // The store away: a local tunnel still serves.
            Err(_) if local.is_some() => Vec::new(),
            Err(err) => {
                return failed(tonic::Status::unavailable(format!(
                "no tunnel for key {name:?} here, and the cluster directory is unavailable: {err}"
            )))
                .await
            }
        };
        entries.retain(|e| e.replica != cluster.advertise);
        entries.sort_by_key(|e| cluster.load_of(e));
        if let Some(tunnel) = &local {
            let here = tunnel.channel().active_calls() as u64;
            if entries.first().is_none_or(|e| cluster.load_of(e) >= here) {
                let req = req.take().expect("sent once");
                let resp = tunnel.channel().call(req).await;
                return served(resp, ServedBy::Tunnel(tunnel.id()));
            }
            // Only the replicas less loaded than here are worth the hop.
            entries.retain(|e| cluster.load_of(e) < here);
        }
        // The body goes out with the first replica that takes it; one that
        // fails before reading it (connection refused: a dead replica
        // whose entry has not expired yet) leaves it for the next.
        let (mut parts, body) = req.take().expect("sent once").into_parts();
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let value = format!("{}m", left.as_millis().max(1));
            parts.headers.insert(
                "grpc-timeout",
                http::HeaderValue::from_str(&value).expect("digits"),
            );
        }
        let Ok(key_value) = http::HeaderValue::from_str(&name) else {
            return failed(tonic::Status::internal("the key is not valid header text")).await;
        };
        parts.headers.insert(RELAY_KEY_HEADER, key_value);
        // For the receiving replica's logs.
        if let Ok(from) = http::HeaderValue::from_str(&cluster.advertise) {
            parts
                .headers
                .insert(crate::cluster::RELAY_FROM_HEADER, from);
        }
        let body = Lent::new(body);
        let mut unreachable = None;
        cluster.reachable_first(&mut entries);
        for entry in entries {
            let peer = match cluster.peer(&entry.replica) {
                Ok(peer) => peer,
                Err(err) => {
                    warn!(replica = %entry.replica, error = %err, "cannot dial a replica's advertised address");
                    continue;
                }
            };
            let connect_for = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    CONNECT_TIMEOUT.min(left)
                }
                None => CONNECT_TIMEOUT,
            };
            let sender = match tokio::time::timeout(
                connect_for,
                peer.sender(&cluster.relay_config()),
            )
            .await
            {
                Ok(Ok(sender)) => sender,
                failed => {
                    let why = match failed {
                        Ok(Err(err)) => with_sources(err.as_ref()),
                        _ => format!("no connection within {connect_for:?}"),
                    };
                    cluster.drop_route(&name);
                    cluster.unreachable(&peer);
                    debug!(replica = %entry.replica, key = %name, error = %why, "replica unreachable; trying the next");
                    unreachable = Some(format!("replica {}: {why}", entry.replica));
                    continue;
                }
            };
            let mut attempt = parts.clone();
            if sender.is_grpc() {
                let purpose = Purpose::Call {
                    key: &name,
                    method: attempt.uri.path(),
                };
                let proof = cluster.sealer.relay_proof(peer.url(), purpose);
                attempt.headers.insert(RELAY_AUTH_HEADER, proof);
            }
            let req = http::Request::from_parts(attempt, tonic::body::Body::new(body.lend()));
            let relaying = cluster.relaying(&entry);
            match sender.call(req).await {
                Ok(mut resp) => {
                    // Refused (the key left that replica: it drained, or
                    // its agent just went): forget where the key was, and
                    // try the next replica (or the local tunnel) with the
                    // body intact, if it is. Another failure is the call's
                    // own: look afresh next time only.
                    if resp.headers_mut().remove(RELAY_REFUSED_HEADER).is_some() {
                        cluster.drop_route(&name);
                        if body.replayable() {
                            debug!(replica = %entry.replica, key = %name, "replica refused the key; trying the next");
                            continue;
                        }
                    } else if resp.headers().get("grpc-status").is_some_and(|s| s != "0") {
                        cluster.forget(&name);
                    }
                    let resp = resp.map(|body| {
                        ResponseBody::relayed(tonic::body::Body::new(Counted {
                            inner: body,
                            _relaying: relaying,
                        }))
                    });
                    return served(Ok(resp), ServedBy::Replica(entry.replica.clone()));
                }
                Err(err) if body.replayable() => {
                    cluster.drop_route(&name);
                    cluster.unreachable(&peer);
                    let why = with_sources(err.as_ref());
                    debug!(replica = %entry.replica, key = %name, error = %why, "replica unreachable; trying the next");
                    unreachable = Some(format!("replica {}: {why}", entry.replica));
                }
                Err(err) => {
                    cluster.drop_route(&name);
                    cluster.unreachable(&peer);
                    return failed(tonic::Status::unavailable(format!(
                        "replica {} holding key {name:?}: {}",
                        entry.replica,
                        with_sources(err.as_ref())
                    )))
                    .await;
                }
            }
        }
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return failed(tonic::Status::deadline_exceeded(format!(
                "context deadline exceeded while reaching the replicas holding key {name:?}"
            )))
            .await;
        }
        let Some(body) = body.take_back() else {
            return failed(tonic::Status::unavailable(format!(
                "the replicas holding key {name:?} cannot be reached"
            )))
            .await;
        };
        if local.is_none() && !wait {
            if let Some(why) = unreachable {
                return failed(tonic::Status::unavailable(format!(
                    "the replicas holding key {name:?} cannot be reached ({why})"
                )))
                .await;
            }
        }
        let mut back = http::Request::from_parts(parts, body);
        if let Some(tunnel) = &local {
            // No less-loaded replica could be reached: serve it here.
            back.headers_mut().remove(RELAY_KEY_HEADER);
            back.headers_mut().remove(crate::cluster::RELAY_FROM_HEADER);
            let resp = tunnel.channel().call(back).await;
            return served(resp, ServedBy::Tunnel(tunnel.id()));
        }
        req = Some(back);
        if !wait {
            return failed(tonic::Status::unavailable(format!(
                "no tunnel for key {name:?} on any replica"
            )))
            .await;
        }
        let wake = async {
            loop {
                match published.recv().await {
                    // Announced, or announcements missed: look again.
                    Ok(k) if k == name || k.is_empty() => return,
                    Ok(_) => {}
                    // Missed some: look again.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                    // No feed: the local tunnel wakes us, or the deadline.
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        std::future::pending::<()>().await
                    }
                }
            }
        };
        let woken = async {
            tokio::select! {
                () = wake => {}
                () = added.as_mut() => {}
            }
        };
        match deadline {
            None => woken.await,
            Some(deadline) => {
                if tokio::time::timeout_at(deadline.into(), woken)
                    .await
                    .is_err()
                {
                    return failed(tonic::Status::deadline_exceeded(
                        "context deadline exceeded while waiting for a tunnel",
                    ))
                    .await;
                }
            }
        }
    }
}

/// Waits until `key` has a tunnel here or an entry of another replica in
/// the directory (asked afresh on every wake-up; while the store is away,
/// only a local tunnel ends the wait).
pub(crate) async fn wait_for_key(registry: &ReverseTunnelRegistry<String>, key: &str) {
    let owned = key.to_owned();
    loop {
        let mut published = registry
            .cluster_link()
            .map(|link| link.cluster.inner.published.subscribe());
        let notify = registry.waker(Some(&owned));
        let added = notify.notified();
        tokio::pin!(added);
        added.as_mut().enable();
        if registry.pick(Some(&owned)).is_some() {
            return;
        }
        if let Some(link) = registry.cluster_link() {
            let cluster = &link.cluster.inner;
            if let Ok(entries) = cluster.lookup(key, false).await {
                if entries.iter().any(|e| e.replica != cluster.advertise) {
                    return;
                }
            }
        }
        let remote = async {
            match published.as_mut() {
                Some(feed) => loop {
                    match feed.recv().await {
                        // Announced, or announcements missed: look again.
                        Ok(k) if k == key || k.is_empty() => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = remote => {}
            () = added.as_mut() => {}
        }
    }
}

/// A call another replica relayed here: in a relay tunnel (whose opening
/// was proved), or with a proof for this replica, its key and method; then
/// served by a local tunnel of its key only (never relayed again, so
/// relays cannot loop).
pub(crate) async fn receive<K>(
    registry: ReverseTunnelRegistry<K>,
    mut req: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    let refuse = |status: tonic::Status| status.into_http::<tonic::body::Body>();
    let Some(link) = registry.cluster_link() else {
        return refuse(tonic::Status::unauthenticated(NOT_IN_A_CLUSTER));
    };
    let in_tunnel = req.extensions().get::<InRelayTunnel>().is_some();
    let method = req.uri().path().to_owned();
    let headers = req.headers_mut();
    let proof = headers.remove(RELAY_AUTH_HEADER);
    let key = headers.remove(RELAY_KEY_HEADER);
    headers.remove(crate::cluster::RELAY_FROM_HEADER);
    let Some(name) = key.as_ref().and_then(|k| k.to_str().ok()) else {
        return refuse(tonic::Status::invalid_argument(format!(
            "relayed call without {RELAY_KEY_HEADER}"
        )));
    };
    if !in_tunnel {
        let purpose = Purpose::Call {
            key: name,
            method: &method,
        };
        if let Err(status) = check(&link.cluster.inner, proof.as_ref(), purpose, "relayed call") {
            return refuse(status);
        }
    }
    let key = (link.from)(name);
    let Some(tunnel) = registry.pick(Some(&key)) else {
        let mut resp = refuse(tonic::Status::unavailable(format!(
            "no tunnel for key {name:?} on this replica (any more)"
        )));
        // Tells the relaying replica that the key is not here (not that the
        // call failed): it forgets where the key was.
        resp.headers_mut().insert(
            RELAY_REFUSED_HEADER,
            http::HeaderValue::from_static("no-key"),
        );
        return resp;
    };
    let mut channel = tunnel.channel();
    match channel.call(req).await {
        Ok(mut resp) => {
            resp.extensions_mut().insert(ServedBy::Tunnel(tunnel.id()));
            resp.map(tonic::body::Body::new)
        }
        Err(err) => refuse(err.to_status()),
    }
}

const NOT_IN_A_CLUSTER: &str = "relayed call refused: this server is not in a cluster";

/// Whether the opening of a relay tunnel (another replica's forward tunnel
/// that relayed calls travel in) carries a valid proof for this replica.
pub(crate) fn check_relay_tunnel<K>(
    registry: &ReverseTunnelRegistry<K>,
    headers: &http::HeaderMap,
) -> Result<(), tonic::Status>
where
    K: Clone + Eq + Hash + Send + Sync + 'static,
{
    let Some(link) = registry.cluster_link() else {
        return Err(tonic::Status::unauthenticated(
            "relay tunnel refused: this server is not in a cluster",
        ));
    };
    let proof = headers.get(RELAY_AUTH_HEADER);
    check(&link.cluster.inner, proof, Purpose::Tunnel, "relay tunnel")
}

/// Checks a relay proof; a refusal is logged (at most once a second).
pub(super) fn check(
    cluster: &crate::reverse::cluster::ClusterInner,
    proof: Option<&http::HeaderValue>,
    purpose: Purpose<'_>,
    what: &str,
) -> Result<(), tonic::Status> {
    cluster
        .sealer
        .check_relay(proof, &cluster.advertise, purpose)
        .map_err(|refused| {
            let why = refused.why(cluster.sealer.window());
            if REFUSALS_LOGGED.allow() {
                warn!("{what} refused: {why}");
            }
            tonic::Status::unauthenticated(format!("{what} refused: {why}"))
        })
}

/// Logs refusals at most once a second, so that a flood of forged relays
/// cannot flood the log.
static REFUSALS_LOGGED: OncePerSecond = OncePerSecond(std::sync::atomic::AtomicU64::new(0));

struct OncePerSecond(std::sync::atomic::AtomicU64);

impl OncePerSecond {
    fn allow(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.0.load(Ordering::Relaxed);
        last != now
            && self
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// An error and its sources on one line (a transport error's own text is
/// only "transport error").
fn with_sources(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A relayed response body, counted as a call this replica relays until
/// it is dropped.
struct Counted {
    inner: tonic::body::Body,
    _relaying: crate::reverse::cluster::Relaying,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
