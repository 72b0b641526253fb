//! The whole case matrix (every RPC kind, metadata, errors with details,
//! deadlines, cancellation, sizes, concurrency, flow control) through a
//! forward tunnel between our channel and our endpoint, in each revision.

mod common;

use common::*;
use grpctunnel::{Revision, TunnelChannel, TunnelLayer};
use grpctunnel_testing::{
    cases::{run_cases, CaseOptions},
    Echo,
};

async fn matrix(server_rev: Revision, client_rev: Revision) {
    let server = tonic_server(
        TunnelLayer::new()
            .max_revision(server_rev)
            .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE),
        Echo::new(),
    )
    .await;
    let tunnel = TunnelChannel::builder()
        .max_revision(client_rev)
        .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE)
        .open(connect(server.addr).await)
        .await
        .expect("open tunnel");
    let flow_control = tunnel.revision() == Revision::One;
    let opts = CaseOptions {
        flow_control,
        ..CaseOptions::default()
    };
    let report = run_cases(tunnel.clone(), &opts).await;
    println!("{report}");
    assert!(report.is_success(), "{report}");
    assert!(!tunnel.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_revision_one() {
    bounded(matrix(Revision::One, Revision::One)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_revision_zero_forced_by_server() {
    bounded(matrix(Revision::Zero, Revision::One)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_revision_zero_forced_by_client() {
    bounded(matrix(Revision::One, Revision::Zero)).await
}
