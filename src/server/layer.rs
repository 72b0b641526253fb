//! [`TunnelLayer`]: adds the tunnel service to a server.

use std::{fmt, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use bytes::Bytes;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    engine::stats::{Counters, Stats},
    error::BoxError,
    server::{
        dispatch::{dispatch, Dispatch},
        ReverseAcceptor, TunnelService, Unimplemented,
    },
    wire::settings::{Options, Revision},
};

/// Default bound on a graceful shutdown: how long calls in flight may run.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Default for [`TunnelLayer::max_tunnels`].
pub const DEFAULT_MAX_TUNNELS: u64 = 10_000;

/// Adds `grpctunnel.v1.TunnelService` to a tonic server or an axum router.
///
/// Requests for `/grpctunnel.v1.TunnelService/OpenTunnel` open a tunnel;
/// every call that arrives through it is dispatched, as an ordinary
/// `http::Request`, to the service this layer wraps (or to the one given to
/// [`tunnel_service`](Self::tunnel_service)). All other requests pass through
/// untouched. See the [module docs](crate::server) for an example.
#[derive(Clone)]
#[must_use]
pub struct TunnelLayer {
    pub(crate) config: Arc<Config>,
}

pub(crate) struct Config {
    pub(crate) opts: Options,
    pub(crate) tunnel_service: Option<Dispatch>,
    pub(crate) reverse: Option<Arc<dyn ReverseAcceptor>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) grace: Duration,
    pub(crate) counters: Arc<Counters>,
    pub(crate) max_tunnels: u64,
}

impl Default for TunnelLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl TunnelLayer {
    /// Forward tunnels to the wrapped service, default options.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                opts: Options::default(),
                tunnel_service: None,
                reverse: None,
                shutdown: CancellationToken::new(),
                grace: DEFAULT_SHUTDOWN_GRACE,
                counters: Arc::new(Counters::default()),
                max_tunnels: DEFAULT_MAX_TUNNELS,
            }),
        }
    }

    fn update(mut self, f: impl FnOnce(&mut Config)) -> Self {
        match Arc::get_mut(&mut self.config) {
            Some(config) => f(config),
            None => {
                let mut config = Config {
                    opts: self.config.opts,
                    tunnel_service: self.config.tunnel_service.clone(),
                    reverse: self.config.reverse.clone(),
                    shutdown: self.config.shutdown.clone(),
                    grace: self.config.grace,
                    counters: self.config.counters.clone(),
                    max_tunnels: self.config.max_tunnels,
                };
                f(&mut config);
                self.config = Arc::new(config);
            }
        }
        self
    }

    /// Serves tunneled calls with `svc` instead of the wrapped service, to
    /// expose a different set of services over tunnels than over plain
    /// connections. Its requests have tonic's body type, which tonic
    /// `Routes`, generated servers and axum routers all accept.
    pub fn tunnel_service<T, ResBody>(self, svc: T) -> Self
    where
        T: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + Sync
            + 'static,
        T::Future: Send + 'static,
        T::Error: Into<BoxError>,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let d = dispatch::<T, tonic::body::Body, ResBody>(svc);
        self.update(|c| c.tunnel_service = Some(d))
    }

    /// Where accepted reverse tunnels go (see `TunnelLayer::reverse`, in
    /// the `reverse` module).
    pub(crate) fn reverse_acceptor(self, acceptor: Arc<dyn ReverseAcceptor>) -> Self {
        self.update(|c| c.reverse = Some(acceptor))
    }

    /// Shuts tunnels down gracefully when `token` is cancelled: forward
    /// tunnels reject new streams with `UNAVAILABLE` `server is shutting
    /// down` (P-69), let active ones finish, then end their opening RPC with
    /// OK; reverse tunnels stop taking calls, let calls in flight finish,
    /// then close. Either way within the [grace period](Self::shutdown_grace).
    ///
    /// Long-lived tunnels would otherwise keep a server's own graceful
    /// shutdown (tonic's `serve_with_shutdown`) waiting: cancel the token
    /// from the same signal.
    pub fn shutdown_token(self, token: CancellationToken) -> Self {
        self.update(|c| c.shutdown = token)
    }

    /// Bound on a graceful shutdown. Default: [`DEFAULT_SHUTDOWN_GRACE`].
    pub fn shutdown_grace(self, grace: Duration) -> Self {
        self.update(|c| c.grace = grace)
    }

    /// Receive window advertised in `Settings` for each stream's request data
    /// (revision one). Default: [`DEFAULT_INITIAL_WINDOW_SIZE`](crate::DEFAULT_INITIAL_WINDOW_SIZE).
    ///
    /// # Panics
    ///
    /// If `size` is 0: the Go client would then send no data (P-81).
    #[track_caller]
    pub fn initial_window_size(self, size: u32) -> Self {
        assert!(size > 0, "initial_window_size must be greater than 0");
        self.update(|c| c.opts.initial_window_size = size)
    }

    /// Most tunnels (forward and reverse) open at once on this endpoint;
    /// beyond it, opening RPCs are refused with `RESOURCE_EXHAUSTED`.
    /// Default: [`DEFAULT_MAX_TUNNELS`].
    pub fn max_tunnels(self, n: u64) -> Self {
        self.update(|c| c.max_tunnels = n)
    }

    /// Resource limits for every tunnel of this endpoint; see
    /// [`Limits`](crate::Limits).
    pub fn limits(self, limits: crate::Limits) -> Self {
        self.update(|c| limits.apply(&mut c.opts))
    }

    /// Largest request message accepted through a tunnel; larger ones fail
    /// their stream with `RESOURCE_EXHAUSTED`. Default: 4 MiB.
    pub fn max_message_size(self, size: usize) -> Self {
        self.update(|c| c.opts.max_message_size = size)
    }

    /// Highest protocol revision offered. `Revision::Zero` makes this a
    /// revision-zero server (no negotiation header, no `Settings`); useful
    /// for tests. Default: `Revision::One`.
    pub fn max_revision(self, revision: Revision) -> Self {
        self.update(|c| c.opts.set_max_revision(revision))
    }

    /// Negotiates, but offers only revision zero in `Settings`: no flow
    /// control. This is what the Go reference's `WithDisableFlowControl`
    /// does, and the way to test a peer's handling of a negotiated
    /// revision-zero tunnel. [`max_revision`](Self::max_revision) with
    /// `Revision::Zero` instead does not negotiate at all.
    pub fn disable_flow_control(self) -> Self {
        self.update(|c| c.opts.disable_flow_control())
    }

    /// What happens to a `-bin` metadata value that is not valid UTF-8
    /// when the peer can only carry raw bytes (the Go reference); see
    /// [`BinaryMetadata`](crate::BinaryMetadata). Default: `Drop`.
    pub fn binary_metadata(self, policy: crate::BinaryMetadata) -> Self {
        self.update(|c| c.opts.binary_metadata = policy)
    }

    /// A snapshot of the counters of every tunnel this endpoint served,
    /// forward and reverse. Clones of the layer share them.
    pub fn stats(&self) -> Stats {
        self.config.counters.snapshot()
    }

    /// The live counters behind [`stats`](Self::stats).
    pub fn counters(&self) -> Arc<Counters> {
        self.config.counters.clone()
    }

    /// A standalone tunnel service, to mount with `add_service` (tonic) or
    /// `route_service` (axum). Requires [`tunnel_service`](Self::tunnel_service):
    /// other paths answer `UNIMPLEMENTED`.
    pub fn into_service(self) -> TunnelService<Unimplemented> {
        self.layer(Unimplemented::default())
    }
}

impl<S> Layer<S> for TunnelLayer {
    type Service = TunnelService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TunnelService::new(inner, self.config.clone())
    }
}

impl fmt::Debug for TunnelLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TunnelLayer")
            .field("opts", &self.config.opts)
            .field("tunnel_service", &self.config.tunnel_service.is_some())
            .field("reverse", &self.config.reverse.is_some())
            .finish()
    }
}
