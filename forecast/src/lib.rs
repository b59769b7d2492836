//! Forecasts of what online services will use, with an upper bound at quantile `q`.
//!
//! Every model sees the same thing: a regular history (oldest first, NaN where a
//! sample is missing), the number of steps in a day (`season`), a horizon in steps
//! and `q`. It returns a point forecast and an upper bound per step.
//!
//! Architecture invariant: no IO, no async, no clock, no randomness: same input,
//! same output.

mod backtest;
mod learned;
mod models;
mod stats;

pub use backtest::{Backtest, BacktestOptions, Metrics, SeriesMetrics, backtest};
pub use learned::{Conformal, HoltWinters, LagModel, Learner, PointModel};
pub use models::{Blend, DailyProfile, Greenfill, KoordinatorP95, SeasonalNaive, by_name, models};

use serde::Serialize;

/// A forecast `horizon` steps long.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    pub point: Vec<f64>,
    /// Exceeded by the actual value with probability about `1 − q`.
    pub upper: Vec<f64>,
    /// True when the history was too short for the model and the bound is a
    /// conservative fallback (history maximum plus a margin), not a calibrated one.
    pub conservative: bool,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    #[error("history has no finite value")]
    NoData,
    #[error("season = {0}: need at least 2 steps per day")]
    Season(usize),
    #[error("horizon = 0: nothing to forecast")]
    Horizon,
    #[error("quantile = {0}: need 0 < q < 1")]
    Quantile(f64),
}

/// A forecasting model.
pub trait Forecaster: Send + Sync {
    fn name(&self) -> &'static str;
    /// Fit on `history` and forecast the next `horizon` steps.
    fn forecast(&self, history: &[f64], season: usize, horizon: usize, q: f64) -> Result<Forecast, ForecastError>;
}

/// Check the common arguments and return the history with gaps filled (linear
/// interpolation, nearest value at the ends).
pub(crate) fn prepare(history: &[f64], season: usize, horizon: usize, q: f64) -> Result<Vec<f64>, ForecastError> {
    if season < 2 {
        return Err(ForecastError::Season(season));
    }
    if horizon == 0 {
        return Err(ForecastError::Horizon);
    }
    if !(q > 0.0 && q < 1.0) {
        return Err(ForecastError::Quantile(q));
    }
    let mut h = history.to_vec();
    if stats::fill_gaps(&mut h) { Ok(h) } else { Err(ForecastError::NoData) }
}

/// Fallback for histories shorter than a day: the mean as point forecast, the
/// maximum plus a quarter of the range (at least 10 % of the maximum) as bound.
pub(crate) fn conservative(h: &[f64], horizon: usize) -> Forecast {
    let mean = h.iter().sum::<f64>() / len_f(h.len());
    let max = h.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = h.iter().copied().fold(f64::INFINITY, f64::min);
    let upper = max + ((max - min) * 0.25).max(max.abs() * 0.1);
    Forecast { point: vec![mean; horizon], upper: vec![upper; horizon], conservative: true }
}

#[allow(clippy::cast_precision_loss, reason = "lengths are far below 2^52")]
pub(crate) fn len_f(n: usize) -> f64 {
    n as f64
}
