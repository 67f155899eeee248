//! The protobuf codec for our service: prost's, except that a message that does not decode
//! (broken protobuf, invalid UTF-8 in a string) answers INVALID_ARGUMENT with reason
//! MALFORMED_REQUEST. tonic's default answers INTERNAL, which would page someone for a
//! caller's mistake (DESIGN.md 3.1).

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Used by the generated code through `codec_path` in `build.rs`.
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MalformedAwareDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MalformedAwareDecoder { _pd: PhantomData }
    }
}

/// Decodes with prost and reports failures as the caller's fault.
#[derive(Debug, Clone)]
pub struct MalformedAwareDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for MalformedAwareDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| {
            tracing::debug!(error = %e, "request does not decode");
            super::status::malformed("the message does not decode as protobuf")
        })
    }
}
