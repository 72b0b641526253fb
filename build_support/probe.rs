//! Which external programs the tests need are on this machine: a build
//! script's helper (root `build.rs`, `gateway/build.rs`).
//!
//! For each program it emits `cargo::rustc-cfg=missing_<name>` when the
//! program is not on `PATH`, so a test that needs it is marked
//! `#[cfg_attr(missing_<name>, ignore = "...")]` and shows as ignored, with
//! its reason, instead of passing without testing. Under `CI=true` nothing
//! is ever marked missing: there the test runs and fails, as CI must have
//! every program (`.ci/run` installs them).
//!
//! It only looks at `PATH` (no process is started). A build that found a
//! program missing reruns when a `PATH` directory changes (installing the
//! program adds a file there), one that found it reruns when it goes.

use std::{env, path::PathBuf};

/// Probes each of `programs` (file names, e.g. `go`, `redis-server`) and
/// prints the cargo instructions described above; the cfg name is the
/// program's with `-` turned into `_`.
pub fn programs(programs: &[&str]) {
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=CI");
    let ci = env::var("CI").as_deref() == Ok("true");
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = env::split_paths(&path).collect();
    for program in programs {
        let cfg = format!("missing_{}", program.replace('-', "_"));
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        match dirs.iter().map(|d| d.join(program)).find(|p| p.is_file()) {
            Some(found) => println!("cargo::rerun-if-changed={}", found.display()),
            None => {
                for dir in dirs.iter().filter(|d| d.is_dir()) {
                    println!("cargo::rerun-if-changed={}", dir.display());
                }
                if !ci {
                    println!("cargo::rustc-cfg={cfg}");
                }
            }
        }
    }
}
