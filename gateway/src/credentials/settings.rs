//! Settings from a config file. Every flag of `hub` and `agent` may also be
//! a top-level key of the subcommand's TOML file (`--config`), named as the
//! flag in snake_case:
//!
//! ```toml
//! listen = "0.0.0.0:8443"          # --listen
//! max_message_size = 10485760      # --max-message-size
//! hub = ["https://a:8443", "https://b:8443"]   # a list: --hub a,b
//! upstream_accept_gzip = true      # a switch
//! ```
//!
//! Precedence: flag, then environment variable, then config file, then the
//! default. Each key the file sets is exported as its flag's environment
//! variable (`GRPCTUNNEL_…`) when that variable is unset, before the flags
//! are parsed: clap then parses and checks file values exactly as it does
//! flags and variables, and the flag list stays the single list of settings.
//! A key that names no flag is refused.

use std::ffi::OsString;

use crate::Failure;

/// Keys of the hub's file that are not flags: its credential tables.
const HUB_TABLES: &[&str] = &["agent", "caller"];

/// Reads the config file named in `args` (or `GRPCTUNNEL_CONFIG`) and
/// exports its settings, flags of `cli` (the binary's command line), as
/// environment variables. Must run before any thread starts.
pub(crate) fn apply_config_file(args: &[OsString], cli: &clap::Command) -> Result<(), Failure> {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let Some(subcommand) = args.iter().skip(1).find(|a| *a == "hub" || *a == "agent") else {
        return Ok(());
    };
    let Some(path) = config_path(&args).or_else(|| std::env::var("GRPCTUNNEL_CONFIG").ok()) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| Failure::Usage(format!("cannot read config {path}: {e}")))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "config {path}: {}",
            crate::config::toml_error(&text, &e)
        ))
    })?;
    for (_, variable, value) in settings(cli, subcommand, &table)? {
        if std::env::var_os(&variable).is_none() {
            std::env::set_var(variable, value);
        }
    }
    Ok(())
}

/// The value of `--config <path>` or `--config=<path>`.
fn config_path(args: &[String]) -> Option<String> {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--config" {
            return args.next().cloned();
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.to_owned());
        }
    }
    None
}

/// Each setting of `table` for `subcommand` of `cli`: its key, its flag's
/// environment variable and its value as that variable's text.
pub(crate) fn settings(
    cli: &clap::Command,
    subcommand: &str,
    table: &toml::Table,
) -> Result<Vec<(String, String, String)>, Failure> {
    let command = cli
        .find_subcommand(subcommand)
        .expect("hub and agent are subcommands");
    let mut out = Vec::new();
    for (key, value) in table {
        if subcommand == "hub" && HUB_TABLES.contains(&key.as_str()) {
            continue;
        }
        // `[[admin]]` is the operators' credentials; `admin = "addr"`
        // the --admin setting.
        if subcommand == "hub" && key == "admin" && value.is_array() {
            continue;
        }
        let arg = command
            .get_arguments()
            .chain(cli.get_arguments())
            .find(|a| a.get_id().as_str() == key && key != "config");
        let Some(variable) = arg.and_then(|a| a.get_env()) else {
            return Err(Failure::Usage(format!(
                "config: {key:?} is not a setting of `grpctunnel {subcommand}` (settings are its flags in snake_case, see --help)"
            )));
        };
        out.push((
            key.clone(),
            variable.to_string_lossy().into_owned(),
            text(key, value)?,
        ));
    }
    Ok(out)
}

/// A TOML value as the text of an environment variable: lists are joined
/// with commas, as list flags split them.
fn text(key: &str, value: &toml::Value) -> Result<String, Failure> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| text(key, item))
            .collect::<Result<Vec<_>, _>>()?
            .join(","),
        _ => {
            return Err(Failure::Usage(format!(
                "config: {key:?} must be a string, number, boolean or list"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_flag_is_found_in_both_spellings() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            config_path(&args(&["grpctunnel", "agent", "--config", "a.toml"])).as_deref(),
            Some("a.toml")
        );
        assert_eq!(
            config_path(&args(&["grpctunnel", "hub", "--config=b.toml"])).as_deref(),
            Some("b.toml")
        );
        assert_eq!(config_path(&args(&["grpctunnel", "hub"])), None);
    }
}
