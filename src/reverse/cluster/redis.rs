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

use std::{
    pin::Pin,
    sync::{Arc, Weak},
    time::Duration,
};

use futures_core::Stream;
use futures_util::StreamExt;
use redis::{aio::ConnectionManager, AsyncCommands, Script};
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;

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

/// A cluster [`Directory`] on Redis or Valkey (feature `redis`).
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
    /// Replaced after a command timed out (see [`Shared::checked`]).
    conn: std::sync::Mutex<ConnectionManager>,
    client: redis::Client,
    prefix: String,
    publish: Script,
    lookup: Script,
    published: broadcast::Sender<String>,
}

/// How to reach the store: [`RedisDirectory::options`].
#[derive(Clone, Default)]
pub struct RedisOptions {
    prefix: Option<String>,
    password: Option<String>,
    #[cfg(feature = "redis-tls")]
    ca: Option<Vec<u8>>,
}

impl RedisOptions {
    /// Keys under `prefix` (default `grpctunnel:`; several clusters may
    /// share one store).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Some(prefix.into());
        self
    }

    /// The store's password (`requirepass`, or an ACL user's with the URL's
    /// user name), instead of one in the URL: read it from a file, keep it
    /// out of command lines and logs.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// For a `rediss://` URL: trust this CA (PEM) for the store's
    /// certificate instead of the system's roots (feature `redis-tls`).
    #[cfg(feature = "redis-tls")]
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// The directory in the store at `url`: `redis://host:6379/0`, or, with
    /// feature `redis-tls`, `rediss://host:6380` (TLS through rustls; the
    /// process needs a rustls crypto provider, e.g. rustls's `ring`
    /// feature, as tonic's `tls-ring` gives). Needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL (the error never quotes it: it may hold
    /// a password), or names TLS without feature `redis-tls`.
    pub fn open(self, url: &str) -> Result<RedisDirectory, BoxError> {
        use redis::IntoConnectionInfo;
        let info = url
            .into_connection_info()
            .map_err(|e| format!("not a Redis URL: {e}"))?;
        let info = match self.password {
            Some(password) => {
                let redis = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(redis)
            }
            None => info,
        };
        #[cfg(feature = "redis-tls")]
        let client = match self.ca {
            Some(pem) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )?,
            None => redis::Client::open(info)?,
        };
        #[cfg(not(feature = "redis-tls"))]
        let client = redis::Client::open(info)?;
        RedisDirectory::from_client(client, self.prefix.as_deref().unwrap_or("grpctunnel:"))
    }
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("prefix", &self.prefix)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .finish_non_exhaustive()
    }
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

    fn from_client(client: redis::Client, prefix: &str) -> Result<Self, BoxError> {
        let conn = manager(&client)?;
        let (published, _) = broadcast::channel(1024);
        let inner = Arc::new(Shared {
            conn: std::sync::Mutex::new(conn),
            client: client.clone(),
            prefix: prefix.to_owned(),
            publish: Script::new(PUBLISH),
            lookup: Script::new(LOOKUP),
            published,
        });
        let channel = format!("{prefix}published");
        tokio::spawn(listen(client, channel, Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    fn hash(&self, key: &str) -> String {
        format!("{}key:{key}", self.inner.prefix)
    }
}

/// A connection manager: connected on first use, reconnected after the
/// connection fails.
fn manager(client: &redis::Client) -> Result<ConnectionManager, BoxError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_secs(1));
    Ok(ConnectionManager::new_lazy_with_config(
        client.clone(),
        config,
    )?)
}

impl Shared {
    fn conn(&self) -> ConnectionManager {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `result`, after replacing the connection if it timed out: the
    /// `redis` crate reconnects after a connection error, not after a
    /// timeout, so a connection whose peer went silent (a network
    /// partition: nothing answers, nothing is refused) would time out every
    /// command for good, even once the network heals.
    fn checked<T>(&self, result: redis::RedisResult<T>) -> Result<T, BoxError> {
        if let Err(err) = &result {
            if err.is_timeout() {
                if let Ok(fresh) = manager(&self.client) {
                    *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
                }
            }
        }
        Ok(result?)
    }
}

/// Forwards the announcements of new keys, resubscribing after the store
/// comes back (tried every second while it is away), until the directory
/// is dropped.
async fn listen(client: redis::Client, channel: String, directory: Weak<Shared>) {
    loop {
        if directory.strong_count() == 0 {
            return;
        }
        if let Ok(mut pubsub) = client.get_async_pubsub().await {
            if pubsub.subscribe(&channel).await.is_ok() {
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let Some(shared) = directory.upgrade() else {
                        return;
                    };
                    if let Ok(key) = msg.get_payload::<String>() {
                        let _ = shared.published.send(key);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Directory for RedisDirectory {
    fn publish(&self, entries: Vec<Entry>, ttl: Duration) -> DirectoryFuture<'_, ()> {
        Box::pin(async move {
            let Some(first) = entries.first() else {
                return Ok(());
            };
            let mut invocation = self.inner.publish.prepare_invoke();
            invocation
                .arg(&first.replica)
                .arg(ttl.as_millis() as u64)
                .arg(format!("{}published", self.inner.prefix));
            for entry in &entries {
                invocation
                    .key(self.hash(&entry.key))
                    .arg(format!("{}:{}", entry.load, entry.seal));
            }
            for entry in &entries {
                invocation.arg(&entry.key);
            }
            let mut conn = self.inner.conn();
            let _: i64 = self
                .inner
                .checked(invocation.invoke_async(&mut conn).await)?;
            Ok(())
        })
    }

    fn withdraw<'a>(&'a self, key: &'a str, replica: &'a str) -> DirectoryFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.inner.conn();
            let _: i64 = self
                .inner
                .checked(conn.hdel(self.hash(key), replica).await)?;
            Ok(())
        })
    }

    fn lookup<'a>(&'a self, key: &'a str) -> DirectoryFuture<'a, Vec<Entry>> {
        Box::pin(async move {
            let mut conn = self.inner.conn();
            let flat: Vec<String> = self.inner.checked(
                self.inner
                    .lookup
                    .key(self.hash(key))
                    .invoke_async(&mut conn)
                    .await,
            )?;
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
