//! Compiles the gRPC contract with protox (pure Rust, so no system `protoc`),
//! generates the tonic server and client, and writes the descriptor set that
//! server reflection serves.

use std::{env, fs, path::PathBuf};

use protox::prost::Message;

const PROTO: &str = "batchhistory/v1/batch_history.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // refinery embeds migrations/ at compile time; a changed migration must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    let descriptors = protox::compile([PROTO], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out_dir.join("batch_history_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
