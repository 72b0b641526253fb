//! What the cluster tests share: hubs of one cluster on a real Redis
//! (`store.rs`), their agents, and calls of every kind through every hub.

use std::net::SocketAddr;

use grpctunnel_testing::pb::EchoRequest;

use super::{caller, free_port, hello, store::Store, temp_dir, upstream, Process};

/// At least 32 bytes, as hubs require.
pub const SECRET: &str = "cluster-s3cret-of-forty-two-bytes-at-least";
pub const TOKEN: &str = super::AGENT_TOKEN;

/// The hubs' shared config (agents' token bound to `keys`) and secret.
pub fn cluster_files(dir: &std::path::Path, keys: &[String]) -> (String, String) {
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:?}")).collect();
    let config = dir.join("hub.toml");
    std::fs::write(
        &config,
        format!(
            // One token for the whole fleet: its tunnel quota raised.
            "[[agent]]\ntoken = {TOKEN:?}\nmax_tunnels = 100000\nkeys = [{}]\n",
            keys.join(", ")
        ),
    )
    .expect("config");
    let secret = dir.join("cluster.secret");
    std::fs::write(&secret, SECRET).expect("secret");
    (config.display().to_string(), secret.display().to_string())
}

/// A hub of the cluster in `store`, on a port of its own, relaying calls
/// as `relay` says (`tunnel`, `grpc`).
pub async fn cluster_hub(
    files: &(String, String),
    store: &str,
    port: u16,
    relay: &str,
) -> (Process, SocketAddr) {
    let advertise = format!("http://127.0.0.1:{port}");
    cluster_hub_with(files, store, port, &advertise, &["--cluster-relay", relay]).await
}

/// A hub of the cluster in `store` on `port`, advertising `advertise`,
/// with `extra` flags.
pub async fn cluster_hub_with(
    files: &(String, String),
    store: &str,
    port: u16,
    advertise: &str,
    extra: &[&str],
) -> (Process, SocketAddr) {
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec![
        "hub",
        "--listen",
        &listen,
        "--config",
        &files.0,
        "--cluster",
        store,
        "--advertise",
        advertise,
        "--cluster-secret-file",
        &files.1,
        "--cluster-ttl",
        "2",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let mut hub = Process::spawn(&args);
    let addr = hub.listening().await;
    (hub, addr)
}

/// An agent of `key` connected to each of `hubs`, once all its tunnels
/// are open.
pub async fn cluster_agent(
    dir: &std::path::Path,
    hubs: &[SocketAddr],
    key: &str,
    upstream: SocketAddr,
) -> Process {
    let list: Vec<String> = hubs.iter().map(|h| format!("http://{h}")).collect();
    let token = dir.join(format!("agent-{key}.token"));
    std::fs::write(&token, TOKEN).expect("token");
    let mut agent = Process::spawn(&[
        "agent",
        "--hub",
        &list.join(","),
        "--key",
        key,
        "--token-file",
        &token.display().to_string(),
        "--upstream",
        &format!("http://{upstream}"),
    ]);
    for _ in hubs {
        agent.log_line("tunnel open").await;
    }
    agent
}

/// Every call kind for `key` through `hub`; the first failure, if any.
/// The calls wait for the key (`grpctunnel-wait`): a hub publishes a new
/// key a moment after its agent's tunnel opens.
pub async fn four_kinds(hub: SocketAddr, key: &'static str) -> Result<(), String> {
    let mut c = caller(hub, key, true).await;
    let fail = |kind: &str| {
        let kind = kind.to_owned();
        move |s: tonic::Status| format!("{key} via {hub}: {kind}: {s:?}")
    };
    let reply = c.unary(hello(key)).await.map_err(fail("unary"))?;
    if reply.into_inner().payload.as_ref() != key.as_bytes() {
        return Err(format!("{key} via {hub}: unary: wrong payload"));
    }
    let req = EchoRequest {
        payload: key.as_bytes().to_vec().into(),
        repeat: 3,
        ..Default::default()
    };
    let mut stream = c
        .server_stream(req)
        .await
        .map_err(fail("server stream"))?
        .into_inner();
    let mut n = 0;
    while stream
        .message()
        .await
        .map_err(fail("server stream"))?
        .is_some()
    {
        n += 1;
    }
    if n != 3 {
        return Err(format!("{key} via {hub}: server stream: {n} of 3"));
    }
    let requests = (1..=3).map(|seq| EchoRequest {
        seq,
        ..Default::default()
    });
    let reply = c
        .client_stream(tokio_stream::iter(requests.clone()))
        .await
        .map_err(fail("client stream"))?;
    if reply.into_inner().seq != 3 {
        return Err(format!("{key} via {hub}: client stream: not the last"));
    }
    let mut responses = c
        .bidi(tokio_stream::iter(requests))
        .await
        .map_err(fail("bidi"))?
        .into_inner();
    let mut n = 0;
    while responses.message().await.map_err(fail("bidi"))?.is_some() {
        n += 1;
    }
    if n != 3 {
        return Err(format!("{key} via {hub}: bidi: {n} of 3"));
    }
    Ok(())
}

pub fn keys(n: usize) -> Vec<&'static str> {
    (0..n)
        .map(|i| &*Box::leak(format!("plant-{i}").into_boxed_str()))
        .collect()
}

/// Every key through every hub, all four call kinds; returns the failures.
pub async fn every_key_everywhere(hubs: &[SocketAddr], keys: &[&'static str]) -> Vec<String> {
    let mut calls = tokio::task::JoinSet::new();
    for &hub in hubs {
        for &key in keys {
            calls.spawn(four_kinds(hub, key));
        }
    }
    let mut failures = Vec::new();
    while let Some(done) = calls.join_next().await {
        if let Err(e) = done.expect("no panic") {
            failures.push(e);
        }
    }
    failures
}

/// Hubs of one cluster on `store`, their shared files, and an upstream
/// for their agents; the temp dir goes when dropped.
pub struct Fixture {
    pub dir: std::path::PathBuf,
    pub upstream: SocketAddr,
    pub hubs: Vec<(Process, SocketAddr)>,
}

impl Fixture {
    /// `n` hubs whose agents' token is bound to `keys`; the odd ones relay
    /// as plain gRPC, the others in tunnels (the default), so that every
    /// cluster test runs both and their mix.
    pub async fn new(store: &Store, keys: &[&str], n: usize) -> Self {
        Self::on(&store.url(), keys, n).await
    }

    /// [`new`](Self::new) on the store at `url`.
    pub async fn on(url: &str, keys: &[&str], n: usize) -> Self {
        let dir = temp_dir();
        let upstream = upstream().await;
        let owned: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let files = cluster_files(&dir, &owned);
        let mut hubs = Vec::new();
        for i in 0..n {
            let relay = if i % 2 == 1 { "grpc" } else { "tunnel" };
            hubs.push(cluster_hub(&files, url, free_port(), relay).await);
        }
        Self {
            dir,
            upstream,
            hubs,
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.hubs.iter().map(|h| h.1).collect()
    }

    /// An agent of `key` connected to `hubs`, its tunnels open.
    pub async fn agent(&self, hubs: &[SocketAddr], key: &str) -> Process {
        cluster_agent(&self.dir, hubs, key, self.upstream).await
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What a [`steady`] caller saw: calls that succeeded, calls that failed,
/// and the first few failures.
pub type Tally = (u32, u32, Vec<tonic::Status>);

/// Calls for `key` through `hub` back to back until `stop`: counted, the
/// first failures kept.
pub fn steady(
    hub: SocketAddr,
    key: &'static str,
    stop: &tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Tally> {
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut c = caller(hub, key, false).await;
        let (mut ok, mut failed, mut first) = (0u32, 0u32, Vec::new());
        while !stop.is_cancelled() {
            match c.unary(hello("steady")).await {
                Ok(_) => ok += 1,
                Err(status) => {
                    failed += 1;
                    if first.len() < 3 {
                        first.push(status);
                    }
                }
            }
        }
        (ok, failed, first)
    })
}

/// Asserts that none of `callers` saw a failed call, and each made more
/// than 100; prints their counts, saying `during` what.
pub async fn no_call_failed(callers: Vec<(&str, tokio::task::JoinHandle<Tally>)>, during: &str) {
    for (what, task) in callers {
        let (ok, failed, first) = task.await.expect("steady caller");
        println!("{what}: {ok} calls {during}, {failed} failed");
        assert_eq!(failed, 0, "{what}: {first:?}");
        assert!(ok > 100, "{what}: only {ok} calls");
    }
}
