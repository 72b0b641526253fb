//! Checks the envelope and continuation sequence of one stream direction
//! (P-33): a message is an envelope carrying its size and first chunk, then
//! continuations until the size is reached.
//!
//! It tracks sizes only; the engine keeps the bytes. Pure: no I/O.

/// A violation of the envelope/continuation sequence (P-33), or a message
/// above the configured maximum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReassemblyError {
    /// An envelope arrived while a message was incomplete.
    EnvelopeBeforeFinished {
        /// Bytes of the incomplete message received so far.
        received: u64,
        /// Its size.
        size: u32,
    },
    /// A continuation arrived with no message in progress.
    NoEnvelope,
    /// More bytes arrived than the envelope's size.
    TooMuchData,
    /// The envelope's size is above the configured maximum.
    TooLarge {
        /// The envelope's size.
        size: u32,
        /// The configured maximum.
        max: usize,
    },
}

impl ReassemblyError {
    /// The status a tunnel server ends the stream with (P-33, request
    /// messages): `INVALID_ARGUMENT`, or `RESOURCE_EXHAUSTED` for an
    /// oversized message.
    pub(crate) fn server_status(&self) -> tonic::Status {
        match self {
            Self::EnvelopeBeforeFinished { received, size } => tonic::Status::invalid_argument(format!(
                "received request message envelope before previous message finished ({received}/{size})"
            )),
            Self::NoEnvelope => {
                tonic::Status::invalid_argument("never received envelope for request message")
            }
            Self::TooMuchData => tonic::Status::invalid_argument(
                "received more data than indicated by request message envelope",
            ),
            Self::TooLarge { size, max } => tonic::Status::resource_exhausted(format!(
                "received request message larger than max ({size} vs. {max})"
            )),
        }
    }

    /// The status a tunnel client fails the call with (P-33, response
    /// messages): `INTERNAL`, or `RESOURCE_EXHAUSTED` for an oversized
    /// message.
    pub(crate) fn client_status(&self) -> tonic::Status {
        match self {
            Self::EnvelopeBeforeFinished { received, size } => tonic::Status::internal(format!(
                "server sent response message envelope before previous message finished ({received}/{size})"
            )),
            Self::NoEnvelope => {
                tonic::Status::internal("server never sent envelope for response message")
            }
            Self::TooMuchData => tonic::Status::internal(
                "server sent more data than indicated by response message envelope",
            ),
            Self::TooLarge { size, max } => tonic::Status::resource_exhausted(format!(
                "received response message larger than max ({size} vs. {max})"
            )),
        }
    }
}

/// Checks the envelopes and continuations of one stream direction (P-33).
///
/// It tracks sizes only; the engine keeps the bytes. After an error the
/// stream fails, so the state is left as it was.
#[derive(Debug, Clone, Default)]
pub(crate) struct Reassembly {
    /// Size and bytes received so far of the incomplete message, if any.
    current: Option<(u32, u64)>,
}

impl Reassembly {
    /// An envelope for a message of `size` bytes, carrying `len` of them;
    /// messages above `max_message_size` are refused.
    ///
    /// # Errors
    ///
    /// When a message is still incomplete, when `size` is above
    /// `max_message_size`, or when `len > size`.
    pub(crate) fn on_envelope(
        &mut self,
        size: u32,
        len: usize,
        max_message_size: usize,
    ) -> Result<(), ReassemblyError> {
        if let Some((size, received)) = self.current {
            return Err(ReassemblyError::EnvelopeBeforeFinished { received, size });
        }
        if u64::from(size) > max_message_size as u64 {
            return Err(ReassemblyError::TooLarge {
                size,
                max: max_message_size,
            });
        }
        self.add(size, 0, len)
    }

    /// A continuation carrying `len` more bytes of the current message.
    ///
    /// # Errors
    ///
    /// When no message is in progress, or when it gets more bytes than its
    /// size.
    pub(crate) fn on_continuation(&mut self, len: usize) -> Result<(), ReassemblyError> {
        match self.current {
            None => Err(ReassemblyError::NoEnvelope),
            Some((size, received)) => self.add(size, received, len),
        }
    }

    /// Whether no message is in progress (the last one is complete).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn is_idle(&self) -> bool {
        self.current.is_none()
    }

    fn add(&mut self, size: u32, received: u64, len: usize) -> Result<(), ReassemblyError> {
        let received = received.saturating_add(len as u64);
        if received > u64::from(size) {
            return Err(ReassemblyError::TooMuchData);
        }
        self.current = (received < u64::from(size)).then_some((size, received));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Maximum message size in the table tests.
    const MAX: usize = 100;

    #[test]
    fn reassembly_valid_sequences() {
        let mut r = Reassembly::default();
        assert!(r.is_idle());
        r.on_envelope(0, 0, MAX).expect("empty message");
        assert!(r.is_idle());
        r.on_envelope(10, 4, MAX).expect("first chunk");
        assert!(!r.is_idle());
        r.on_continuation(0).expect("empty continuation");
        r.on_continuation(6).expect("rest");
        assert!(r.is_idle());
        r.on_envelope(3, 3, MAX).expect("whole");
        assert!(r.is_idle());
        r.on_envelope(100, 0, MAX).expect("at the maximum");
        assert!(!r.is_idle());
    }

    #[test]
    fn reassembly_violations_and_texts() {
        let mut r = Reassembly::default();
        r.on_envelope(10, 4, MAX).expect("ok");
        let err = r
            .on_envelope(5, 5, MAX)
            .expect_err("envelope before finished");
        assert_eq!(
            err,
            ReassemblyError::EnvelopeBeforeFinished {
                received: 4,
                size: 10
            }
        );
        let (s, c) = (err.server_status(), err.client_status());
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            s.message(),
            "received request message envelope before previous message finished (4/10)"
        );
        assert_eq!(c.code(), tonic::Code::Internal);
        assert_eq!(
            c.message(),
            "server sent response message envelope before previous message finished (4/10)"
        );

        let err = r.on_continuation(7).expect_err("too much");
        assert_eq!(err, ReassemblyError::TooMuchData);
        assert_eq!(
            err.server_status().message(),
            "received more data than indicated by request message envelope"
        );
        assert_eq!(err.server_status().code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.client_status().message(),
            "server sent more data than indicated by response message envelope"
        );
        assert_eq!(err.client_status().code(), tonic::Code::Internal);

        let mut r = Reassembly::default();
        assert_eq!(r.on_envelope(2, 3, MAX), Err(ReassemblyError::TooMuchData));
        let err = r.on_continuation(1).expect_err("no envelope");
        assert_eq!(err, ReassemblyError::NoEnvelope);
        assert_eq!(
            err.server_status().message(),
            "never received envelope for request message"
        );
        assert_eq!(err.server_status().code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.client_status().message(),
            "server never sent envelope for response message"
        );
        assert_eq!(err.client_status().code(), tonic::Code::Internal);
        assert_eq!(r.on_continuation(0), Err(ReassemblyError::NoEnvelope));

        let err = r.on_envelope(101, 0, MAX).expect_err("too large");
        assert_eq!(
            err,
            ReassemblyError::TooLarge {
                size: 101,
                max: 100
            }
        );
        assert_eq!(err.server_status().code(), tonic::Code::ResourceExhausted);
        assert_eq!(err.client_status().code(), tonic::Code::ResourceExhausted);
        assert!(r.is_idle());
    }

    /// One event of a tunnel data stream.
    #[derive(Debug, Clone, Copy)]
    enum Event {
        Envelope(u32, usize),
        Continuation(usize),
    }

    fn event_strategy() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0u32..12, 0usize..14).prop_map(|(s, l)| Event::Envelope(s, l)),
            (0usize..14).prop_map(Event::Continuation),
        ]
    }

    /// Reference model of P-33: `Err(i)` with the index of the first event
    /// that breaks the sequence, or `Ok(idle)` telling whether the valid
    /// sequence ends between messages.
    fn model(events: &[Event], max: u32) -> Result<bool, usize> {
        // Bytes still expected for the open message, if any.
        let mut open: Option<usize> = None;
        for (i, e) in events.iter().enumerate() {
            let left = match (*e, open) {
                (Event::Envelope(..), Some(_)) | (Event::Continuation(_), None) => return Err(i),
                (Event::Envelope(size, _), None) if size > max => return Err(i),
                (Event::Envelope(size, len), None) => (size as usize).checked_sub(len),
                (Event::Continuation(len), Some(left)) => left.checked_sub(len),
            };
            open = match left {
                None => return Err(i),
                Some(0) => None,
                Some(left) => Some(left),
            };
        }
        Ok(open.is_none())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn reassembly_accepts_exactly_valid_sequences(
            events in prop::collection::vec(event_strategy(), 0..16),
        ) {
            let max = 10;
            let mut r = Reassembly::default();
            let mut first_err = None;
            for (i, e) in events.iter().enumerate() {
                let res = match *e {
                    Event::Envelope(size, len) => r.on_envelope(size, len, max),
                    Event::Continuation(len) => r.on_continuation(len),
                };
                if let Err(err) = res {
                    let _ = (err.server_status(), err.client_status());
                    first_err = Some(i);
                    break;
                }
            }
            match model(&events, max as u32) {
                Err(i) => prop_assert_eq!(first_err, Some(i)),
                Ok(idle) => {
                    prop_assert_eq!(first_err, None);
                    prop_assert_eq!(r.is_idle(), idle);
                }
            }
        }

        #[test]
        fn reassembly_accepts_chunked_messages(
            messages in prop::collection::vec((0u32..2000, prop::collection::vec(1usize..700, 0..8)), 0..6),
        ) {
            let mut r = Reassembly::default();
            for (size, chunks) in messages {
                let mut left = size as usize;
                let mut chunks = chunks.into_iter().chain(std::iter::repeat(700));
                let first = chunks.next().unwrap_or(0).min(left);
                r.on_envelope(size, first, 2000).expect("envelope");
                left -= first;
                while left > 0 {
                    let c = chunks.next().unwrap_or(700).min(left);
                    r.on_continuation(c).expect("continuation");
                    left -= c;
                }
                prop_assert!(r.is_idle());
            }
        }
    }
}
