//! [`Limits`]: how much a peer may make a tunnel hold.

use crate::wire::settings::Options;

/// Resource limits of one end of a tunnel, in either role.
///
/// | Limit | Default | When exceeded |
/// |---|---|---|
/// | [`max_message_size`](Self::max_message_size) | 4 MiB | the stream fails with `RESOURCE_EXHAUSTED` before the message is buffered |
/// | [`max_concurrent_streams`](Self::max_concurrent_streams) | 10 000 | a new stream is refused with `RESOURCE_EXHAUSTED`; the tunnel stays up |
/// | [`max_metadata_size`](Self::max_metadata_size) | 64 KiB | the stream is refused (request metadata) or fails (response metadata) with `RESOURCE_EXHAUSTED` |
/// | [`revision_zero_buffer`](Self::revision_zero_buffer) | 1 MiB | a revision-zero tunnel stops reading until the stream's consumer catches up |
/// | [`settings_timeout`](Self::settings_timeout) | 10 s | the end that opened a negotiated tunnel (or accepted a reverse one) gives up on a peer that sends no `Settings`: `DEADLINE_EXCEEDED` |
///
/// In revision one, what a stream buffers is bounded by the window it
/// advertises; revision zero has no windows, so the tunnel pauses its reads
/// instead (never dropping data). Frames on the opening RPC are limited to
/// the larger of the message and metadata limits, plus 64 KiB.
///
/// A `Limits` holds only the limits set on it: giving it to an end (for
/// example [`TunnelChannelBuilder::limits`](crate::TunnelChannelBuilder::limits))
/// changes those and keeps every other setting of that end, whether set
/// before or after, so the order of the calls does not matter:
///
/// ```
/// use grpctunnel::{Limits, TunnelChannelBuilder};
///
/// // Both keep the 16 MiB message limit and set 5 streams.
/// let a = TunnelChannelBuilder::new()
///     .max_message_size(16 << 20)
///     .limits(Limits::new().max_concurrent_streams(5));
/// let b = TunnelChannelBuilder::new()
///     .limits(Limits::new().max_concurrent_streams(5))
///     .max_message_size(16 << 20);
/// assert_eq!(format!("{a:?}"), format!("{b:?}"));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct Limits {
    max_message_size: Option<usize>,
    max_concurrent_streams: Option<usize>,
    max_metadata_size: Option<usize>,
    revision_zero_buffer: Option<usize>,
    settings_timeout: Option<std::time::Duration>,
}

impl Limits {
    /// No limit set: each end keeps its own settings (the defaults of the
    /// table above, unless set otherwise).
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest message received.
    pub fn max_message_size(mut self, size: usize) -> Self {
        self.max_message_size = Some(size);
        self
    }

    /// Most streams open at once on one tunnel.
    pub fn max_concurrent_streams(mut self, n: usize) -> Self {
        self.max_concurrent_streams = Some(n);
        self
    }

    /// Largest metadata of one call received: for each value its key, the
    /// value and 32 bytes, as HTTP/2 counts header lists (the method name
    /// counts too, on the server).
    pub fn max_metadata_size(mut self, size: usize) -> Self {
        self.max_metadata_size = Some(size);
        self
    }

    /// Bytes a revision-zero stream may have waiting for its consumer
    /// before the tunnel stops reading.
    pub fn revision_zero_buffer(mut self, size: usize) -> Self {
        self.revision_zero_buffer = Some(size);
        self
    }

    /// How long the tunnel client (the end that opened a forward tunnel, or
    /// the server that accepted a reverse one) waits for the peer's
    /// `Settings` on a negotiated tunnel before it gives up: a reverse
    /// tunnel that never sends them holds no slot past it.
    pub fn settings_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.settings_timeout = Some(timeout);
        self
    }

    /// Sets the limits this holds, and only those.
    pub(crate) fn apply(self, opts: &mut Options) {
        let set = |slot: &mut usize, value: Option<usize>| {
            if let Some(value) = value {
                *slot = value;
            }
        };
        set(&mut opts.max_message_size, self.max_message_size);
        set(
            &mut opts.max_concurrent_streams,
            self.max_concurrent_streams,
        );
        set(&mut opts.max_metadata_size, self.max_metadata_size);
        set(&mut opts.revision_zero_buffer, self.revision_zero_buffer);
        if let Some(timeout) = self.settings_timeout {
            opts.settings_timeout = timeout;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_compose_with_settings_made_one_by_one() {
        let mut opts = Options {
            max_message_size: 16 << 20,
            ..Options::default()
        };
        Limits::new().max_concurrent_streams(5).apply(&mut opts);
        assert_eq!(opts.max_message_size, 16 << 20, "kept");
        assert_eq!(opts.max_concurrent_streams, 5);
        assert_eq!(opts.max_metadata_size, Options::default().max_metadata_size);
        Limits::new().apply(&mut opts);
        assert_eq!(
            opts.max_concurrent_streams, 5,
            "an empty Limits changes nothing"
        );
    }
}
