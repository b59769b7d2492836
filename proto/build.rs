//! Generates the greenfill.v1 messages, clients and servers with tonic/prost, using
//! protox (a protobuf compiler in Rust) so no system `protoc` is needed. The
//! encoded descriptor set is written beside the code for gRPC server reflection.

use prost::Message;
use std::path::PathBuf;

const FILES: [&str; 4] =
    ["greenfill/v1/jobs.proto", "greenfill/v1/agent.proto", "greenfill/v1/plan.proto", "greenfill/v1/clock.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(FILES, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("greenfill_v1_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().emit_rerun_if_changed(false).compile_fds(fds)?;
    Ok(())
}
