//! The wire layer: what travels, with no I/O and no runtime.
//!
//! Everything here is a pure function or a plain state machine over bytes,
//! headers and the generated protocol types, so that it can be unit-tested,
//! property-tested and fuzzed without a tokio runtime:
//!
//! - [`message`]: gRPC's 5-byte message prefix on HTTP/2 bodies;
//! - [`reassembly`]: the envelope/continuation rules of tunnel messages (P-33);
//! - [`frame`]: building and naming the tunnel's own frames;
//! - [`metadata`], [`status`], [`timeout`]: headers and trailers on one side,
//!   `Metadata`, `google.rpc.Status` and `grpc-timeout` on the other;
//! - [`settings`]: revisions, options and the negotiation of P-8 to P-15;
//! - [`codec`]: the tonic codec of the opening RPCs.

pub(crate) mod codec;
pub(crate) mod frame;
pub(crate) mod message;
pub(crate) mod metadata;
pub(crate) mod reassembly;
pub(crate) mod settings;
pub(crate) mod status;
pub(crate) mod timeout;
