//! A prost codec whose decode failures are `INVALID_ARGUMENT`.
//!
//! tonic's stock prost codec reports a message that does not parse as
//! `INTERNAL`, which tells a client the server is broken when it was the
//! request that was bad. The message never echoes the input bytes.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Codec used by every generated `idvault.v1` service and client.
#[derive(Debug, Clone)]
pub struct StrictProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for StrictProstCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for StrictProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictProstDecoder { _pd: PhantomData }
    }
}

/// Decoder half of [`StrictProstCodec`].
#[derive(Debug, Clone)]
pub struct StrictProstDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed protobuf message: {e}")))
    }
}
