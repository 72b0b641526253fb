//! The gateway's operations surface: Prometheus metrics and the health
//! endpoint after real calls.

mod common;

use common::*;

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
