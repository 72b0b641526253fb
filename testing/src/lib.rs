//! Echo test service and case matrix for grpctunnel's tests.
#![allow(missing_docs)]

pub mod pb {
    tonic::include_proto!("grpctunnel.testing.v1");
}
