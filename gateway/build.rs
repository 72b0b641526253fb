//! Marks which programs the end-to-end tests need are missing here (`go`
//! for grpc-go's interop programs and grpcurl, `redis-server` for the
//! cluster tests), so those tests show as ignored with the reason instead
//! of passing untested; see `build_support/probe.rs`.

#[path = "../build_support/probe.rs"]
mod probe;

fn main() {
    probe::programs(&["go", "redis-server"]);
}
