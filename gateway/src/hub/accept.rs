//! The hub's connections, before HTTP/2 sees them: at most
//! `--max-connections` open at once (one more is accepted and closed at
//! once), and each must finish its TLS handshake and send the HTTP/2
//! preface within `--handshake-timeout` of being accepted, or it is
//! closed. Both are counted in `grpctunnel_limit_hits_total`
//! (`max_connections`, `handshake_timeout`).
//!
//! The hub does the TLS handshake itself rather than leave it to tonic:
//! tonic's `ServerTlsConfig::timeout` bounds the handshake too, but ends it
//! in tonic's accept loop with a debug line, where the hub can neither
//! count it nor give the preface that follows the rest of the same time.
//! Handshakes run in tasks of their own, so one slow handshake never
//! delays another; tonic is handed finished [`tokio_rustls`] streams, and
//! tonic's own `Connected` impl for them puts the same
//! `TlsConnectInfo<TcpConnectInfo>` (peer address, client certificates) in
//! each request's extensions as its own TLS would. tonic's TLS also puts
//! the plain `TcpConnectInfo` there, which the library reads for a
//! tunnel's peer address: [`tcp_info`] does that.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    time::{Instant, Sleep},
};
use tokio_rustls::{rustls::ServerConfig, server::TlsStream, TlsAcceptor};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

/// `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: what an HTTP/2 client sends first.
const PREFACE_LEN: usize = 24;

/// What bounds the hub's connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Most connections open at once (`--max-connections`).
    pub(crate) max_connections: usize,
    /// Longest from accept to the end of the HTTP/2 preface
    /// (`--handshake-timeout`).
    pub(crate) handshake_timeout: Duration,
}

/// The plaintext connections `listener` accepts, within `limits`.
pub(crate) fn plain(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<Conn<TcpStream>>> {
    incoming(listener, limits, |tcp, permit, deadline, peer| {
        std::future::ready(Some(Conn::new(tcp, permit, deadline, peer)))
    })
}

/// The TLS connections `listener` accepts, within `limits`: each one's
/// handshake done with `tls`.
pub(crate) fn tls(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Arc<ServerConfig>,
) -> impl Stream<Item = io::Result<Conn<TlsStream<TcpStream>>>> {
    let acceptor = TlsAcceptor::from(tls);
    incoming(listener, limits, move |tcp, permit, deadline, peer| {
        let handshake = acceptor.accept(tcp);
        async move {
            match tokio::time::timeout_at(deadline, handshake).await {
                Ok(Ok(tls)) => Some(Conn::new(tls, permit, deadline, peer)),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    handshake_timed_out(peer, "TLS handshake");
                    None
                }
            }
        }
    })
}

/// Accepts connections on `listener` in a task of its own (until the
/// stream is dropped), refuses those beyond `limits.max_connections`, and
/// readies each of the others with `ready` in a task of its own; the
/// stream yields those that came out ready, in the order they did.
fn incoming<IO, F, R>(
    listener: TcpListener,
    limits: ConnectionLimits,
    ready: F,
) -> impl Stream<Item = io::Result<Conn<IO>>>
where
    IO: Send + 'static,
    F: Fn(TcpStream, OwnedSemaphorePermit, Instant, SocketAddr) -> R + Send + 'static,
    R: Future<Output = Option<Conn<IO>>> + Send + 'static,
{
    // Unbounded, yet bounded: each connection in it holds a permit.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                // The server stopped accepting: close the listening socket
                // now, not when the connections have drained.
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            };
            let deadline = Instant::now() + limits.handshake_timeout;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                // Dropped: closed at once.
                drop(tcp);
                crate::log_budget::limit_refused(
                    "max_connections",
                    Some(peer),
                    &format!(
                        "connection closed: {} connections are open (the hub's --max-connections)",
                        limits.max_connections
                    ),
                );
                continue;
            };
            // Without NODELAY, Nagle's algorithm holds small replies for
            // a delayed ACK.
            let _ = tcp.set_nodelay(true);
            let conn = ready(tcp, permit, deadline, peer);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Some(conn) = conn.await {
                    // The server stopped: the connection closes here.
                    let _ = tx.send(Ok(conn));
                }
            });
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An accept that failed: a connection that went away before it was
/// accepted is nothing; running out of file descriptors (or any other
/// error) is logged, and accepting pauses a moment rather than spin.
async fn accept_failed(e: &io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) {
        return;
    }
    static BUDGET: crate::log_budget::LogBudget = crate::log_budget::LogBudget::new();
    if BUDGET.admit().is_some() {
        tracing::warn!(error = %e, "cannot accept connections (the open-file limit?)");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A connection that took longer than `--handshake-timeout` over `what`:
/// counted, and logged at debug (port scanners and broken clients do it
/// all day on a public port; the metric shows how often).
fn handshake_timed_out(peer: SocketAddr, what: &str) {
    crate::metrics::limit_hit("handshake_timeout");
    tracing::debug!(%peer, "connection closed: no {what} within the hub's --handshake-timeout");
}

/// One of the hub's connections: counts against `--max-connections` until
/// dropped, and fails its reads once the deadline passed before the
/// HTTP/2 preface was read through it (hyper then closes it).
#[derive(Debug)]
pub(crate) struct Conn<IO> {
    io: IO,
    /// Until the preface was read: the deadline, and how much was read.
    preface: Option<(Pin<Box<Sleep>>, usize)>,
    /// The deadline passed first: every read fails.
    timed_out: bool,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Conn<IO> {
    fn new(io: IO, permit: OwnedSemaphorePermit, deadline: Instant, peer: SocketAddr) -> Self {
        Self {
            io,
            preface: Some((Box::pin(tokio::time::sleep_until(deadline)), 0)),
            timed_out: false,
            peer,
            _permit: permit,
        }
    }
}

/// The same connection information as the stream under it: tonic puts it
/// in each request's extensions.
impl<IO: Connected> Connected for Conn<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Conn<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.timed_out {
            return Poll::Ready(Err(no_preface()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let Some((deadline, read)) = &mut self.preface else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                *read += buf.filled().len() - before;
                if *read >= PREFACE_LEN {
                    self.preface = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                (self.preface, self.timed_out) = (None, true);
                handshake_timed_out(self.peer, "HTTP/2 preface");
                Poll::Ready(Err(no_preface()))
            }
            polled => polled,
        }
    }
}

fn no_preface() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "no HTTP/2 preface within --handshake-timeout",
    )
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Conn<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Puts the plain `TcpConnectInfo` in a request that came over TLS, next
/// to its `TlsConnectInfo`, as tonic's own TLS does: the library reads it
/// for a tunnel's peer address.
pub(crate) fn tcp_info<B>(mut req: http::Request<B>) -> http::Request<B> {
    let tcp = req
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .map(|tls| tls.get_ref().clone());
    if let Some(tcp) = tcp {
        if req.extensions().get::<TcpConnectInfo>().is_none() {
            req.extensions_mut().insert(tcp);
        }
    }
    req
}

/// The hub's TLS: its identity, and optionally a CA whose client
/// certificates it accepts (not requires: callers and token agents come
/// without one); HTTP/2 by ALPN. As tonic's `ServerTlsConfig` builds it.
pub(crate) fn server_config(
    cert_chain: &[u8],
    key: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, String> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        server::WebPkiClientVerifier,
        RootCertStore,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = |pem: &[u8], what: &str| {
        CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what}: not PEM certificates: {e}"))
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add_parsable_certificates(certs(ca, "--client-ca")?);
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| format!("--client-ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| format!("--tls-key: not a PEM private key: {e}"))?;
    let mut config = builder
        .with_single_cert(certs(cert_chain, "--tls-cert")?, key)
        .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
