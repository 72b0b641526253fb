//! Compiles the tunnel protocol with `protox`, so that no
//! system `protoc` is needed. In the repository (not in the published
//! crate, which has no tests), it also marks whether `go` is there for the
//! Go interop tests (`build_support/probe.rs`).

use std::{env, io, path::PathBuf};

#[path = "build_support/probe.rs"]
mod probe;

fn main() -> io::Result<()> {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    println!("cargo:rerun-if-changed=proto");
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    println!("cargo::rustc-check-cfg=cfg(missing_go)");
    if manifest.join("tests/interop").is_dir() {
        probe::programs(&["go"]);
    }

    let tunnel = protox::compile(["grpctunnel/v1/tunnel.proto"], ["proto"])
        .map_err(|e| io::Error::other(e.to_string()))?;
    tonic_prost_build::configure()
        .out_dir(&out)
        .build_transport(false)
        // Buffers sized for the tunnel's 16 KiB chunks (src/codec.rs).
        .codec_path("crate::wire::codec::TunnelCodec")
        .bytes(".grpctunnel.v1")
        .extern_path(".google.rpc.Status", "::tonic_types::Status")
        .compile_fds(tunnel)?;

    Ok(())
}
