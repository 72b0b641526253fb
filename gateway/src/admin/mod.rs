//! The hub's admin API, `grpctunnel.admin.v1.Admin`
//! (`proto/grpctunnel/admin/v1/admin.proto`), served on its admin port
//! next to `/metrics` and `/healthz`, and the command-line client that
//! speaks it (`grpctunnel agents`, `watch`, `disconnect`, `drain`,
//! `stats`).

pub(crate) mod access;
mod agents;
pub(crate) mod cli;
mod dashboard;
mod members;
pub(crate) mod pb;
pub(crate) mod ping;
mod service;
pub(crate) mod session;

pub(crate) use members::MemberAdmin;
pub(crate) use service::AdminApi;

/// The admin service and the dashboard, as routes of the admin port's
/// router.
pub(crate) fn router(api: AdminApi) -> axum::Router {
    axum::Router::new()
        .route_service(
            "/grpctunnel.admin.v1.Admin/{*method}",
            pb::admin_server::AdminServer::new(api.clone()),
        )
        .merge(dashboard::router(api))
}
