//! Access logs (`--access-log`): one line per call with every field, on a
//! hub alone and on both hubs of a relayed call, in both relay modes.
//! Real hub and agent processes (and a real `redis-server` for the
//! cluster).

mod common;

use std::{path::Path, time::Duration};

use common::*;
use grpctunnel_testing::eventually;

/// The JSON lines of the access log at `path` once it holds `n`.
async fn lines(path: &Path, n: usize) -> Vec<serde_json::Value> {
    eventually("access-log lines", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
            .collect();
        (lines.len() >= n).then_some(lines)
    })
    .await
}

#[tokio::test]
async fn every_call_gets_a_line_with_every_field() {
    bounded(async {
        let dir = temp_dir();
        let log = dir.join("access.jsonl");
        let up = upstream().await;
        let (_hub, addr) = hub_full(
            &dir,
            AGENT_TOKEN,
            &["plant-7"],
            "[[caller]]\ntoken = \"billing-token-of-16-bytes\"\nname = \"billing\"\nkeys = [\"*\"]\n",
            &[
                "--access-log",
                &log.display().to_string(),
                "--max-wait",
                "1",
            ],
        )
        .await;
        let mut agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, up);
        agent.log_line("tunnel open").await;
        let mut c = caller_with_token(addr, "plant-7", "billing-token-of-16-bytes").await;
        c.unary(hello("logged")).await.expect("call");
        let mut gone = caller_with_token(addr, "no-agent", "billing-token-of-16-bytes").await;
        // It waits for an agent (--max-wait 1), in vain.
        let status = gone.unary(hello("x")).await.expect_err("no agent");
        assert_eq!(status.code(), tonic::Code::Unavailable);

        let lines = lines(&log, 2).await;
        assert_eq!(lines.len(), 2, "one line per call: {lines:?}");
        let ok = &lines[0];
        assert_eq!(ok["caller"], "billing", "{ok}");
        assert_eq!(ok["key"], "plant-7", "{ok}");
        assert_eq!(ok["method"], "/grpctunnel.testing.v1.EchoService/Unary", "{ok}");
        assert_eq!(ok["status"], "OK", "{ok}");
        assert_eq!(ok["hub"], addr.to_string(), "{ok}");
        assert!(ok["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{ok}");
        assert!(ok["time"].as_str().unwrap().ends_with('Z'), "{ok}");
        assert!(ok["duration_ms"].as_f64().unwrap() > 0.0, "{ok}");
        assert!(ok["bytes_received"].as_u64().unwrap() > 0, "{ok}");
        assert!(ok["bytes_sent"].as_u64().unwrap() > 0, "{ok}");
        assert!(ok["tunnel_id"].as_u64().is_some(), "{ok}");
        assert!(ok.get("relayed_to").is_none() && ok.get("relayed_from").is_none());
        let failed = &lines[1];
        assert_eq!(failed["key"], "no-agent", "{failed}");
        assert_eq!(failed["status"], "Unavailable", "{failed}");
        assert!(failed.get("tunnel_id").is_none(), "{failed}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A relayed call has a line on both hubs: the hub it entered names the
/// hub it went to, the hub that served it names where it came from and
/// its agent's tunnel. Hub A relays in tunnels, hub B as plain gRPC.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_call_has_a_line_on_both_hubs() {
    use common::{cluster::*, store::Store};
    let store = Store::start().await;
    bounded(async {
        let dir = temp_dir();
        let files = cluster_files(&dir, &["on-a".to_owned(), "on-b".to_owned()]);
        let up = upstream().await;
        let (log_a, log_b) = (dir.join("a.jsonl"), dir.join("b.jsonl"));
        let (port_a, port_b) = (free_port(), free_port());
        let (url_a, url_b) = (
            format!("http://127.0.0.1:{port_a}"),
            format!("http://127.0.0.1:{port_b}"),
        );
        let (log_a_text, log_b_text) = (log_a.display().to_string(), log_b.display().to_string());
        let (_a, a) = cluster_hub_with(
            &files,
            &store.url(),
            port_a,
            &url_a,
            &["--cluster-relay", "tunnel", "--access-log", &log_a_text],
        )
        .await;
        let (_b, b) = cluster_hub_with(
            &files,
            &store.url(),
            port_b,
            &url_b,
            &["--cluster-relay", "grpc", "--access-log", &log_b_text],
        )
        .await;
        let _agent_a = cluster_agent(&dir, &[a], "on-a", up).await;
        let _agent_b = cluster_agent(&dir, &[b], "on-b", up).await;
        // In a tunnel from A to B, then as gRPC from B to A.
        let mut via_a = caller(a, "on-b", true).await;
        via_a.unary(hello("a to b")).await.expect("relayed to b");
        let mut via_b = caller(b, "on-a", true).await;
        via_b.unary(hello("b to a")).await.expect("relayed to a");

        let on_a = lines(&log_a, 2).await;
        let on_b = lines(&log_b, 2).await;
        let find = |lines: &[serde_json::Value], key: &str, field: &str| {
            lines
                .iter()
                .find(|l| l["key"] == key && l.get(field).is_some())
                .unwrap_or_else(|| panic!("no {key} line with {field}: {lines:?}"))
                .clone()
        };
        for (entered, served, key, url_entered, url_served, how) in [
            (&on_a, &on_b, "on-b", &url_a, &url_b, "in a tunnel"),
            (&on_b, &on_a, "on-a", &url_b, &url_a, "as gRPC"),
        ] {
            let out = find(entered, key, "relayed_to");
            assert_eq!(&out["relayed_to"], url_served.as_str(), "{how}: {out}");
            assert_eq!(&out["hub"], url_entered.as_str(), "{how}: {out}");
            assert_eq!(out["status"], "OK", "{how}: {out}");
            let served_line = find(served, key, "relayed_from");
            assert_eq!(
                &served_line["relayed_from"],
                url_entered.as_str(),
                "{how}: {served_line}"
            );
            assert_eq!(
                &served_line["hub"],
                url_served.as_str(),
                "{how}: {served_line}"
            );
            assert_eq!(served_line["status"], "OK", "{how}: {served_line}");
            assert_eq!(
                served_line["method"],
                "/grpctunnel.testing.v1.EchoService/Unary"
            );
            assert!(
                served_line["tunnel_id"].as_u64().is_some(),
                "{how}: {served_line}"
            );
            assert!(
                served_line["bytes_sent"].as_u64().unwrap() > 0,
                "{how}: {served_line}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

/// `--access-log stderr` writes the lines in the hub's log, as JSON with
/// `--log-format json`.
#[tokio::test]
async fn stderr_lines_follow_the_log_format() {
    bounded(async {
        let dir = temp_dir();
        let up = upstream().await;
        let (mut hub, addr) = hub_with(
            &dir,
            AGENT_TOKEN,
            &["plant-7"],
            &["--access-log", "stderr", "--log-format", "json"],
        )
        .await;
        let mut agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, up);
        agent.log_line("tunnel open").await;
        let mut c = caller(addr, "plant-7", false).await;
        c.unary(hello("logged")).await.expect("call");
        let line = hub.log_line("grpctunnel::access").await;
        let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
        let fields = &line["fields"];
        assert_eq!(fields["key"], "plant-7", "{line}");
        assert_eq!(fields["status"], "OK", "{line}");
        assert_eq!(fields["method"], "/grpctunnel.testing.v1.EchoService/Unary");
        assert!(fields["duration_ms"].as_f64().unwrap() > 0.0, "{line}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
