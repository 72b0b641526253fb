//! A stand-in for a replica: a plain HTTP/2 (h2c) server that records each
//! request it is sent (path and headers) and answers it `UNAVAILABLE`.
//! Pointed at by a forged store entry it shows what a hub would give away;
//! as the address a hub advertises it is a wire tap that withholds what it
//! captured, for the test to replay.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

/// One request the recorder was sent.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: http::HeaderMap,
}

pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Recorded>>>,
    _stop: oneshot::Sender<()>,
}

impl Recorder {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tx = seen.clone();
        let record = tower::service_fn(move |req: http::Request<axum::body::Body>| {
            tx.lock().expect("not poisoned").push(Recorded {
                path: req.uri().path().to_owned(),
                headers: req.headers().clone(),
            });
            std::future::ready(Ok::<_, std::convert::Infallible>(
                tonic::Status::unavailable("recorded, not served").into_http::<axum::body::Body>(),
            ))
        });
        let routes = tonic::service::Routes::from(axum::Router::new().fallback_service(record));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Self {
            addr,
            seen,
            _stop: stop,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything recorded since the last drain.
    pub fn drain(&self) -> Vec<Recorded> {
        std::mem::take(&mut *self.seen.lock().expect("not poisoned"))
    }
}
