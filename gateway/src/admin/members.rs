//! `ListAgents` across a cluster: the hub asked asks every other member
//! over the relay links, each call proved with the cluster secret as a
//! relayed call is ([`grpctunnel::cluster::Cluster::member_call`]); and
//! the members' side, [`MemberAdmin`], in front of the hub's service: a
//! call to the admin API that carries such a proof is checked and, if it
//! holds, served (`ListAgents` of this hub only; nothing else).

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

/// In front of the hub's service: another member's proved `ListAgents`
/// is served here; every other request goes on to `inner`.
#[derive(Clone)]
pub(crate) struct MemberAdmin<S> {
    inner: S,
    members: Option<(Cluster, AdminServer<super::AdminApi>)>,
}

impl<S> MemberAdmin<S> {
    /// `members`: the cluster whose proofs are checked, and the API that
    /// answers them (none outside a cluster: nothing is intercepted).
    pub(crate) fn new(inner: S, members: Option<(Cluster, super::AdminApi)>) -> Self {
        Self {
            inner,
            members: members.map(|(c, api)| (c, AdminServer::new(api))),
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
        let path = req.uri().path();
        let proved = req.headers().contains_key(RELAY_AUTH_HEADER);
        let Some((cluster, api)) = &self.members else {
            return futures_util::future::Either::Left(self.inner.call(req));
        };
        if !(proved && path.starts_with(ADMIN_PREFIX)) {
            return futures_util::future::Either::Left(self.inner.call(req));
        }
        let refused = if path != LIST_AGENTS {
            Some(tonic::Status::permission_denied(
                "another hub may only list this hub's agents",
            ))
        } else {
            cluster.check_member_call(req.headers(), path).err()
        };
        if let Some(status) = refused {
            let resp = status.into_http::<Body>();
            return futures_util::future::Either::Right(Box::pin(std::future::ready(Ok(resp))));
        }
        let mut api = api.clone();
        futures_util::future::Either::Right(Box::pin(async move {
            let resp = api.call(req).await?;
            Ok(resp.map(Body::new))
        }))
    }
}
