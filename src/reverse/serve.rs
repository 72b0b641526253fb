//! [`ReverseTunnelServer`]: the network client opens `OpenReverseTunnel` and
//! serves calls that arrive through it.

use std::{fmt, future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};
use tower_service::Service;
use tracing::{debug, Instrument};

use crate::{
    engine::{
        open,
        stats::{Counters, Meter, Stats},
        trace::{self, Role},
        writer::Core,
    },
    error::{BoxError, Error},
    info::Direction,
    pb,
    server::{
        dispatch::{dispatch, Dispatch},
        reader::{Ending, ServerTunnel, TunnelContext},
        DEFAULT_SHUTDOWN_GRACE,
    },
    wire::{
        frame,
        settings::{Options, Revision},
    },
};

/// Serves a service over reverse tunnels that it opens itself.
///
/// The network client (an agent behind NAT, say) dials the network server
/// and opens `OpenReverseTunnel`; the network server then sends calls
/// through the tunnel, and this type dispatches them to `S`, exactly as
/// [`TunnelLayer`](crate::TunnelLayer) does for forward tunnels. See the
/// [module docs](crate::reverse) for an example.
#[derive(Clone)]
#[must_use]
pub struct ReverseTunnelServer {
    dispatch: Dispatch,
    opts: Options,
    metadata: http::HeaderMap,
    grace: Duration,
    counters: Arc<Counters>,
}

impl ReverseTunnelServer {
    crate::engine::open::opening_options!();

    /// Serves tunneled calls with `svc`: tonic `Routes`, a generated server,
    /// an axum router, or any service of `http::Request<tonic::body::Body>`.
    pub fn new<S, ResBody>(svc: S) -> Self
    where
        S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        Self {
            dispatch: dispatch::<S, tonic::body::Body, ResBody>(svc),
            opts: Options::default(),
            metadata: http::HeaderMap::new(),
            grace: DEFAULT_SHUTDOWN_GRACE,
            counters: Arc::new(Counters::default()),
        }
    }

    /// How long a graceful shutdown lets calls in flight run before the
    /// tunnel is closed anyway. Default: [`DEFAULT_SHUTDOWN_GRACE`].
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// A snapshot of the counters of every tunnel this server (and its
    /// clones) opened.
    pub fn stats(&self) -> Stats {
        self.counters.snapshot()
    }

    /// Opens one reverse tunnel over `transport` and serves it until it ends.
    ///
    /// # Errors
    ///
    /// If the opening RPC fails or is rejected (see [`Error::status`]), the
    /// RPC breaks, or the peer breaks the protocol. `Ok` when the peer
    /// closed the tunnel.
    pub async fn serve<T>(&self, transport: T) -> Result<(), Error>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
    {
        self.serve_with_shutdown(transport, std::future::pending())
            .await
    }

    /// Like [`serve`](Self::serve), with a graceful shutdown: when `signal`
    /// completes, new streams are rejected with `UNAVAILABLE` `server is
    /// shutting down`, calls in flight may finish within the
    /// [grace period](Self::shutdown_grace), and then the tunnel is closed.
    /// Returns `Ok` after a shutdown.
    ///
    /// # Errors
    ///
    /// As for [`serve`](Self::serve).
    pub async fn serve_with_shutdown<T, F>(&self, transport: T, signal: F) -> Result<(), Error>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
        F: Future<Output = ()>,
    {
        self.serve_inner(transport, signal, || {}).await
    }

    pub(crate) async fn serve_inner<T, F>(
        &self,
        transport: T,
        signal: F,
        on_open: impl FnOnce(),
    ) -> Result<(), Error>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<BoxError>,
        T::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as http_body::Body>::Error: Into<BoxError> + Send,
        F: Future<Output = ()>,
    {
        let span = trace::tunnel_span(Direction::Reverse, Role::Server, None);
        let tunnel_span = span.clone();
        async move {
            tokio::pin!(signal);
            let (core, writer, gone) =
                Core::<pb::ServerToClient>::new(Meter::tunnel(Some(self.counters.clone())));
            let metadata = self.metadata.clone();
            let dialed = tokio::select! {
                dialed = open::dial(transport, &self.opts, metadata.clone(), writer) => dialed?,
                () = &mut signal => return Ok(()),
            };
            let negotiated = dialed.negotiated;
            if negotiated {
                // P-11: Settings first, on the request stream, once the
                // response headers are in.
                core.send_control(frame::settings(self.opts.settings()));
            }
            let inbound = dialed.inbound;
            let cx = TunnelContext {
                opts: self.opts,
                dispatch: self.dispatch.clone(),
                extensions: dialed.extensions,
                metadata: Arc::new(metadata),
                direction: Direction::Reverse,
                bin: self.opts.bin(dialed.extended),
                // The agent dialled out: no authority of its own to give.
                authority: None,
            };
            trace::record_revision(
                &tunnel_span,
                if negotiated {
                    self.opts.max_revision
                } else {
                    Revision::Zero
                },
            );
            debug!(negotiated, "tunnel open");
            on_open();
            let drain = CancellationToken::new();
            let tunnel = ServerTunnel::new(cx, core.clone(), gone, inbound)
                .with_shutdown(drain.clone(), self.grace);
            // The read loop runs on its own task, on the runtime's workers:
            // `serve` is often awaited straight from `#[tokio::main]`, whose
            // `block_on` thread every frame would otherwise have to wake.
            // Dropping `serve` aborts it, as it dropped the inline loop.
            let mut run = AbortOnDropHandle::new(tokio::spawn(tunnel.run().in_current_span()));
            let joined = tokio::select! {
                done = &mut run => done,
                () = &mut signal => {
                    drain.cancel();
                    (&mut run).await
                }
            };
            let (ending, inbound) = match joined {
                Ok(done) => done,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // Only a runtime shutting down cancels the task.
                Err(e) => return Err(Error::closed(e)),
            };
            debug!("tunnel closed");
            match ending {
                Ending::Closed => {
                    core.finish(None);
                    Ok(())
                }
                Ending::Broken(status) => {
                    core.finish(None);
                    Err(Error::closed(status))
                }
                Ending::Protocol(text) => {
                    // P-72: cancel the opening RPC so the peer learns the
                    // tunnel is gone (dropping the response resets it).
                    drop(inbound);
                    core.finish(None);
                    Err(Error::protocol(text))
                }
                Ending::Drained | Ending::Aborted => {
                    // P-70 immediate stop: half-close, then let the peer end
                    // the RPC, within the grace bound.
                    core.finish(None);
                    let drain = inbound.for_each(|_| async {});
                    let _ = tokio::time::timeout(self.grace, drain).await;
                    Ok(())
                }
            }
        }
        .instrument(span)
        .await
    }
}

impl fmt::Debug for ReverseTunnelServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseTunnelServer")
            .field("opts", &self.opts)
            .field("grace", &self.grace)
            .finish_non_exhaustive()
    }
}
