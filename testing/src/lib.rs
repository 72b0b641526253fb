//! Echo test service and case matrix shared by grpctunnel's tests, examples,
//! benchmarks and interop harness.
//!
//! * [`Echo`] serves `grpctunnel.testing.v1.EchoService` (see
//!   `proto/grpctunnel/testing/v1/echo.proto` and the [`service`] module
//!   docs for its exact semantics).
//! * [`run_cases`] runs the named case matrix against any transport that a
//!   generated tonic client accepts, and returns a [`Report`].
//! * [`eventually`] waits, bounded, for state that has no event to wait on.
//! * [`imports`] reads the `crate::` paths of source files, for layering
//!   tests.

pub mod cases;
pub mod imports;
pub mod service;
mod wait;

/// Generated code for `grpctunnel.testing.v1`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    tonic::include_proto!("grpctunnel.testing.v1");
}

pub use cases::{client, run_cases, CaseOptions, Report, CASE_NAMES};
pub use service::{Echo, EchoServer, HandlerState, MAX_MESSAGE_SIZE, SERVICE_NAME};
pub use wait::eventually;

/// `n` bytes where byte `i` is `i % 251`: the payload the service sends for
/// `response_size = n`.
pub fn payload(n: usize) -> bytes::Bytes {
    (0..n).map(|i| (i % 251) as u8).collect()
}
