//! Compiles the .proto files with protox (pure Rust, so no protoc is needed)
//! and hands the descriptor set to prost-build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/fleet.proto", "proto/storage.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
