//! Compiles the gRPC contract with tonic-prost-build and a vendored protoc, so no system
//! protoc is needed. The generated code uses our codec (`crate::grpc::codec::Codec`), which
//! answers INVALID_ARGUMENT instead of tonic's INTERNAL for a message that does not decode.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let protoc = match std::env::var_os("PROTOC") {
        Some(path) => std::path::PathBuf::from(path),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .codec_path("crate::grpc::codec::Codec")
        .file_descriptor_set_path(out.join("agentauth_descriptor.bin"))
        .compile_with_config(config, &["proto/agentauth/v1/agent_auth.proto"], &["proto"])?;
    Ok(())
}
