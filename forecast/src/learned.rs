//! Point models that learn from the history — a ridge regression and a random
//! forest on lag and time-of-day features (smartcore on ndarray), additive
//! Holt-Winters with a daily season — and [`Conformal`], which turns any of them
//! into a calibrated upper bound.

use crate::stats::quantile;
use crate::{Forecast, ForecastError, Forecaster, conservative, len_f, prepare};
use ndarray::{Array1, Array2, Axis};
use smartcore::ensemble::random_forest_regressor::{RandomForestRegressor, RandomForestRegressorParameters};
use smartcore::linear::ridge_regression::{RidgeRegression, RidgeRegressionParameters};

/// A model that gives a point forecast only.
pub trait PointModel: Send + Sync {
    fn name(&self) -> &'static str;
    /// The shortest history, in steps, the model fits on.
    fn min_history(&self, s: usize) -> usize {
        s + s / 2
    }
    /// The point forecast of the next `horizon` steps from a gap-free history of at
    /// least `min_history` steps; `None` when the model cannot be fitted (a singular
    /// system, say).
    fn point(&self, h: &[f64], s: usize, horizon: usize) -> Option<Vec<f64>>;
}

/// Any point model with a split-conformal bound: the model forecasts a whole day
/// from origins over the last `calib_days` days (every half day, each fitted only
/// on the history before it), and the bound adds the `q` quantile of those
/// out-of-sample errors, pooled over leads, to the forecast from the whole history.
/// Past a day of lead the bound keeps that margin. A history too short for a
/// whole-day origin calibrates on the last half day, forecast from the history
/// before it; one too short for that gets the conservative bound.
#[derive(Debug, Clone)]
pub struct Conformal<P> {
    pub model: P,
    pub calib_days: usize,
}

impl<P> Conformal<P> {
    pub fn new(model: P) -> Self {
        Conformal { model, calib_days: 2 }
    }
}

impl<P: PointModel> Forecaster for Conformal<P> {
    fn name(&self) -> &'static str {
        self.model.name()
    }

    fn forecast(&self, history: &[f64], s: usize, horizon: usize, q: f64) -> Result<Forecast, ForecastError> {
        let h = prepare(history, s, horizon, q)?;
        let n = h.len();
        let half = (s / 2).max(1);
        let min = self.model.min_history(s);
        let mut errors = Vec::new();
        let mut calibrate = |o: usize, len: usize| {
            if let Some(p) = self.model.point(&h[..o], s, len) {
                errors.extend(h[o..o + len].iter().zip(&p).map(|(y, f)| y - f));
            }
        };
        let whole: Vec<usize> =
            (0..2 * self.calib_days).filter_map(|k| n.checked_sub(s + k * half)).filter(|o| *o >= min).collect();
        if whole.is_empty() {
            if n >= min + half {
                calibrate(n - half, half);
            }
        } else {
            whole.into_iter().for_each(|o| calibrate(o, s));
        }
        let (Some(margin), Some(point)) = (quantile(&mut errors, q), self.model.point(&h, s, horizon)) else {
            return Ok(conservative(&h, horizon));
        };
        let upper = point.iter().map(|p| p + margin).collect();
        Ok(Forecast { point, upper, conservative: false })
    }
}

/// Which learner a [`LagModel`] fits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Learner {
    /// smartcore's ridge regression on standardised features and centred values.
    Ridge { alpha: f64 },
    /// smartcore's random forest (bootstrap, fixed seed: deterministic); leaves
    /// hold at least `min_leaf` rows, or a fiftieth of the rows (at least 2) if fewer.
    Forest { trees: usize, min_leaf: usize, max_depth: u16 },
}

/// A regression of the value at `t` on the history one to `lags` days before it
/// (each the mean within `smoothing` of a day around `t − j·day`) and the time of
/// day (two harmonics). Training rows are every `stride`-th step of the history
/// where all lags exist; leads past a day are forecast a day at a time, the first
/// day's forecast standing in for history.
#[derive(Debug, Clone)]
pub struct LagModel {
    pub learner: Learner,
    pub lags: usize,
    pub smoothing: f64,
    pub stride: usize,
}

impl LagModel {
    pub fn ridge() -> Self {
        LagModel { learner: Learner::Ridge { alpha: 1.0 }, lags: 3, smoothing: 1.0 / 48.0, stride: 1 }
    }

    pub fn forest() -> Self {
        LagModel {
            learner: Learner::Forest { trees: 30, min_leaf: 20, max_depth: 10 },
            lags: 3,
            smoothing: 1.0 / 48.0,
            stride: 2,
        }
    }

    /// The features of time `t` from the values whose running sums are `prefix`
    /// (windows are cut at the last of them; each still holds `t − j·day` itself).
    fn features(&self, prefix: &[f64], s: usize, lags: usize, t: usize, out: &mut Vec<f64>) {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small share of a day")]
        let w = (self.smoothing.clamp(0.0, 0.5) * len_f(s)).round() as usize;
        let known = prefix.len() - 1;
        for j in 1..=lags {
            let c = t - j * s;
            let (a, b) = (c.saturating_sub(w), (c + w + 1).min(known));
            out.push((prefix[b] - prefix[a]) / len_f(b - a));
        }
        let phase = 2.0 * std::f64::consts::PI * len_f(t % s) / len_f(s);
        for k in 1..=2 {
            let k = f64::from(k);
            out.push((k * phase).sin());
            out.push((k * phase).cos());
        }
    }
}

impl PointModel for LagModel {
    fn name(&self) -> &'static str {
        match self.learner {
            Learner::Ridge { .. } => "lag_ridge",
            Learner::Forest { .. } => "lag_forest",
        }
    }

    fn point(&self, h: &[f64], s: usize, horizon: usize) -> Option<Vec<f64>> {
        let n = h.len();
        let lags = self.lags.clamp(1, (n / s).saturating_sub(1).max(1));
        if n < self.min_history(s) {
            return None;
        }
        let mut prefix = Vec::with_capacity(n + horizon + 1);
        prefix.push(0.0);
        for v in h {
            prefix.push(prefix[prefix.len() - 1] + v);
        }
        let p = lags + 4;
        let mut rows = Vec::new();
        let mut ys = Vec::new();
        for t in (lags * s..n).step_by(self.stride.max(1)) {
            self.features(&prefix, s, lags, t, &mut rows);
            ys.push(h[t]);
        }
        let x = Array2::from_shape_vec((ys.len(), p), rows).ok()?;
        let y = Array1::from(ys);
        let fitted = Fitted::fit(self.learner, &x, &y)?;
        // A day at a time: each day's features see the history plus the days before it.
        let mut out = Vec::with_capacity(horizon);
        while out.len() < horizon {
            let known = n + out.len();
            let steps = s.min(horizon - out.len());
            let mut rows = Vec::with_capacity(steps * p);
            for t in known..known + steps {
                self.features(&prefix, s, lags, t, &mut rows);
            }
            for v in fitted.predict(&Array2::from_shape_vec((steps, p), rows).ok()?)? {
                out.push(v);
                prefix.push(prefix[prefix.len() - 1] + v);
            }
        }
        Some(out)
    }
}

enum Fitted {
    /// Fitted on standardised columns and centred values; a constant column (a flat
    /// history) is zeroed rather than divided by a zero spread.
    Ridge {
        model: RidgeRegression<f64, f64, Array2<f64>, Array1<f64>>,
        mean: Array1<f64>,
        scale: Array1<f64>,
        y_mean: f64,
    },
    Forest(RandomForestRegressor<f64, f64, Array2<f64>, Array1<f64>>),
}

impl Fitted {
    fn fit(learner: Learner, x: &Array2<f64>, y: &Array1<f64>) -> Option<Fitted> {
        match learner {
            Learner::Ridge { alpha } => {
                let mean = x.mean_axis(Axis(0))?;
                let scale = x.std_axis(Axis(0), 0.0).mapv(|sd| if sd > 1e-12 { 1.0 / sd } else { 0.0 });
                let y_mean = y.mean()?;
                let params = RidgeRegressionParameters::default().with_alpha(alpha).with_normalize(false);
                let model = RidgeRegression::fit(&((x - &mean) * &scale), &(y - y_mean), params).ok()?;
                Some(Fitted::Ridge { model, mean, scale, y_mean })
            }
            Learner::Forest { trees, min_leaf, max_depth } => {
                let params = RandomForestRegressorParameters::default()
                    .with_n_trees(trees)
                    // Short histories give few rows: a leaf at most a fiftieth of them.
                    .with_min_samples_leaf(min_leaf.min(x.nrows() / 50).max(2))
                    .with_max_depth(max_depth)
                    .with_m(x.ncols().div_ceil(2))
                    .with_seed(0);
                RandomForestRegressor::fit(x, y, params).ok().map(Fitted::Forest)
            }
        }
    }

    fn predict(&self, x: &Array2<f64>) -> Option<Vec<f64>> {
        let y = match self {
            Fitted::Ridge { model, mean, scale, y_mean } => model.predict(&((x - mean) * scale)).ok()? + *y_mean,
            Fitted::Forest(m) => m.predict(x).ok()?,
        };
        y.iter().all(|v| v.is_finite()).then(|| y.to_vec())
    }
}

/// Additive Holt-Winters exponential smoothing with a daily season and no trend
/// (a day-ahead trend mostly extrapolates noise). The level and season start from
/// the first day; smoothing weights are picked from a small grid by the model's
/// own day-ahead errors over the history (the error at `t` of the forecast made at
/// `t − day`), not one-step errors, because the scheduler looks a day ahead.
#[derive(Debug, Clone, Copy, Default)]
pub struct HoltWinters;

const ALPHAS: [f64; 3] = [0.01, 0.03, 0.1];
const GAMMAS: [f64; 3] = [0.05, 0.2, 0.5];

/// Run the smoother over `h`; returns the final level, the season by time of day
/// and the mean absolute day-ahead error.
fn holt_winters(h: &[f64], s: usize, alpha: f64, gamma: f64) -> (f64, Vec<f64>, f64) {
    let mut level = h[..s].iter().sum::<f64>() / len_f(s);
    let mut season: Vec<f64> = h[..s].iter().map(|v| v - level).collect();
    let mut levels = vec![level; s];
    let (mut err, mut count) = (0.0, 0usize);
    for (t, &y) in h.iter().enumerate().skip(s) {
        let si = season[t % s];
        if t >= 2 * s {
            err += (y - (levels[t % s] + si)).abs();
            count += 1;
        }
        let next = alpha * (y - si) + (1.0 - alpha) * level;
        season[t % s] = gamma * (y - next) + (1.0 - gamma) * si;
        level = next;
        levels[t % s] = level;
    }
    (level, season, if count == 0 { 0.0 } else { err / len_f(count) })
}

impl PointModel for HoltWinters {
    fn name(&self) -> &'static str {
        "holt_winters"
    }

    fn point(&self, h: &[f64], s: usize, horizon: usize) -> Option<Vec<f64>> {
        let n = h.len();
        if n < self.min_history(s) {
            return None;
        }
        let mut best: Option<(f64, f64, Vec<f64>)> = None;
        for alpha in ALPHAS {
            for gamma in GAMMAS {
                let (level, season, err) = holt_winters(h, s, alpha, gamma);
                if best.as_ref().is_none_or(|b| err < b.0) {
                    best = Some((err, level, season));
                }
            }
        }
        let (_, level, season) = best?;
        Some((0..horizon).map(|l| level + season[(n + l) % s]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily sine plus a slow upward drift and small deterministic noise.
    fn series(days: usize, s: usize) -> Vec<f64> {
        (0..days * s)
            .map(|t| {
                let phase = 2.0 * std::f64::consts::PI * len_f(t % s) / len_f(s);
                let noise = len_f((t * 7919) % 13) / 13.0 - 0.5;
                50.0 + 20.0 * phase.sin() + 0.01 * len_f(t) + noise
            })
            .collect()
    }

    #[test]
    fn every_point_model_follows_a_daily_cycle() {
        let s = 48;
        let h = series(8, s);
        let truth = series(10, s);
        let models: [&dyn PointModel; 3] = [&LagModel::ridge(), &LagModel::forest(), &HoltWinters];
        for m in models {
            let p = m.point(&h, s, 2 * s).unwrap();
            assert_eq!(p.len(), 2 * s, "{}", m.name());
            let mae = p.iter().zip(&truth[h.len()..]).map(|(f, y)| (f - y).abs()).sum::<f64>() / len_f(p.len());
            // The cycle's amplitude is 20; noise is ±0.5. A forest cannot extrapolate
            // the drift (about 0.5 a day) and averages leaves, so it gets more room.
            let limit = if m.name() == "lag_forest" { 3.0 } else { 1.5 };
            assert!(mae < limit, "{}: MAE {mae}", m.name());
        }
    }

    #[test]
    fn conformal_bounds_cover_about_q_out_of_sample() {
        let s = 48;
        let h = series(12, s);
        let model = Conformal::new(LagModel::ridge());
        let (mut covered, mut total) = (0, 0);
        for o in (6 * s..11 * s).step_by(s / 4) {
            let f = model.forecast(&h[..o], s, s, 0.9).unwrap();
            assert!(!f.conservative);
            assert!(f.upper.iter().zip(&f.point).all(|(u, p)| u >= p), "the margin of a 0.9 bound is positive here");
            for (y, u) in h[o..o + s].iter().zip(&f.upper) {
                covered += usize::from(y <= u);
                total += 1;
            }
        }
        let coverage = len_f(covered) / len_f(total);
        assert!((0.8..=1.0).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    fn deterministic_and_short_histories_are_conservative() {
        let s = 48;
        let h = series(5, s);
        let forest = Conformal::new(LagModel::forest());
        assert_eq!(forest.forecast(&h, s, s, 0.95).unwrap(), forest.forecast(&h, s, s, 0.95).unwrap());
        for f in [
            Conformal::new(HoltWinters).forecast(&h[..s + 3], s, s, 0.95).unwrap(),
            forest.forecast(&h[..s], s, s, 0.95).unwrap(),
        ] {
            assert!(f.conservative);
        }
    }
}
