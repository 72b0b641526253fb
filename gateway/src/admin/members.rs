//! `ListAgents` across a cluster: the hub asked asks every other member
//! over the relay links, each call proved with the cluster secret as a
//! relayed call is ([`grpctunnel::cluster::Cluster::member_call`]); and
//! [`MemberAdmin`], in front of the hub's service: the admin API on the
//! hub's own port, for members' proved `ListAgents` and for holders of an
//! `[[admin]]` credential.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use grpctunnel::cluster::{Cluster, RELAY_AUTH_HEADER};
use tower::Service;

use super::pb::{self, admin_client::AdminClient, admin_server::AdminServer};

/// The path of the one call members make of each other.
pub(crate) const LIST_AGENTS: &str = "/grpctunnel.admin.v1.Admin/ListAgents";

/// The admin API's path prefix.
const ADMIN_PREFIX: &str = "/grpctunnel.admin.v1.Admin/";

/// How long a member has to answer all its pages.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(10);

/// The agents of the member at `url` whose keys start with `prefix`,
/// every page.
pub(crate) async fn agents_of(
    cluster: &Cluster,
    url: &str,
    prefix: &str,
) -> Result<Vec<pb::Agent>, String> {
    let pages = async {
        let mut agents = Vec::new();
        let mut token = String::new();
        loop {
            // A proof is good for one call: one per page.
            let (channel, proof) = cluster
                .member_call(url, LIST_AGENTS)
                .map_err(|e| e.to_string())?;
            let mut req = tonic::Request::new(pb::ListAgentsRequest {
                key_prefix: prefix.to_owned(),
                page_size: 0,
                page_token: token,
                cluster: false,
            });
            let proof: tonic::metadata::AsciiMetadataValue = proof
                .to_str()
                .map_err(|e| e.to_string())?
                .parse()
                .map_err(|e: tonic::metadata::errors::InvalidMetadataValue| e.to_string())?;
            req.metadata_mut().insert(RELAY_AUTH_HEADER, proof);
            let page = AdminClient::new(channel)
                .list_agents(req)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            agents.extend(page.agents);
            if page.next_page_token.is_empty() {
                return Ok(agents);
            }
            token = page.next_page_token;
        }
    };
    tokio::time::timeout(MEMBER_TIMEOUT, pages)
        .await
        .map_err(|_| format!("no answer within {MEMBER_TIMEOUT:?}"))?
}

/// In front of the hub's service: the admin API on the hub's own port.
/// Another member's proved `ListAgents` is served (that call only); so is
/// any admin call that presents an `[[admin]]` credential (client
/// certificate or bearer token). Any other request to the admin API's
/// paths is `UNAUTHENTICATED`: it never reaches an agent. Every other
/// request goes on to `inner`.
#[derive(Clone)]
pub(crate) struct MemberAdmin<S> {
    inner: S,
    api: AdminServer<super::AdminApi>,
    cluster: Option<Cluster>,
    admins: crate::auth::Live,
}

impl<S> MemberAdmin<S> {
    pub(crate) fn new(
        inner: S,
        api: super::AdminApi,
        cluster: Option<Cluster>,
        admins: crate::auth::Live,
    ) -> Self {
        Self {
            inner,
            api: AdminServer::new(api),
            cluster,
            admins,
        }
    }

    /// Why `req`, a call to the admin API, may not be served; `None` when
    /// it may.
    fn refusal(&self, req: &http::Request<Body>) -> Option<tonic::Status> {
        let path = req.uri().path();
        if req.headers().contains_key(RELAY_AUTH_HEADER) {
            let Some(cluster) = &self.cluster else {
                return Some(tonic::Status::unauthenticated(
                    "member call refused: this hub is not in a cluster",
                ));
            };
            if path != LIST_AGENTS {
                return Some(tonic::Status::permission_denied(
                    "another hub may only list this hub's agents",
                ));
            }
            return cluster.check_member_call(req.headers(), path).err();
        }
        let token = super::access::presented_token(req.headers());
        let cert = crate::auth::Credentials::peer_cert_sha256(req.extensions());
        match self.admins.get().name_of(token.as_deref(), cert.as_deref()) {
            Some(name) => {
                tracing::info!(admin = %name, %path, "admin call on the hub's port");
                None
            }
            None => {
                crate::metrics::auth_failure("admin", "unknown_token");
                Some(tonic::Status::unauthenticated(
                    "the admin API needs an [[admin]] credential (bearer token or client certificate)",
                ))
            }
        }
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> Service<http::Request<Body>> for MemberAdmin<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures_util::future::Either<S::Future, BoxFuture>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if !req.uri().path().starts_with(ADMIN_PREFIX) {
            return futures_util::future::Either::Left(self.inner.call(req));
        }
        if let Some(status) = self.refusal(&req) {
            let resp = status.into_http::<Body>();
            return futures_util::future::Either::Right(Box::pin(std::future::ready(Ok(resp))));
        }
        let mut api = self.api.clone();
        futures_util::future::Either::Right(Box::pin(async move {
            let resp = api.call(req).await?;
            Ok(resp.map(Body::new))
        }))
    }
}
