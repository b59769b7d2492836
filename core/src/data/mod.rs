//! Readers for the real trace formats greenfill works with.
//!
//! Every reader has two entry points: `read_*(name, impl Read, ..)` for bytes from
//! anywhere (tests, fuzzers, stdin) and `load_*(path, ..)` for a file. Errors name
//! the file, the line and the column ([`DataError`]); no input makes them panic.
//!
//! Gap rule, the same everywhere: samples are averaged into `step`-wide bins; bins
//! with no sample (missing rows, empty cells) are filled by linear interpolation
//! between the nearest observed bins (the nearest observed value at either end), and
//! their number is reported as `filled`. Statistics (`min`/`mean`/`max`) are over the
//! observed, non-empty rows only.

mod carbon;
mod error;
mod jobs;
mod price;
mod table;
mod usage;
mod wide;

pub use carbon::{CarbonOptions, CarbonTrace, load_carbon, read_carbon};
pub use error::DataError;
pub use jobs::{JobFormat, JobMemory, JobRecord, JobTrace, load_jobs, read_jobs};
pub use price::{load_price, read_price};
pub use usage::{UsageFormat, UsageMetric, UsageOptions, UsageTrace, load_usage, read_usage};
pub use wide::{load_wide, read_wide};

use std::path::Path;

/// Open `path` for reading, naming it in the error.
/// Refuse samples that would make a series longer than [`crate::MAX_POINTS`]
/// (a reader must not try to allocate for a span the file cannot mean).
pub(crate) fn check_span(path: &str, samples: &[(i64, f64)], step: i64) -> Result<(), DataError> {
    crate::points_needed(samples, step).map(|_| ()).map_err(|n| DataError::File {
        path: path.to_owned(),
        problem: format!(
            "the times span {n} steps of {step} s, more than {} values: timestamps mixed with offsets, or a wrong step?",
            crate::MAX_POINTS
        ),
    })
}

pub(crate) fn open(path: &Path) -> Result<std::fs::File, DataError> {
    std::fs::File::open(path).map_err(|source| DataError::Io { path: path.display().to_string(), source })
}

/// The most common positive difference between consecutive times: the step of a
/// series whose rows are mostly regular.
pub(crate) fn infer_step(times: &[i64]) -> Option<i64> {
    let mut diffs: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).collect();
    diffs.sort_unstable();
    let mut best = (0usize, None);
    let mut i = 0;
    while i < diffs.len() {
        let j = diffs[i..].iter().position(|d| *d != diffs[i]).map_or(diffs.len(), |k| i + k);
        if j - i > best.0 {
            best = (j - i, Some(diffs[i]));
        }
        i = j;
    }
    best.1
}
