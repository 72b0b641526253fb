//! Interop with the Go reference implementation (github.com/jhump/grpctunnel
//! v0.3.0), through the Go peer in `interop/`. Each combination is one named
//! test: our endpoint or registry against Go clients and agents, our channel
//! and agents against Go endpoints and registries; with the Go peer in its
//! default mode (revision one), with its flow control off, and without
//! negotiation (how a v0.2.0 peer behaves on the wire, see `GoMode`); and
//! with our side forced to revision zero.
//!
//! Without `go` on `PATH` these tests show as ignored, with the reason
//! (`build_support/probe.rs`); under `CI=true` they run and a missing
//! peer is a failure. A Go build that fails is always a failure.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../build_support/go_build.rs"]
mod go_build;
mod peer;

use common::*;
use grpctunnel::{
    reverse::ReverseTunnelRegistry, ReverseTunnelServer, Revision, TunnelChannel, TunnelLayer,
};
use grpctunnel_testing::{
    cases::{run_cases, CaseOptions, Report},
    Echo,
};
use peer::{assert_go_outcome, peer, GoMode};
use tonic::service::Routes;

/// Bound on one combination (the Go side bounds itself too).
const INTEROP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(180);

const MAX: usize = grpctunnel_testing::MAX_MESSAGE_SIZE;

fn assert_report(what: &str, report: &Report) {
    println!("{what}:\n{report}");
    assert!(report.is_success(), "{what}:\n{report}");
    assert!(report.passed() > 0);
}

fn expected_revision(go: GoMode, ours: Revision) -> Revision {
    if go == GoMode::Default && ours == Revision::One {
        Revision::One
    } else {
        Revision::Zero
    }
}

// ----- forward: Go client -> our endpoint ----------------------------------

async fn go_client_to_our_endpoint(go: GoMode, ours: Revision) {
    let peer = peer();
    let server = tonic_server(
        TunnelLayer::new().max_revision(ours).max_message_size(MAX),
        Echo::new(),
    )
    .await;
    let addr = server.addr.to_string();
    let mut args = vec!["--addr", addr.as_str()];
    args.extend_from_slice(go.args());
    let mut client = peer.start("forward-client", &args);
    let (outcome, status) = client.outcome().await;
    assert_go_outcome(
        &format!("Go client ({go:?}) -> our endpoint (max revision {ours})"),
        &outcome,
        status,
        expected_revision(go, ours),
    );
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_to_our_endpoint_revision_one() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_client_to_our_endpoint(GoMode::Default, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_to_our_endpoint_go_flow_control_off() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_client_to_our_endpoint(GoMode::NoFlowControl, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_to_our_endpoint_go_not_negotiating() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_client_to_our_endpoint(GoMode::NoNegotiate, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_client_to_our_endpoint_forced_revision_zero() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_client_to_our_endpoint(GoMode::Default, Revision::Zero),
    )
    .await
}

// ----- forward: our channel -> Go endpoint ---------------------------------

async fn our_channel_to_go_endpoint(go: GoMode, ours: Revision) {
    let peer = peer();
    let mut server = peer.start("serve-forward", go.args());
    let addr = server.listening().await;
    let tunnel = TunnelChannel::builder()
        .max_revision(ours)
        .max_message_size(MAX)
        .open(connect(addr).await)
        .await
        .expect("open a tunnel to the Go endpoint");
    assert_eq!(tunnel.revision(), expected_revision(go, ours));
    let opts = CaseOptions {
        flow_control: tunnel.revision() == Revision::One,
        ..CaseOptions::default()
    };
    let report = run_cases(tunnel.clone(), &opts).await;
    assert_report(
        &format!("our channel (max revision {ours}) -> Go endpoint ({go:?})"),
        &report,
    );
    tunnel.close();
    server.stop().await;
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_channel_to_go_endpoint_revision_one() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_channel_to_go_endpoint(GoMode::Default, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_channel_to_go_endpoint_go_flow_control_off() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_channel_to_go_endpoint(GoMode::NoFlowControl, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_channel_to_go_endpoint_go_not_negotiating() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_channel_to_go_endpoint(GoMode::NoNegotiate, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_channel_to_go_endpoint_forced_revision_zero() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_channel_to_go_endpoint(GoMode::Default, Revision::Zero),
    )
    .await
}

// ----- reverse: Go agents -> our registry ----------------------------------

async fn go_agents_to_our_registry(go: GoMode, ours: Revision) {
    let peer = peer();
    let registry = ReverseTunnelRegistry::with_key(|h, _| {
        h.get("x-agent-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    });
    let server = tonic_server(
        TunnelLayer::new()
            .reverse(registry.clone())
            .max_revision(ours)
            .max_message_size(MAX),
        Echo::new(),
    )
    .await;
    let addr = server.addr.to_string();
    let mut agents = Vec::new();
    for key in ["go-1", "go-2"] {
        let mut args = vec!["--addr", addr.as_str(), "--key", key];
        args.extend_from_slice(go.args());
        let mut agent = peer.start("reverse-client", &args);
        agent.expect_line("SERVING").await;
        agents.push(agent);
    }
    for key in ["go-1", "go-2"] {
        registry.wait_for(Some(&key.to_owned())).await;
    }
    let revision = registry.tunnels()[0].channel().revision();
    assert_eq!(revision, expected_revision(go, ours));
    let opts = CaseOptions {
        flow_control: revision == Revision::One,
        ..CaseOptions::default()
    };
    let what = format!("our registry (max revision {ours}) -> Go agents ({go:?})");
    // Every case through each key (one Go agent each).
    for key in ["go-1", "go-2"] {
        assert_report(
            &format!("{what}, key {key}"),
            &run_cases(registry.get(&key.to_owned()), &opts).await,
        );
    }
    // Round-robin over both agents: the cases that do not ask the handler's
    // agent about an earlier call (CheckHandler is per agent).
    let stateless: Vec<String> = grpctunnel_testing::CASE_NAMES
        .iter()
        .filter(|c| !matches!(**c, "deadline" | "cancel" | "slow_consumer"))
        .map(|c| c.to_string())
        .collect();
    let pool_opts = CaseOptions {
        only: Some(stateless),
        ..opts.clone()
    };
    assert_report(
        &format!("{what}, round-robin"),
        &run_cases(registry.channel(), &pool_opts).await,
    );
    for tunnel in registry.tunnels() {
        tunnel.channel().close();
    }
    for mut agent in agents {
        agent.expect_line("ENDED").await;
        agent.stop().await;
    }
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agents_to_our_registry_revision_one() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_agents_to_our_registry(GoMode::Default, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agents_to_our_registry_go_flow_control_off() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_agents_to_our_registry(GoMode::NoFlowControl, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agents_to_our_registry_go_not_negotiating() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_agents_to_our_registry(GoMode::NoNegotiate, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_agents_to_our_registry_forced_revision_zero() {
    bounded_for(
        INTEROP_TIMEOUT,
        go_agents_to_our_registry(GoMode::Default, Revision::Zero),
    )
    .await
}

// ----- reverse: our agents -> Go registry ----------------------------------

async fn our_agents_to_go_registry(go: GoMode, ours: Revision) {
    let peer = peer();
    let mut args = vec!["--tunnels", "2", "--key-header", "x-agent-key"];
    args.extend_from_slice(go.args());
    let mut hub = peer.start("reverse-server", &args);
    let addr = hub.listening().await;
    let mut agents = Vec::new();
    for key in ["rust-1", "rust-2"] {
        let agent = ReverseTunnelServer::new(Routes::new(Echo::new().server()))
            .metadata("x-agent-key", key)
            .max_revision(ours)
            .max_message_size(MAX);
        let transport = connect(addr).await;
        agents.push(tokio::spawn(async move { agent.serve(transport).await }));
    }
    let (outcome, status) = hub.outcome().await;
    assert_go_outcome(
        &format!("Go registry ({go:?}) -> our agents (max revision {ours})"),
        &outcome,
        status,
        expected_revision(go, ours),
    );
    for agent in agents {
        // The Go hub exits after its matrix, ending the tunnels.
        let _ = agent.await.expect("agent task");
    }
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agents_to_go_registry_revision_one() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_agents_to_go_registry(GoMode::Default, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agents_to_go_registry_go_flow_control_off() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_agents_to_go_registry(GoMode::NoFlowControl, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agents_to_go_registry_go_not_negotiating() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_agents_to_go_registry(GoMode::NoNegotiate, Revision::One),
    )
    .await
}

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_agents_to_go_registry_forced_revision_zero() {
    bounded_for(
        INTEROP_TIMEOUT,
        our_agents_to_go_registry(GoMode::Default, Revision::Zero),
    )
    .await
}

// ----- the Go harness against itself ---------------------------------------

#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (the Go interop peer, built from the Go module proxy)"
)]
#[test]
fn go_harness_self_test() {
    peer();
    let status = std::process::Command::new("go")
        .args(["test", "./..."])
        .current_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("interop"))
        .status()
        .expect("run go test");
    assert!(status.success(), "go test ./... in interop/: {status}");
}
