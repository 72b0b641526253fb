//! Two jobs:
//!
//! - Marks which programs the end-to-end tests need are missing here (`go`
//!   for grpc-go's interop programs and grpcurl, `redis-server` for the
//!   cluster tests, `chromium` for the dashboard's), so those tests show as
//!   ignored with the reason instead of passing untested; see
//!   `build_support/probe.rs`.
//! - Compiles the hub's admin API (`proto/grpctunnel/admin/v1/admin.proto`,
//!   at the repository's root) with `protox`, as the library compiles the
//!   tunnel protocol: no system `protoc` is needed.

use std::{env, io, path::PathBuf};

#[path = "../build_support/probe.rs"]
mod probe;

fn main() -> io::Result<()> {
    probe::programs(&["go", "redis-server", "chromium"]);
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let protos = manifest.join("../proto");
    println!("cargo:rerun-if-changed=../proto/grpctunnel/admin");
    let admin = protox::compile(["grpctunnel/admin/v1/admin.proto"], [&protos])
        .map_err(|e| io::Error::other(e.to_string()))?;
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(admin)
}
