//! grpctunnel
#[allow(missing_docs, unreachable_pub, clippy::all, missing_debug_implementations)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/grpctunnel.v1.rs"));
}
mod frame;
mod metadata;
