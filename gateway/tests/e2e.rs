//! The gateway end to end, as real processes on loopback: an upstream gRPC
//! server (the echo service, in this test process), `grpctunnel agent`
//! next to it, `grpctunnel hub`, and callers that reach the upstream
//! through the hub by key.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    time::{Duration, SystemTime},
};

use grpctunnel_testing::{
    pb::{echo_service_client::EchoServiceClient, EchoRequest},
    Echo,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::mpsc,
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{service::interceptor::InterceptedService, transport::Channel, Code};

const BIN: &str = env!("CARGO_BIN_EXE_grpctunnel");

/// Bounds a test: a hang fails instead of blocking CI.
async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test timed out")
}

/// A fresh directory under the system's temp dir.
fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("grpctunnel-e2e-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The echo service on a free loopback port.
async fn upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Echo::new().server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// A running `grpctunnel` process, killed when dropped; its stderr lines
/// arrive on `logs`.
struct Process {
    child: Child,
    logs: mpsc::UnboundedReceiver<String>,
    admin: Option<SocketAddr>,
}

impl Process {
    fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start grpctunnel");
        let (tx, logs) = mpsc::unbounded_channel();
        let stderr = child.stderr.take().expect("stderr");
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            logs,
            admin: None,
        }
    }

    /// The hub's `LISTENING <addr>` line (after `ADMIN <addr>`, if any,
    /// which is kept in `admin`).
    async fn listening(&mut self) -> SocketAddr {
        let stdout = self.child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(addr) = line.strip_prefix("ADMIN ") {
                self.admin = Some(addr.parse().expect("an address"));
            }
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                return addr.parse().expect("an address");
            }
        }
        panic!("the hub ended without listening");
    }

    /// Waits for a log line containing `text`; returns it.
    async fn log_line(&mut self, text: &str) -> String {
        while let Some(line) = self.logs.recv().await {
            if line.contains(text) {
                return line;
            }
        }
        panic!("the process ended without logging {text:?}");
    }

    /// Sends SIGTERM and returns the exit code.
    async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        self.child.wait().await.expect("exit status").code()
    }
}

/// A hub whose config lets `token` register `keys`.
async fn hub(dir: &std::path::Path, token: &str, keys: &[&str]) -> (Process, SocketAddr) {
    hub_with(dir, token, keys, &[]).await
}

/// [`hub`] with more flags.
async fn hub_with(
    dir: &std::path::Path,
    token: &str,
    keys: &[&str],
    extra: &[&str],
) -> (Process, SocketAddr) {
    hub_full(dir, token, keys, "", extra).await
}

/// [`hub`] with more config (appended to the agent's) and more flags.
async fn hub_full(
    dir: &std::path::Path,
    token: &str,
    keys: &[&str],
    more_config: &str,
    extra: &[&str],
) -> (Process, SocketAddr) {
    let token_file = dir.join("hub-agent.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let config = dir.join("hub.toml");
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    std::fs::write(
        &config,
        format!(
            "[[agent]]\ntoken_file = {:?}\nkeys = [{}]\n{more_config}",
            token_file.display().to_string(),
            keys.join(", ")
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let mut args = vec!["hub", "--listen", "127.0.0.1:0", "--config", &config];
    args.extend_from_slice(extra);
    let mut hub = Process::spawn(&args);
    let addr = hub.listening().await;
    (hub, addr)
}

fn agent(
    dir: &std::path::Path,
    hub: SocketAddr,
    key: &str,
    token: &str,
    upstream: SocketAddr,
) -> Process {
    agent_with(dir, hub, key, token, upstream, &[])
}

/// [`agent`] with more flags.
fn agent_with(
    dir: &std::path::Path,
    hub: SocketAddr,
    key: &str,
    token: &str,
    upstream: SocketAddr,
    extra: &[&str],
) -> Process {
    // One file per agent: two agents of one key may hold different tokens.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let token_file = dir.join(format!("agent-{key}-{n}.token"));
    std::fs::write(&token_file, token).expect("token file");
    let hub = format!("http://{hub}");
    let token_file = token_file.display().to_string();
    let upstream = format!("http://{upstream}");
    let mut args = vec![
        "agent",
        "--hub",
        &hub,
        "--key",
        key,
        "--token-file",
        &token_file,
        "--upstream",
        &upstream,
    ];
    args.extend_from_slice(extra);
    Process::spawn(&args)
}

/// Adds the routing headers to each call.
type AddKey =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Caller = EchoServiceClient<InterceptedService<Channel, AddKey>>;

/// A plain gRPC client of the hub, for `key`; `wait` asks calls to wait for
/// the agent.
async fn caller(hub: SocketAddr, key: &'static str, wait: bool) -> Caller {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{hub}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the hub");
    let add_key: AddKey = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("grpctunnel-key", key.parse().expect("ascii"));
        if wait {
            req.metadata_mut()
                .insert("grpctunnel-wait", "true".parse().expect("ascii"));
        }
        Ok(req)
    });
    EchoServiceClient::with_interceptor(channel, add_key)
}

fn hello(payload: &str) -> tonic::Request<EchoRequest> {
    let mut req = tonic::Request::new(EchoRequest {
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(20));
    req
}

#[tokio::test]
async fn calls_reach_the_upstream_through_hub_and_agent() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub, addr) = hub(&dir, "s3cret-7", &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
        // Waits for the agent (an event: its tunnel registering), bounded by
        // the call's deadline.
        let mut plant = caller(addr, "plant-7", true).await;
        let reply = plant.unary(hello("via the hub")).await.expect("unary");
        assert_eq!(reply.into_inner().payload.as_ref(), b"via the hub");

        let mut stream = plant
            .server_stream(EchoRequest {
                repeat: 3,
                response_size: 100_000,
                ..Default::default()
            })
            .await
            .expect("server stream")
            .into_inner();
        let mut got = 0;
        while let Some(msg) = stream.message().await.expect("message") {
            assert_eq!(msg.payload.len(), 100_000);
            got += 1;
        }
        assert_eq!(got, 3);

        // A key nobody registered, without waiting: UNAVAILABLE naming it.
        let mut nobody = caller(addr, "plant-9", false).await;
        let err = nobody.unary(hello("x")).await.expect_err("no agent");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("plant-9"), "{err:?}");

        assert_eq!(hub.terminate().await, Some(0), "clean exit on SIGTERM");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn an_agent_cannot_register_a_key_its_credential_is_not_bound_to() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (mut hub, addr) = hub(&dir, "s3cret-7", &["plant-7"]).await;
        // The right token, another key: refused and logged.
        let _thief = agent(&dir, addr, "plant-8", "s3cret-7", upstream);
        let line = hub.log_line("agent refused").await;
        assert!(line.contains("plant-8"), "{line}");
        // A wrong token: refused too.
        let _stranger = agent(&dir, addr, "plant-7", "guess", upstream);
        let line = hub.log_line("unknown or missing bearer token").await;
        assert!(line.contains("plant-7"), "{line}");
        // Nothing registered: calls for either key find no agent.
        for key in ["plant-7", "plant-8"] {
            let mut client = caller(addr, key, false).await;
            let err = client.unary(hello("x")).await.expect_err("no agent");
            assert_eq!(err.code(), Code::Unavailable, "{key}: {err:?}");
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn the_hub_refuses_to_listen_beyond_loopback_and_needs_agents() {
    bounded(async {
        let dir = temp_dir();
        let config = dir.join("hub.toml");
        std::fs::write(&config, "[[agent]]\ntoken = \"t\"\nkeys = [\"k\"]\n").expect("config");
        let config = config.display().to_string();
        // Beyond loopback: refused without TLS and caller credentials (it
        // never binds, so no traffic leaves loopback).
        let out = Command::new(BIN)
            .args(["hub", "--listen", "0.0.0.0:0", "--config", &config])
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("without TLS"), "{text}");
        // An agent will not send its token in the clear beyond loopback.
        let token = dir.join("agent.token");
        std::fs::write(&token, "t").expect("token");
        let out = Command::new(BIN)
            .args(["agent", "--hub", "http://hub.example:8443", "--key", "k"])
            .args(["--token-file", &token.display().to_string()])
            .args(["--upstream", "http://127.0.0.1:1"])
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("in the clear"), "{text}");
        let _ = std::fs::remove_dir_all(dir);

        let out = Command::new(BIN)
            .args(["hub", "--listen", "127.0.0.1:0"])
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("no agent may connect"), "{text}");
    })
    .await
}

#[tokio::test]
async fn calls_in_flight_fail_unavailable_when_the_agent_is_killed() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, "s3cret-7", &["plant-7"]).await;
        let mut agent = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        // A bidi call, in flight: one round trip, the request stream open.
        let (requests, rx) = tokio::sync::mpsc::channel(4);
        requests
            .send(EchoRequest {
                seq: 1,
                ..Default::default()
            })
            .await
            .expect("queue");
        let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        call.set_timeout(Duration::from_secs(30));
        let mut responses = plant.bidi(call).await.expect("bidi").into_inner();
        let first = responses
            .message()
            .await
            .expect("first")
            .expect("a response");
        assert_eq!(first.seq, 1);

        agent.child.start_kill().expect("kill -9 the agent");
        let err = loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the call ended cleanly without its agent"),
                Err(status) => break status,
            }
        };
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        drop(requests);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn an_agent_reconnects_after_the_hub_restarts() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub1, addr) = hub(&dir, "s3cret-7", &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        plant
            .unary(hello("before"))
            .await
            .expect("before the restart");
        assert_eq!(hub1.terminate().await, Some(0));

        // The same address again: the agent's next attempt finds it.
        let config = dir.join("hub.toml").display().to_string();
        let listen = addr.to_string();
        let mut hub2 = Process::spawn(&["hub", "--listen", &listen, "--config", &config]);
        assert_eq!(hub2.listening().await, addr);
        let mut plant = caller(addr, "plant-7", true).await;
        let reply = plant
            .unary(hello("after"))
            .await
            .expect("after the restart");
        assert_eq!(reply.into_inner().payload.as_ref(), b"after");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn health_authority_routing_and_an_agents_allow_list() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub_with(
            &dir,
            "s3cret-7",
            &["plant-7"],
            &["--authority-suffix", "hub.example"],
        )
        .await;
        let _agent = agent_with(
            &dir,
            addr,
            "plant-7",
            "s3cret-7",
            upstream,
            &["--allow", "grpctunnel.testing.v1.EchoService/Unary"],
        );

        // The hub's own health service answers calls that name no agent.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("health")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );

        // Allowed method, through the key header (waiting for the agent).
        let mut plant = caller(addr, "plant-7", true).await;
        plant.unary(hello("allowed")).await.expect("allowed");
        // A method the agent does not allow. Through a tunnel a
        // trailers-only answer arrives as empty headers and a status (P-63),
        // so a streaming call sees it on its first read.
        let err = match plant.server_stream(EchoRequest::default()).await {
            Err(status) => status,
            Ok(resp) => resp.into_inner().message().await.expect_err("not allowed"),
        };
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

        // The same agent by authority: plant-7.hub.example, no key header.
        let by_name = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .origin("http://plant-7.hub.example".parse().expect("uri"))
            .connect()
            .await
            .expect("connect");
        let reply = EchoServiceClient::new(by_name)
            .unary(hello("by authority"))
            .await
            .expect("routed by authority");
        assert_eq!(reply.into_inner().payload.as_ref(), b"by authority");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A one-shot HTTP/1.1 GET; returns the status line and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
    conn.write_all(req.as_bytes()).await.expect("write");
    let mut text = String::new();
    conn.read_to_string(&mut text).await.expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test]
async fn metrics_and_healthz_on_the_admin_port() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub, addr) =
            hub_with(&dir, "s3cret-7", &["plant-7"], &["--admin", "127.0.0.1:0"]).await;
        let admin = hub.admin.expect("the admin port");
        let _agent = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
        let _stranger = agent(&dir, addr, "plant-7", "guess", upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        for _ in 0..3 {
            plant.unary(hello("counted")).await.expect("call");
        }
        let mut nobody = caller(addr, "plant-9", false).await;
        nobody.unary(hello("x")).await.expect_err("no agent");

        let (status, body) = http_get(admin, "/healthz").await;
        assert!(status.contains("200"), "{status}");
        assert_eq!(body.trim(), "ok");
        let (status, body) = http_get(admin, "/metrics").await;
        assert!(status.contains("200"), "{status}");
        let line = |prefix: &str| {
            body.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
                .to_owned()
        };
        assert!(
            line("grpctunnel_calls_total{key=\"plant-7\",code=\"0\"}").ends_with(" 3"),
            "{body}"
        );
        assert!(
            line("grpctunnel_calls_total{key=\"plant-9\",code=\"14\"}").ends_with(" 1"),
            "{body}"
        );
        assert!(
            line("grpctunnel_agents_connected").ends_with(" 1"),
            "{body}"
        );
        assert!(
            line("grpctunnel_tunnels{key=\"plant-7\"}").ends_with(" 1"),
            "{body}"
        );
        line("grpctunnel_call_duration_seconds");
        line("grpctunnel_auth_failures_total{who=\"agent\",reason=\"unknown_token\"}");
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn a_10_mib_message_crosses_when_configured_end_to_end() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let size = ["--max-message-size", "16777216"];
        let (_hub, addr) = hub_with(&dir, "s3cret-7", &["plant-7"], &size).await;
        let _agent = agent_with(&dir, addr, "plant-7", "s3cret-7", upstream, &size);
        let mut plant = caller(addr, "plant-7", true)
            .await
            .max_decoding_message_size(16 << 20)
            .max_encoding_message_size(16 << 20);
        let big = vec![7u8; 10 << 20];
        let mut req = tonic::Request::new(EchoRequest {
            payload: big.clone().into(),
            ..Default::default()
        });
        req.set_timeout(Duration::from_secs(30));
        let reply = plant.unary(req).await.expect("10 MiB each way");
        assert_eq!(reply.into_inner().payload.as_ref(), big.as_slice());
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// Adds `authorization: Bearer <token>` to the calls of a client.
fn with_token<T>(mut req: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    let value = format!("Bearer {token}").parse().expect("ascii");
    req.metadata_mut().insert("authorization", value);
    req
}

#[tokio::test]
async fn callers_authenticate_and_are_limited_to_their_keys() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let callers = "[[caller]]\ntoken = \"c-7\"\nkeys = [\"plant-7\"]\n";
        let (_hub, addr) = hub_full(&dir, "s3cret-7", &["plant-7", "plant-8"], callers, &[]).await;
        let _agent7 = agent(&dir, addr, "plant-7", "s3cret-7", upstream);

        let mut plant7 = caller(addr, "plant-7", true).await;
        let err = plant7
            .unary(hello("anonymous"))
            .await
            .expect_err("no token");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let err = plant7
            .unary(with_token(hello("x"), "wrong"))
            .await
            .expect_err("unknown token");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        plant7
            .unary(with_token(hello("mine"), "c-7"))
            .await
            .expect("a key the caller may call");
        let mut plant8 = caller(addr, "plant-8", false).await;
        let err = plant8
            .unary(with_token(hello("theirs"), "c-7"))
            .await
            .expect_err("not this caller's key");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

        // A forward tunnel to the hub authenticates once, when it opens; the
        // calls it carries are routed, and limited, the same way.
        let transport = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let refused = grpctunnel::TunnelChannel::builder()
            .open(transport.clone())
            .await
            .expect_err("no token");
        assert_eq!(
            refused.status().map(tonic::Status::code),
            Some(Code::Unauthenticated)
        );
        let tunnel = grpctunnel::TunnelChannel::builder()
            .metadata("authorization", "Bearer c-7")
            .open(transport)
            .await
            .expect("open a tunnel to the hub");
        let add_key: AddKey = Box::new(|mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("grpctunnel-key", "plant-7".parse().expect("ascii"));
            Ok(req)
        });
        let mut through = EchoServiceClient::with_interceptor(tunnel.clone(), add_key);
        let reply = through
            .unary(hello("tunneled"))
            .await
            .expect("tunneled call");
        assert_eq!(reply.into_inner().payload.as_ref(), b"tunneled");
        let add_other: AddKey = Box::new(|mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("grpctunnel-key", "plant-8".parse().expect("ascii"));
            Ok(req)
        });
        let mut other = EchoServiceClient::with_interceptor(tunnel.clone(), add_other);
        let err = other
            .unary(hello("x"))
            .await
            .expect_err("not this caller's key");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        tunnel.close();
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// Certificates for the TLS tests, as PEM files in a test's directory.
struct Certs {
    ca: String,
    hub_cert: String,
    hub_key: String,
    /// A client certificate for an agent (mTLS), and its SHA-256 (hex).
    agent_cert: String,
    agent_key: String,
    agent_sha256: String,
}

/// A CA; a certificate it signed for `localhost` and 127.0.0.1 (the hub,
/// or an upstream); and an agent's client certificate it signed.
fn certificates(dir: &std::path::Path) -> Certs {
    use sha2::Digest;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let sign = |names: Vec<String>| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("certificate");
        (cert, key)
    };
    let (hub, hub_key) = sign(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]);
    let (agent, agent_key) = sign(vec!["agent".to_owned()]);
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("pem");
        path.display().to_string()
    };
    Certs {
        ca: write("ca.pem", ca.pem()),
        hub_cert: write("hub.pem", hub.pem()),
        hub_key: write("hub.key", hub_key.serialize_pem()),
        agent_cert: write("agent.pem", agent.pem()),
        agent_key: write("agent.key", agent_key.serialize_pem()),
        agent_sha256: sha2::Sha256::digest(agent.der())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    }
}

#[tokio::test]
async fn tls_from_caller_to_hub_and_from_agent_to_hub_and_upstream() {
    bounded(async {
        let dir = temp_dir();
        let Certs {
            ca,
            hub_cert: cert,
            hub_key: key,
            ..
        } = certificates(&dir);
        // The upstream speaks TLS too (the same CA signed its certificate).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let upstream = listener.local_addr().expect("addr");
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(&cert).expect("cert"),
            std::fs::read(&key).expect("key"),
        );
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .expect("upstream TLS")
                .add_service(Echo::new().server())
                .serve_with_incoming(TcpListenerStream::new(listener)),
        );
        let tls = ["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
        let (_hub, addr) = hub_with(&dir, "s3cret-7", &["plant-7"], &tls).await;
        let hub_url = format!("https://127.0.0.1:{}", addr.port());
        let token = dir.join("agent.token");
        std::fs::write(&token, "s3cret-7").expect("token");
        let _agent = Process::spawn(&[
            "agent",
            "--hub",
            &hub_url,
            "--ca-file",
            &ca,
            "--key",
            "plant-7",
            "--token-file",
            &token.display().to_string(),
            "--upstream",
            &format!("https://127.0.0.1:{}", upstream.port()),
            "--upstream-ca-file",
            &ca,
        ]);
        let pem = std::fs::read(&ca).expect("ca");
        let channel = tonic::transport::Endpoint::from_shared(hub_url)
            .expect("endpoint")
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
            )
            .expect("tls")
            .connect()
            .await
            .expect("TLS to the hub");
        let add_key: AddKey = Box::new(|mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("grpctunnel-key", "plant-7".parse().expect("ascii"));
            req.metadata_mut()
                .insert("grpctunnel-wait", "true".parse().expect("ascii"));
            Ok(req)
        });
        let mut plant = EchoServiceClient::with_interceptor(channel, add_key);
        let reply = plant.unary(hello("over TLS")).await.expect("call over TLS");
        assert_eq!(reply.into_inner().payload.as_ref(), b"over TLS");

        // Plaintext to the TLS port fails: nothing is served in the clear.
        let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await;
        if let Ok(plain) = plain {
            let mut client = EchoServiceClient::new(plain);
            assert!(client.unary(hello("x")).await.is_err());
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn gzip_compressed_calls_cross_the_gateway() {
    use tonic::codec::CompressionEncoding;

    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, "s3cret-7", &["plant-7"]).await;
        let _agent = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
        let mut plant = caller(addr, "plant-7", true)
            .await
            .send_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Gzip);
        // Compressible, and large enough that gzip matters.
        let payload = "gzip through a tunnel ".repeat(10_000);
        let reply = plant.unary(hello(&payload)).await.expect("a gzip call");
        // The hub compressed the answer for a caller that accepts gzip.
        assert_eq!(
            reply
                .metadata()
                .get("grpc-encoding")
                .and_then(|v| v.to_str().ok()),
            Some("gzip")
        );
        assert_eq!(reply.into_inner().payload.as_ref(), payload.as_bytes());
        // Client streaming: several compressed messages in one body.
        let requests = tokio_stream::iter((0..5).map(|i| EchoRequest {
            payload: format!("part {i} ").repeat(1000).into_bytes().into(),
            ..Default::default()
        }));
        let reply = plant
            .client_stream(tonic::Request::new(requests))
            .await
            .expect("a gzip client stream");
        assert!(!reply.into_inner().payload.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn an_agent_serves_several_hubs_with_several_tunnels() {
    bounded(async {
        let dir_a = temp_dir();
        let dir_b = temp_dir();
        let upstream = upstream().await;
        let (hub_a, addr_a) = hub(&dir_a, "s3cret-7", &["plant-7"]).await;
        let (_hub_b, addr_b) = hub(&dir_b, "s3cret-7", &["plant-7"]).await;
        // `agent_with` names hub B; hub A comes second.
        let hub_a_url = format!("http://{addr_a}");
        let _agent = agent_with(
            &dir_a,
            addr_b,
            "plant-7",
            "s3cret-7",
            upstream,
            &["--hub", &hub_a_url, "--tunnels", "2"],
        );
        for addr in [addr_a, addr_b] {
            let mut plant = caller(addr, "plant-7", true).await;
            plant
                .unary(hello("either hub"))
                .await
                .expect("through each hub");
        }
        // One hub goes away: the other still reaches the agent.
        assert_eq!(hub_a.terminate().await, Some(0));
        let mut plant = caller(addr_b, "plant-7", true).await;
        plant
            .unary(hello("still there"))
            .await
            .expect("through the other hub");
        let _ = std::fs::remove_dir_all(dir_a);
        let _ = std::fs::remove_dir_all(dir_b);
    })
    .await
}

#[tokio::test]
async fn the_hub_limits_tunnels_per_key() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub_with(
            &dir,
            "s3cret-7",
            &["plant-7"],
            &["--max-tunnels-per-key", "1"],
        )
        .await;
        let _first = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        plant.unary(hello("first")).await.expect("the first agent");
        // A second tunnel for the key is refused (and retried by its agent).
        let mut second = agent(&dir, addr, "plant-7", "s3cret-7", upstream);
        let line = second.log_line("cannot open the tunnel").await;
        assert!(
            line.contains("too many reverse tunnels for this key"),
            "{line}"
        );
        plant
            .unary(hello("still"))
            .await
            .expect("the first agent still serves");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn an_agent_authenticates_with_a_client_certificate() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let certs = certificates(&dir);
        let (ca_pem, cert, key, sha) = (
            certs.ca.clone(),
            certs.hub_cert.clone(),
            certs.hub_key.clone(),
            certs.agent_sha256.clone(),
        );
        let (agent_pem, agent_key_pem) = (certs.agent_cert.clone(), certs.agent_key.clone());
        let more = format!("[[agent]]\ncert_sha256 = {sha:?}\nkeys = [\"plant-9\"]\n");
        let tls = [
            "--tls-cert",
            cert.as_str(),
            "--tls-key",
            key.as_str(),
            "--client-ca",
            ca_pem.as_str(),
        ];
        let (mut hub, addr) = hub_full(&dir, "s3cret-7", &["plant-7"], &more, &tls).await;
        let hub_url = format!("https://127.0.0.1:{}", addr.port());
        let spawn_cert_agent = |key: &str| {
            Process::spawn(&[
                "agent",
                "--hub",
                &hub_url,
                "--ca-file",
                &ca_pem,
                "--tls-cert",
                &agent_pem,
                "--tls-key",
                &agent_key_pem,
                "--key",
                key,
                "--upstream",
                &format!("http://{upstream}"),
            ])
        };
        let _agent = spawn_cert_agent("plant-9");
        let channel = tonic::transport::Endpoint::from_shared(hub_url.clone())
            .expect("endpoint")
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(
                tonic::transport::Certificate::from_pem(std::fs::read(&ca_pem).expect("ca")),
            ))
            .expect("tls")
            .connect()
            .await
            .expect("TLS to the hub, no client certificate");
        let add_key: AddKey = Box::new(|mut req: tonic::Request<()>| {
            req.metadata_mut()
                .insert("grpctunnel-key", "plant-9".parse().expect("ascii"));
            req.metadata_mut()
                .insert("grpctunnel-wait", "true".parse().expect("ascii"));
            Ok(req)
        });
        let mut plant = EchoServiceClient::with_interceptor(channel, add_key);
        let reply = plant
            .unary(hello("by certificate"))
            .await
            .expect("cert agent");
        assert_eq!(reply.into_inner().payload.as_ref(), b"by certificate");

        // The same certificate cannot register a key it is not bound to.
        let _thief = spawn_cert_agent("plant-7");
        let line = hub.log_line("agent refused").await;
        assert!(line.contains("plant-7"), "{line}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
