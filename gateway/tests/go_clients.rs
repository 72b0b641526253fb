//! Real gRPC clients and servers of another language through the gateway:
//! grpc-go v1.85.0's interop client → hub → agent → grpc-go's interop
//! server, every case of grpc-go's standard interop list; gzip-compressed
//! calls both ways (grpc-go's gzip compressor); and grpcurl listing and
//! calling an agent's server by server reflection. The Go programs are
//! built from the module proxy (see `common/go_programs.rs`).

mod common;

use std::{process::Stdio, time::Duration};

use common::{
    cluster::{cluster_agent, cluster_files, cluster_hub},
    go_programs::go_programs,
    store::Store,
    *,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

/// grpc-go's standard interop cases (`interop/interop_test.sh` in
/// google.golang.org/grpc v1.85.0), in its order.
const STANDARD_CASES: &[&str] = &[
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "status_code_and_message",
    "special_status_message",
    "custom_metadata",
    "unimplemented_method",
    "unimplemented_service",
    "orca_per_rpc",
    "orca_oob",
    "rpc_soak",
    "channel_soak",
];

/// As `interop_test.sh` runs them: the ORCA cases need this LB policy.
const SERVICE_CONFIG: &str =
    r#"{ "loadBalancingConfig": [{ "test_backend_metrics_load_balancer": {} }]}"#;

/// Bound on one interop case (the soak cases bound themselves at 10 s).
const CASE_TIMEOUT: Duration = Duration::from_secs(90);

/// Bound on a whole suite.
const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

async fn bounded_suite<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(SUITE_TIMEOUT, fut)
        .await
        .expect("suite timed out")
}

/// grpc-go's interop server on a free port, once it listens.
async fn interop_server(bin: &std::path::Path) -> (Child, std::net::SocketAddr) {
    let port = free_port();
    let mut child = Command::new(bin)
        .args(["--port", &port.to_string()])
        .env("GRPC_GO_LOG_SEVERITY_LEVEL", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the interop server");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    bounded(async {
        while let Some(line) = lines.next_line().await.expect("stderr") {
            if line.contains("interop server listening") {
                return;
            }
        }
        panic!("the interop server ended before listening");
    })
    .await;
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, ([127, 0, 0, 1], port).into())
}

/// A Go program that prints `LISTENING <addr>` (our `upstream`).
async fn listening_child(bin: &std::path::Path) -> (Child, std::net::SocketAddr) {
    let mut child = Command::new(bin)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the Go upstream");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let addr = bounded(async {
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                return addr.parse().expect("an address");
            }
        }
        panic!("the Go upstream ended before listening");
    })
    .await;
    (child, addr)
}

/// Runs a program to its end (bounded); returns whether it exited 0 and
/// its output.
async fn run(bin: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        CASE_TIMEOUT,
        Command::new(bin).args(args).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{} {args:?} hung", bin.display()))
    .expect("run a Go program");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs each case with `client` and the common `args`; asserts all pass.
async fn run_cases(client: &std::path::Path, cases: &[&str], args: &[&str]) {
    let mut failed = Vec::new();
    for case in cases {
        let test_case = format!("--test_case={case}");
        let service_config = format!("--service_config_json={SERVICE_CONFIG}");
        let mut all = args.to_vec();
        all.extend_from_slice(&[&test_case, &service_config]);
        let (ok, output) = run(client, &all).await;
        if ok {
            println!("PASS {case}");
        } else {
            let tail: Vec<&str> = output.lines().rev().take(5).collect();
            println!("FAIL {case}:\n{}", tail.join("\n"));
            failed.push(*case);
        }
    }
    println!(
        "{} of {} cases passed",
        cases.len() - failed.len(),
        cases.len()
    );
    assert!(failed.is_empty(), "failed cases: {failed:?}");
}

/// Plain gRPC to the hub, routed by the `grpctunnel-key` header, which the
/// interop client adds to the calls it makes. Every case but `orca_oob`:
/// its out-of-band stream is opened by grpc-go's load-reporting producer,
/// which adds no per-call metadata, so only `:authority` routing (the TLS
/// test below) can carry it to the right agent.
#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (grpc-go's interop programs, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_interop_cases_through_hub_and_agent_by_key_header() {
    let go = go_programs();
    bounded_suite(async {
        let dir = temp_dir();
        let (_server, upstream) = interop_server(&go.bin("server")).await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let mut agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        bounded(agent.log_line("tunnel open")).await;
        let cases: Vec<&str> = STANDARD_CASES
            .iter()
            .copied()
            .filter(|c| *c != "orca_oob")
            .collect();
        let port = addr.port().to_string();
        run_cases(
            &go.bin("client"),
            &cases,
            &[
                "--server_host=127.0.0.1",
                &format!("--server_port={port}"),
                // The hub registers a tunnel a moment after the agent logs
                // it open: the first call waits for it.
                "--additional_metadata=grpctunnel-key:plant-7;grpctunnel-wait:true",
            ],
        )
        .await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// TLS to the hub, routed by `:authority` (`plant-7.hub.test`, the TLS
/// server name the client asks for, under the hub's `--authority-suffix`):
/// every standard case, the client unchanged but for its TLS settings.
#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (grpc-go's interop programs, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_interop_cases_over_tls_routed_by_authority() {
    let go = go_programs();
    bounded_suite(async {
        let dir = temp_dir();
        let certs = certificates(&dir);
        let (_server, upstream) = interop_server(&go.bin("server")).await;
        let flags = [
            "--tls-cert",
            certs.hub_cert.as_str(),
            "--tls-key",
            certs.hub_key.as_str(),
            "--authority-suffix",
            "hub.test",
        ];
        let (_hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &flags).await;
        let token = dir.join("agent.token");
        std::fs::write(&token, AGENT_TOKEN).expect("token");
        let mut agent = Process::spawn(&[
            "agent",
            "--hub",
            &format!("https://127.0.0.1:{}", addr.port()),
            "--ca-file",
            &certs.ca,
            "--key",
            "plant-7",
            "--token-file",
            &token.display().to_string(),
            "--upstream",
            &format!("http://{upstream}"),
        ]);
        bounded(agent.log_line("tunnel open")).await;
        let port = addr.port().to_string();
        run_cases(
            &go.bin("client"),
            STANDARD_CASES,
            &[
                "--server_host=127.0.0.1",
                &format!("--server_port={port}"),
                "--use_tls",
                "--use_test_ca",
                &format!("--ca_file={}", certs.ca),
                "--server_host_override=plant-7.hub.test",
                "--additional_metadata=grpctunnel-wait:true",
            ],
        )
        .await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// gzip both ways: grpc-go compresses its requests (the hub inflates them),
/// the upstream compresses its responses (the agent, asked with
/// `--upstream-accept-gzip`, inflates them) and the hub compresses them
/// again toward the caller, which accepts gzip. `gzipcall` checks each
/// hop from grpc-go's stats and the upstream's marker header.
#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (grpc-go's interop programs, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_calls_both_ways_with_grpc_go() {
    let go = go_programs();
    bounded_suite(async {
        let dir = temp_dir();
        let (_upstream, upstream) = listening_child(&go.bin("upstream")).await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let mut agent = agent_with(
            &dir,
            addr,
            "plant-7",
            AGENT_TOKEN,
            upstream,
            &["--upstream-accept-gzip"],
        );
        bounded(agent.log_line("tunnel open")).await;
        let hub_addr = addr.to_string();
        let (ok, output) = run(
            &go.bin("gzipcall"),
            &["--addr", &hub_addr, "--key", "plant-7"],
        )
        .await;
        println!("{output}");
        assert!(ok, "gzip calls failed:\n{output}");
        assert_eq!(output.matches("PASS ").count(), 4, "{output}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// grpcurl, unchanged, lists and describes the agent's server by
/// reflection through the hub and calls a method by name; an unknown key
/// is an error naming it.
#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (grpc-go's interop programs, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_calls_through_the_hub_by_reflection() {
    let go = go_programs();
    bounded_suite(async {
        let dir = temp_dir();
        let (_upstream, upstream) = listening_child(&go.bin("upstream")).await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let mut agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        bounded(agent.log_line("tunnel open")).await;
        let grpcurl = go.bin("grpcurl");
        let hub = addr.to_string();
        let key = [
            "-plaintext",
            "-H",
            "grpctunnel-key: plant-7",
            "-H",
            "grpctunnel-wait: true",
        ];
        let grpcurl_with = |more: &[&str]| -> Vec<String> {
            key.iter()
                .chain(more)
                .chain([&hub.as_str()])
                .map(|s| s.to_string())
                .collect()
        };
        let call = |args: Vec<String>| {
            let grpcurl = grpcurl.clone();
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                run(&grpcurl, &args).await
            }
        };

        let (ok, listed) = call(
            grpcurl_with(&[])
                .into_iter()
                .chain(["list".into()])
                .collect(),
        )
        .await;
        assert!(ok, "grpcurl list:\n{listed}");
        assert!(
            listed.lines().any(|l| l == "grpc.testing.TestService"),
            "{listed}"
        );

        let (ok, described) = call(
            grpcurl_with(&[])
                .into_iter()
                .chain(["describe".into(), "grpc.testing.TestService".into()])
                .collect(),
        )
        .await;
        assert!(ok, "grpcurl describe:\n{described}");
        assert!(described.contains("rpc UnaryCall"), "{described}");

        let (ok, answer) = call(
            grpcurl_with(&["-d", r#"{"response_size": 5}"#])
                .into_iter()
                .chain(["grpc.testing.TestService/UnaryCall".into()])
                .collect(),
        )
        .await;
        assert!(ok, "grpcurl call:\n{answer}");
        // Five zero bytes, base64 in grpcurl's JSON.
        assert!(answer.contains(r#""body": "AAAAAAA=""#), "{answer}");

        let (ok, refused) = call(vec![
            "-plaintext".into(),
            "-H".into(),
            "grpctunnel-key: plant-9".into(),
            hub.clone(),
            "list".into(),
        ])
        .await;
        assert!(!ok, "an unknown key must fail:\n{refused}");
        assert!(refused.contains("plant-9"), "{refused}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// Relayed between hubs: the interop client calls hub A, whose cluster
/// relays every call to hub B in its relay tunnel, where the agent in front of grpc-go's
/// interop server is connected. Every case of the key-header run
/// (deadlines, cancellation, metadata, trailers, status details, large
/// and streaming messages, soak) crosses the relay.
#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (grpc-go's interop programs, built from the Go module proxy)"
)]
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_go_interop_cases_relayed_between_hubs() {
    let go = go_programs();
    let store = Store::start().await;
    bounded_suite(async {
        let dir = temp_dir();
        let (_server, upstream) = interop_server(&go.bin("server")).await;
        let files = cluster_files(&dir, &["plant-7".to_owned()]);
        let (_a, a) = cluster_hub(&files, &store.url(), free_port(), "tunnel").await;
        let (_b, b) = cluster_hub(&files, &store.url(), free_port(), "tunnel").await;
        let _agent = cluster_agent(&dir, &[b], "plant-7", upstream).await;
        let cases: Vec<&str> = STANDARD_CASES
            .iter()
            .copied()
            .filter(|c| *c != "orca_oob")
            .collect();
        let port = a.port().to_string();
        run_cases(
            &go.bin("client"),
            &cases,
            &[
                "--server_host=127.0.0.1",
                &format!("--server_port={port}"),
                "--additional_metadata=grpctunnel-key:plant-7;grpctunnel-wait:true",
            ],
        )
        .await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
    store.kill().await;
}

/// The README's first minute, as a new user types it: `grpctunnel token`
/// twice into hub.toml, a hub, an agent, then grpcurl (unchanged, from the
/// Go module proxy) listing the private server's services through the
/// hub with the caller's token; without the token, grpcurl is refused.
#[cfg_attr(
    missing_go,
    ignore = "needs `go` on PATH (grpcurl, built from the Go module proxy)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_first_minute_with_grpcurl() {
    let go = go_programs();
    bounded_suite(async {
        let dir = temp_dir();
        let (_upstream, upstream) = listening_child(&go.bin("upstream")).await;
        let FirstMinute {
            addr,
            caller_file: caller_token,
            hub: _hub,
            agent: _agent,
            ..
        } = first_minute(&dir, upstream).await;
        let token = std::fs::read_to_string(&caller_token).expect("the caller's token");
        let bearer = format!("authorization: Bearer {}", token.trim());
        let hub_addr = addr.to_string();
        let grpcurl = go.bin("grpcurl");
        let (ok, listed) = run(
            &grpcurl,
            &[
                "-plaintext",
                "-H",
                "grpctunnel-key: plant-7",
                "-H",
                &bearer,
                &hub_addr,
                "list",
            ],
        )
        .await;
        assert!(ok, "grpcurl list:\n{listed}");
        assert!(
            listed.lines().any(|l| l == "grpc.testing.TestService"),
            "{listed}"
        );
        let (ok, refused) = run(
            &grpcurl,
            &[
                "-plaintext",
                "-H",
                "grpctunnel-key: plant-7",
                &hub_addr,
                "list",
            ],
        )
        .await;
        assert!(!ok, "no caller token, no listing:\n{refused}");
        assert!(refused.contains("Unauthenticated"), "{refused}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
