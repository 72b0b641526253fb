//! The type-erased inner service that tunneled requests are dispatched to.

use bytes::Bytes;
use tower::{util::BoxCloneSyncService, ServiceExt};
use tower_service::Service;

use crate::{error::BoxError, server::RequestBody};

/// What a tunnel server calls for each tunneled stream.
pub(crate) type Dispatch =
    BoxCloneSyncService<http::Request<RequestBody>, http::Response<tonic::body::Body>, BoxError>;

/// Erases an inner service whose request body can be made from a [`RequestBody`].
pub(crate) fn dispatch<S, B, ResBody>(svc: S) -> Dispatch
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: From<RequestBody> + 'static,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    BoxCloneSyncService::new(
        svc.map_request(|req: http::Request<RequestBody>| req.map(B::from))
            .map_response(|resp: http::Response<ResBody>| resp.map(tonic::body::Body::new))
            .map_err(Into::into),
    )
}
