//! greenfill's gRPC contract, package `greenfill.v1`, generated at build time from
//! `proto/greenfill/v1/*.proto`.
//!
//! Architecture invariant: only the gRPC edges (the scheduler's service modules, the
//! agent's connection, the CLI's client) depend on this crate; the planner,
//! forecaster and simulator never see these types.

#![allow(unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic, reason = "generated code")]

pub mod v1 {
    tonic::include_proto!("greenfill.v1");
}

/// The encoded `FileDescriptorSet` of every greenfill.v1 file (and the well-known
/// types they import), for gRPC server reflection and dynamic clients.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/greenfill_v1_descriptor.bin"));
