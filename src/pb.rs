//! Generated protocol types (`grpctunnel.v1`), from
//! `proto/grpctunnel/v1/tunnel.proto` by `build.rs`.
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::unwrap_used,
    missing_debug_implementations
)]

include!(concat!(env!("OUT_DIR"), "/grpctunnel.v1.rs"));
