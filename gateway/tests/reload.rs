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
        let mut hub = Process::spawn(&["hub", "--listen", "127.0.0.1:0", "--config", &config_arg]);
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

        stop.cancel();
        let (ok, failed, first) = steady.await.expect("steady caller");
        println!("agent b: {ok} calls through the reloads, {failed} failed");
        assert_eq!(failed, 0, "{first:?}");
        assert!(ok > 0);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
