//! Where the agent sends a call: its upstream gRPC server.
//!
//! A plaintext (`http://`) upstream, the usual one (the agent runs next to
//! the server), gets its calls over HTTP/2 on the `h2` crate directly
//! ([`DirectUpstream`]): each call's HEADERS go out from the task that has
//! the call, with a unary request's DATA in the same write, and its response
//! is read straight from the stream. tonic's `Channel` puts a buffer task, a
//! dispatch channel and a spawned body task between a call and its stream;
//! under the gateway bench's 64-caller unary load the direct path cut the
//! agent's allocations per call from 65 to 53 and the CPU per call through
//! the gateway by 5-10% (benches/README.md). `h2` is the HTTP/2
//! implementation under hyper (and so under tonic): only the connection's
//! upkeep is ours, which is small: dial when there is no connection, dial
//! again when it is lost, share one dial among the calls waiting for it.
//!
//! An `https://` upstream keeps tonic's `Channel` and its rustls set-up.
//!
//! Both ping the upstream while calls are open (`--upstream-keepalive`,
//! [`UpstreamPings`]): an upstream host that vanished without closing its
//! connection (powered off, its network cut) fails the calls on it
//! `UNAVAILABLE` within one interval and one wait, instead of leaving them
//! to their deadlines, and the next call dials again.
//!
//! A call that cannot reach the upstream fails `UNAVAILABLE`, saying what
//! failed but not where: the upstream's address belongs to the agent's
//! network, and only the agent's log names it.

use std::sync::{
    atomic::{AtomicU64, AtomicUsize, Ordering},
    Arc, Mutex,
};
use std::time::Duration;

use bytes::Bytes;
use http_body::Body as _;

use super::h2_streams::{status_of, RequestPump, ResponseBody, StreamInUse};
use crate::keepalive::UpstreamPings;

/// How long a dial of the upstream (TCP connect and HTTP/2 handshake) may
/// take before the calls waiting for it fail `UNAVAILABLE`.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 settings toward the upstream: hyper's client defaults, which
/// tonic's `Channel` used here before (windows of 2 MiB per stream and
/// 5 MiB per connection, at most 1 MiB queued per stream, 16 KiB of
/// response headers).
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;
const MAX_SEND_BUFFER: usize = 1 << 20;
const MAX_HEADER_LIST: u32 = 16 << 10;

/// The agent's upstream.
#[derive(Clone)]
pub(crate) enum Upstream {
    /// `http://`: HTTP/2 on `h2`, no tasks between a call and its stream.
    Direct(DirectUpstream),
    /// `https://`: tonic's `Channel` with its TLS set-up.
    Channel(tonic::transport::Channel),
}

impl Upstream {
    /// The upstream at `uri`: direct for `http://`, through `channel` (made
    /// for `uri`, with its TLS set-up) for `https://`.
    /// `pings` keep the direct connection checked (the Channel's are set
    /// on its `Endpoint`).
    pub(crate) fn new(
        uri: &http::Uri,
        channel: tonic::transport::Channel,
        pings: Option<UpstreamPings>,
    ) -> Self {
        match uri.scheme_str() {
            Some("https") => Upstream::Channel(channel),
            _ => {
                DirectUpstream::new(uri, pings).map_or(Upstream::Channel(channel), Upstream::Direct)
            }
        }
    }

    /// Sends `req` upstream; its response, or the status of why there is
    /// none (`UNAVAILABLE` when the upstream cannot be reached).
    pub(crate) async fn call(
        self,
        req: http::Request<tonic::body::Body>,
    ) -> http::Response<tonic::body::Body> {
        match self {
            Upstream::Direct(direct) => match direct.call(req).await {
                Ok(resp) => resp,
                Err(status) => status.into_http(),
            },
            // Boxed, so that the direct path's futures do not carry the
            // Channel's (each call's future is moved several times).
            Upstream::Channel(channel) => {
                match Box::pin(tower::ServiceExt::oneshot(channel, req)).await {
                    Ok(resp) => resp,
                    Err(e) => tonic::Status::from_error(Box::new(e)).into_http(),
                }
            }
        }
    }
}

/// A plaintext HTTP/2 upstream: one connection, dialled when a call needs
/// it and there is none (first call, or the last one was lost).
#[derive(Clone)]
pub(crate) struct DirectUpstream(Arc<Shared>);

struct Shared {
    /// `host:port` to dial.
    address: String,
    /// The `:authority` of every call.
    authority: http::uri::Authority,
    /// The connection calls go over, while it is up.
    current: Mutex<Option<Connection>>,
    /// Dials made (finished), read without waiting: a call that waited for
    /// another's dial takes its outcome rather than dialling again.
    dials: AtomicU64,
    /// Held while dialling; the last dial's error.
    dialling: tokio::sync::Mutex<Option<String>>,
    /// Pings while calls are open on a connection.
    pings: Option<UpstreamPings>,
}

#[derive(Clone)]
struct Connection {
    /// Which dial made it: a lost connection is forgotten only if it is
    /// still the current one.
    id: u64,
    sender: h2::client::SendRequest<Bytes>,
    /// Calls open on it (their requests sent, their responses not ended):
    /// pings are sent only while there are some.
    open: Arc<AtomicUsize>,
}

impl DirectUpstream {
    /// The upstream at `uri` (`http://host[:port]`, port 80 if none); no
    /// connection until the first call.
    fn new(uri: &http::Uri, pings: Option<UpstreamPings>) -> Option<Self> {
        let authority = uri.authority()?.clone();
        let address = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        Some(Self(Arc::new(Shared {
            address,
            authority,
            current: Mutex::new(None),
            dials: AtomicU64::new(0),
            dialling: tokio::sync::Mutex::new(None),
            pings,
        })))
    }

    async fn call(
        &self,
        req: http::Request<tonic::body::Body>,
    ) -> Result<http::Response<tonic::body::Body>, tonic::Status> {
        let (mut parts, body) = req.into_parts();
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.0.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|e| tonic::Status::internal(format!("no upstream URI for the call: {e}")))?;
        parts.version = http::Version::HTTP_2;
        let Connection {
            mut sender, open, ..
        } = self.ready().await?;
        // Counted until the response ends (or the call is dropped).
        let in_use = StreamInUse::new(&open);
        let end = body.is_end_stream();
        let (mut response, send) = sender
            .send_request(http::Request::from_parts(parts, ()), end)
            .map_err(status_of)?;
        // The request is sent from this task while it waits for the
        // response's head: no task of its own for a unary call.
        let mut pump = (!end).then(|| RequestPump::new(body, send));
        let head = std::future::poll_fn(|cx| {
            if pump.as_mut().is_some_and(|p| p.poll_pump(cx).is_ready()) {
                pump = None;
            }
            std::future::Future::poll(std::pin::Pin::new(&mut response), cx)
        })
        .await
        .map_err(status_of)?;
        if let Some(pump) = pump {
            pump.spawn();
        }
        let (parts, recv) = head.into_parts();
        Ok(http::Response::from_parts(
            parts,
            tonic::body::Body::new(ResponseBody::new(recv, in_use)),
        ))
    }

    /// A connection whose sender is ready for one more stream. A
    /// connection found closed (the upstream restarted) is replaced once:
    /// no byte of the call went out on it, so the call goes on the new one.
    async fn ready(&self) -> Result<Connection, tonic::Status> {
        let mut again = true;
        loop {
            let connection = match self.0.current() {
                Some(connection) => connection,
                // Boxed: the dial's state (an h2 handshake) would
                // otherwise make every call's future twice as large, and
                // each move of it a larger copy.
                None => Box::pin(self.connection()).await?,
            };
            match connection.sender.ready().await {
                Ok(sender) => {
                    return Ok(Connection {
                        sender,
                        ..connection
                    })
                }
                Err(e) => {
                    self.0.forget(connection.id);
                    if !std::mem::take(&mut again) {
                        return Err(status_of(e));
                    }
                }
            }
        }
    }

    /// A new connection, or the one another call dialled meanwhile. Calls
    /// that find none while a dial is under way wait for it, and take its
    /// error if it fails.
    async fn connection(&self) -> Result<Connection, tonic::Status> {
        let seen = self.0.dials.load(Ordering::Acquire);
        let mut last_error = self.0.dialling.lock().await;
        if let Some(connection) = self.0.current() {
            return Ok(connection);
        }
        if self.0.dials.load(Ordering::Acquire) != seen {
            if let Some(error) = last_error.as_ref() {
                return Err(tonic::Status::unavailable(error.clone()));
            }
        }
        let id = self.0.dials.load(Ordering::Acquire) + 1;
        let dialled = self.dial(id).await;
        self.0.dials.store(id, Ordering::Release);
        match dialled {
            Ok(connection) => {
                if last_error.take().is_some() {
                    tracing::info!(upstream = %self.0.address, "upstream reachable again");
                }
                *self.0.lock() = Some(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                // Logged when the upstream becomes unreachable, not for
                // every call that finds it so.
                if last_error.is_none() {
                    tracing::warn!(upstream = %self.0.address, %error, "cannot reach the upstream");
                }
                *last_error = Some(error.clone());
                Err(tonic::Status::unavailable(error))
            }
        }
    }

    /// Connects and shakes hands; a task drives the connection (and its
    /// pings) and forgets it when it ends.
    async fn dial(&self, id: u64) -> Result<Connection, String> {
        let address = &self.0.address;
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(address)
                .await
                .map_err(|e| format!("cannot connect to the upstream: {e}"))?;
            // Each write is a whole batch of frames: Nagle only delays.
            let _ = tcp.set_nodelay(true);
            h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_send_buffer_size(MAX_SEND_BUFFER)
                .max_header_list_size(MAX_HEADER_LIST)
                .enable_push(false)
                .handshake::<_, Bytes>(tcp)
                .await
                .map_err(|e| format!("HTTP/2 handshake with the upstream: {e}"))
        };
        let (sender, mut connection) = tokio::time::timeout(DIAL_TIMEOUT, handshake)
            .await
            .map_err(|_| format!("no connection to the upstream within {DIAL_TIMEOUT:?}"))??;
        let open = Arc::new(AtomicUsize::new(0));
        let pinged = self.0.pings.zip(connection.ping_pong());
        let (shared, calls) = (Arc::downgrade(&self.0), open.clone());
        tokio::spawn(async move {
            // Without pings, the connection's own end is the only one.
            let silent = async move {
                match pinged {
                    Some((pings, pong)) => keep_alive(pong, pings, &calls).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = &mut connection => if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection to the upstream ended");
                },
                silent = silent => if let Some(shared) = shared.upgrade() {
                    tracing::warn!(upstream = %shared.address, reason = %silent, "closing the connection to the upstream");
                },
            }
            // Its calls' streams end (with an error, if still open) as it
            // is dropped.
            drop(connection);
            if let Some(shared) = shared.upgrade() {
                shared.forget(id);
            }
        });
        Ok(Connection { id, sender, open })
    }
}

/// Pings the upstream every `pings.every` while calls are `open` on the
/// connection; returns, with the reason, once it must be closed: a ping
/// went unanswered within `pings.wait`, or could not be sent.
async fn keep_alive(mut pong: h2::PingPong, pings: UpstreamPings, open: &AtomicUsize) -> String {
    loop {
        tokio::time::sleep(pings.every).await;
        if open.load(Ordering::Relaxed) == 0 {
            continue;
        }
        match tokio::time::timeout(pings.wait, pong.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return format!("a keepalive ping failed: {e}"),
            Err(_) => return format!("no answer to a keepalive ping within {:?}", pings.wait),
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn current(&self) -> Option<Connection> {
        self.lock().clone()
    }

    /// Forgets connection `id` if it is still the current one: the next
    /// call dials.
    fn forget(&self, id: u64) {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }
}
