//! The hub's configuration file (TOML): which agents may connect, each
//! bound to the keys it may register, and which callers may call, each
//! limited to keys. The same file may set any of the hub's flags as
//! top-level keys (see `settings.rs`).
//!
//! ```toml
//! listen = "0.0.0.0:8443"
//!
//! [[agent]]
//! token_file = "/etc/grpctunnel/plant-7.token"   # or: token = "..."
//! keys = ["plant-7"]
//! key_policy = "share"                           # or "replace", "refuse": another agent of the key
//!
//! # Optional: with no [[caller]], calls need no credential.
//! [[caller]]
//! name = "billing"                               # sent upstream as grpctunnel-caller
//! token = "..."                                  # or: token_file, cert_sha256 (mTLS)
//! keys = ["plant-7", "plant-8"]                  # "*": any key
//! max_calls = 100                                # calls in flight at once
//! max_tunnels = 10                               # forward tunnels at once (agents too)
//! forward_credential = false                     # true: the upstream sees the caller's token too
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::Failure;

/// The hub's configuration file: its credential tables (other top-level
/// keys are settings, checked by `settings.rs`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct HubConfig {
    /// Agents allowed to connect.
    #[serde(default, rename = "agent")]
    pub(crate) agents: Vec<Credential>,
    /// Callers allowed to call (none: any caller).
    #[serde(default, rename = "caller")]
    pub(crate) callers: Vec<Credential>,
    /// Operators: their credential opens the admin API (and dashboard) on
    /// an admin port beyond loopback, and on the hub's own port.
    #[serde(default, rename = "admin", deserialize_with = "admins")]
    pub(crate) admins: Vec<Credential>,
}

/// One credential (a bearer token, or for agents a client certificate's
/// SHA-256) and the keys it may use.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Credential {
    /// SHA-256 (hex) of a client certificate's DER (mTLS; agents only).
    pub(crate) cert_sha256: Option<String>,
    /// The bearer token, inline.
    pub(crate) token: Option<String>,
    /// A file holding the bearer token (surrounding whitespace ignored).
    pub(crate) token_file: Option<String>,
    /// Keys this credential may use; `*` is any key (callers only; an
    /// admin has none).
    #[serde(default)]
    pub(crate) keys: Vec<String>,
    /// Most calls in flight at once for this caller (default: the hub's
    /// `--max-calls-per-caller`).
    pub(crate) max_calls: Option<usize>,
    /// Most tunnels this credential holds at once, opening or open: an
    /// agent's reverse tunnels, a caller's forward tunnels (default: the
    /// hub's `--max-tunnels-per-credential`).
    pub(crate) max_tunnels: Option<usize>,
    /// Who this is, for the upstream (`grpctunnel-caller`) and the logs
    /// (default: `agent-N` or `caller-N`, its place in the file).
    pub(crate) name: Option<String>,
    /// A caller's `authorization` header goes on to the upstream instead
    /// of stopping at the hub (default: it stops there).
    #[serde(default)]
    pub(crate) forward_credential: bool,
    /// For agents: what happens when another agent comes for a key this
    /// one holds (`share`, `replace`, `refuse`; see `key_policy.rs`).
    #[serde(default)]
    pub(crate) key_policy: KeyPolicy,
}

impl Credential {
    /// The token, read from its file if need be; `None` for a certificate.
    pub(crate) fn token(&self, files: SecretFiles) -> Result<Option<String>, Failure> {
        match (&self.token, &self.token_file) {
            (Some(token), None) => Ok(Some(token.clone())),
            (None, Some(file)) => files.read(file).map(Some),
            _ => Ok(None),
        }
    }
}

/// `--strict-secret-files`, a flag of both hub and agent: how open a file
/// holding a secret (a token, the cluster secret) may be.
///
/// A secret file that group or others may read or write is logged with a
/// warning by default, and refused with the flag. Not refused by default
/// because Kubernetes mounts secrets 0644 unless told otherwise
/// (`defaultMode`), and a hub that will not start there helps nobody; an
/// operator who controls the modes turns refusal on.
#[derive(Debug, Clone, Copy, clap::Args)]
pub(crate) struct SecretFiles {
    /// Refuse to start when a file holding a secret (token, cluster
    /// secret) is readable or writable by group or others, instead of
    /// warning.
    #[arg(long, env = "GRPCTUNNEL_STRICT_SECRET_FILES")]
    pub(crate) strict_secret_files: bool,
}

impl SecretFiles {
    /// Reads a secret file: its content without surrounding whitespace,
    /// after checking who else may read it.
    pub(crate) fn read(self, path: &str) -> Result<String, Failure> {
        self.check_mode(path)?;
        read_token(path)
    }

    #[cfg(unix)]
    fn check_mode(self, path: &str) -> Result<(), Failure> {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| Failure::Usage(format!("cannot read secret file {path}: {e}")))?
            .permissions()
            .mode();
        if mode & 0o077 == 0 {
            return Ok(());
        }
        let text = format!(
            "secret file {path} is open to group or others (mode {:03o}): chmod 600 it",
            mode & 0o777
        );
        if self.strict_secret_files {
            return Err(Failure::Usage(format!("{text} (--strict-secret-files)")));
        }
        tracing::warn!("{text}; --strict-secret-files refuses such files");
        Ok(())
    }

    #[cfg(not(unix))]
    fn check_mode(self, _path: &str) -> Result<(), Failure> {
        Ok(())
    }
}

impl HubConfig {
    /// Reads and checks a config file.
    pub(crate) fn load(path: &Path) -> Result<Self, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read config {}: {e}", path.display())))?;
        let config: Self = toml::from_str(&text).map_err(|e| {
            Failure::Usage(format!(
                "config {}: {}",
                path.display(),
                toml_error(&text, &e)
            ))
        })?;
        let all = config.agents.iter().map(|c| ("agent", c));
        for (i, (what, credential)) in all
            .chain(config.callers.iter().map(|c| ("caller", c)))
            .chain(config.admins.iter().map(|c| ("admin", c)))
            .enumerate()
        {
            let given = [
                credential.token.is_some(),
                credential.token_file.is_some(),
                credential.cert_sha256.is_some(),
            ];
            if given.iter().filter(|g| **g).count() != 1 {
                return Err(Failure::Usage(format!(
                    "config {}: {what} credential {} needs exactly one of token, token_file and cert_sha256",
                    path.display(),
                    i + 1
                )));
            }
            if let Some(name) = &credential.name {
                if name.is_empty() || http::HeaderValue::from_str(name).is_err() {
                    return Err(Failure::Usage(format!(
                        "config {}: {what} credential {}: name {name:?} must be printable ASCII (it becomes the header grpctunnel-caller)",
                        path.display(),
                        i + 1
                    )));
                }
            }
            if what == "agent" && credential.forward_credential {
                return Err(Failure::Usage(format!(
                    "config {}: forward_credential is for callers",
                    path.display()
                )));
            }
            if what == "admin" {
                let other = !credential.keys.is_empty()
                    || credential.forward_credential
                    || credential.max_calls.is_some()
                    || credential.max_tunnels.is_some()
                    || credential.key_policy != KeyPolicy::Share;
                if other {
                    return Err(Failure::Usage(format!(
                        "config {}: an [[admin]] takes a token, token_file or cert_sha256 and a name, nothing else",
                        path.display()
                    )));
                }
                continue;
            }
            if what == "caller" && credential.key_policy != KeyPolicy::Share {
                return Err(Failure::Usage(format!(
                    "config {}: key_policy is for agents",
                    path.display()
                )));
            }
            if what == "agent" && credential.max_calls.is_some() {
                return Err(Failure::Usage(format!(
                    "config {}: max_calls is for callers (an agent limits its own calls with --max-calls)",
                    path.display()
                )));
            }
            if credential.max_tunnels == Some(0) {
                return Err(Failure::Usage(format!(
                    "config {}: {what} credential {}: max_tunnels must be at least 1",
                    path.display(),
                    i + 1
                )));
            }
            if credential.keys.is_empty() {
                return Err(Failure::Usage(format!(
                    "config {}: {what} credential {} may use no key",
                    path.display(),
                    i + 1
                )));
            }
        }
        if config
            .agents
            .iter()
            .any(|a| a.keys.iter().any(|k| k == "*"))
        {
            return Err(Failure::Usage(format!(
                "config {}: an agent must name the keys it registers (\"*\" is for callers)",
                path.display()
            )));
        }
        Ok(config)
    }
}

/// `[[admin]]` tables; `admin = "127.0.0.1:9090"` is the `--admin`
/// setting, not credentials (settings.rs reads it).
fn admins<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Credential>, D::Error> {
    match toml::Value::deserialize(d)? {
        toml::Value::String(_) => Ok(Vec::new()),
        tables => tables.try_into().map_err(serde::de::Error::custom),
    }
}

/// A TOML error without the quoted source line `toml` puts in its text:
/// that line may hold an inline token, and the error is printed, and
/// logged on a reload. The line number and the message say enough.
pub(crate) fn toml_error(text: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", e.message())
        }
        None => e.message().to_owned(),
    }
}

/// Reads a token file: its content without surrounding whitespace (see
/// [`SecretFiles::read`], which checks the file's mode first).
fn read_token(path: &str) -> Result<String, Failure> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read token file {path}: {e}")))?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(Failure::Usage(format!("token file {path} is empty")));
    }
    Ok(token)
}
/// What happens to a second agent of a key (`key_policy` of an
/// `[[agent]]`; applied in `key_policy.rs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyPolicy {
    #[default]
    Share,
    Replace,
    Refuse,
}
