//! [`RedisOptions`]: how to reach the store, from its URL and beyond it,
//! including a store replicated behind Redis Sentinel.

use redis::{
    sentinel::{SentinelClientBuilder, SentinelServerType},
    ConnectionAddr,
};

use super::{
    store::{Asking, Source},
    RedisDirectory,
};
use crate::error::BoxError;

/// The scheme of a store replicated behind Sentinels.
const SENTINEL_SCHEME: &str = "redis+sentinel://";

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
    /// out of command lines and logs. Behind Sentinels, the password of the
    /// primary and its replicas (the Sentinels themselves take none).
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

    /// The directory in the store at `url`:
    ///
    /// - `redis://host:6379/0`, or, with feature `redis-tls`,
    ///   `rediss://host:6380` (TLS through rustls; the process needs a
    ///   rustls crypto provider, e.g. rustls's `ring` feature, as tonic's
    ///   `tls-ring` gives);
    /// - `redis+sentinel://host1:26379,host2:26379,host3:26379/mymaster`
    ///   (optionally `/mymaster/0` for a database, and
    ///   `redis+sentinel://:password@…` for the primary's password): the
    ///   primary the Sentinels name for `mymaster`, asked again whenever
    ///   the connection to it fails, times out or finds it turned replica,
    ///   so the directory follows a failover. The Sentinels are reached
    ///   over plain TCP, without a password.
    ///
    /// Needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// If `url` is not a Redis URL (the error never quotes it: it may hold
    /// a password), or names TLS without feature `redis-tls`.
    pub fn open(self, url: &str) -> Result<RedisDirectory, BoxError> {
        let prefix = self.prefix.clone();
        let prefix = prefix.as_deref().unwrap_or("grpctunnel:");
        let scheme = url.get(..SENTINEL_SCHEME.len());
        if scheme.is_some_and(|s| s.eq_ignore_ascii_case(SENTINEL_SCHEME)) {
            return RedisDirectory::from_source(self.sentinel(url)?, prefix);
        }
        RedisDirectory::from_source(Source::Fixed(self.client(url)?), prefix)
    }

    fn client(self, url: &str) -> Result<redis::Client, BoxError> {
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
        if let Some(pem) = self.ca {
            return Ok(redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )?);
        }
        Ok(redis::Client::open(info)?)
    }

    fn sentinel(self, url: &str) -> Result<Source, BoxError> {
        let parsed = SentinelUrl::parse(&url[SENTINEL_SCHEME.len()..])?;
        let sentinels = parsed
            .sentinels
            .iter()
            .map(|(host, port)| ConnectionAddr::Tcp(host.clone(), *port));
        let mut builder =
            SentinelClientBuilder::new(sentinels, &parsed.master, SentinelServerType::Master)?;
        if let Some(user) = &parsed.user {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = self.password.as_ref().or(parsed.password.as_ref()) {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(db) = parsed.db {
            builder = builder.set_client_to_redis_db(db);
        }
        Ok(Source::Sentinel(tokio::sync::Mutex::new(Asking {
            sentinels: builder.build()?,
            answer: None,
        })))
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

/// `[[user]:password@]host:port[,host:port…]/master[/db]`, after the
/// scheme. Errors never quote the URL: it may hold a password.
#[derive(Debug, PartialEq)]
struct SentinelUrl {
    user: Option<String>,
    password: Option<String>,
    sentinels: Vec<(String, u16)>,
    master: String,
    db: Option<i64>,
}

impl SentinelUrl {
    fn parse(rest: &str) -> Result<Self, BoxError> {
        const FORM: &str =
            "a Sentinel URL is redis+sentinel://[:password@]host:port[,host:port…]/master[/db]";
        let (authority, path) = rest.split_once('/').ok_or(FORM)?;
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (Some(userinfo), hosts),
            None => (None, authority),
        };
        let decode = |s: &str| -> Result<Option<String>, BoxError> {
            if s.is_empty() {
                return Ok(None);
            }
            let decoded = percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map_err(|_| "the Sentinel URL's user or password is not UTF-8")?;
            Ok(Some(decoded.into_owned()))
        };
        let (user, password) = match userinfo {
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (decode(user)?, decode(password)?),
                None => (decode(info)?, None),
            },
            None => (None, None),
        };
        let sentinels = hosts
            .split(',')
            .map(|host| {
                let (name, port) = host.rsplit_once(':').ok_or(FORM)?;
                let name = name.trim_start_matches('[').trim_end_matches(']');
                let port = port.parse().map_err(|_| FORM)?;
                if name.is_empty() {
                    return Err(FORM.into());
                }
                Ok((name.to_owned(), port))
            })
            .collect::<Result<Vec<_>, BoxError>>()?;
        let mut segments = path.split('/');
        let master = segments.next().filter(|m| !m.is_empty()).ok_or(FORM)?;
        let db = match segments.next() {
            None | Some("") => None,
            Some(db) => Some(db.parse().map_err(|_| FORM)?),
        };
        if segments.next().is_some_and(|s| !s.is_empty()) {
            return Err(FORM.into());
        }
        Ok(Self {
            user,
            password,
            sentinels,
            master: master.to_owned(),
            db,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls_name_the_sentinels_the_master_and_the_database() {
        let url = SentinelUrl::parse("127.0.0.1:26379,[::1]:26380,s3:26381/mymaster/2").unwrap();
        assert_eq!(
            url.sentinels,
            vec![
                ("127.0.0.1".to_owned(), 26379),
                ("::1".to_owned(), 26380),
                ("s3".to_owned(), 26381)
            ]
        );
        assert_eq!((url.master.as_str(), url.db), ("mymaster", Some(2)));
        assert_eq!((url.user, url.password), (None, None));

        let url = SentinelUrl::parse("app:p%40ss@h:1/m").unwrap();
        assert_eq!(url.user.as_deref(), Some("app"));
        assert_eq!(url.password.as_deref(), Some("p@ss"));
        assert_eq!(url.db, None);
    }

    #[test]
    fn bad_sentinel_urls_are_refused_without_quoting_them() {
        for bad in [
            "h:1",
            "h:1/",
            ":pw@h/m",
            "h:port/m",
            ":1/m",
            "h:1/m/notanumber",
            "h:1/m/0/extra",
        ] {
            let err = SentinelUrl::parse(bad).unwrap_err().to_string();
            assert!(err.contains("redis+sentinel://"), "{bad}: {err}");
            assert!(!err.contains("pw"), "{bad}: {err}");
        }
    }
}
