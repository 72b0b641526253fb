//! The hub's configuration file (TOML): which agents may connect, each
//! bound to the keys it may register.
//!
//! ```toml
//! [[agent]]
//! token_file = "/etc/grpctunnel/plant-7.token"   # or: token = "..."
//! keys = ["plant-7"]
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::Failure;

/// The hub's configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HubConfig {
    /// Agents allowed to connect.
    #[serde(default, rename = "agent")]
    pub(crate) agents: Vec<AgentEntry>,
}

/// One agent credential and the keys it may register.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentEntry {
    /// The bearer token, inline.
    pub(crate) token: Option<String>,
    /// A file holding the bearer token (surrounding whitespace ignored).
    pub(crate) token_file: Option<String>,
    /// Keys this credential may register.
    pub(crate) keys: Vec<String>,
}

impl HubConfig {
    /// Reads and checks a config file.
    pub(crate) fn load(path: &Path) -> Result<Self, Failure> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read config {}: {e}", path.display())))?;
        let config: Self = toml::from_str(&text)
            .map_err(|e| Failure::Usage(format!("config {}: {e}", path.display())))?;
        for (i, agent) in config.agents.iter().enumerate() {
            if agent.token.is_some() == agent.token_file.is_some() {
                return Err(Failure::Usage(format!(
                    "config {}: agent {} needs exactly one of token and token_file",
                    path.display(),
                    i + 1
                )));
            }
            if agent.keys.is_empty() {
                return Err(Failure::Usage(format!(
                    "config {}: agent {} may register no key",
                    path.display(),
                    i + 1
                )));
            }
        }
        Ok(config)
    }
}

/// Reads a token file: its content without surrounding whitespace.
pub(crate) fn read_token(path: &str) -> Result<String, Failure> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| Failure::Usage(format!("cannot read token file {path}: {e}")))?;
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(Failure::Usage(format!("token file {path} is empty")));
    }
    Ok(token)
}
