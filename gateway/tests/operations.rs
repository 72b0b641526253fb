//! The gateway's operations surface: Prometheus metrics and the health
//! endpoint after real calls, graceful shutdown, config files, limits of
//! calls in flight.

mod common;

use std::time::Duration;

use common::*;
use grpctunnel_testing::pb::EchoRequest;
use tonic::Code;

#[tokio::test]
async fn metrics_and_healthz_on_the_admin_port() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub, addr) =
            hub_with(&dir, AGENT_TOKEN, &["plant-7"], &["--admin", "127.0.0.1:0"]).await;
        let admin = hub.admin.expect("the admin port");
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
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
        // go-grpc-prometheus's names and labels, plus `key`.
        let unary = "grpc_service=\"grpctunnel.testing.v1.EchoService\",grpc_method=\"Unary\"";
        assert!(
            line(&format!(
                "grpc_server_handled_total{{{unary},grpc_code=\"OK\",key=\"plant-7\"}}"
            ))
            .ends_with(" 3"),
            "{body}"
        );
        assert!(
            line(&format!(
                "grpc_server_handled_total{{{unary},grpc_code=\"Unavailable\",key=\"other\"}}"
            ))
            .ends_with(" 1"),
            "{body}"
        );
        // Each call's request and response crossed: some bytes each way.
        for counter in ["received", "sent"] {
            let text = line(&format!(
                "grpctunnel_{counter}_bytes_total{{key=\"plant-7\"}}"
            ));
            let bytes: f64 = text
                .rsplit(' ')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("a number");
            assert!(bytes >= 3.0 * "counted".len() as f64, "{text}");
        }
        line(&format!(
            "grpc_server_handling_seconds_count{{{unary},key=\"plant-7\"}} 3"
        ));
        line(&format!(
            "grpc_server_handling_seconds_bucket{{{unary},key=\"plant-7\",le=\"60\"}} 3"
        ));
        assert!(
            line("grpctunnel_agents_connected").ends_with(" 1"),
            "{body}"
        );
        assert!(
            line("grpctunnel_tunnels{key=\"plant-7\"}").ends_with(" 1"),
            "{body}"
        );
        line("grpc_server_handling_seconds");
        line("grpctunnel_auth_failures_total{who=\"agent\",reason=\"unknown_token\"}");
        drop(hub);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// SIGTERM: the hub stops taking calls but lets those in flight finish, up
/// to `--drain`; one that would outlast it is cut, and the hub exits 0.
#[tokio::test]
async fn sigterm_drains_calls_in_flight_within_the_bound() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub, addr) = hub_with(&dir, AGENT_TOKEN, &["plant-7"], &["--drain", "3"]).await;
        let _agent = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut plant = caller(addr, "plant-7", true).await;
        let (finishing, mut finishing_responses) = bidi_in_flight(&mut plant).await;
        let (lingering, mut lingering_responses) = bidi_in_flight(&mut plant).await;

        // Timed from before the signal: the hub's drain clock starts after
        // this instant (timing after `kill` returned lost the race by
        // 0.3 ms once, in CI).
        let signalled = std::time::Instant::now();
        hub.signal_term();
        // The call in flight goes on: one more round trip, then its end.
        finishing
            .send(EchoRequest {
                seq: 2,
                ..Default::default()
            })
            .await
            .expect("send after SIGTERM");
        let second = finishing_responses
            .message()
            .await
            .expect("a round trip while draining")
            .expect("a response");
        assert_eq!(second.seq, 2);
        drop(finishing);
        assert!(
            finishing_responses
                .message()
                .await
                .expect("a clean end")
                .is_none(),
            "the drained call ends with OK"
        );

        // The other never half-closes: cut at the bound, not left hanging.
        let cut = loop {
            match lingering_responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the lingering call ended cleanly"),
                Err(status) => break status,
            }
        };
        let cut_after = signalled.elapsed();
        assert!(
            matches!(cut.code(), Code::Unavailable | Code::Cancelled),
            "{cut:?}"
        );
        // Cut by the bound: not before --drain 3 (the hub's clock starts
        // after `signalled`), and well before the default of 10 s, which a
        // hub ignoring --drain would use. (The upper figure only catches
        // that failure; it is no timing target.)
        assert!(
            cut_after >= Duration::from_secs(3),
            "cut {cut_after:?} after SIGTERM, before --drain 3"
        );
        assert!(
            cut_after < Duration::from_secs(8),
            "cut {cut_after:?} after SIGTERM: --drain 3 was not the bound"
        );
        drop(lingering);
        let mut hub = hub;
        let status = hub.child.wait().await.expect("the hub exits");
        assert_eq!(status.code(), Some(0));
        assert!(
            signalled.elapsed() < Duration::from_secs(8),
            "the hub exited {:?} after SIGTERM, past --drain 3 and its 1 s margin",
            signalled.elapsed()
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// An agent configured by file alone (`--config`), its settings as the
/// flags' snake_case names; a flag on the command line wins over the file.
#[tokio::test]
async fn an_agent_runs_from_its_config_file() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (_hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let token = dir.join("agent.token");
        std::fs::write(&token, AGENT_TOKEN).expect("token");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "hub = [\"http://{addr}\"]\nkey = \"plant-7\"\ntoken_file = {:?}\nupstream = \"http://{upstream}\"\ntunnels = 0\n",
                token.display().to_string()
            ),
        )
        .expect("config");
        let config = config.display().to_string();
        // `tunnels = 0` is refused: the file is read ...
        let mut refused = Process::spawn(&["agent", "--config", &config]);
        let code = refused.child.wait().await.expect("exit").code();
        assert_eq!(code, Some(2), "a bad setting in the file is a usage error");
        // ... and a flag overrides it.
        let mut agent = Process::spawn(&["agent", "--config", &config, "--tunnels", "1"]);
        agent.log_line("tunnel open").await;
        let mut plant = caller(addr, "plant-7", true).await;
        let reply = plant.unary(hello("from a file")).await.expect("call");
        assert_eq!(reply.into_inner().payload.as_ref(), b"from a file");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// Limits of calls in flight: a caller's `max_calls` at the hub, and an
/// agent's `--max-calls`. The call beyond either is `RESOURCE_EXHAUSTED`;
/// once a call ends its place is free again.
#[tokio::test]
async fn callers_and_agents_limit_their_calls_in_flight() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let callers = "[[caller]]\ntoken = \"one-at-a-time-t0ken\"\nkeys = [\"*\"]\nmax_calls = 1\n\n[[caller]]\ntoken = \"unlimited-caller-t0ken\"\nkeys = [\"*\"]\n";
        let (_hub, addr) = hub_full(&dir, AGENT_TOKEN, &["plant-7", "plant-8"], callers, &[]).await;
        let mut agent7 = agent(&dir, addr, "plant-7", AGENT_TOKEN, upstream);
        let mut agent8 = agent_with(&dir, addr, "plant-8", AGENT_TOKEN, upstream, &["--max-calls", "2"]);
        agent7.log_line("tunnel open").await;
        agent8.log_line("tunnel open").await;

        // The caller's limit, at the hub.
        let mut one = caller_with_token(addr, "plant-7", "one-at-a-time-t0ken").await;
        let (held, responses) = bidi_in_flight(&mut one).await;
        let err = one.unary(hello("second")).await.expect_err("over max_calls");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("max_calls"), "{err:?}");
        // A clean end: the hub frees the place as the trailers pass, so
        // the next call finds it free.
        drop(held);
        let mut responses = responses;
        assert!(responses.message().await.expect("a clean end").is_none());
        let reply = one.unary(hello("again")).await.expect("the place is free");
        assert_eq!(reply.into_inner().payload.as_ref(), b"again");

        // The agent's limit: two in flight, the third refused by the agent.
        let mut many = caller_with_token(addr, "plant-8", "unlimited-caller-t0ken").await;
        let first = bidi_in_flight(&mut many).await;
        let second = bidi_in_flight(&mut many).await;
        let err = many.unary(hello("third")).await.expect_err("over --max-calls");
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        assert!(err.message().contains("--max-calls"), "{err:?}");
        drop((first, second));
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// A NAT or load balancer drops the agent's connection without a word (the
/// relay freezes it: open, silent). With `--keepalive 1` on both sides, a
/// call sent into the dead tunnel fails `UNAVAILABLE` instead of hanging,
/// the hub drops the tunnel, and the agent dials again, so calls reach it
/// again within seconds. Without pings all of this waits for TCP to give
/// up, many minutes later.
#[tokio::test]
async fn a_silently_dropped_agent_connection_is_found_and_replaced() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (mut hub, addr) =
            hub_with(&dir, AGENT_TOKEN, &["plant-7"], &["--keepalive", "1"]).await;
        let relay = common::freeze::FreezingRelay::start(addr).await;
        let mut agent = agent_with(
            &dir,
            relay.addr,
            "plant-7",
            AGENT_TOKEN,
            upstream,
            &["--keepalive", "1"],
        );
        agent.log_line("tunnel open").await;
        hub.log_line("agent connected").await;
        let mut plant = caller(addr, "plant-7", false).await;
        plant.unary(hello("before")).await.expect("before the drop");

        relay.freeze();
        // Into the dead tunnel (the only one): fails once the hub's ping
        // goes unanswered.
        let err = plant
            .unary(hello("into the dead tunnel"))
            .await
            .expect_err("the tunnel is dead");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        let line = hub.log_line("agent disconnected").await;
        println!("hub: {line}");
        // The agent's own pings go unanswered: it dials again (a new
        // connection through the relay flows).
        agent.log_line("tunnel open").await;
        let mut plant = caller(addr, "plant-7", true).await;
        let reply = plant.unary(hello("after")).await.expect("after");
        assert_eq!(reply.into_inner().payload.as_ref(), b"after");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// The first minute of a new user: `grpctunnel token` for an agent and a
/// caller, its output appended to `hub.toml` as it is, a hub on that
/// config, the agent with its token file, and a call presenting the
/// caller's token. The token files are new, owner-only, and never
/// overwritten.
#[tokio::test]
async fn tokens_from_the_binary_start_a_hub_an_agent_and_a_caller() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let FirstMinute {
            addr,
            agent_lines,
            caller_lines,
            agent_file,
            caller_file,
            hub: _hub,
            agent: _agent,
        } = first_minute(&dir, upstream).await;
        assert!(agent_lines.contains("[[agent]]"), "{agent_lines}");
        assert!(caller_lines.contains("keys = [\"*\"]"), "{caller_lines}");
        let (code, _, err) = token_command(&["--key", "plant-7", "--out", &agent_file]);
        assert_eq!(code, Some(2), "an existing token file is kept: {err}");
        let (code, _, err) = token_command(&[]);
        assert_eq!(code, Some(2), "an agent's token needs a key: {err}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&agent_file)
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let agent_token = std::fs::read_to_string(&agent_file).expect("token");
        let caller_token = std::fs::read_to_string(&caller_file).expect("token");
        assert_eq!(agent_token.trim().len(), 64);
        assert_ne!(agent_token, caller_token);
        let caller_token: &'static str = Box::leak(caller_token.trim().to_owned().into_boxed_str());
        let mut me = caller_with_token(addr, "plant-7", caller_token).await;
        let reply = me.unary(hello("first minute")).await.expect("call");
        assert_eq!(reply.into_inner().payload.as_ref(), b"first minute");
        let mut stranger = caller_with_token(addr, "plant-7", "not-the-token-of-anyone").await;
        let status = stranger.unary(hello("x")).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}

/// The agent's admin port: `/metrics` counts its tunnels per hub and the
/// calls hubs sent it by method and status; `/healthz` is 200 while a
/// tunnel is open and 503 once its hub is gone.
#[tokio::test]
async fn an_agent_reports_its_tunnels_and_calls_on_its_admin_port() {
    bounded(async {
        let dir = temp_dir();
        let upstream = upstream().await;
        let (hub, addr) = hub(&dir, AGENT_TOKEN, &["plant-7"]).await;
        let mut agent = agent_with(
            &dir,
            addr,
            "plant-7",
            AGENT_TOKEN,
            upstream,
            &["--admin", "127.0.0.1:0"],
        );
        let admin = agent.admin_port().await;
        agent.log_line("tunnel open").await;
        let mut plant = caller(addr, "plant-7", true).await;
        for _ in 0..3 {
            plant.unary(hello("counted")).await.expect("call");
        }
        let (status, body) = http_get(admin, "/healthz").await;
        assert!(status.contains("200"), "{status} {body}");
        let (_, body) = http_get(admin, "/metrics").await;
        let line = |prefix: &str| {
            body.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
                .to_owned()
        };
        assert!(
            line(&format!(
                "grpctunnel_agent_tunnels_open{{hub=\"http://{addr}\"}}"
            ))
            .ends_with(" 1"),
            "{body}"
        );
        let unary = "grpc_service=\"grpctunnel.testing.v1.EchoService\",grpc_method=\"Unary\"";
        assert!(
            line(&format!(
                "grpc_server_handled_total{{{unary},grpc_code=\"OK\",key=\"plant-7\"}}"
            ))
            .ends_with(" 3"),
            "{body}"
        );
        line(&format!(
            "grpc_server_handling_seconds_count{{{unary},key=\"plant-7\"}} 3"
        ));

        // Its hub gone, the agent is not serving.
        drop(hub);
        agent.log_line("tunnel down").await;
        let (status, body) = http_get(admin, "/healthz").await;
        assert!(status.contains("503"), "{status} {body}");
        let (_, body) = http_get(admin, "/metrics").await;
        assert!(
            body.contains(&format!(
                "grpctunnel_agent_tunnels_open{{hub=\"http://{addr}\"}} 0"
            )),
            "{body}"
        );
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
}
