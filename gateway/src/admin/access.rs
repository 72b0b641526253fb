//! Who may use the hub's admin port beyond loopback.
//!
//! On a loopback address the admin port is open, as before: whoever can
//! reach it is on the machine already. Beyond loopback (Prometheus in a
//! cluster scrapes pod addresses) the hub serves it over TLS, with its own
//! certificate, and every request needs an `[[admin]]` credential of the
//! config: a client certificate bound by `cert_sha256`, or the token, as
//! `authorization: Bearer <token>` (the CLI, scripts) or as the password
//! of HTTP Basic authentication (a browser asks for it; the user name is
//! not looked at). `/metrics` and `/healthz` too, unless
//! `--admin-open-metrics` opens those two. A refusal is `401` (gRPC:
//! `UNAUTHENTICATED`), counted in `grpctunnel_auth_failures_total{who="admin"}`.
//! A reload (SIGHUP) that drops a credential refuses it from the next
//! request on.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use tokio::net::TcpListener;
use tokio_rustls::{rustls::ServerConfig, TlsAcceptor};

use crate::{auth::Live, Failure};

/// Most admin connections open at once beyond loopback.
const MAX_CONNECTIONS: usize = 64;

/// Longest an admin connection may take to finish its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// The SHA-256 (lowercase hex) of an admin connection's client
/// certificate: a request extension.
#[derive(Debug, Clone)]
pub(crate) struct PeerCert(pub(crate) String);

/// The admin port's access rule.
#[derive(Clone)]
pub(crate) struct AdminAccess {
    pub(crate) admins: Live,
    /// `/metrics` and `/healthz` need no credential.
    pub(crate) open_metrics: bool,
}

impl AdminAccess {
    /// `app` behind this rule.
    pub(crate) fn guard(self, app: Router) -> Router {
        app.layer(axum::middleware::from_fn_with_state(self, check))
    }
}

/// The token a request presents: `Bearer <token>`, or HTTP Basic with the
/// token as its password.
pub(crate) fn presented_token(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    if let Some(token) = value.strip_prefix("Bearer ") {
        return Some(token.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned())
}

async fn check(State(access): State<AdminAccess>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if access.open_metrics && (path == "/metrics" || path == "/healthz") {
        return next.run(req).await;
    }
    let cert = req.extensions().get::<PeerCert>().map(|c| c.0.clone());
    let token = presented_token(req.headers());
    if let Some(name) = access
        .admins
        .get()
        .name_of(token.as_deref(), cert.as_deref())
    {
        tracing::debug!(admin = %name, %path, "admin request");
        return next.run(req).await;
    }
    crate::metrics::auth_failure("admin", "unknown_token");
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        return tonic::Status::unauthenticated(
            "the admin API needs an [[admin]] credential (bearer token or client certificate)",
        )
        .into_http::<axum::body::Body>();
    }
    (
        http::StatusCode::UNAUTHORIZED,
        [(
            http::header::WWW_AUTHENTICATE,
            "Basic realm=\"grpctunnel admin\", charset=\"UTF-8\"",
        )],
        "an [[admin]] credential is needed: a client certificate, or the token (Bearer, or as the Basic password)\n",
    )
        .into_response()
}

/// Serves `app` over TLS (`tls`, with HTTP/1.1 as well as HTTP/2 for
/// browsers and scrapers) on `listener` until `stop` resolves; each
/// request carries its connection's [`PeerCert`], if any.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), Failure> {
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "admin port: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            crate::metrics::limit_hit("max_admin_connections");
            continue;
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await else {
                return;
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|leaf| crate::auth::sha256_hex(leaf.as_ref()));
            serve_connection(tls, peer, cert, app).await;
        });
    }
}

async fn serve_connection<IO>(io: IO, peer: SocketAddr, cert: Option<String>, app: Router)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = tower::ServiceExt::map_request(
        app,
        move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            if let Some(cert) = &cert {
                req.extensions_mut().insert(PeerCert(cert.clone()));
            }
            req
        },
    );
    let service = hyper_util::service::TowerToHyperService::new(service);
    let served = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "admin connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::presented_token;

    #[test]
    fn tokens_come_as_bearer_or_as_the_basic_password() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("abc"));
        // "anyone:s3cret"
        headers.insert(
            "authorization",
            "Basic YW55b25lOnMzY3JldA==".parse().unwrap(),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"));
        headers.insert("authorization", "Basic !!!".parse().unwrap());
        assert_eq!(presented_token(&headers), None);
    }
}
