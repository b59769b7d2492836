//! Rolling-origin backtests: the same origins, histories and actuals for every model.

use crate::stats::pinball;
use crate::{Forecaster, len_f};
use serde::Serialize;

/// How one model did on one series.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesMetrics {
    pub id: String,
    pub pinball_loss: f64,
    pub coverage: f64,
    pub mean_excess: f64,
    pub mae: f64,
    pub origins: usize,
    /// Origins at which the model fell back to its conservative bound.
    pub conservative: usize,
}

/// How one model did, averaged over series (each series weighs the same).
#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub name: String,
    /// Mean pinball loss of the upper bound at `q`, in the series' units.
    pub pinball_loss: f64,
    /// Share of actual values at or below the upper bound.
    pub coverage: f64,
    /// Mean of upper bound − actual.
    pub mean_excess: f64,
    /// Mean absolute error of the point forecast.
    pub mae: f64,
    pub series: Vec<SeriesMetrics>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Backtest {
    pub season: usize,
    pub horizon: usize,
    pub quantile: f64,
    pub models: Vec<Metrics>,
    /// Series too short for one origin, with their length.
    pub skipped: Vec<(String, usize)>,
}

/// Where the origins fall and what each model sees, in steps.
#[derive(Debug, Clone, Copy)]
pub struct BacktestOptions {
    /// Steps per day.
    pub season: usize,
    pub horizon: usize,
    pub quantile: f64,
    /// The first origin comes after this many steps.
    pub min_train: usize,
    /// Each model sees at most this many steps before the origin.
    pub max_train: usize,
    pub origin_every: usize,
}

/// Backtest `models` on `series` (id, regular values): origins from `min_train`
/// on, every `origin_every` steps, while a whole horizon of actuals follows.
pub fn backtest(series: &[(String, Vec<f64>)], models: &[Box<dyn Forecaster>], opts: &BacktestOptions) -> Backtest {
    let BacktestOptions { season, horizon, quantile: q, min_train, max_train, origin_every } = *opts;
    let mut out: Vec<Metrics> = models
        .iter()
        .map(|m| Metrics {
            name: m.name().to_owned(),
            pinball_loss: 0.0,
            coverage: 0.0,
            mean_excess: 0.0,
            mae: 0.0,
            series: Vec::new(),
        })
        .collect();
    let mut skipped = Vec::new();
    for (id, values) in series {
        let n = values.len();
        if n < min_train.max(1) + horizon {
            skipped.push((id.clone(), n));
            continue;
        }
        let origins: Vec<usize> = (min_train.max(1)..=n - horizon).step_by(origin_every.max(1)).collect();
        for (model, metrics) in models.iter().zip(out.iter_mut()) {
            let (mut pin, mut cov, mut exc, mut mae, mut count, mut cons) = (0.0, 0.0, 0.0, 0.0, 0usize, 0usize);
            for &o in &origins {
                let history = &values[o.saturating_sub(max_train)..o];
                let Ok(f) = model.forecast(history, season, horizon, q) else { continue };
                cons += usize::from(f.conservative);
                for l in 0..horizon {
                    let y = values[o + l];
                    if !y.is_finite() {
                        continue;
                    }
                    pin += pinball(y, f.upper[l], q);
                    cov += f64::from(u8::from(y <= f.upper[l]));
                    exc += f.upper[l] - y;
                    mae += (f.point[l] - y).abs();
                    count += 1;
                }
            }
            let c = len_f(count.max(1));
            metrics.series.push(SeriesMetrics {
                id: id.clone(),
                pinball_loss: pin / c,
                coverage: cov / c,
                mean_excess: exc / c,
                mae: mae / c,
                origins: origins.len(),
                conservative: cons,
            });
        }
    }
    for m in &mut out {
        let k = len_f(m.series.len().max(1));
        m.pinball_loss = m.series.iter().map(|s| s.pinball_loss).sum::<f64>() / k;
        m.coverage = m.series.iter().map(|s| s.coverage).sum::<f64>() / k;
        m.mean_excess = m.series.iter().map(|s| s.mean_excess).sum::<f64>() / k;
        m.mae = m.series.iter().map(|s| s.mae).sum::<f64>() / k;
    }
    Backtest { season, horizon, quantile: q, models: out, skipped }
}
