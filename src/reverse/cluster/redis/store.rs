//! The connection to the store: to one fixed server, or to whichever server
//! the Sentinels name primary, remade when it fails, times out or has
//! become a replica; and the subscription that forwards announcements.

use std::{
    sync::{Mutex, Weak},
    time::{Duration, Instant},
};

use futures_util::StreamExt;
use redis::{aio::ConnectionManager, sentinel::SentinelClient};
use tokio::sync::broadcast;

use crate::error::BoxError;

/// How long asking the Sentinels for the primary may take, and how long a
/// subscription may stay silent to a ping before it is remade.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// After the Sentinels could not name a primary, callers fail at once for
/// this long instead of each asking again.
const ASK_BACKOFF: Duration = Duration::from_millis(250);
/// How often a quiet subscription is pinged: a subscription whose store
/// went silent (a partition drops packets, nothing is refused) would
/// otherwise wait for announcements that never come.
const PING_EVERY: Duration = Duration::from_secs(3);

/// Where the store is.
pub(super) enum Source {
    /// One server at a fixed address.
    Fixed(redis::Client),
    /// The primary the Sentinels name for a master name; asked again after
    /// the connection failed.
    Sentinel(tokio::sync::Mutex<Asking>),
}

/// The Sentinels, and when they last failed to name a primary.
pub(super) struct Asking {
    pub(super) sentinels: SentinelClient,
    pub(super) failed_at: Option<Instant>,
}

/// The store's connection, remade as [`Source`] says.
pub(super) struct Store {
    source: Source,
    conn: Mutex<Option<ConnectionManager>>,
}

impl Store {
    pub(super) fn new(source: Source) -> Result<Self, BoxError> {
        let conn = match &source {
            Source::Fixed(client) => Some(manager(client)?),
            Source::Sentinel(_) => None,
        };
        Ok(Self {
            source,
            conn: Mutex::new(conn),
        })
    }

    fn current(&self) -> Option<ConnectionManager> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set(&self, conn: Option<ConnectionManager>) {
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = conn;
    }

    /// The connection to use, made if there is none.
    pub(super) async fn conn(&self) -> Result<ConnectionManager, BoxError> {
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = manager(&self.client().await?)?;
        self.set(Some(conn.clone()));
        Ok(conn)
    }

    /// A client for the store's (current) primary.
    pub(super) async fn client(&self) -> Result<redis::Client, BoxError> {
        let asking = match &self.source {
            Source::Fixed(client) => return Ok(client.clone()),
            Source::Sentinel(asking) => asking,
        };
        let mut asking = asking.lock().await;
        if let Some(at) = asking.failed_at {
            if at.elapsed() < ASK_BACKOFF {
                return Err("the Sentinels name no reachable primary".into());
            }
        }
        let asked = tokio::time::timeout(ASK_TIMEOUT, asking.sentinels.async_get_client()).await;
        match asked {
            Ok(Ok(client)) => {
                asking.failed_at = None;
                Ok(client)
            }
            Ok(Err(err)) => {
                asking.failed_at = Some(Instant::now());
                Err(format!("the Sentinels name no reachable primary: {err}").into())
            }
            Err(_) => {
                asking.failed_at = Some(Instant::now());
                Err("the Sentinels did not answer in time".into())
            }
        }
    }

    /// `result`, after dropping the connection if it can no longer serve:
    ///
    /// - it timed out: the `redis` crate reconnects after a connection
    ///   error, not after a timeout, so a connection whose peer went silent
    ///   (a partition: nothing answers, nothing is refused) would time out
    ///   every command for good, even once the network heals;
    /// - behind Sentinels, it failed or was refused, or its server is now a
    ///   replica (`READONLY`): the primary may have moved, ask again.
    pub(super) fn checked<T>(&self, result: redis::RedisResult<T>) -> Result<T, BoxError> {
        if let Err(err) = &result {
            let moved = matches!(self.source, Source::Sentinel(_))
                && (err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly));
            if moved || err.is_timeout() {
                self.set(None);
                if let Source::Fixed(client) = &self.source {
                    self.set(manager(client).ok());
                }
            }
        }
        Ok(result?)
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

/// Forwards the announcements on `channel` to `published`, subscribing
/// again (to the primary of the moment) after the subscription ends or
/// stops answering pings, tried every second while the store is away,
/// until the store is dropped.
pub(super) async fn listen(
    store: Weak<Store>,
    channel: String,
    published: broadcast::Sender<String>,
) {
    loop {
        let Some(client) = (match store.upgrade() {
            Some(store) => store.client().await.ok(),
            None => return,
        }) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let subscribed = tokio::time::timeout(ASK_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        })
        .await;
        if let Ok(Ok(pubsub)) = subscribed {
            // Whatever was announced while unsubscribed is lost: waiting
            // calls look again.
            let _ = published.send(String::new());
            let (mut sink, mut messages) = pubsub.split();
            let mut ping = tokio::time::interval(PING_EVERY);
            ping.reset();
            loop {
                tokio::select! {
                    msg = messages.next() => {
                        let Some(msg) = msg else { break };
                        if store.strong_count() == 0 {
                            return;
                        }
                        if let Ok(key) = msg.get_payload::<String>() {
                            let _ = published.send(key);
                        }
                    }
                    _ = ping.tick() => {
                        if store.strong_count() == 0 {
                            return;
                        }
                        let answered = tokio::time::timeout(
                            ASK_TIMEOUT,
                            sink.ping::<redis::Value>(),
                        )
                        .await;
                        if !matches!(answered, Ok(Ok(_))) {
                            tracing::debug!("the store's subscription went silent; subscribing again");
                            break;
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
