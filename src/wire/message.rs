//! gRPC's message framing on HTTP/2, on both sides of the bridge.
//!
//! HTTP/2 gRPC bodies carry each message behind a 5-byte prefix: one
//! compressed-flag byte and a 4-byte big-endian length. Inside a tunnel a
//! message is an envelope (`size` plus first chunk) followed by continuation
//! chunks (P-30). This module converts between the two without copying
//! payload bytes:
//!
//! - [`MessageSplitter`] cuts body data frames into [`Piece`]s (the start
//!   of a message with its size, then further bytes), slicing the input
//!   [`Bytes`].
//! - [`start_frames`] goes the other way: the gRPC prefix of a received
//!   message with its first chunk (the engine's writer cuts outgoing
//!   chunks).
//!
//! The envelope and continuation sequence a peer sends is checked by
//! [`super::reassembly`]. Nothing here does I/O, and nothing panics on bytes
//! from the wire.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Length of the gRPC message prefix: compressed flag and 4-byte length.
pub(crate) const PREFIX_LEN: usize = 5;

/// Maximum message size of a [`MessageSplitter::default`]: 4 MiB, gRPC's
/// usual default for received messages.
pub(crate) const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// One piece of a message as it is cut out of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Start of a message of `size` bytes; `data` is its first bytes
    /// (non-empty unless `size == 0`).
    Start {
        /// Size of the whole message.
        size: u32,
        /// The message's first bytes.
        data: Bytes,
    },
    /// Next bytes of the current message (non-empty).
    More(Bytes),
}

/// Why a body could not be cut into messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// A message had a non-zero compressed flag (P-65).
    Compressed,
    /// A message is larger than the configured maximum.
    TooLarge {
        /// Size in the message's prefix.
        size: u64,
        /// The configured maximum.
        max: usize,
    },
    /// The body ended in the middle of a prefix or a message.
    Truncated {
        /// Bytes of the unfinished prefixed message (prefix included), as
        /// far as they are known: `5` while still in the prefix.
        expected: u64,
        /// Bytes of it that arrived.
        received: u64,
    },
}

impl FrameError {
    /// The status a call fails with: `INTERNAL` for compressed and truncated
    /// messages, `RESOURCE_EXHAUSTED` for oversized ones.
    pub(crate) fn to_status(&self) -> tonic::Status {
        match self {
            Self::Compressed | Self::Truncated { .. } => tonic::Status::internal(self.to_string()),
            Self::TooLarge { .. } => tonic::Status::resource_exhausted(self.to_string()),
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Compressed => f.write_str("compressed messages are not supported in a tunnel"),
            Self::TooLarge { size, max } => {
                write!(f, "received message larger than max ({size} vs. {max})")
            }
            Self::Truncated { expected, received } => write!(
                f,
                "body ended in the middle of a message ({received} of {expected} bytes)"
            ),
        }
    }
}

impl std::error::Error for FrameError {}

/// Where a [`MessageSplitter`] is in its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a prefix; `len` of its bytes are in `buf`.
    Prefix { buf: [u8; PREFIX_LEN], len: usize },
    /// Reading the payload of a message of `size` bytes, `remaining` still
    /// to come; `started` once its `Piece::Start` was emitted.
    Payload {
        size: u32,
        remaining: u32,
        started: bool,
    },
    /// An error was returned; the input is unusable.
    Failed,
}

impl State {
    const fn empty_prefix() -> Self {
        Self::Prefix {
            buf: [0; PREFIX_LEN],
            len: 0,
        }
    }
}

/// Incremental splitter: feed body data frames, get pieces out.
///
/// Payload bytes are sliced out of the frames (no copy); only a prefix
/// split across frames is buffered. Consecutive pieces of one message may
/// come from different frames. After an error every call fails with the
/// same error.
#[derive(Debug)]
pub(crate) struct MessageSplitter {
    state: State,
    max_message_size: usize,
    error: Option<FrameError>,
}

impl Default for MessageSplitter {
    /// A splitter with [`DEFAULT_MAX_MESSAGE_SIZE`].
    fn default() -> Self {
        Self::new(DEFAULT_MAX_MESSAGE_SIZE)
    }
}

impl MessageSplitter {
    /// A splitter that refuses messages larger than `max_message_size`.
    pub(crate) fn new(max_message_size: usize) -> Self {
        Self {
            state: State::empty_prefix(),
            max_message_size,
            error: None,
        }
    }

    /// Feeds one body data frame; appends the pieces it completes to `out`.
    ///
    /// A `Piece::Start` is emitted only once at least one payload byte is
    /// there (or the message is empty), so no piece has empty data except
    /// the start of an empty message.
    ///
    /// # Errors
    ///
    /// [`FrameError::Compressed`] for a non-zero compressed flag and
    /// [`FrameError::TooLarge`] for a size above the maximum. Pieces
    /// completed before the error are still appended to `out`.
    pub(crate) fn push(&mut self, mut data: Bytes, out: &mut Vec<Piece>) -> Result<(), FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        while !data.is_empty() {
            let next = match self.state {
                State::Prefix { buf, len } => self.read_prefix(buf, len, &mut data, out),
                State::Payload {
                    size,
                    remaining,
                    started,
                } => Ok(read_payload(size, remaining, started, &mut data, out)),
                State::Failed => Err(FrameError::Compressed),
            };
            match next {
                Ok(state) => self.state = state,
                Err(err) => {
                    self.state = State::Failed;
                    self.error = Some(err.clone());
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Takes prefix bytes from `data`; once the prefix is complete, checks
    /// it and moves on to the payload.
    fn read_prefix(
        &self,
        mut buf: [u8; PREFIX_LEN],
        len: usize,
        data: &mut Bytes,
        out: &mut Vec<Piece>,
    ) -> Result<State, FrameError> {
        let n = (PREFIX_LEN - len).min(data.len());
        buf[len..len + n].copy_from_slice(&data[..n]);
        data.advance(n);
        let len = len + n;
        if len < PREFIX_LEN {
            return Ok(State::Prefix { buf, len });
        }
        let mut header = &buf[..];
        let flag = header.get_u8();
        let size = header.get_u32();
        if flag != 0 {
            return Err(FrameError::Compressed);
        }
        if u64::from(size) > self.max_message_size as u64 {
            return Err(FrameError::TooLarge {
                size: u64::from(size),
                max: self.max_message_size,
            });
        }
        if size == 0 {
            out.push(Piece::Start {
                size: 0,
                data: Bytes::new(),
            });
            return Ok(State::empty_prefix());
        }
        Ok(State::Payload {
            size,
            remaining: size,
            started: false,
        })
    }

    /// Called at end of body.
    ///
    /// # Errors
    ///
    /// [`FrameError::Truncated`] when the body stopped in the middle of a
    /// prefix or a message, or the error an earlier [`push`](Self::push)
    /// returned.
    pub(crate) fn finish(&self) -> Result<(), FrameError> {
        if let Some(err) = &self.error {
            return Err(err.clone());
        }
        match self.state {
            State::Prefix { len: 0, .. } => Ok(()),
            State::Prefix { len, .. } => Err(FrameError::Truncated {
                expected: PREFIX_LEN as u64,
                received: len as u64,
            }),
            State::Payload {
                size, remaining, ..
            } => Err(FrameError::Truncated {
                expected: PREFIX_LEN as u64 + u64::from(size),
                received: PREFIX_LEN as u64 + u64::from(size - remaining),
            }),
            State::Failed => Err(FrameError::Compressed),
        }
    }
}

/// Slices payload bytes of the current message out of `data` (which is
/// non-empty) and returns the next state.
fn read_payload(
    size: u32,
    remaining: u32,
    started: bool,
    data: &mut Bytes,
    out: &mut Vec<Piece>,
) -> State {
    let n = data.len().min(remaining as usize);
    let chunk = data.split_to(n);
    out.push(if started {
        Piece::More(chunk)
    } else {
        Piece::Start { size, data: chunk }
    });
    // n <= remaining, which is a u32.
    let remaining = remaining - n as u32;
    if remaining == 0 {
        State::empty_prefix()
    } else {
        State::Payload {
            size,
            remaining,
            started: true,
        }
    }
}

/// First chunks at most this long are copied in behind their prefix.
const MERGE_MAX: usize = 1024;

/// The gRPC framing of a received message's first chunk: the 5-byte prefix
/// of an uncompressed message of `size` bytes, then the chunk. A short chunk
/// is copied in behind the prefix (one allocation and one body frame instead
/// of two, which is what small unary messages need); a longer one comes back
/// apart, not copied.
pub(crate) fn start_frames(size: u32, data: Bytes) -> (Bytes, Option<Bytes>) {
    let merged = data.len() <= MERGE_MAX;
    let mut buf = BytesMut::with_capacity(PREFIX_LEN + if merged { data.len() } else { 0 });
    buf.put_u8(0);
    buf.put_u32(size);
    if merged {
        buf.put_slice(&data);
        return (buf.freeze(), None);
    }
    (buf.freeze(), Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encodes messages as an HTTP/2 gRPC body.
    fn encode(messages: &[Vec<u8>]) -> Vec<u8> {
        let mut body = Vec::new();
        for m in messages {
            body.extend_from_slice(&prefix(u32::try_from(m.len()).expect("small")));
            body.extend_from_slice(m);
        }
        body
    }

    /// Cuts `body` into frames at the given positions (taken modulo the
    /// length, sorted, deduplicated).
    fn cut(body: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut cuts: Vec<usize> = cuts
            .iter()
            .map(|c| if body.is_empty() { 0 } else { c % body.len() })
            .collect();
        cuts.push(0);
        cuts.push(body.len());
        cuts.sort_unstable();
        cuts.dedup();
        cuts.windows(2)
            .map(|w| Bytes::copy_from_slice(&body[w[0]..w[1]]))
            .collect()
    }

    /// Joins pieces into messages, checking the piece invariants.
    fn join(pieces: &[Piece]) -> Vec<Vec<u8>> {
        let mut messages: Vec<(u32, Vec<u8>)> = Vec::new();
        for p in pieces {
            match p {
                Piece::Start { size, data } => {
                    if let Some((size, m)) = messages.last() {
                        assert_eq!(*size as usize, m.len(), "previous message incomplete");
                    }
                    assert!(
                        *size == 0 || !data.is_empty(),
                        "empty start of non-empty message"
                    );
                    assert!(data.len() <= *size as usize);
                    messages.push((*size, data.to_vec()));
                }
                Piece::More(data) => {
                    assert!(!data.is_empty(), "empty More");
                    let (size, m) = messages.last_mut().expect("More without Start");
                    m.extend_from_slice(data);
                    assert!(m.len() <= *size as usize);
                }
            }
        }
        messages
            .into_iter()
            .map(|(size, m)| {
                assert_eq!(size as usize, m.len());
                m
            })
            .collect()
    }

    fn split_all(
        splitter: &mut MessageSplitter,
        frames: &[Bytes],
    ) -> Result<Vec<Piece>, FrameError> {
        let mut out = Vec::new();
        for f in frames {
            splitter.push(f.clone(), &mut out)?;
        }
        splitter.finish()?;
        Ok(out)
    }

    fn prefix(size: u32) -> Bytes {
        start_frames(size, Bytes::new()).0
    }

    #[test]
    fn prefix_bytes() {
        assert_eq!(&prefix(0)[..], [0, 0, 0, 0, 0]);
        assert_eq!(&prefix(0x0102_0304)[..], [0, 1, 2, 3, 4]);
        assert_eq!(&prefix(u32::MAX)[..], [0, 0xff, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn short_first_chunks_are_merged_long_ones_are_not_copied() {
        let (first, rest) = start_frames(3, Bytes::from_static(b"abc"));
        assert_eq!(&first[..], b"\0\0\0\0\x03abc");
        assert_eq!(rest, None);
        let long = Bytes::from(vec![9u8; MERGE_MAX + 1]);
        let (first, rest) = start_frames(5000, long.clone());
        assert_eq!(&first[..], [0, 0, 0, 0x13, 0x88]);
        assert_eq!(rest.expect("apart").as_ptr(), long.as_ptr());
    }

    #[test]
    fn whole_messages_in_one_frame() {
        let body = encode(&[b"hello".to_vec(), vec![], b"x".to_vec()]);
        let mut s = MessageSplitter::default();
        let pieces = split_all(&mut s, &[Bytes::from(body)]).expect("valid");
        assert_eq!(
            pieces,
            [
                Piece::Start {
                    size: 5,
                    data: Bytes::from_static(b"hello")
                },
                Piece::Start {
                    size: 0,
                    data: Bytes::new()
                },
                Piece::Start {
                    size: 1,
                    data: Bytes::from_static(b"x")
                },
            ]
        );
    }

    #[test]
    fn prefix_split_across_frames_and_start_waits_for_data() {
        let mut s = MessageSplitter::new(100);
        let mut out = Vec::new();
        s.push(Bytes::from_static(&[0, 0]), &mut out).expect("ok");
        s.push(Bytes::from_static(&[0, 0, 3]), &mut out)
            .expect("ok");
        assert!(out.is_empty(), "no Start before payload bytes: {out:?}");
        assert!(s.finish().is_err());
        s.push(Bytes::from_static(b"a"), &mut out).expect("ok");
        s.push(Bytes::new(), &mut out).expect("ok");
        s.push(Bytes::from_static(b"bc\0\0"), &mut out).expect("ok");
        assert_eq!(
            out,
            [
                Piece::Start {
                    size: 3,
                    data: Bytes::from_static(b"a")
                },
                Piece::More(Bytes::from_static(b"bc")),
            ]
        );
        assert_eq!(
            s.finish(),
            Err(FrameError::Truncated {
                expected: 5,
                received: 2
            })
        );
        s.push(Bytes::from_static(&[0, 0, 0]), &mut out)
            .expect("ok");
        assert_eq!(
            out.last(),
            Some(&Piece::Start {
                size: 0,
                data: Bytes::new()
            })
        );
        assert_eq!(s.finish(), Ok(()));
    }

    #[test]
    fn payload_is_not_copied() {
        let frame = Bytes::from(encode(&[vec![7; 40], vec![9; 10]]));
        let range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
        let mut s = MessageSplitter::default();
        let mut out = Vec::new();
        s.push(frame.slice(..20), &mut out).expect("ok");
        s.push(frame.slice(20..), &mut out).expect("ok");
        assert_eq!(out.len(), 3);
        for p in &out {
            let (Piece::Start { data, .. } | Piece::More(data)) = p;
            assert!(range.contains(&(data.as_ptr() as usize)), "copied: {p:?}");
        }
    }

    #[test]
    fn errors() {
        let mut s = MessageSplitter::default();
        let mut out = Vec::new();
        assert_eq!(
            s.push(Bytes::from_static(&[1, 0, 0, 0, 1, 42]), &mut out),
            Err(FrameError::Compressed)
        );
        assert_eq!(s.finish(), Err(FrameError::Compressed));
        assert_eq!(
            s.push(Bytes::from_static(&[0, 0, 0, 0, 0]), &mut out),
            Err(FrameError::Compressed)
        );
        assert!(out.is_empty());

        let mut s = MessageSplitter::new(4);
        let body = [&prefix(4)[..], b"abcd", &prefix(5)[..]].concat();
        let err = s.push(Bytes::from(body), &mut out).expect_err("too large");
        assert_eq!(err, FrameError::TooLarge { size: 5, max: 4 });
        assert_eq!(out.len(), 1, "the valid message before the error is kept");

        let mut s = MessageSplitter::default();
        s.push(Bytes::from([&prefix(10)[..], b"abc"].concat()), &mut out)
            .expect("ok");
        assert_eq!(
            s.finish(),
            Err(FrameError::Truncated {
                expected: 15,
                received: 8
            })
        );
    }

    #[test]
    fn frame_error_statuses() {
        let s = FrameError::Compressed.to_status();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert_eq!(
            s.message(),
            "compressed messages are not supported in a tunnel"
        );
        let s = FrameError::TooLarge { size: 9, max: 8 }.to_status();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.message(), "received message larger than max (9 vs. 8)");
        let s = FrameError::Truncated {
            expected: 9,
            received: 8,
        }
        .to_status();
        assert_eq!(s.code(), tonic::Code::Internal);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn split_at_any_boundary_round_trips(
            messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in prop::collection::vec(any::<usize>(), 0..20),
        ) {
            let body = encode(&messages);
            let frames = cut(&body, &cuts);
            let mut s = MessageSplitter::new(300);
            let pieces = split_all(&mut s, &frames).expect("valid body");
            prop_assert_eq!(join(&pieces), messages);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            body in prop::collection::vec(any::<u8>(), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
            max in 0usize..64,
        ) {
            let frames = cut(&body, &cuts);
            let mut s = MessageSplitter::new(max);
            match split_all(&mut s, &frames) {
                // Accepted input is exactly a valid encoding of what came out.
                Ok(pieces) => {
                    let messages = join(&pieces);
                    prop_assert!(messages.iter().all(|m| m.len() <= max));
                    prop_assert_eq!(encode(&messages), body);
                }
                Err(err) => {
                    let _ = err.to_status();
                    prop_assert_eq!(s.finish(), Err(err));
                }
            }
        }

    }
}
