//! `go build` of Go programs the tests and benchmarks start (the Go
//! reference's peer, grpc-go's interop programs, frp): one helper for the
//! test and bench crates that include this file with `#[path]`.

use std::path::Path;

/// Runs `go build -o <out>/ <packages>` in the Go module at `module`, so
/// each package's program lands in `out` under its own name. `Err` says
/// why not: no `go` on `PATH`, or the build failed (its output went to
/// this process's stderr).
pub fn go_build(module: &Path, out: &Path, packages: &[&str]) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let status = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(format!("{}/", out.display()))
        .args(packages)
        .current_dir(module)
        .status()
        .map_err(|e| format!("cannot run `go` ({e}); is Go on PATH?"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`go build` in {} failed: {status}",
            module.display()
        ))
    }
}
