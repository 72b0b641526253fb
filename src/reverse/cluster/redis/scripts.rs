//! The directory's Lua scripts, run by hash (`EVALSHA`) and loaded into a
//! store that lacks them once, however many calls find them missing at
//! once.
//!
//! A store loses its scripts when it restarts, and a replica that the
//! Sentinels promote never had them (the script cache is neither persisted
//! nor replicated). The `redis` crate's `Script::invoke_async` loads the
//! script again for every call refused with `NOSCRIPT`: a burst of calls
//! on a fresh or newly promoted store sent as many `SCRIPT LOAD`s as calls
//! (201 for 200 waiting calls), just when the store had the most to do.

use std::sync::atomic::{AtomicU64, Ordering};

use redis::{aio::ConnectionManager, Cmd, FromRedisValue, Script, ToRedisArgs};

use super::store::Store;
use crate::error::BoxError;

/// One script, and how many times this replica has tried to load it.
pub(super) struct StoredScript {
    script: Script,
    /// Loads tried so far: a call refused before the latest one tries none
    /// of its own (had it failed, the store is failing: the calls waiting
    /// for the lock fail on their own rather than each waiting for a load
    /// to time out in turn).
    tries: AtomicU64,
    /// Held while loading: one load at a time.
    loading: tokio::sync::Mutex<()>,
}

impl StoredScript {
    pub(super) fn new(code: &str) -> Self {
        Self {
            script: Script::new(code),
            tries: AtomicU64::new(0),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    /// The call of this script on `keys` (`KEYS`); add its `ARGV` with
    /// [`Cmd::arg`].
    pub(super) fn call<K: ToRedisArgs>(&self, keys: &[K]) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.script.get_hash()).arg(keys.len()).arg(keys);
        cmd
    }

    /// Runs `call` (from [`call`](Self::call)) on `store`, loading the
    /// script first if the store lacks it.
    pub(super) async fn run<T: FromRedisValue>(
        &self,
        store: &Store,
        call: &Cmd,
    ) -> Result<T, BoxError> {
        let mut conn = store.conn().await?;
        let seen = self.tries.load(Ordering::Acquire);
        match call.query_async(&mut conn).await {
            Err(err)
                if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                self.load(store, &mut conn, seen).await?;
                store.checked(call.query_async(&mut conn).await)
            }
            result => store.checked(result),
        }
    }

    /// Loads the script, unless another call tried since `seen`.
    async fn load(
        &self,
        store: &Store,
        conn: &mut ConnectionManager,
        seen: u64,
    ) -> Result<(), BoxError> {
        let _one = self.loading.lock().await;
        if self.tries.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        let loaded = self.script.load_async(conn).await;
        self.tries.fetch_add(1, Ordering::Release);
        let _hash: String = store.checked(loaded)?;
        Ok(())
    }
}
