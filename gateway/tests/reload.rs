//! Credentials change while the hub runs: SIGHUP reloads its config. Real
//! hub and agent processes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;

/// The hub's config: one `[[agent]]` per `(token, key)`.
fn write_config(path: &std::path::Path, agents: &[(&str, &str)]) {
    let text: String = agents
        .iter()
        .map(|(token, key)| format!("[[agent]]\ntoken = {token:?}\nkeys = [{key:?}]\n"))
        .collect();
    std::fs::write(path, text).expect("config");
}

/// A broken config on SIGHUP is refused and the old one kept; a config
/// that revokes one agent's token closes that agent's tunnel within a
/// second, while another agent's calls, made back to back all along, never
/// fail; a new credential works at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_revokes_one_agent_and_keeps_the_others_serving() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let config = dir.join("hub.toml");
        write_config(
            &config,
            &[
                ("t0ken-of-plant-a-agent", "plant-a"),
                ("t0ken-of-plant-b-agent", "plant-b"),
            ],
        );
        let config_arg = config.display().to_string();
        let mut hub = Process::spawn(&[
            "hub",
            "--listen",
            "127.0.0.1:0",
            "--config",
            &config_arg,
            "--admin",
            "127.0.0.1:0",
        ]);
        let addr = hub.listening().await;
        let _a = agent(&dir, addr, "plant-a", "t0ken-of-plant-a-agent", upstream);
        let _b = agent(&dir, addr, "plant-b", "t0ken-of-plant-b-agent", upstream);
        caller(addr, "plant-a", true)
            .await
            .unary(hello("a"))
            .await
            .expect("agent a serves");
        let mut to_a = caller(addr, "plant-a", false).await;
        let mut to_b = caller(addr, "plant-b", true).await;
        to_b.unary(hello("b")).await.expect("agent b serves");

        // Calls to b, back to back, for the whole test (the first few
        // failures kept, all counted).
        let stop = tokio_util::sync::CancellationToken::new();
        let steady = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (mut ok, mut failed, mut first) = (0u32, 0u32, Vec::new());
                while !stop.is_cancelled() {
                    match to_b.unary(hello("steady")).await {
                        Ok(_) => ok += 1,
                        Err(status) => {
                            failed += 1;
                            if first.len() < 5 {
                                first.push(status);
                            }
                        }
                    }
                    tokio::task::yield_now().await;
                }
                (ok, failed, first)
            }
        });

        // A broken config: refused, the old one stays.
        // Broken where an inline token stands: the error names the line,
        // never the text of it.
        std::fs::write(
            &config,
            "[[agent]]\ntoken = \"t0ken-of-plant-a-agent\nkeys = [\"plant-a\"]\n",
        )
        .expect("broken config");
        hub.signal("HUP");
        let refused = hub.log_line("config reload refused").await;
        assert!(refused.contains("line 2"), "{refused}");
        assert!(
            !refused.contains("t0ken-of-plant-a-agent"),
            "a token in the log: {refused}"
        );
        to_a.unary(hello("a")).await.expect("agent a still serves");

        // Agent a's token revoked: its tunnel closes, logged with why.
        write_config(
            &config,
            &[
                ("t0ken-of-plant-b-agent", "plant-b"),
                ("t0ken-of-plant-c-agent", "plant-c"),
            ],
        );
        let revoked_at = Instant::now();
        hub.signal("HUP");
        let closed = hub.log_line("agent tunnel closed").await;
        assert!(closed.contains("plant-a"), "{closed}");
        let err = to_a.unary(hello("a")).await.expect_err("agent a is gone");
        let gone_after = revoked_at.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            gone_after < Duration::from_secs(1),
            "agent a gone after {gone_after:?}"
        );
        hub.log_line("config reloaded").await;

        // The new credential works at once.
        let _c = agent(&dir, addr, "plant-c", "t0ken-of-plant-c-agent", upstream);
        caller(addr, "plant-c", true)
            .await
            .unary(hello("c"))
            .await
            .expect("agent c, new in the config, serves");
        // Its calls are counted under its own key (the label set follows
        // the reload), not folded into `other`.
        let (_, metrics) = http_get(hub.admin.expect("admin"), "/metrics").await;
        assert!(
            metrics.lines().any(
                |l| l.starts_with("grpc_server_handled_total") && l.contains("key=\"plant-c\"")
            ),
            "{metrics}"
        );

        stop.cancel();
        let (ok, failed, first) = steady.await.expect("steady caller");
        println!("agent b: {ok} calls through the reloads, {failed} failed");
        assert_eq!(failed, 0, "{first:?}");
        assert!(ok > 0);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A caller's forward tunnel outlives the check made when it opened: a
/// reload that revokes the caller's token ends the tunnel within a second
/// (`UNAUTHENTICATED`, naming the revocation), while another caller's
/// forward tunnel keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_ends_a_revoked_callers_forward_tunnel() {
    use grpctunnel_testing::pb::echo_service_client::EchoServiceClient;
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let config = dir.join("hub.toml");
        let agent_entry = "[[agent]]\ntoken = \"t0ken-of-plant-a-agent\"\nkeys = [\"plant-a\"]\n";
        let caller_entry = |token: &str| format!("[[caller]]\ntoken = {token:?}\nkeys = [\"*\"]\n");
        std::fs::write(
            &config,
            format!(
                "{agent_entry}{}{}",
                caller_entry("leaked-caller-t0ken"),
                caller_entry("kept-caller-t0ken")
            ),
        )
        .expect("config");
        let config_arg = config.display().to_string();
        let mut hub = Process::spawn(&["hub", "--listen", "127.0.0.1:0", "--config", &config_arg]);
        let addr = hub.listening().await;
        let _a = agent(&dir, addr, "plant-a", "t0ken-of-plant-a-agent", upstream);
        let tunnel = |token: &'static str| async move {
            let channel = grpctunnel::TunnelChannel::builder()
                .metadata("authorization", &format!("Bearer {token}"))
                .open(hub_channel(addr).await)
                .await
                .expect("a forward tunnel");
            let client = EchoServiceClient::new(channel.clone());
            (channel, client)
        };
        let call = |mut client: EchoServiceClient<grpctunnel::TunnelChannel>| async move {
            let mut req = hello("through the tunnel");
            req.metadata_mut()
                .insert("grpctunnel-key", "plant-a".parse().expect("ascii"));
            req.metadata_mut()
                .insert("grpctunnel-wait", "true".parse().expect("ascii"));
            client.unary(req).await.map(|_| ())
        };
        let (leaked, leaked_client) = tunnel("leaked-caller-t0ken").await;
        let (_kept, kept_client) = tunnel("kept-caller-t0ken").await;
        call(leaked_client.clone()).await.expect("serves before");
        call(kept_client.clone()).await.expect("serves before");

        std::fs::write(
            &config,
            format!("{agent_entry}{}", caller_entry("kept-caller-t0ken")),
        )
        .expect("config");
        let sent = Instant::now();
        hub.signal("HUP");
        let line = hub.log_line("config reloaded").await;
        assert!(line.contains("forward_tunnels_closed=1"), "{line}");
        tokio::time::timeout(Duration::from_secs(1), leaked.closed())
            .await
            .expect("the revoked caller's tunnel ends within a second of the reload");
        println!(
            "the revoked caller's forward tunnel ended {:?} after SIGHUP",
            sent.elapsed()
        );
        let ended = leaked.terminal_error().expect("why it ended");
        assert!(ended.chain().contains("revoked"), "{ended:?}");
        call(kept_client)
            .await
            .expect("the other caller's tunnel serves");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}
