//! The codec of the opening RPCs' frames: prost, with an encode buffer sized
//! for the tunnel's 16 KiB chunks.
//!
//! tonic's default buffer is 8 KiB, smaller than one full chunk frame, so
//! every data frame made the encoder grow it. Here it starts at
//! [`BUFFER_SIZE`], the encoder reserves a frame's exact size before
//! writing it, and yields to HTTP/2 once [`YIELD_THRESHOLD`] bytes of frames
//! are ready, so that a burst of chunks goes out in a few large writes.
//!
//! Received frames do not go through this codec's decoder: each end takes
//! the opening RPC's body before tonic sees it (see `crate::inbound`), and
//! tonic's decoder gets an empty body, so it gets no buffer either.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Initial (and growth) size of a tunnel's encode buffer: room for a few
/// full chunk frames.
pub(crate) const BUFFER_SIZE: usize = 32 * 1024;

/// How many bytes of encoded frames the opening RPC batches into one body
/// chunk when frames are ready back to back.
pub(crate) const YIELD_THRESHOLD: usize = 128 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

/// Codec of `TunnelService`'s two methods (set in `build.rs`).
#[derive(Debug)]
pub(crate) struct TunnelCodec<T, U>(PhantomData<fn(T) -> U>);

impl<T, U> Default for TunnelCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for TunnelCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = FrameEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        FrameEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        // It only ever sees an empty body.
        ProstDecoder::new(BufferSettings::new(0, YIELD_THRESHOLD))
    }
}

/// Encodes one frame, reserving its size first (one allocation at most).
#[derive(Debug)]
pub(crate) struct FrameEncoder<T>(PhantomData<fn(T)>);

impl<T: Message> Encoder for FrameEncoder<T> {
    type Item = T;
    type Error = tonic::Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| tonic::Status::internal(format!("encoding a tunnel frame: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
