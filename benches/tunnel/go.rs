//! The Go peer (interop/cmd/peer, github.com/jhump/grpctunnel v0.3.0): its
//! `bench-server` and `bench-client` subcommands play the Go sides.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::go_build::go_build;

/// Builds the peer into the target directory; `Err` says why not (no `go`
/// on PATH, or the build failed).
pub fn build() -> Result<PathBuf, String> {
    let version = Command::new("go")
        .arg("version")
        .output()
        .map_err(|e| format!("`go` not runnable ({e})"))?;
    if !version.status.success() {
        return Err("`go version` failed".into());
    }
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpctunnel-bench-go");
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("interop");
    go_build(&interop, &out, &["./cmd/peer"])?;
    Ok(out.join("peer"))
}

/// `go version`, for the report.
pub fn version() -> Option<String> {
    let out = Command::new("go").arg("version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}
