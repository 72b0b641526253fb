//! A cluster trusts only its members: whoever can write the store, or
//! capture what hubs send each other, can neither learn the cluster secret
//! nor send calls anywhere. Real hubs, agents and `redis-server`; a
//! recording server stands in for a forged replica or a wire tap.

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{cluster::*, recorder::Recorder, store::Store, *};
use grpctunnel_testing::{eventually, pb::echo_service_client::EchoServiceClient};
use tonic::Code;

const OPEN_TUNNEL: &str = "/grpctunnel.v1.TunnelService/OpenTunnel";
const UNARY: &str = "/grpctunnel.testing.v1.EchoService/Unary";

/// No header a hub sent holds the secret.
fn assert_no_secret(headers: &http::HeaderMap) {
    for (name, value) in headers {
        assert!(
            !String::from_utf8_lossy(value.as_bytes()).contains(SECRET),
            "{name} carries the cluster secret"
        );
    }
}

/// A call to `path` on `hub` for relayed key `key`, carrying `proof`.
async fn relayed_call(
    hub: SocketAddr,
    path: &str,
    key: &str,
    proof: &http::HeaderValue,
) -> Result<Vec<u8>, tonic::Status> {
    use grpctunnel_testing::pb::{EchoRequest, EchoResponse};
    let mut grpc = tonic::client::Grpc::new(hub_channel(hub).await);
    grpc.ready().await.expect("ready");
    let mut req = hello("replayed");
    req.metadata_mut()
        .insert("grpctunnel-relay-key", key.parse().expect("ascii"));
    req.metadata_mut().insert(
        "grpctunnel-relay-auth",
        proof.to_str().expect("ascii").parse().expect("ascii"),
    );
    let path = http::uri::PathAndQuery::try_from(path).expect("a path");
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoResponse>::default();
    grpc.unary(req, path, codec)
        .await
        .map(|r| r.into_inner().payload.to_vec())
}

/// A relay tunnel to `hub` opened with `proof`.
async fn relay_tunnel(
    hub: SocketAddr,
    proof: &http::HeaderValue,
) -> Result<grpctunnel::TunnelChannel, tonic::Status> {
    grpctunnel::TunnelChannel::builder()
        .metadata("grpctunnel-relay-auth", proof.to_str().expect("ascii"))
        .open(hub_channel(hub).await)
        .await
        .map_err(|e| e.status().expect("a status").clone())
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, why: &str) {
    let err = result.expect_err(why);
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains(why), "{err:?}");
}

/// The last request the recorder got for `path` once a call through `via`
/// for `key` made one: its relay proof.
async fn capture(
    rec: &Recorder,
    via: SocketAddr,
    key: &'static str,
    path: &str,
) -> http::HeaderMap {
    eventually(
        "a relayed request reaches the recorder",
        Duration::from_secs(20),
        || {
            async move {
                let mut c = caller(via, key, false).await;
                // Fails: the recorder answers nothing.
                let err = c
                    .unary(hello("captured"))
                    .await
                    .expect_err("the recorder serves nothing");
                assert_eq!(err.code(), Code::Unavailable, "{err:?}");
                rec.drain()
                    .into_iter()
                    .rev()
                    .find(|r| r.path == path)
                    .map(|r| r.headers)
            }
        },
    )
    .await
}

/// Whoever can write the store cannot send calls (or learn the secret): an
/// entry without the cluster's seal is never dialled; neither is an entry a
/// member sealed for an `http://` address in a cluster that advertises
/// `https://` (no downgrade). A plain-http hub that does dial it (the
/// control) sends a proof, never the secret.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_store_entries_get_no_secret_and_no_call() {
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let rec = Recorder::start().await;
        let dir = temp_dir();
        let files = cluster_files(&dir, &["member-0".to_owned()]);
        let up = upstream().await;
        let certs = certificates(&dir);
        // P: a plain hub. M: a member that advertises the recorder. S: a
        // TLS hub advertising https.
        let p_port = free_port();
        let (mut p, p_addr) = cluster_hub(&files, &store.url(), p_port, "tunnel").await;
        let (_m, m_addr) =
            cluster_hub_with(&files, &store.url(), free_port(), &rec.url(), &[]).await;
        let s_port = free_port();
        let (mut s, s_addr) = cluster_hub_with(
            &files,
            &store.url(),
            s_port,
            &format!("https://localhost:{s_port}"),
            &[
                "--tls-cert",
                &certs.hub_cert,
                "--tls-key",
                &certs.hub_key,
                "--cluster-ca",
                &certs.ca,
            ],
        )
        .await;

        // Forged entries: the old format (no seal) and a made-up seal.
        for (key, value) in [
            ("forged-0", "9999999999999:0"),
            ("forged-1", "9999999999999:0:9999999999999.AAAA"),
        ] {
            let hash = format!("grpctunnel:key:{key}");
            store.cli(&["HSET", &hash, &rec.url(), value]).await;
            let mut c = caller(p_addr, key, false).await;
            let err = c
                .unary(hello("to a forged entry"))
                .await
                .expect_err("no replica");
            assert_eq!(err.code(), Code::Unavailable, "{err:?}");
            assert!(err.message().contains("on any replica"), "{err:?}");
        }
        p.log_line("its seal does not verify").await;
        let (_, metrics) = http_get(p.admin.expect("admin"), "/metrics").await;
        let refused: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("grpctunnel_cluster_refused_entries_total "))
            .and_then(|v| v.trim().parse().ok())
            .expect("the refused entries counter");
        assert!(refused >= 2, "{refused} entries refused");
        assert!(rec.drain().is_empty(), "a forged entry was dialled");

        // A member's sealed entry for http://: the plain hub dials it
        // (the control: the entry is live) and sends only a proof.
        let _agent = cluster_agent(&dir, &[m_addr], "member-0", up).await;
        let tapped = capture(&rec, p_addr, "member-0", OPEN_TUNNEL).await;
        assert!(tapped.contains_key("grpctunnel-relay-auth"));
        assert_no_secret(&tapped);

        // The https hub never dials it.
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(
                std::fs::read(&certs.ca).expect("ca"),
            ))
            .domain_name("localhost");
        let channel =
            tonic::transport::Endpoint::from_shared(format!("https://localhost:{}", s_addr.port()))
                .expect("url")
                .tls_config(tls)
                .expect("tls")
                .connect()
                .await
                .expect("connect");
        let mut c = EchoServiceClient::new(channel);
        let mut req = hello("downgrade");
        req.metadata_mut()
            .insert("grpctunnel-key", "member-0".parse().expect("ascii"));
        let err = c.unary(req).await.expect_err("not dialled");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        s.log_line("its scheme is not this replica's").await;
        assert!(
            rec.drain().is_empty(),
            "the https hub dialled an http entry"
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// Proofs captured on the wire between hubs (the recorder is the address
/// hub X advertises: a tap that withholds what it captured): each is
/// refused at another hub, for another key or method, a second time, and
/// after the window; used once, in time, where it was meant to go, it
/// works. A relay tunnel opened with a captured proof serves only X's own
/// agents: it never relays on.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_relay_proofs_are_refused_elsewhere_for_other_keys_twice_and_late() {
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let rec = Recorder::start().await;
        let dir = temp_dir();
        let files = cluster_files(&dir, &["bait".to_owned(), "plant-0".to_owned()]);
        let up = upstream().await;
        let (_a, a) = cluster_hub(&files, &store.url(), free_port(), "tunnel").await;
        let (_g, g) = cluster_hub(&files, &store.url(), free_port(), "grpc").await;
        let (_x, x) = cluster_hub_with(
            &files,
            &store.url(),
            free_port(),
            &rec.url(),
            &["--cluster-relay-window", "3"],
        )
        .await;
        let _bait = cluster_agent(&dir, &[x], "bait", up).await;
        let _plant = cluster_agent(&dir, &[g], "plant-0", up).await;

        // A relay tunnel's proof, captured.
        let opening = capture(&rec, a, "bait", OPEN_TUNNEL).await;
        let proof = opening
            .get("grpctunnel-relay-auth")
            .expect("a proof")
            .clone();
        assert_no_secret(&opening);
        refused(relay_tunnel(g, &proof).await, "for this replica");
        let tunnel = relay_tunnel(x, &proof).await.expect("in time, at X: opens");
        refused(relay_tunnel(x, &proof).await, "already used");
        let mut in_x = EchoServiceClient::new(tunnel);
        let with_key = |key: &str| {
            let mut req = hello("in the tunnel");
            req.metadata_mut()
                .insert("grpctunnel-relay-key", key.parse().expect("ascii"));
            req
        };
        let reply = in_x.unary(with_key("bait")).await.expect("X's own agent");
        assert_eq!(reply.into_inner().payload.as_ref(), b"in the tunnel");
        let err = in_x
            .unary(with_key("plant-0"))
            .await
            .expect_err("not relayed on");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().contains("on this replica"), "{err:?}");

        // Two relayed calls' proofs (hub G relays as plain gRPC).
        let first = capture(&rec, g, "bait", UNARY).await;
        let second = capture(&rec, g, "bait", UNARY).await;
        let captured_at = std::time::Instant::now();
        assert_no_secret(&first);
        let proof = first.get("grpctunnel-relay-auth").expect("a proof").clone();
        assert_eq!(first.get("grpctunnel-relay-key").expect("a key"), "bait");
        refused(
            relayed_call(x, UNARY, "plant-0", &proof).await,
            "for this replica, key and method",
        );
        refused(
            relayed_call(
                x,
                "/grpctunnel.testing.v1.EchoService/ClientStream",
                "bait",
                &proof,
            )
            .await,
            "for this replica, key and method",
        );
        refused(
            relayed_call(a, UNARY, "bait", &proof).await,
            "for this replica, key and method",
        );
        let served = relayed_call(x, UNARY, "bait", &proof)
            .await
            .expect("in time, at X: served");
        assert_eq!(served, b"replayed");
        refused(relayed_call(x, UNARY, "bait", &proof).await, "already used");

        // Unused, but late.
        let late = second
            .get("grpctunnel-relay-auth")
            .expect("a proof")
            .clone();
        tokio::time::sleep(Duration::from_millis(3_500).saturating_sub(captured_at.elapsed()))
            .await;
        refused(
            relayed_call(x, UNARY, "bait", &late).await,
            "outside its 3s window",
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// The store over TLS (`rediss://`), its password from a file: hubs share
/// keys through it; a password in the URL is masked in the log; a hub that
/// does not trust the store's certificate says so and serves its own
/// agents only.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_over_tls_with_a_password_file() {
    const PASSWORD: &str = "st0re-passw0rd-never-logged";
    let dir = temp_dir();
    let certs = certificates(&dir);
    let store = Store::start_tls(&certs.hub_cert, &certs.hub_key, &certs.ca, PASSWORD).await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let files = cluster_files(&dir, &["plant-0".to_owned(), "plant-1".to_owned()]);
        let password = dir.join("store.password");
        std::fs::write(&password, PASSWORD).expect("password file");
        let password = password.display().to_string();
        let tls_url = format!("rediss://localhost:{}", store.port);
        let up = upstream().await;
        let from_file = [
            "--cluster-password-file",
            &password,
            "--cluster-store-ca",
            &certs.ca,
        ];
        let a_port = free_port();
        let (_a, a) = cluster_hub_with(
            &files,
            &tls_url,
            a_port,
            &format!("http://127.0.0.1:{a_port}"),
            &from_file,
        )
        .await;
        // B: the password in the URL.
        let in_url = format!("rediss://:{PASSWORD}@localhost:{}", store.port);
        let b_port = free_port();
        let (mut b_hub, b) = cluster_hub_with(
            &files,
            &in_url,
            b_port,
            &format!("http://127.0.0.1:{b_port}"),
            &["--cluster-store-ca", &certs.ca],
        )
        .await;
        let joining = b_hub.log_line("joining the cluster").await;
        assert!(!joining.contains(PASSWORD), "{joining}");
        assert!(joining.contains(":***@localhost"), "{joining}");
        let _agent = cluster_agent(&dir, &[b], "plant-0", up).await;
        four_kinds(a, "plant-0")
            .await
            .expect("relayed through a TLS store");

        // C trusts another CA: it cannot reach the store, says why, and
        // still serves its own agent.
        let other = temp_dir();
        let wrong = certificates(&other);
        let c_port = free_port();
        let (mut c_hub, c) = cluster_hub_with(
            &files,
            &tls_url,
            c_port,
            &format!("http://127.0.0.1:{c_port}"),
            &[
                "--cluster-password-file",
                &password,
                "--cluster-store-ca",
                &wrong.ca,
            ],
        )
        .await;
        let _own = cluster_agent(&dir, &[c], "plant-1", up).await;
        let line = c_hub.log_line("cannot update the cluster directory").await;
        assert!(line.contains("certificate"), "{line}");
        assert!(!line.contains(PASSWORD), "{line}");
        let mut via_c = caller(c, "plant-0", false).await;
        let err = via_c.unary(hello("through c")).await.expect_err("no store");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains("directory is unavailable"),
            "{err:?}"
        );
        assert!(err.message().contains("certificate"), "{err:?}");
        println!("with a wrong CA for the store: {}", err.message());
        four_kinds(c, "plant-1").await.expect("c's own agent");
        let _ = std::fs::remove_dir_all(other);
    })
    .await
    .expect("test timed out");
    store.kill().await;
    let _ = std::fs::remove_dir_all(dir);
}
