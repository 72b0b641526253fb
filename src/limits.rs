//! [`Limits`]: how much a peer may make a tunnel hold.

use crate::negotiate::{
    Options, DEFAULT_MAX_CONCURRENT_STREAMS, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_METADATA_SIZE,
    DEFAULT_REVISION_ZERO_BUFFER,
};

/// Resource limits of one end of a tunnel, in either role.
///
/// | Limit | Default | When exceeded |
/// |---|---|---|
/// | [`max_message_size`](Self::max_message_size) | 4 MiB | the stream fails with `RESOURCE_EXHAUSTED` before the message is buffered |
/// | [`max_concurrent_streams`](Self::max_concurrent_streams) | 10 000 | a new stream is refused with `RESOURCE_EXHAUSTED`; the tunnel stays up |
/// | [`max_metadata_size`](Self::max_metadata_size) | 64 KiB | the stream is refused (request metadata) or fails (response metadata) with `RESOURCE_EXHAUSTED` |
/// | [`revision_zero_buffer`](Self::revision_zero_buffer) | 1 MiB | a revision-zero tunnel stops reading until the stream's consumer catches up |
///
/// In revision one, what a stream buffers is bounded by the window it
/// advertises; revision zero has no windows, so the tunnel pauses its reads
/// instead (never dropping data). Frames on the opening RPC are limited to
/// the larger of the message and metadata limits, plus 64 KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Limits {
    max_message_size: usize,
    max_concurrent_streams: usize,
    max_metadata_size: usize,
    revision_zero_buffer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_metadata_size: DEFAULT_MAX_METADATA_SIZE,
            revision_zero_buffer: DEFAULT_REVISION_ZERO_BUFFER,
        }
    }
}

impl Limits {
    /// The defaults of the table above.
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest message received.
    pub fn max_message_size(mut self, size: usize) -> Self {
        self.max_message_size = size;
        self
    }

    /// Most streams open at once on one tunnel.
    pub fn max_concurrent_streams(mut self, n: usize) -> Self {
        self.max_concurrent_streams = n;
        self
    }

    /// Largest metadata of one call received: for each value its key, the
    /// value and 32 bytes, as HTTP/2 counts header lists (the method name
    /// counts too, on the server).
    pub fn max_metadata_size(mut self, size: usize) -> Self {
        self.max_metadata_size = size;
        self
    }

    /// Bytes a revision-zero stream may have waiting for its consumer
    /// before the tunnel stops reading.
    pub fn revision_zero_buffer(mut self, size: usize) -> Self {
        self.revision_zero_buffer = size;
        self
    }

    pub(crate) fn apply(self, opts: &mut Options) {
        opts.max_message_size = self.max_message_size;
        opts.max_concurrent_streams = self.max_concurrent_streams;
        opts.max_metadata_size = self.max_metadata_size;
        opts.revision_zero_buffer = self.revision_zero_buffer;
    }
}
