//! The Go programs of the end-to-end tests, built once per test binary from
//! the Go module proxy (module `gateway/tests/go`): grpc-go v1.85.0's
//! interop client and server, grpcurl, and two small programs of ours
//! (`upstream`: the interop TestService with reflection and gzip responses;
//! `gzipcall`: gzip-compressed calls).
//!
//! Without `go` on `PATH` the tests that need them show as ignored, with
//! the reason (`cfg(missing_go)`, from `build.rs`); under `CI=true` they run
//! and a missing toolchain is a failure. A failed build always is.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

#[path = "../../../build_support/go_build.rs"]
mod go_build;
use go_build::go_build;

/// The built programs.
pub struct GoPrograms {
    dir: PathBuf,
}

impl GoPrograms {
    /// The path of one built program: `client`, `server`, `grpcurl`,
    /// `upstream` or `gzipcall`.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The programs, built on first use; a test that needs them is ignored
/// where `go` is missing, so here a missing toolchain or a failed build is
/// a failure.
pub fn go_programs() -> GoPrograms {
    match BUILT.get_or_init(build) {
        Ok(dir) => GoPrograms { dir: dir.clone() },
        Err(reason) => panic!("Go programs unavailable: {reason}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let module = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go");
    // One directory per test binary: test binaries run one after another,
    // but never share a half-written executable.
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let name = exe
        .file_stem()
        .map_or_else(|| "e2e".into(), |s| s.to_string_lossy().into_owned());
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("go-{name}"));
    go_build(
        &module,
        &out,
        &[
            "google.golang.org/grpc/interop/client",
            "google.golang.org/grpc/interop/server",
            "github.com/fullstorydev/grpcurl/cmd/grpcurl",
            "./cmd/upstream",
            "./cmd/gzipcall",
        ],
    )?;
    Ok(out)
}
