//! The admin port beyond loopback, attacked: it takes TLS and an
//! `[[admin]]` credential on every request (bearer token, HTTP Basic
//! password, or client certificate); no other credential opens it; the
//! admin API on the hub's own port is as closed; `--admin-open-metrics`
//! opens `/metrics` and `/healthz` only; a reload that drops a credential
//! refuses it from then on. Real hub processes, TLS made in the test.

mod common;

use std::{net::SocketAddr, path::Path, sync::Arc};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
};

const ADMIN_TOKEN: &str = "ops-token-of-sixteen-bytes";
const CALLER_TOKEN: &str = "caller-token-of-sixteen-bytes";

/// An HTTP/1.1 GET over TLS (trusting `ca`), with an `authorization`
/// header and a client certificate if given: the status line, the
/// headers, the body.
async fn https_get(
    addr: SocketAddr,
    path: &str,
    ca: &str,
    authorization: Option<&str>,
    client: Option<(&str, &str)>,
) -> (String, String, String) {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .expect("cert")
                    .map(|c| c.expect("pem"))
                    .collect(),
                PrivateKeyDer::from_pem_file(key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS");
    let auth = authorization
        .map(|a| format!("authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n");
    tls.write_all(req.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let _ = tls.read_to_end(&mut bytes).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_lowercase(), body.to_owned())
}

/// The hub's config: an agent, a caller, and admins (a token, and the
/// caller's client certificate bound as an admin's).
fn config(dir: &Path, certs: &Certs, admins: bool) -> String {
    let admin = if admins {
        format!(
            "[[admin]]\nname = \"ops\"\ntoken = \"{ADMIN_TOKEN}\"\n[[admin]]\nname = \"ops-cert\"\ncert_sha256 = \"{}\"\n",
            certs.caller_sha256
        )
    } else {
        String::new()
    };
    let path = dir.join("hub.toml");
    std::fs::write(
        &path,
        format!(
            "[[agent]]\ntoken = \"{AGENT_TOKEN}\"\nkeys = [\"plant-7\"]\n[[caller]]\ntoken = \"{CALLER_TOKEN}\"\nkeys = [\"*\"]\n{admin}"
        ),
    )
    .expect("config");
    path.display().to_string()
}

/// A TLS hub whose admin port listens on every address.
async fn hub(dir: &Path, certs: &Certs, extra: &[&str]) -> (Process, SocketAddr, SocketAddr) {
    let config = config(dir, certs, true);
    let mut args = vec![
        "hub",
        "--listen",
        "127.0.0.1:0",
        "--config",
        &config,
        "--tls-cert",
        &certs.hub_cert,
        "--tls-key",
        &certs.hub_key,
        "--client-ca",
        &certs.ca,
        "--admin",
        "0.0.0.0:0",
    ];
    args.extend_from_slice(extra);
    let mut hub = Process::spawn(&args);
    let addr = hub.listening().await;
    let admin = hub.admin.expect("ADMIN line");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin.port()));
    (hub, addr, admin)
}

#[tokio::test]
async fn beyond_loopback_the_admin_port_needs_tls_and_an_admin_credential() {
    bounded(async {
        let dir = temp_dir();
        let certs = certificates(&dir);
        // No [[admin]]: refused at start.
        let bare = config(&dir, &certs, false);
        let (code, _, err) = cli(&[
            "hub", "--listen", "127.0.0.1:0", "--config", &bare, "--tls-cert", &certs.hub_cert,
            "--tls-key", &certs.hub_key, "--admin", "0.0.0.0:0",
        ])
        .await;
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains("refusing to serve the admin port"), "{err}");
        // No TLS: refused at start.
        let with_admins = config(&dir, &certs, true);
        let (code, _, err) = cli(&[
            "hub", "--listen", "127.0.0.1:0", "--config", &with_admins, "--admin", "0.0.0.0:0",
        ])
        .await;
        assert_eq!(code, Some(2), "{err}");

        let (hub, addr, admin) = hub(&dir, &certs, &[]).await;
        let url = format!("https://{admin}");
        let token_file = |name: &str, token: &str| {
            let path = dir.join(name);
            std::fs::write(&path, token).expect("token file");
            path.display().to_string()
        };
        let (ops, wrong, caller_file) = (
            token_file("ops.token", ADMIN_TOKEN),
            token_file("wrong.token", "not-the-token-of-anyone"),
            token_file("caller.token", CALLER_TOKEN),
        );
        let agents = |extra: Vec<String>| {
            let mut args = vec![
                "agents".to_owned(),
                "--admin".to_owned(),
                url.clone(),
                "--admin-ca-file".to_owned(),
                certs.ca.clone(),
                "--json".to_owned(),
            ];
            args.extend(extra);
            async move {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                cli(&args).await
            }
        };
        for (what, extra) in [
            ("no credential", vec![]),
            ("a wrong token", vec!["--admin-token-file".to_owned(), wrong.clone()]),
            ("a caller's token", vec!["--admin-token-file".to_owned(), caller_file.clone()]),
        ] {
            let (code, _, err) = agents(extra).await;
            assert_eq!(code, Some(1), "{what}: {err}");
            assert!(err.contains("Unauthenticated"), "{what}: {err}");
        }
        let (code, out, err) = agents(vec!["--admin-token-file".to_owned(), ops.clone()]).await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.trim(), "[]");

        // The HTTP side: metrics, health and the dashboard are closed too.
        for path in ["/metrics", "/healthz", "/", "/api/state"] {
            let (status, headers, _) = https_get(admin, path, &certs.ca, None, None).await;
            assert!(status.contains("401"), "{path}: {status}");
            assert!(headers.contains("www-authenticate: basic"), "{path}: {headers}");
            let (status, ..) =
                https_get(admin, path, &certs.ca, Some("Bearer not-an-admin-token"), None).await;
            assert!(status.contains("401"), "{path}: {status}");
        }
        // The token as a browser sends it (Basic, any user name).
        use base64::Engine;
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("me:{ADMIN_TOKEN}"))
        );
        let (status, _, body) = https_get(admin, "/metrics", &certs.ca, Some(&basic), None).await;
        assert!(status.contains("200"), "{status}");
        assert!(body.contains("grpctunnel_agents_connected"), "{body}");
        let (status, _, body) =
            https_get(admin, "/", &certs.ca, Some(&format!("Bearer {ADMIN_TOKEN}")), None).await;
        assert!(status.contains("200") && body.contains("grpctunnel hub"), "{status}");
        // A client certificate bound as an admin's.
        let (status, ..) = https_get(
            admin,
            "/healthz",
            &certs.ca,
            None,
            Some((&certs.caller_cert, &certs.caller_key)),
        )
        .await;
        assert!(status.contains("200"), "{status}");
        // The agent's certificate is no admin's.
        let (status, ..) = https_get(
            admin,
            "/healthz",
            &certs.ca,
            None,
            Some((&certs.agent_cert, &certs.agent_key)),
        )
        .await;
        assert!(status.contains("401"), "{status}");

        // The admin API on the hub's own port: the admin token opens it,
        // a caller's does not, and it never reaches an agent.
        let hub_url = format!("https://localhost:{}", addr.port());
        let on_hub = |token: String| {
            let (hub_url, ca) = (hub_url.clone(), certs.ca.clone());
            async move {
                cli(&[
                    "agents", "--admin", &hub_url, "--admin-ca-file", &ca, "--admin-token-file",
                    &token, "--this-hub",
                ])
                .await
            }
        };
        let (code, out, err) = on_hub(ops.clone()).await;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(out.trim(), "KEY  TUNNEL  HUB  PEER  CREDENTIAL  UP  REV  VERSION  IN-FLIGHT  CALLS  BYTES-IN  BYTES-OUT  STATE");
        let (code, _, err) = on_hub(caller_file.clone()).await;
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("Unauthenticated"), "{err}");

        // A reload that drops the token admin refuses it from then on.
        std::fs::write(
            dir.join("hub.toml"),
            format!(
                "[[agent]]\ntoken = \"{AGENT_TOKEN}\"\nkeys = [\"plant-7\"]\n[[caller]]\ntoken = \"{CALLER_TOKEN}\"\nkeys = [\"*\"]\n[[admin]]\nname = \"ops-cert\"\ncert_sha256 = \"{}\"\n",
                certs.caller_sha256
            ),
        )
        .expect("config");
        let mut hub = hub;
        hub.signal("HUP");
        hub.log_line("config reloaded").await;
        let (code, _, err) = agents(vec!["--admin-token-file".to_owned(), ops.clone()]).await;
        assert_eq!(code, Some(1), "a dropped admin: {err}");
        let (status, ..) = https_get(admin, "/metrics", &certs.ca, Some(&basic), None).await;
        assert!(status.contains("401"), "{status}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

#[tokio::test]
async fn open_metrics_opens_metrics_and_health_only() {
    bounded(async {
        let dir = temp_dir();
        let certs = certificates(&dir);
        let (_hub, _, admin) = hub(&dir, &certs, &["--admin-open-metrics"]).await;
        for path in ["/metrics", "/healthz"] {
            let (status, ..) = https_get(admin, path, &certs.ca, None, None).await;
            assert!(status.contains("200"), "{path}: {status}");
        }
        for path in ["/", "/api/state", "/api/events"] {
            let (status, ..) = https_get(admin, path, &certs.ca, None, None).await;
            assert!(status.contains("401"), "{path}: {status}");
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
