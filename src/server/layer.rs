//! [`TunnelLayer`]: adds the tunnel service to a server.

use std::{fmt, sync::Arc};

use bytes::Bytes;
use tower_layer::Layer;
use tower_service::Service;

use crate::{
    error::BoxError,
    negotiate::{Options, Revision},
    server::{
        dispatch::{dispatch, Dispatch},
        TunnelService, Unimplemented,
    },
};

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

    /// Largest request message accepted through a tunnel; larger ones fail
    /// their stream with `RESOURCE_EXHAUSTED`. Default: 4 MiB.
    pub fn max_message_size(self, size: usize) -> Self {
        self.update(|c| c.opts.max_message_size = size)
    }

    /// Highest protocol revision offered. `Revision::Zero` makes this a
    /// revision-zero server (no negotiation header, no `Settings`); useful
    /// for tests. Default: `Revision::One`.
    pub fn max_revision(self, revision: Revision) -> Self {
        self.update(|c| c.opts.max_revision = revision)
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
            .finish()
    }
}
