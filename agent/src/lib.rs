//! greenfill's node agent. Today: telemetry — node CPU and memory from `/proc`,
//! pressure (PSI), cgroup v1/v2 detection and per-cgroup statistics, CPU power from
//! RAPL (each zone unwrapped with its own range) or from a power model where no
//! sensor exists. Every figure says its source.
//!
//! Architecture invariant: every filesystem root (`/proc`, `/sys/fs/cgroup`,
//! `/sys/class/powercap`) is a parameter ([`Roots`]), so a DaemonSet points them at
//! host mounts and tests at fixture trees. Parsers are pure `&str → Option<T>`
//! functions; a missing or garbled file makes a field `None`, never a panic.

pub mod cgroups;
pub mod containerd;
pub mod daemon;
pub mod gpu;
pub mod guard;
mod oci;
mod pull;
pub mod runner;
pub mod telemetry;

pub use telemetry::{Roots, Sample, Sampler};

/// Write `value` as JSON to `path` atomically: a temp file beside it, fsynced,
/// renamed over it (the agent's state and its GPU limit records).
pub(crate) fn write_json_atomic(path: &std::path::Path, value: &impl serde::Serialize) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
