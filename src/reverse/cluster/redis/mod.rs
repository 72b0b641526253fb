//! [`RedisDirectory`]: the cluster directory on Redis or Valkey.
//!
//! Each key is a hash, `<prefix>key:<key>`, with one field per replica
//! holding it: `<expiry in ms, store clock>:<load>:<seal>`. Scripts read the
//! store's own clock (`TIME`), so replicas' clocks never matter: publishing
//! writes the field and keeps the hash alive for the TTL; a lookup returns
//! the fields not yet expired and deletes the others. A replica that stops
//! renewing its fields is gone from lookups within the TTL, and the hash
//! itself expires once no replica renews it. A field that is new (or was
//! expired) is announced on the channel `<prefix>published`.

mod options;
mod scripts;
mod store;

use std::{pin::Pin, sync::Arc, time::Duration};

use futures_core::Stream;
use futures_util::StreamExt;
use redis::AsyncCommands;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

pub use self::options::RedisOptions;
use self::{
    scripts::StoredScript,
    store::{Source, Store},
};
use crate::{
    error::BoxError,
    reverse::cluster::{Directory, DirectoryFuture, Entry},
};

/// ARGV: replica, ttl (ms), channel, loads..., names...
const PUBLISH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
local n = #KEYS
for i, k in ipairs(KEYS) do
  local old = redis.call('HGET', k, ARGV[1])
  local fresh = false
  if old then
    local sep = string.find(old, ':', 1, true)
    fresh = sep and tonumber(string.sub(old, 1, sep - 1)) > now
  end
  redis.call('HSET', k, ARGV[1], (now + ttl) .. ':' .. ARGV[3 + i])
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
  if not fresh then
    redis.call('PUBLISH', ARGV[3], ARGV[3 + n + i])
  end
end
return n
";

const LOOKUP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, ':', 1, true)
  if sep and tonumber(string.sub(v, 1, sep - 1)) > now then
    table.insert(out, all[i])
    table.insert(out, string.sub(v, sep + 1))
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";

/// A cluster [`Directory`] on Redis or Valkey (feature `redis`), one server
/// or a replicated store behind Redis Sentinel ([`RedisOptions::open`]).
///
/// Connections are made on first use and remade after a failure (the
/// `redis` crate's `ConnectionManager`), so a replica starts, and serves
/// its own tunnels, while the store is down; its operations then fail
/// fast until the store is back.
#[derive(Clone)]
pub struct RedisDirectory {
    inner: Arc<Shared>,
}

struct Shared {
    store: Arc<Store>,
    prefix: String,
    publish: StoredScript,
    lookup: StoredScript,
    published: broadcast::Sender<String>,
}

impl RedisDirectory {
    /// A directory in the store at `url` (`redis://host:6379`,
    /// `redis://:password@host:6379/0`, `rediss://` with feature
    /// `redis-tls`), keys under the prefix `grpctunnel:`. Needs a Tokio
    /// runtime. [`options`](Self::options) sets a password apart from the
    /// URL, and a CA.
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL.
    pub fn open(url: &str) -> Result<Self, BoxError> {
        Self::options().open(url)
    }

    /// [`open`](Self::open) with keys under `prefix` (several clusters may
    /// share one store).
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL.
    pub fn with_prefix(url: &str, prefix: &str) -> Result<Self, BoxError> {
        Self::options().prefix(prefix).open(url)
    }

    /// How to reach the store, beyond its URL.
    pub fn options() -> RedisOptions {
        RedisOptions::default()
    }

    fn from_source(source: Source, prefix: &str) -> Result<Self, BoxError> {
        let store = Arc::new(Store::new(source)?);
        let (published, _) = broadcast::channel(1024);
        tokio::spawn(store::listen(
            Arc::downgrade(&store),
            format!("{prefix}published"),
            published.clone(),
        ));
        let inner = Arc::new(Shared {
            store,
            prefix: prefix.to_owned(),
            publish: StoredScript::new(PUBLISH),
            lookup: StoredScript::new(LOOKUP),
            published,
        });
        Ok(Self { inner })
    }

    /// The Redis hash of `key`: `<prefix>key:<key>`; the replicas'
    /// membership entries apart from the keys, in `<prefix>members`.
    fn hash(&self, key: &str) -> String {
        if key == super::members::MEMBERS_KEY {
            return format!("{}members", self.inner.prefix);
        }
        format!("{}key:{key}", self.inner.prefix)
    }
}

impl Directory for RedisDirectory {
    fn publish(&self, entries: Vec<Entry>, ttl: Duration) -> DirectoryFuture<'_, ()> {
        Box::pin(async move {
            let Some(first) = entries.first() else {
                return Ok(());
            };
            let keys: Vec<String> = entries.iter().map(|e| self.hash(&e.key)).collect();
            let mut call = self.inner.publish.call(&keys);
            call.arg(&first.replica)
                .arg(ttl.as_millis() as u64)
                .arg(format!("{}published", self.inner.prefix));
            for entry in &entries {
                call.arg(format!("{}:{}", entry.load, entry.seal));
            }
            for entry in &entries {
                call.arg(&entry.key);
            }
            let _: i64 = self.inner.publish.run(&self.inner.store, &call).await?;
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, key: &'a str, replica: &'a str) -> DirectoryFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.inner.store.conn().await?;
            let _: i64 = self
                .inner
                .store
                .checked(conn.hdel(self.hash(key), replica).await)?;
            Ok(())
        })
    }

    fn lookup<'a>(&'a self, key: &'a str) -> DirectoryFuture<'a, Vec<Entry>> {
        Box::pin(async move {
            let call = self.inner.lookup.call(&[self.hash(key)]);
            let flat: Vec<String> = self.inner.lookup.run(&self.inner.store, &call).await?;
            Ok(flat
                .chunks(2)
                .filter_map(|pair| match pair {
                    [replica, value] => {
                        let (load, seal) = value.split_once(':').unwrap_or((value, ""));
                        let mut entry = Entry::new(key, replica.clone(), load.parse().unwrap_or(0));
                        entry.seal = seal.to_owned();
                        Some(entry)
                    }
                    _ => None,
                })
                .collect())
        })
    }

    fn published(&self) -> Pin<Box<dyn Stream<Item = String> + Send>> {
        Box::pin(
            BroadcastStream::new(self.inner.published.subscribe())
                .filter_map(|k| std::future::ready(k.ok())),
        )
    }
}

impl std::fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisDirectory")
            .field("prefix", &self.inner.prefix)
            .finish_non_exhaustive()
    }
}
