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
    // Revision one only when both ends offer it (P-17): a silent fallback
    // to revision zero would skip the flow-control cases and still pass.
    let expected = if server_rev == Revision::One && client_rev == Revision::One {
        Revision::One
    } else {
        Revision::Zero
    };
    assert_eq!(tunnel.revision(), expected, "negotiated revision");
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

/// The matrix again with 256 KiB HTTP/2 frames on both ends (the README's
/// tuning advice): whole chunk frames then arrive within one HTTP/2 frame
/// and are decoded in place rather than gathered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_over_large_http2_frames() {
    const FRAME: u32 = 256 * 1024;
    bounded(async {
        let (listener, addr) = listener().await;
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .max_frame_size(Some(FRAME))
                .layer(TunnelLayer::new().max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE))
                .add_service(Echo::new().server())
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let transport = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .max_frame_size(FRAME)
            .connect()
            .await
            .expect("connect");
        let tunnel = TunnelChannel::builder()
            .max_message_size(grpctunnel_testing::MAX_MESSAGE_SIZE)
            .open(transport)
            .await
            .expect("open tunnel");
        let report = run_cases(tunnel.clone(), &CaseOptions::default()).await;
        println!("{report}");
        assert!(report.is_success(), "{report}");
        assert!(!tunnel.is_closed());
        server.abort();
    })
    .await
}
