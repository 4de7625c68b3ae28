//! Compiles `proto/idvault/v1/*.proto` in pure Rust (protox): no `protoc`
//! is needed on the build machine. Also writes the encoded descriptor set
//! that the server's reflection service publishes.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/idvault/v1/subjects.proto",
        "proto/idvault/v1/tokens.proto",
        "proto/idvault/v1/match.proto",
        "proto/idvault/v1/consent.proto",
        "proto/idvault/v1/events.proto",
        "proto/idvault/v1/audit.proto",
        "proto/idvault/v1/credentials.proto",
        "proto/idvault/v1/transactions.proto",
        "proto/idvault/v1/keys.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("idvault_descriptor.bin"), fds.encode_to_vec())?;
    // The gRPC stubs only with the `grpc` feature: the pure core takes the
    // messages alone.
    let grpc = env::var_os("CARGO_FEATURE_GRPC").is_some();
    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        // Decode failures must reach callers as INVALID_ARGUMENT, not the
        // INTERNAL that tonic's default prost codec reports.
        .codec_path("crate::codec::StrictProstCodec")
        .compile_fds(fds)?;
    Ok(())
}
