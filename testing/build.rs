//! Compiles the echo test service with `protox` (no system `protoc`).

use std::io;

fn main() -> io::Result<()> {
    println!("cargo:rerun-if-changed=../proto/grpctunnel/testing");
    let fds = protox::compile(["grpctunnel/testing/v1/echo.proto"], ["../proto"])
        .map_err(|e| io::Error::other(e.to_string()))?;
    tonic_prost_build::configure()
        .bytes(".grpctunnel.testing.v1")
        .compile_fds(fds)?;
    Ok(())
}
