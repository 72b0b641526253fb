//! The engine both roles share: one tunnel's streams, windows, writer and
//! reader, above the pure [`wire`](crate::wire) layer and below the roles
//! (`client`, `server`, `reverse`).
//!
//! - [`flow`]: the only owner of flow-control windows and credit (pure);
//! - [`stream`]: one tunneled stream's queues and wakers, shared by the
//!   tasks that touch it;
//! - [`writer`]: one ordered output per tunnel, fair between streams;
//! - [`reader`]: the frame demultiplexer both roles' readers are built on;
//! - [`inbound`]: decoding the opening RPC's frames from its HTTP body;
//! - [`open`] and [`accept`]: the two ends of an opening RPC;
//! - [`stats`] and [`trace`]: counters and spans.

pub(crate) mod accept;
pub(crate) mod flow;
pub(crate) mod inbound;
pub(crate) mod open;
pub(crate) mod reader;
pub(crate) mod stats;
pub(crate) mod stream;
pub(crate) mod trace;
pub(crate) mod writer;
