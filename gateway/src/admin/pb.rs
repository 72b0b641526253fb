//! The admin API's messages, client and server (`grpctunnel.admin.v1`),
//! compiled by `build.rs` from `proto/grpctunnel/admin/v1/admin.proto`.
#![allow(clippy::all, missing_docs, unreachable_pub)]

tonic::include_proto!("grpctunnel.admin.v1");
