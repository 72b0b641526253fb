//! The `h2-floor` reference setup: what the middle costs when it does
//! nothing but terminate HTTP/2, with the crates the gateway is built on.
//! Two `h2relay` processes (`gateway/benches/h2relay`: the `h2` crate and
//! nothing else; one runtime thread and jemalloc, as hub and agent) in
//! place of hub and agent: caller -> relay 1 -> relay 2 -> upstream.
//!
//! Unlike `proxies` (tonic servers and `Channel`s on tokio's default
//! runtime and the system allocator, which cost more than hub and agent),
//! this is the floor a gateway that decodes each call with `h2` can get
//! down to: where frp is below it, no tuning of the gateway reaches frp.
//! Built with `cargo build --release --locked` on first use; without it
//! the setup is left out with a note, as frp's is.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use crate::{
    proc::Child,
    setups::{strings, LIMIT},
};

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The built `h2relay`, built on first use; `Err` says why not.
pub fn program() -> Result<PathBuf, String> {
    BUILT.get_or_init(build).clone()
}

fn build() -> Result<PathBuf, String> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/h2relay/Cargo.toml");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("h2relay");
    // The cargo that runs this bench, when it does.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--locked",
            "--quiet",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .map_err(|e| format!("cannot run cargo for h2relay: {e}"))?;
    if !status.success() {
        return Err(format!("building {} failed: {status}", manifest.display()));
    }
    Ok(target.join("release/h2relay"))
}

/// Starts two relays in front of `upstream`; returns them (the one the
/// caller calls first) and the address of the first.
pub fn start(upstream: &str) -> Result<(Child, Child, String), String> {
    let program = program()?;
    let (second, addr2) = start_relay(&program, upstream)?;
    let (first, addr1) = start_relay(&program, &addr2)?;
    Ok((first, second, addr1))
}

fn start_relay(program: &Path, target: &str) -> Result<(Child, String), String> {
    let mut child = Child::spawn("h2relay", program, &strings(&["--target", target]))?;
    let addr = child.expect("LISTENING ", LIMIT)?;
    Ok((child, addr))
}
