//! What the gateway's end-to-end tests share: real `grpctunnel` hub and
//! agent processes on loopback, an upstream gRPC server (the echo service)
//! in the test process, callers, and test certificates.
#![allow(dead_code)] // each test file uses part of it

pub mod browser;
pub mod cluster;
pub mod freeze;
pub mod go_programs;
pub mod recorder;
pub mod sentinel;
pub mod store;

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
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub const BIN: &str = env!("CARGO_BIN_EXE_grpctunnel");

/// The agents' token of the tests' hubs (at least 16 bytes, as hubs
/// require).
pub const AGENT_TOKEN: &str = "s3cret-7-of-an-agent";

/// Bounds a test: a hang fails instead of blocking CI.
pub async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .expect("test timed out")
}

/// A fresh directory under the system's temp dir.
pub fn temp_dir() -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("grpctunnel-e2e-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// A free loopback port, for a process that takes a port rather than an
/// address to bind, or must advertise its address before it starts.
///
/// Taken below the kernel's ephemeral ports (`ip_local_port_range`, from
/// 32768 by default), never from them: a port-0 pick is free only for the
/// moment of the check, and any outgoing connection of a test running
/// beside may take it as its source port before the process binds it (a
/// hub then exits, "Address already in use"). Below that range only
/// another explicit bind can, and within this test binary the ports given
/// out are all different.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if low < FIRST + 1_000 {
        // No room below the range: a port-0 pick, as before.
        return std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
    }
    let span = low - FIRST;
    // Binaries run one after another; each starts elsewhere in the span.
    let start = std::process::id().wrapping_mul(7_919) % span;
    for _ in 0..span {
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = u16::try_from(port).expect("below the ephemeral range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{low}");
}

/// A loopback address nothing listens on: an agent's upstream that is gone
/// (its calls fail at once, `UNAVAILABLE`).
pub fn gone_upstream() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// The echo service on a free loopback port.
pub async fn upstream() -> SocketAddr {
    upstream_with(Echo::new()).await
}

/// `echo` (keep a clone to ask what its handlers saw) on a free loopback
/// port.
pub async fn upstream_with(echo: Echo) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(echo.server())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

/// A running `grpctunnel` process, killed when dropped; its stderr lines
/// arrive on `logs`.
pub struct Process {
    pub child: Child,
    pub logs: mpsc::UnboundedReceiver<String>,
    pub admin: Option<SocketAddr>,
}

impl Process {
    /// Starts the binary with `args`, logging at `info` (or as `E2E_LOG`
    /// says, e.g. `E2E_LOG=info,grpctunnel=debug` to debug a test).
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
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
    pub async fn listening(&mut self) -> SocketAddr {
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
        panic!(
            "the hub ended without listening:\n{}",
            self.last_words().await
        );
    }

    /// What a process that ended wrote on stderr (waited for up to 5 s,
    /// as it exits).
    async fn last_words(&mut self) -> String {
        let mut words = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(line) = self.logs.recv().await {
                words.push(line);
            }
        })
        .await;
        words.join("\n")
    }

    /// The `ADMIN <addr>` line of a process that serves only an admin
    /// port (an agent with `--admin`).
    pub async fn admin_port(&mut self) -> SocketAddr {
        let stdout = self.child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        while let Some(line) = lines.next_line().await.expect("stdout") {
            if let Some(addr) = line.strip_prefix("ADMIN ") {
                let addr = addr.parse().expect("an address");
                self.admin = Some(addr);
                return addr;
            }
        }
        panic!(
            "the process ended without an admin port:\n{}",
            self.last_words().await
        );
    }

    /// Waits for a log line containing `text`; returns it.
    pub async fn log_line(&mut self, text: &str) -> String {
        while let Some(line) = self.logs.recv().await {
            if line.contains(text) {
                return line;
            }
        }
        panic!("the process ended without logging {text:?}");
    }

    /// Sends SIGTERM and returns the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        self.signal_term();
        self.child.wait().await.expect("exit status").code()
    }

    /// Sends SIGTERM, without waiting.
    pub fn signal_term(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`HUP`, `TERM`), without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

/// A hub whose config lets `token` register `keys`.
pub async fn hub(dir: &std::path::Path, token: &str, keys: &[&str]) -> (Process, SocketAddr) {
    hub_with(dir, token, keys, &[]).await
}

/// [`hub`] with more flags.
pub async fn hub_with(
    dir: &std::path::Path,
    token: &str,
    keys: &[&str],
    extra: &[&str],
) -> (Process, SocketAddr) {
    hub_full(dir, token, keys, "", extra).await
}

/// [`hub`] with more config (appended to the agent's) and more flags.
pub async fn hub_full(
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

pub fn agent(
    dir: &std::path::Path,
    hub: SocketAddr,
    key: &str,
    token: &str,
    upstream: SocketAddr,
) -> Process {
    agent_with(dir, hub, key, token, upstream, &[])
}

/// [`agent`] with more flags.
pub fn agent_with(
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
pub type AddKey =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
pub type Caller = EchoServiceClient<InterceptedService<Channel, AddKey>>;

/// A plain gRPC client of the hub, for `key`; `wait` asks calls to wait for
/// the agent.
pub async fn caller(hub: SocketAddr, key: &'static str, wait: bool) -> Caller {
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

/// A plain gRPC client of the hub for `key`, presenting `token`; its calls
/// wait for the agent to connect.
pub async fn caller_with_token(hub: SocketAddr, key: &'static str, token: &'static str) -> Caller {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{hub}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the hub");
    let add: AddKey = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert("grpctunnel-key", key.parse().expect("ascii"));
        req.metadata_mut()
            .insert("grpctunnel-wait", "true".parse().expect("ascii"));
        Ok(with_token(req, token))
    });
    EchoServiceClient::with_interceptor(channel, add)
}

pub fn hello(payload: &str) -> tonic::Request<EchoRequest> {
    let mut req = tonic::Request::new(EchoRequest {
        payload: payload.as_bytes().to_vec().into(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(20));
    req
}

/// A one-shot HTTP/1.1 GET; returns the status line and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
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

/// Adds `authorization: Bearer <token>` to the calls of a client.
pub fn with_token<T>(mut req: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    let value = format!("Bearer {token}").parse().expect("ascii");
    req.metadata_mut().insert("authorization", value);
    req
}

/// Certificates for the TLS tests, as PEM files in a test's directory.
pub struct Certs {
    pub ca: String,
    pub hub_cert: String,
    pub hub_key: String,
    /// A client certificate for an agent (mTLS), and its SHA-256 (hex).
    pub agent_cert: String,
    pub agent_key: String,
    pub agent_sha256: String,
    /// A client certificate for a caller (mTLS), and its SHA-256 (hex).
    pub caller_cert: String,
    pub caller_key: String,
    pub caller_sha256: String,
}

/// A CA; a certificate it signed for `localhost`, 127.0.0.1 and
/// `*.hub.test` (the hub, or an upstream); and client certificates it
/// signed for an agent and a caller.
pub fn certificates(dir: &std::path::Path) -> Certs {
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
    // `*.hub.test`: callers that route by `:authority` (`<key>.hub.test`).
    let (hub, hub_key) = sign(vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "*.hub.test".to_owned(),
    ]);
    let (agent, agent_key) = sign(vec!["agent".to_owned()]);
    let (caller, caller_key) = sign(vec!["caller".to_owned()]);
    let sha256 = |der: &[u8]| -> String {
        sha2::Sha256::digest(der)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
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
        agent_sha256: sha256(agent.der()),
        caller_cert: write("caller.pem", caller.pem()),
        caller_key: write("caller.key", caller_key.serialize_pem()),
        caller_sha256: sha256(caller.der()),
    }
}

/// A bidi echo call in flight through `caller`, after one round trip: its
/// request sender (drop it to half-close) and its responses. Its deadline
/// (30 s) only bounds a failure.
pub async fn bidi_in_flight(
    caller: &mut Caller,
) -> (
    tokio::sync::mpsc::Sender<EchoRequest>,
    tonic::Streaming<grpctunnel_testing::pb::EchoResponse>,
) {
    bidi_in_flight_for(caller, Duration::from_secs(30)).await
}

/// [`bidi_in_flight`] with the call's deadline `limit`.
pub async fn bidi_in_flight_for(
    caller: &mut Caller,
    limit: Duration,
) -> (
    tokio::sync::mpsc::Sender<EchoRequest>,
    tonic::Streaming<grpctunnel_testing::pb::EchoResponse>,
) {
    let (requests, rx) = tokio::sync::mpsc::channel(4);
    requests
        .send(EchoRequest {
            seq: 1,
            ..Default::default()
        })
        .await
        .expect("queue");
    let mut call = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    call.set_timeout(limit);
    let mut responses = caller.bidi(call).await.expect("bidi").into_inner();
    let first = responses
        .message()
        .await
        .expect("first response")
        .expect("a response");
    assert_eq!(first.seq, 1);
    (requests, responses)
}

/// `n` round trips of 100 B on one bidi call through `caller`, each
/// answered in order, then a clean end. The call's deadline (150 s) only
/// bounds a failure: on a loaded 2-core machine 5,000 relayed round trips
/// took over 30 s.
pub async fn ping_pong(caller: &mut Caller, n: u64) {
    let (requests, mut responses) = bidi_in_flight_for(caller, Duration::from_secs(150)).await;
    for seq in 2..=n {
        requests
            .send(EchoRequest {
                seq,
                payload: vec![7u8; 100].into(),
                ..Default::default()
            })
            .await
            .expect("send");
        let reply = responses
            .message()
            .await
            .unwrap_or_else(|s| panic!("round trip {seq}: {s:?}"))
            .expect("a response");
        assert_eq!(reply.seq, seq);
    }
    drop(requests);
    assert!(responses.message().await.expect("a clean end").is_none());
}

/// `VmRSS` of a process, in bytes.
pub fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

/// A connection to the hub at `addr`.
pub async fn hub_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect to the hub")
}

/// A unary echo call to any `path` (one no generated client makes) for
/// `key`, waiting for its agent when `wait`.
pub async fn raw_unary(
    channel: tonic::transport::Channel,
    key: &str,
    path: &str,
    wait: bool,
) -> Result<tonic::Response<grpctunnel_testing::pb::EchoResponse>, tonic::Status> {
    use grpctunnel_testing::pb::{EchoRequest, EchoResponse};
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut req = tonic::Request::new(EchoRequest::default());
    req.metadata_mut()
        .insert("grpctunnel-key", key.parse().expect("ascii"));
    if wait {
        req.metadata_mut()
            .insert("grpctunnel-wait", "true".parse().expect("ascii"));
    }
    let path = http::uri::PathAndQuery::try_from(path).expect("a path");
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
    grpc.unary(req, path, codec).await
}

/// The README's first minute, done: `grpctunnel token` for an agent of
/// `plant-7` and for a caller, both appended to `dir/hub.toml`, a hub on
/// loopback with it, and the agent of `upstream` with its token file, its
/// tunnel open.
pub struct FirstMinute {
    pub hub: Process,
    pub addr: SocketAddr,
    pub agent: Process,
    /// What each `grpctunnel token` printed (config lines).
    pub agent_lines: String,
    pub caller_lines: String,
    /// The token files `--out` wrote.
    pub agent_file: String,
    pub caller_file: String,
}

/// Runs `grpctunnel token ARGS`: its exit code, stdout and stderr.
pub fn token_command(args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(BIN)
        .arg("token")
        .args(args)
        .output()
        .expect("grpctunnel token");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

pub async fn first_minute(dir: &std::path::Path, upstream: SocketAddr) -> FirstMinute {
    let agent_file = dir.join("plant-7.token").display().to_string();
    let caller_file = dir.join("me.token").display().to_string();
    let (code, agent_lines, err) = token_command(&["--key", "plant-7", "--out", &agent_file]);
    assert_eq!(code, Some(0), "{err}");
    let (code, caller_lines, err) = token_command(&["--caller", "me", "--out", &caller_file]);
    assert_eq!(code, Some(0), "{err}");
    let config = dir.join("hub.toml");
    std::fs::write(&config, agent_lines.clone() + &caller_lines).expect("config");
    let config = config.display().to_string();
    let mut hub = Process::spawn(&["hub", "--listen", "127.0.0.1:0", "--config", &config]);
    let addr = hub.listening().await;
    let mut agent = Process::spawn(&[
        "agent",
        "--hub",
        &format!("http://{addr}"),
        "--key",
        "plant-7",
        "--token-file",
        &agent_file,
        "--upstream",
        &format!("http://{upstream}"),
    ]);
    agent.log_line("tunnel open").await;
    FirstMinute {
        hub,
        addr,
        agent,
        agent_lines,
        caller_lines,
        agent_file,
        caller_file,
    }
}

/// Runs `grpctunnel ARGS` (the CLI): its exit code, stdout and stderr.
pub async fn cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .expect("grpctunnel runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}
