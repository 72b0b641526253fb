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
/// The Sentinels' answer (a primary, or that none is reachable) is reused
/// this long: a burst of callers, or of failures, asks them once.
const ASK_AGAIN_AFTER: Duration = Duration::from_millis(250);
/// How often a quiet subscription is pinged: a subscription whose store
/// went silent (a partition drops packets, nothing is refused) would
/// otherwise wait for announcements that never come.
const PING_EVERY: Duration = Duration::from_secs(3);

/// Where the store is. One per directory, made once: the variants' sizes
/// do not matter.
#[allow(clippy::large_enum_variant)]
pub(super) enum Source {
    /// One server at a fixed address.
    Fixed(redis::Client),
    /// The primary the Sentinels name for a master name; asked again after
    /// the connection failed.
    Sentinel(tokio::sync::Mutex<Asking>),
}

/// The Sentinels, and their last answer.
pub(super) struct Asking {
    pub(super) sentinels: SentinelClient,
    /// When they were last asked, and what they said (the primary, or why
    /// none).
    pub(super) answer: Option<(Instant, Result<redis::Client, String>)>,
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
        let client = self.client().await?;
        // Made meanwhile by another caller (a burst after a failure asks
        // the Sentinels once).
        if let Some(conn) = self.current() {
            return Ok(conn);
        }
        let conn = manager(&client)?;
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
        if let Some((at, answer)) = &asking.answer {
            if at.elapsed() < ASK_AGAIN_AFTER {
                return answer.clone().map_err(Into::into);
            }
        }
        let asked = tokio::time::timeout(ASK_TIMEOUT, asking.sentinels.async_get_client()).await;
        let answer: Result<redis::Client, String> = match asked {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(err)) => Err(format!("the Sentinels name no reachable primary: {err}")),
            Err(_) => Err("the Sentinels did not answer in time".into()),
        };
        asking.answer = Some((Instant::now(), answer.clone()));
        answer.map_err(Into::into)
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
