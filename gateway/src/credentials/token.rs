//! `grpctunnel token`: a new random credential and the hub config lines
//! that take it, so a first hub runs in a minute:
//!
//! ```text
//! grpctunnel token --key plant-7 --out plant-7.token >> hub.toml
//! grpctunnel token --caller me --out me.token >> hub.toml
//! ```
//!
//! What it prints is TOML (comments and one `[[agent]]` or `[[caller]]`
//! table), so it can be appended to a config as it is.

use std::io::Write;

use crate::Failure;

/// Bytes of randomness in a token: 256 bits, printed as 64 hex digits.
const TOKEN_BYTES: usize = 32;

/// `grpctunnel token`.
#[derive(Debug, clap::Args)]
pub(crate) struct TokenArgs {
    /// A key the credential is bound to (repeat for several). For an
    /// agent, at least one; for a caller, default `*` (any key).
    #[arg(long = "key", value_name = "KEY")]
    keys: Vec<String>,
    /// Make a caller's credential with this name (the upstream sees it in
    /// `grpctunnel-caller`) instead of an agent's.
    #[arg(long, value_name = "NAME")]
    caller: Option<String>,
    /// Write the token to this new file (mode 0600; an existing file is
    /// not overwritten) and name it in the config (`token_file`) instead of
    /// printing the token itself.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
}

/// Prints a new credential's config lines on stdout.
pub(crate) fn run(args: TokenArgs) -> Result<(), Failure> {
    let keys = match (&args.caller, args.keys.is_empty()) {
        (None, true) => {
            return Err(Failure::Usage(
                "an agent's token is bound to keys: give at least one --key".into(),
            ))
        }
        (Some(_), true) => vec!["*".to_owned()],
        (_, false) => args.keys.clone(),
    };
    let token = new_token()?;
    let credential = match &args.out {
        Some(path) => {
            write_secret(path, &token)?;
            format!("token_file = {}", quoted(path))
        }
        None => format!("token = {}", quoted(&token)),
    };
    let keys: Vec<String> = keys.iter().map(|k| quoted(k)).collect();
    let keys = format!("keys = [{}]", keys.join(", "));
    let text = match &args.caller {
        Some(name) => format!(
            "\n# a caller's credential (grpctunnel token); calls present it as\n\
             # `authorization: Bearer <token>`\n\
             [[caller]]\nname = {}\n{credential}\n{keys}\n",
            quoted(name)
        ),
        None => {
            let first = args.keys[0].as_str();
            let token_flag = match &args.out {
                Some(path) => format!("--token-file {path}"),
                None => "--token-file <a file holding the token>".to_owned(),
            };
            format!(
                "\n# an agent's credential (grpctunnel token); the agent runs as\n\
                 # grpctunnel agent --hub <hub URL> --key {first} {token_flag} --upstream <its server>\n\
                 [[agent]]\n{credential}\n{keys}\n"
            )
        }
    };
    std::io::stdout()
        .write_all(text.as_bytes())
        .map_err(|e| Failure::Run(format!("cannot write the config lines: {e}")))
}

/// 256 random bits from the OS, as lowercase hex.
fn new_token() -> Result<String, Failure> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| Failure::Run(format!("no randomness from the OS: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates `path` (never replacing a file) readable by its owner only,
/// holding `token`.
fn write_secret(path: &str, token: &str) -> Result<(), Failure> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .map_err(|e| Failure::Usage(format!("cannot create {path}: {e}")))?;
    file.write_all(token.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|e| Failure::Run(format!("cannot write {path}: {e}")))
}

/// `s` as a TOML basic string.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_new_and_long_and_strings_are_toml() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(quoted(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(quoted("x\ny"), r#""x\u000Ay""#);
    }
}
