//! The gateway's credentials and TLS: agents and callers authenticate and
//! reach only their keys, nothing listens beyond loopback unauthenticated,
//! TLS and mTLS on every hop.

mod common;

use common::*;

use grpctunnel_testing::{pb::echo_service_client::EchoServiceClient, Echo};
use tokio::process::Command;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;

#[tokio::test]
async fn an_agent_cannot_register_a_key_its_credential_is_not_bound_to() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (mut hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        // The right token, another key: refused and logged.
        let _thief = agent(&dir, addr, "plant-8", AGENT_TOKEN, upstream);
        let line = hub.log_line("agent refused").await;
        assert!(line.contains("plant-8"), "{line}");
        // A wrong token: refused too.
        let _stranger = agent(&dir, addr, "plant-7", "guess", upstream);
        let line = hub.log_line("unknown or missing credential").await;
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
        std::fs::write(
            &config,
            "[[agent]]\ntoken = \"t0ken-of-sixteen-bytes\"\nkeys = [\"k\"]\n",
        )
        .expect("config");
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
        // Nor callers' calls to a plaintext upstream beyond loopback,
        // unless told so (it never dials: refused at start).
        let out = Command::new(BIN)
            .args(["agent", "--hub", "http://127.0.0.1:1", "--key", "k"])
            .args(["--token-file", &token.display().to_string()])
            .args(["--upstream", "http://upstream.example:50051"])
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("--plaintext-upstream"), "{text}");
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
async fn callers_authenticate_and_are_limited_to_their_keys() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let callers = "[[caller]]\ntoken = \"caller-7-t0ken-abc\"\nkeys = [\"plant-7\"]\n";
        let (_hub, addr) = hub_full(&dir, AGENT_TOKEN, &["plant-7", "plant-8"], callers, &[]).await;
        let _agent7 = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);

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
            .unary(with_token(hello("mine"), "caller-7-t0ken-abc"))
            .await
            .expect("a key the caller may call");
        let mut plant8 = caller(addr, "plant-8", false).await;
        let err = plant8
            .unary(with_token(hello("theirs"), "caller-7-t0ken-abc"))
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
            .metadata("authorization", "Bearer caller-7-t0ken-abc")
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
        let (_hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &tls).await;
        let hub_url = format!("https://127.0.0.1:{}", addr.port());
        let token = dir.join("agent.token");
        std::fs::write(&token, AGENT_TOKEN).expect("token");
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
async fn the_hub_limits_tunnels_per_key() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub_with(
            &dir,
            AGENT_TOKEN,
            &["plant-7"],
            &["--max-tunnels-per-key", "1"],
        )
        .await;
        let _first = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        plant.unary(hello("first")).await.expect("the first agent");
        // A second tunnel for the key is refused (and retried by its agent).
        let mut second = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
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
        let (mut hub, addr) = hub_full(&dir, AGENT_TOKEN, &["plant-7"], &more, &tls).await;
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

/// Callers authenticate with a client certificate (mTLS) bound to keys:
/// the certificate reaches its key, not another; without a certificate or
/// token a call is refused.
#[tokio::test]
async fn callers_authenticate_with_a_client_certificate() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let certs = certificates(&dir);
        let more = format!(
            "[[caller]]\ncert_sha256 = {:?}\nkeys = [\"plant-7\"]\n",
            certs.caller_sha256
        );
        let tls = [
            "--tls-cert",
            certs.hub_cert.as_str(),
            "--tls-key",
            certs.hub_key.as_str(),
            "--client-ca",
            certs.ca.as_str(),
        ];
        let (_hub, addr) = hub_full(&dir, AGENT_TOKEN, &["plant-7", "plant-8"], &more, &tls).await;
        let hub_url = format!("https://127.0.0.1:{}", addr.port());
        let token = dir.join("agent.token");
        std::fs::write(&token, AGENT_TOKEN).expect("token");
        let mut agents = Vec::new();
        for key in ["plant-7", "plant-8"] {
            let mut agent = Process::spawn(&[
                "agent",
                "--hub",
                &hub_url,
                "--ca-file",
                &certs.ca,
                "--key",
                key,
                "--token-file",
                &token.display().to_string(),
                "--upstream",
                &format!("http://{upstream}"),
            ]);
            agent.log_line("tunnel open").await;
            agents.push(agent);
        }
        let ca = tonic::transport::Certificate::from_pem(std::fs::read(&certs.ca).expect("ca"));
        let connect = |identity: Option<tonic::transport::Identity>| {
            let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(ca.clone());
            if let Some(identity) = identity {
                tls = tls.identity(identity);
            }
            let endpoint = tonic::transport::Endpoint::from_shared(hub_url.clone())
                .expect("endpoint")
                .tls_config(tls)
                .expect("tls");
            async move { endpoint.connect().await.expect("TLS to the hub") }
        };
        let for_key = |channel, key: &'static str| {
            let add_key: AddKey = Box::new(move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("grpctunnel-key", key.parse().expect("ascii"));
                req.metadata_mut()
                    .insert("grpctunnel-wait", "true".parse().expect("ascii"));
                Ok(req)
            });
            EchoServiceClient::with_interceptor(channel, add_key)
        };
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(&certs.caller_cert).expect("cert"),
            std::fs::read(&certs.caller_key).expect("key"),
        );
        let with_cert = connect(Some(identity)).await;
        let reply = for_key(with_cert.clone(), "plant-7")
            .unary(hello("by certificate"))
            .await
            .expect("the certificate's key");
        assert_eq!(reply.into_inner().payload.as_ref(), b"by certificate");
        let err = for_key(with_cert, "plant-8")
            .unary(hello("x"))
            .await
            .expect_err("a key the certificate is not bound to");
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");

        let anonymous = connect(None).await;
        let err = for_key(anonymous, "plant-7")
            .unary(hello("x"))
            .await
            .expect_err("no credential");
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// Credentials stay at the edge: the upstream never sees the token the hub
/// checked, learns who called from `grpctunnel-caller` (which only the hub
/// sets: a caller's own is removed), and sees a caller's token only when
/// that caller's config says `forward_credential = true`.
#[tokio::test]
async fn the_upstream_sees_the_callers_name_and_never_the_hub_credential() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let callers =
            "[[caller]]\nname = \"billing\"\ntoken = \"c-billing-t0ken-abc\"\nkeys = [\"plant-7\"]\n\
                       [[caller]]\ntoken = \"c-e2e-caller-t0ken\"\nkeys = [\"*\"]\nforward_credential = true\n";
        let (_hub, addr) = hub_full(&dir, AGENT_TOKEN, &["plant-7"], callers, &[]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant7 = caller(addr, "plant-7", true).await;

        // What the upstream's handler saw, by key.
        let seen = |reply: tonic::Response<grpctunnel_testing::pb::EchoResponse>| {
            let mut seen: Vec<(String, String)> = reply
                .into_inner()
                .metadata
                .into_iter()
                .map(|e| (e.key, String::from_utf8_lossy(&e.value).into_owned()))
                .filter(|(k, _)| k == "authorization" || k == "grpctunnel-caller")
                .collect();
            seen.sort();
            seen
        };
        let echoing = |token: &str| {
            let mut req = with_token(hello("who"), token);
            req.get_mut().echo_metadata = true;
            req.metadata_mut()
                .insert("grpctunnel-caller", "root".parse().expect("ascii"));
            req
        };
        let reply = plant7.unary(echoing("c-billing-t0ken-abc")).await.expect("call");
        assert_eq!(
            seen(reply),
            [("grpctunnel-caller".to_owned(), "billing".to_owned())],
            "the hub's token went upstream, or the caller's spoofed name did"
        );
        // The second caller has no name (it is named by its place) and
        // forwards its own token.
        let reply = plant7.unary(echoing("c-e2e-caller-t0ken")).await.expect("call");
        assert_eq!(
            seen(reply),
            [
                ("authorization".to_owned(), "Bearer c-e2e-caller-t0ken".to_owned()),
                ("grpctunnel-caller".to_owned(), "caller-2".to_owned()),
            ]
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A secret file that group or others may read is warned about, and
/// refused with `--strict-secret-files` (hub and agent), naming the file
/// and the fix; at 0600 it is taken.
#[tokio::test]
async fn secret_files_open_to_others_are_warned_about_or_refused() {
    use std::os::unix::fs::PermissionsExt;
    bounded(async {
        let dir = temp_dir();
        let token = dir.join("open.token");
        std::fs::write(&token, "s3cret-7-of-an-agent\n").expect("token");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let token = token.display().to_string();
        let config = dir.join("hub.toml");
        std::fs::write(
            &config,
            format!("[[agent]]\ntoken_file = {token:?}\nkeys = [\"plant-7\"]\n"),
        )
        .expect("config");
        let config = config.display().to_string();
        let hub_args = ["hub", "--listen", "127.0.0.1:0", "--config", &config];
        let out = Command::new(BIN)
            .args(hub_args)
            .arg("--strict-secret-files")
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains(&token) && text.contains("chmod 600"),
            "{text}"
        );
        let out = Command::new(BIN)
            .args(["agent", "--hub", "http://127.0.0.1:1", "--key", "plant-7"])
            .args(["--token-file", &token, "--upstream", "http://127.0.0.1:1"])
            .arg("--strict-secret-files")
            .output()
            .await
            .expect("run");
        assert_eq!(out.status.code(), Some(2));
        assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"));

        // Without the flag the hub starts, and says why it should not have.
        let mut hub = Process::spawn(&hub_args);
        hub.listening().await;
        let warning = hub.log_line("open to group or others").await;
        assert!(warning.contains(&token), "{warning}");
        drop(hub);

        // At 0600 the strict hub starts.
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut hub = Process::spawn(&[&hub_args[..], &["--strict-secret-files"]].concat());
        hub.listening().await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A refused credential is logged with the peer it came from, and a flood
/// of them costs a few lines a second: 1,000 calls with a wrong token are
/// all refused and counted, but logged at most 10 a second, the rest
/// summed up in a later line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_peer_and_a_flood_of_them_is_rate_limited() {
    bounded(async {
        let dir = temp_dir();
        let callers = "[[caller]]\ntoken = \"caller-7-t0ken-abc\"\nkeys = [\"plant-7\"]\n";
        let (mut hub, addr) = hub_full(
            &dir,
            AGENT_TOKEN,
            &["plant-7"],
            callers,
            &["--admin", "127.0.0.1:0"],
        )
        .await;
        let admin = hub.admin.expect("admin port");
        let started = std::time::Instant::now();
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect");
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..1_000 {
            let mut client = EchoServiceClient::new(channel.clone());
            calls.spawn(async move {
                let mut req = with_token(hello("x"), "wrong");
                req.metadata_mut()
                    .insert("grpctunnel-key", "plant-7".parse().expect("ascii"));
                client.unary(req).await.expect_err("a wrong token")
            });
        }
        while let Some(done) = calls.join_next().await {
            assert_eq!(done.expect("no panic").code(), Code::Unauthenticated);
        }
        let seconds = started.elapsed().as_secs() + 1;
        // One more, after the flood's second: it carries the count of the
        // refusals that were not logged.
        let (_, metrics) = http_get(admin, "/metrics").await;
        assert!(
            metrics.contains(
                "grpctunnel_auth_failures_total{who=\"caller\",reason=\"unknown_token\"} 1000"
            ),
            "{metrics}"
        );
        // The rate limit's window is a second of wall time: this waits for
        // it to pass (it orders nothing).
        tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
        let mut client = EchoServiceClient::new(channel.clone());
        let mut req = with_token(hello("x"), "wrong");
        req.metadata_mut()
            .insert("grpctunnel-key", "plant-7".parse().expect("ascii"));
        client.unary(req).await.expect_err("a wrong token");
        // Every refusal line up to the summary names the peer, and there
        // are at most 10 for each second the flood took.
        let mut logged = 0;
        let summary = loop {
            let line = hub.log_line("refused").await;
            assert!(line.contains("peer=127.0.0.1:"), "{line}");
            if line.contains("more refusals were not logged") {
                break line;
            }
            logged += 1;
        };
        println!("{logged} refusal lines for 1,000 refusals in {seconds} s; then: {summary}");
        assert!(
            logged >= 1 && logged as u64 <= 10 * seconds,
            "{logged} lines"
        );
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A hub whose one agent credential (`s3cret-7`, key `plant-7`) has
/// `key_policy = policy`.
async fn hub_with_key_policy(
    dir: &std::path::Path,
    policy: &str,
    extra: &[&str],
) -> (Process, std::net::SocketAddr) {
    let token = dir.join("policy-agent.token");
    std::fs::write(&token, AGENT_TOKEN).expect("token");
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[[agent]]\ntoken_file = {:?}\nkey_policy = {policy:?}\nkeys = [\"plant-7\"]\n",
            token.display().to_string()
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

/// `key_policy = "refuse"`: while an agent holds its key, a second agent
/// process with the same credential is refused `ALREADY_EXISTS` (a leaked
/// token cannot join the key); once the first is gone, the second gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_policy_refuse_keeps_a_second_agent_out() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (mut hub, addr) =
            hub_with_key_policy(&dir, "refuse", &["--admin", "127.0.0.1:0"]).await;
        let mut first = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        first.log_line("tunnel open").await;
        // The second one's upstream is gone: had it joined, calls would fail.
        let mut second = agent(&dir, addr, "plant-7", AGENT_TOKEN, gone_upstream());
        let line = second.log_line("cannot open the tunnel").await;
        assert!(line.contains("held by another agent"), "{line}");
        let mut c = caller(addr, "plant-7", false).await;
        for i in 0..20 {
            c.unary(hello(&i.to_string()))
                .await
                .expect("the first agent serves");
        }
        let (_, metrics) = http_get(hub.admin.expect("admin"), "/metrics").await;
        assert!(
            metrics.contains("grpctunnel_tunnels{key=\"plant-7\"} 1"),
            "{metrics}"
        );
        // The first one gone, the second takes the key on its next try.
        drop(first);
        second.log_line("tunnel open").await;
        hub.log_line("agent connected").await;
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

/// `key_policy = "replace"`: a new agent process with the same credential
/// ends the older one's tunnel once its own is ready (a restarted agent
/// takes over from a connection its predecessor left behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_policy_replace_hands_the_key_to_the_newer_agent() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (mut hub, addr) = hub_with_key_policy(&dir, "replace", &[]).await;
        // The old agent: its upstream is gone.
        let mut old = agent(&dir, addr, "plant-7", AGENT_TOKEN, gone_upstream());
        old.log_line("tunnel open").await;
        let mut new = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        new.log_line("tunnel open").await;
        hub.log_line("agent replaced by a newer one").await;
        old.log_line("tunnel down").await;
        // The old process is gone for good (as a restarted agent's is).
        drop(old);
        let mut c = caller(addr, "plant-7", false).await;
        for i in 0..20 {
            c.unary(hello(&i.to_string()))
                .await
                .expect("the new agent serves");
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

/// Tokens shorter than 16 bytes and cluster secrets shorter than 32 are
/// refused when the hub starts (exit 2, naming the minimum).
#[tokio::test]
async fn short_tokens_and_cluster_secrets_are_refused() {
    bounded(async {
        let dir = temp_dir();
        let config = dir.join("hub.toml");
        std::fs::write(&config, "[[agent]]\ntoken = \"s3cret-7\"\nkeys = [\"k\"]\n")
            .expect("config");
        let config = config.display().to_string();
        let out = Command::new(BIN)
            .args(["hub", "--listen", "127.0.0.1:0", "--config", &config])
            .output()
            .await
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("its token is 8 bytes; give at least 16"),
            "{stderr}"
        );
        assert!(!stderr.contains("s3cret-7"), "{stderr}");

        std::fs::write(
            &config,
            "[[agent]]\ntoken = \"s3cret-7-of-an-agent\"\nkeys = [\"k\"]\n",
        )
        .expect("config");
        let secret = dir.join("cluster.secret");
        std::fs::write(&secret, "short-secret").expect("secret");
        let secret = secret.display().to_string();
        let out = Command::new(BIN)
            .args(["hub", "--listen", "127.0.0.1:0", "--config", &config])
            .args([
                "--cluster",
                "redis://127.0.0.1:1",
                "--advertise",
                "http://127.0.0.1:1",
            ])
            .args(["--cluster-secret-file", &secret])
            .output()
            .await
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("the cluster secret is 12 bytes; give at least 32"),
            "{stderr}"
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}
