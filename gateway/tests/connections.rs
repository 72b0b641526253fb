//! Bounds on what an outsider without any credential can make the hub
//! hold with connections alone: sockets that never finish a handshake,
//! more connections than `--max-connections`, more streams on one
//! connection than `--max-streams-per-connection`, and health watches
//! beyond `--max-health-watches`. Real hub (and agent) processes, the
//! outsider in this process.

mod common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// How many descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/<pid>/fd")
        .count()
}

/// How many connections wait in the kernel for the hub listening on
/// `addr` to accept them (its listening socket's queue, from
/// `/proc/net/tcp`, which lists listening sockets first).
fn accept_queue(addr: SocketAddr) -> usize {
    use std::io::BufRead;
    let local = format!("0100007F:{:04X}", addr.port());
    let table = std::fs::File::open("/proc/net/tcp").expect("/proc/net/tcp");
    for line in std::io::BufReader::new(table).lines().skip(1) {
        let line = line.expect("a line");
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl, local address, remote address, state (0A: listening),
        // tx_queue:rx_queue (for a listening socket, its accept queue).
        if fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A") {
            let queue = fields[4].split(':').nth(1).expect("rx_queue");
            return usize::from_str_radix(queue, 16).expect("hex");
        }
    }
    panic!("no listening socket on {addr}");
}

/// `grpctunnel_limit_hits_total{limit}` on the hub's admin port (0 before
/// the first hit).
async fn limit_hits(admin: SocketAddr, limit: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics").await;
    let series = format!("grpctunnel_limit_hits_total{{limit=\"{limit}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// Waits until the hub closes `socket`: a read returns end of file or an
/// error (a reset). Returns when, and how many bytes the hub sent before
/// (an HTTP/2 server sends its SETTINGS first; a TLS server nothing).
async fn closed(mut socket: TcpStream) -> (Instant, usize) {
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    loop {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return (Instant::now(), sent),
            Ok(n) => sent += n,
        }
    }
}

/// A TLS channel to the hub, trusting `ca`.
async fn tls_channel(addr: SocketAddr, ca: &str) -> tonic::transport::Channel {
    let pem = std::fs::read(ca).expect("ca");
    tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", addr.port()))
        .expect("endpoint")
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem)),
        )
        .expect("tls")
        .connect()
        .await
        .expect("TLS to the hub")
}

/// A unary echo call to `plant-7` through `channel`: the payload echoed.
async fn echo(channel: tonic::transport::Channel, payload: &str) -> String {
    use grpctunnel_testing::pb::echo_service_client::EchoServiceClient;
    let mut req = hello(payload);
    req.metadata_mut()
        .insert("grpctunnel-key", "plant-7".parse().expect("ascii"));
    req.metadata_mut()
        .insert("grpctunnel-wait", "true".parse().expect("ascii"));
    let reply = EchoServiceClient::new(channel)
        .unary(req)
        .await
        .expect("an echo through the agent");
    String::from_utf8(reply.into_inner().payload.to_vec()).expect("utf-8")
}

/// 5,000 connections to a TLS hub that never send a byte: while they are
/// open an agent's calls and a new TLS caller are served (a new handshake
/// is not queued behind theirs), and the hub closes every one of them
/// `--handshake-timeout` (2 s) after it accepted it, counts them, and its
/// open descriptors go back to what they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_to_a_tls_hub_are_closed_at_the_handshake_timeout() {
    const SILENT: usize = 5_000;
    const TIMEOUT: Duration = Duration::from_secs(2);
    const MARGIN: Duration = Duration::from_secs(2);
    tokio::time::timeout(Duration::from_secs(120), async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let certs = certificates(&dir);
        let flags = [
            "--tls-cert",
            certs.hub_cert.as_str(),
            "--tls-key",
            certs.hub_key.as_str(),
            "--handshake-timeout",
            "2",
            "--admin",
            "127.0.0.1:0",
        ];
        let (mut hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &flags).await;
        let admin = hub.admin.expect("admin port");
        let pid = hub.child.id().expect("running");
        let token = dir.join("agent.token");
        std::fs::write(&token, AGENT_TOKEN).expect("token");
        let _agent = Process::spawn(&[
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
        // The library reads the peer's address off the TLS connection too.
        let line = hub.log_line("agent connected").await;
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        let caller = tls_channel(addr, &certs.ca).await;
        assert_eq!(echo(caller.clone(), "before").await, "before");
        let baseline = open_fds(pid);

        let mut connects = tokio::task::JoinSet::new();
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
        for i in 0..SILENT {
            // Never more than the listening socket's queue holds: a
            // connection the kernel drops from a full queue looks
            // established to a client that sends nothing, and is never
            // the hub's to close.
            while i % 64 == 0 && accept_queue(addr) > 256 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let permit = in_flight.clone().acquire_owned().await.expect("open");
            connects.spawn(async move {
                // The hub's clock starts at its accept: after `start`, at
                // or after `connected`.
                let start = Instant::now();
                let socket = TcpStream::connect(addr).await.expect("connect");
                drop(permit);
                let connected = Instant::now();
                let (closed, sent) = closed(socket).await;
                assert_eq!(sent, 0, "the hub sent bytes");
                (closed - start, closed - connected)
            });
        }
        // The sockets are open, their handshakes pending.
        let during = open_fds(pid);
        let started = Instant::now();
        assert_eq!(echo(caller.clone(), "during").await, "during");
        let fresh = tls_channel(addr, &certs.ca).await;
        assert_eq!(echo(fresh.clone(), "fresh").await, "fresh");
        let fresh_took = started.elapsed();
        assert!(
            fresh_took < TIMEOUT,
            "a new TLS caller waited {fresh_took:?}"
        );

        let mut lived = Vec::with_capacity(SILENT);
        while let Some(done) = connects.join_next().await {
            lived.push(done.expect("no panic"));
        }
        assert_eq!(lived.len(), SILENT);
        let shortest = lived.iter().map(|l| l.0).min().unwrap_or_default();
        let longest = lived.iter().map(|l| l.1).max().unwrap_or_default();
        println!(
            "{SILENT} silent connections closed by the hub {shortest:?} to {longest:?} after \
             connecting; hub descriptors: {baseline} before, {during} with them open, a new \
             TLS caller served in {fresh_took:?}"
        );
        assert!(shortest >= TIMEOUT, "one closed after {shortest:?}");
        assert!(longest <= TIMEOUT + MARGIN, "one closed after {longest:?}");
        // Every silent socket is closed on the hub's side; the new caller
        // holds one descriptor more than before.
        let after = open_fds(pid);
        println!("hub descriptors after: {after}");
        assert!(after <= baseline + 1, "{baseline} before, {after} after");
        assert_eq!(limit_hits(admin, "handshake_timeout").await, SILENT as u64);
        assert_eq!(echo(caller, "after").await, "after");
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
}

/// On a plaintext hub the time bounds the HTTP/2 preface: a connection
/// that sends nothing, or half the preface, is closed at
/// `--handshake-timeout`; one that sent the preface is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_connections_without_the_http2_preface_are_closed_at_the_handshake_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(1);
    bounded(async {
        let dir = temp_dir();
        let flags = ["--handshake-timeout", "1", "--admin", "127.0.0.1:0"];
        let (hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &flags).await;
        let admin = hub.admin.expect("admin port");
        // Before the hub accepts any of them: its clock starts later.
        let start = Instant::now();
        let silent = TcpStream::connect(addr).await.expect("connect");
        let mut half = TcpStream::connect(addr).await.expect("connect");
        half.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        let mut whole = TcpStream::connect(addr).await.expect("connect");
        whole
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let (silent, half) = tokio::join!(closed(silent), closed(half));
        let silent = silent.0 - start;
        let half = half.0 - start;
        println!("closed after {silent:?} (silent) and {half:?} (half a preface)");
        for took in [silent, half] {
            assert!(took >= TIMEOUT, "{took:?}");
            assert!(took <= TIMEOUT + Duration::from_secs(2), "{took:?}");
        }
        // The whole preface was read: the hub answered with its SETTINGS.
        let mut frame = [0u8; 9];
        whole.read_exact(&mut frame).await.expect("a frame");
        assert_eq!(frame[3], 0x4, "a SETTINGS frame: {frame:?}");
        assert_eq!(limit_hits(admin, "handshake_timeout").await, 2);
        let mut health = HealthClient::new(hub_channel(addr).await);
        health
            .check(HealthCheckRequest::default())
            .await
            .expect("a real caller is served");
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// An HTTP/2 connection to the hub, its SETTINGS received: the handle to
/// open streams on it, its pinger, and the task that drives it (abort it to
/// close the connection).
struct H2 {
    send: h2::client::SendRequest<Bytes>,
    ping: h2::PingPong,
    max_streams: usize,
    driver: tokio::task::JoinHandle<()>,
}

/// Connects to `addr` and waits for the hub's answer to a ping (its
/// SETTINGS come first); `Err` if the hub closed the connection instead.
async fn h2_connect(addr: SocketAddr) -> Result<H2, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (send, conn) = h2::client::handshake(tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut conn = Box::pin(conn);
    let mut ping = conn.ping_pong().expect("the first ping_pong");
    tokio::select! {
        pong = ping.ping(h2::Ping::opaque()) => {
            pong.map_err(|e| e.to_string())?;
        }
        ended = conn.as_mut() => return Err(format!("the hub ended the connection: {ended:?}")),
    }
    let max_streams = conn.max_concurrent_send_streams();
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(H2 {
        send,
        ping,
        max_streams,
        driver,
    })
}

/// With `--max-connections 50`, the 51st connection is closed at once,
/// counted and logged, while the 50 keep working; closing one of them makes
/// room for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_max_connections_are_closed_at_once() {
    const MAX: usize = 50;
    bounded(async {
        let dir = temp_dir();
        // A handshake timeout far away: a close within it is the cap's.
        let flags = [
            "--max-connections",
            "50",
            "--handshake-timeout",
            "30",
            "--admin",
            "127.0.0.1:0",
        ];
        let (mut hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &flags).await;
        let admin = hub.admin.expect("admin port");
        let mut open = Vec::new();
        for _ in 0..MAX {
            open.push(h2_connect(addr).await.expect("within the cap"));
        }
        let extra = TcpStream::connect(addr).await.expect("connect");
        let connected = Instant::now();
        let (closed, sent) = closed(extra).await;
        assert_eq!(sent, 0, "the hub sent bytes: the connection was served");
        let took = closed - connected;
        println!("connection {} closed after {took:?}", MAX + 1);
        assert!(took < Duration::from_secs(5), "{took:?}");
        let line = hub.log_line("--max-connections").await;
        assert!(
            line.contains(
                "connection closed: 50 connections are open (the hub's --max-connections)"
            ),
            "{line}"
        );
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert_eq!(limit_hits(admin, "max_connections").await, 1);
        for conn in &mut open {
            conn.ping
                .ping(h2::Ping::opaque())
                .await
                .expect("the first 50 stay");
        }
        // One closes: its place goes to the next connection, once the hub
        // has seen it go (each attempt before that is closed at once).
        let gone = open.pop().expect("one");
        gone.driver.abort();
        let _ = gone.driver.await;
        let mut attempts = 0;
        let admitted = loop {
            attempts += 1;
            if let Ok(conn) = h2_connect(addr).await {
                break conn;
            }
        };
        println!("a new connection got the freed place at attempt {attempts}");
        open.push(admitted);
        for conn in &mut open {
            conn.ping
                .ping(h2::Ping::opaque())
                .await
                .expect("the 50 work");
        }
        assert_eq!(
            limit_hits(admin, "max_connections").await,
            attempts as u64,
            "the first extra, and the attempts before the place was free"
        );
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// The hub announces `--max-streams-per-connection` in its SETTINGS, and a
/// client opening more streams than that queues the one beyond until one
/// of them ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_announces_max_streams_per_connection_and_clients_queue_beyond_it() {
    bounded(async {
        let dir = temp_dir();
        let flags = ["--max-streams-per-connection", "3"];
        let (hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &flags).await;
        let H2 {
            mut send,
            max_streams,
            driver,
            ..
        } = h2_connect(addr).await.expect("connect");
        assert_eq!(max_streams, 3, "the hub's SETTINGS_MAX_CONCURRENT_STREAMS");
        // Four health watches, each a stream that stays open.
        let mut watches = Vec::new();
        for _ in 0..4 {
            send = send.ready().await.expect("ready");
            let req = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Watch"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(())
                .expect("request");
            let (response, mut body) = send.send_request(req, false).expect("send");
            // An empty HealthCheckRequest: the whole service.
            body.send_data(Bytes::from_static(&[0; 5]), true)
                .expect("data");
            watches.push((response, body));
        }
        let mut answered = Vec::new();
        for (response, body) in watches.drain(..3) {
            let response = response.await.expect("a watch within the limit");
            assert_eq!(response.status(), 200);
            answered.push((response, body));
        }
        let (mut fourth, _fourth_body) = watches.pop().expect("the fourth");
        assert!(
            futures_util::poll!(&mut fourth).is_pending(),
            "the fourth stream waits in the client's queue"
        );
        // One watch ends: the fourth goes out and is answered.
        let (_, mut first_body) = answered.remove(0);
        first_body.send_reset(h2::Reason::CANCEL);
        let response = fourth.await.expect("the fourth, once one ended");
        assert_eq!(response.status(), 200);
        driver.abort();
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// With `--max-health-watches 3`, a fourth `Watch` is refused with
/// `RESOURCE_EXHAUSTED` naming the flag (a `Check` still works); once one
/// watch ends, a new one is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watches_beyond_max_health_watches_are_refused() {
    bounded(async {
        let dir = temp_dir();
        let flags = ["--max-health-watches", "3", "--admin", "127.0.0.1:0"];
        let (hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &flags).await;
        let admin = hub.admin.expect("admin port");
        let mut health = HealthClient::new(hub_channel(addr).await);
        let watch = |mut health: HealthClient<tonic::transport::Channel>| async move {
            health.watch(HealthCheckRequest::default()).await
        };
        let mut open = Vec::new();
        for _ in 0..3 {
            let mut stream = watch(health.clone())
                .await
                .expect("within the limit")
                .into_inner();
            let status = stream.message().await.expect("a status").expect("one");
            assert_eq!(status.status, 1, "SERVING");
            open.push(stream);
        }
        let refused = watch(health.clone()).await.expect_err("a fourth");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(
            refused.message(),
            "3 health watches are already open (the hub's --max-health-watches)"
        );
        assert_eq!(limit_hits(admin, "max_health_watches").await, 1);
        health
            .check(HealthCheckRequest::default())
            .await
            .expect("a Check is not a watch");
        // One ends: the hub frees its place when it sees it go.
        drop(open.pop());
        let mut attempts = 0;
        let admitted = loop {
            attempts += 1;
            match watch(health.clone()).await {
                Ok(stream) => break stream,
                Err(status) => assert_eq!(status.code(), Code::ResourceExhausted),
            }
        };
        println!("a new watch got the freed place at attempt {attempts}");
        let mut admitted = admitted.into_inner();
        assert_eq!(
            admitted
                .message()
                .await
                .expect("a status")
                .expect("one")
                .status,
            1
        );
        open.push(admitted);
        let refused = watch(health.clone()).await.expect_err("a fourth again");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
        assert_eq!(
            limit_hits(admin, "max_health_watches").await,
            attempts as u64 + 1
        );
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
