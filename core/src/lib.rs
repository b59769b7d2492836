//! Shared ground of greenfill: regular time series, the job and cluster vocabulary
//! that the scheduler and the simulator both speak, and readers that turn the real
//! trace formats (carbon intensity, machine usage, job arrivals) into those types.
//!
//! Architecture invariant: this crate knows nothing of gRPC, async or the solver.
//! It reads files only in [`data`], and every reader also takes any `io::Read` so
//! tests and fuzzers feed it bytes.

pub mod cluster;
pub mod data;
pub mod guard;
mod series;
pub mod testing;
pub mod time;
pub mod units;

pub use series::{MAX_POINTS, Series, SeriesStats, fill_gaps, points_needed};
