//! Hubs need of the store only the ACL that SECURITY.md gives: under a
//! user that may do nothing else, on one server and behind Sentinels
//! through a failover, the store refuses them nothing (`ACL LOG` stays
//! empty) and every cluster path works. Real hubs, agents, `redis-server`
//! and Sentinels.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use common::{cluster::*, sentinel::Replicated, store::Store, *};
use grpctunnel_testing::eventually;

/// The store's ACL for hubs, as SECURITY.md gives it: the directory's keys
/// and channel, and the commands hubs send or their scripts run.
const HUB_ACL: &[&str] = &[
    "resetkeys",
    "~grpctunnel:*",
    "resetchannels",
    "&grpctunnel:published",
    "-@all",
    "+evalsha",
    "+script|load",
    "+hdel",
    "+subscribe",
    "+ping",
    "+time",
    "+hget",
    "+hset",
    "+hgetall",
    "+pttl",
    "+pexpire",
    "+publish",
];

/// What SECURITY.md adds behind Sentinels: the `redis` crate asks the
/// primary its role.
const SENTINEL_ACL: &[&str] = &["+role"];

const PASSWORD: &str = "hubs-store-pw";

/// Makes the user `hubs` on `store`, allowed `acl`.
async fn add_user(store: &Store, acl: &[&str]) {
    let mut cmd = vec!["ACL", "SETUSER", "hubs", "on", ">hubs-store-pw"];
    cmd.extend_from_slice(acl);
    assert_eq!(store.cli(&cmd).await, "OK");
}

/// Two hubs (relaying in tunnels, and as plain gRPC) on the store at `url`
/// as `hubs` (in the URL), its password from a file, as SECURITY.md says.
async fn hubs(dir: &Path, url: &str) -> Vec<(Process, SocketAddr)> {
    let password = dir.join("store.password");
    std::fs::write(&password, PASSWORD).expect("password file");
    let password = password.display().to_string();
    let files = cluster_files(dir, &["plant-0".to_owned(), "plant-1".to_owned()]);
    let mut hubs = Vec::new();
    for relay in ["tunnel", "grpc"] {
        let port = free_port();
        let advertise = format!("http://127.0.0.1:{port}");
        let extra = [
            "--cluster-password-file",
            &password,
            "--cluster-relay",
            relay,
        ];
        hubs.push(cluster_hub_with(&files, url, port, &advertise, &extra).await);
    }
    hubs
}

/// Nothing refused, and every connection but this check's own, the
/// Sentinels' and replication links is a hub's, as `hubs` (not a default
/// user that may do anything).
async fn refused_nothing(store: &Store) {
    let refused = store.cli(&["ACL", "LOG"]).await;
    assert!(refused.is_empty(), "the store refused hubs: {refused}");
    let clients = store.cli(&["CLIENT", "LIST"]).await;
    let theirs: Vec<&str> = clients
        .lines()
        .filter(|l| !l.contains("cmd=client|list") && !l.contains(" name=sentinel-"))
        .filter(|l| {
            !l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains(['S', 'M']))
        })
        .collect();
    assert!(theirs.len() >= 2, "{clients}");
    for line in theirs {
        assert!(line.contains(" user=hubs "), "{line}");
    }
}

/// One server: a fresh store (the scripts loaded by the hubs), keys shared,
/// relayed calls of every kind, an agent leaving and its key withdrawn.
/// Leaving out `+hdel`, `+time` or `+script|load` fails it.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubs_need_no_more_of_the_store_than_security_md_lists() {
    let store = Store::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        add_user(&store, HUB_ACL).await;
        let dir = temp_dir();
        let url = format!("redis://hubs@127.0.0.1:{}", store.port);
        let hubs = hubs(&dir, &url).await;
        let (a, b) = (hubs[0].1, hubs[1].1);
        let up = upstream().await;
        let agent = cluster_agent(&dir, &[a], "plant-0", up).await;
        let _other = cluster_agent(&dir, &[b], "plant-1", up).await;
        four_kinds(b, "plant-0").await.expect("relayed from b");
        four_kinds(a, "plant-1").await.expect("relayed from a");
        drop(agent);
        eventually("plant-0 withdrawn", Duration::from_secs(20), || async {
            let entries = store.cli(&["HGETALL", "grpctunnel:key:plant-0"]).await;
            entries.is_empty().then_some(())
        })
        .await;
        refused_nothing(&store).await;
        drop(hubs);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
    store.kill().await;
}

/// Behind Sentinels, with `+role` besides: keys shared through the
/// primary; the primary killed, a key published after the failover is
/// reachable from the other hub through the promoted replica (which never
/// had the directory's scripts). Leaving out `+role` fails it.
#[cfg_attr(
    missing_redis_server,
    ignore = "needs `redis-server` on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinels_hubs_need_the_acl_and_role() {
    let mut store = Replicated::start().await;
    tokio::time::timeout(Duration::from_secs(120), async {
        let acl = [HUB_ACL, SENTINEL_ACL].concat();
        for server in store.stores() {
            add_user(server, &acl).await;
        }
        let dir = temp_dir();
        let url = store
            .url()
            .replacen("redis+sentinel://", "redis+sentinel://hubs@", 1);
        let hubs = hubs(&dir, &url).await;
        let (a, b) = (hubs[0].1, hubs[1].1);
        let up = upstream().await;
        let _agent = cluster_agent(&dir, &[a], "plant-0", up).await;
        four_kinds(b, "plant-0").await.expect("relayed from b");
        for server in store.stores() {
            let refused = server.cli(&["ACL", "LOG"]).await;
            assert!(refused.is_empty(), "refused before the failover: {refused}");
        }
        let promoted = store.kill_primary().await;
        let _new = cluster_agent(&dir, &[b], "plant-1", up).await;
        four_kinds(a, "plant-1")
            .await
            .expect("a key published after the failover");
        refused_nothing(promoted).await;
        drop(hubs);
        let _ = std::fs::remove_dir_all(dir);
    })
    .await
    .expect("test timed out");
}
