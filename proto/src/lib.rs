//! The `idvault.v1` wire contract: generated protobuf messages and gRPC
//! stubs, plus the encoded descriptor set for server reflection.
//!
//! Without the `grpc` feature it is the messages alone (prost); with it,
//! also the tonic clients and servers. This crate holds no logic. The `.proto` sources live in `proto/proto/`
//! and follow the Buf style guide; breaking changes go to `v2`.
#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

#[cfg(feature = "grpc")]
pub mod codec;

/// Generated code for package `idvault.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/idvault.v1.rs"));
}

/// Encoded `FileDescriptorSet` of every `idvault.v1` file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/idvault_descriptor.bin"));
