use serde::Serialize;

/// A regular time series: `values[i]` holds the value at `start + i * step` seconds.
///
/// Readers build these from irregular or gappy input; `filled` says how many of the
/// values were not observed but filled in (see [`crate::data`] for the rule).
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub id: String,
    /// Unix seconds of the first value.
    pub start: i64,
    /// Seconds between values; always > 0.
    pub step: i64,
    pub values: Vec<f64>,
    /// Number of values that were filled rather than observed.
    pub filled: usize,
}

/// Min, mean and max over a set of observed values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeriesStats {
    pub count: usize,
    pub min: f64,
    pub mean: f64,
    pub max: f64,
}

impl SeriesStats {
    /// Statistics of the finite values in `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<SeriesStats> {
        let mut count = 0usize;
        let (mut min, mut max, mut sum) = (f64::INFINITY, f64::NEG_INFINITY, 0.0);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            count += 1;
            min = min.min(v);
            max = max.max(v);
            sum += v;
        }
        #[allow(clippy::cast_precision_loss, reason = "a count of values fits an f64 mantissa")]
        (count > 0).then(|| SeriesStats { count, min, mean: sum / count as f64, max })
    }
}

impl Series {
    /// Unix seconds of the last value.
    pub fn end(&self) -> i64 {
        #[allow(clippy::cast_possible_wrap, reason = "series lengths are far below i64::MAX")]
        let n = self.values.len().saturating_sub(1) as i64;
        self.start + n * self.step
    }

    /// Time of value `i`, in unix seconds.
    pub fn time_at(&self, i: usize) -> i64 {
        #[allow(clippy::cast_possible_wrap, reason = "series lengths are far below i64::MAX")]
        let i = i as i64;
        self.start + i * self.step
    }

    /// Value at unix time `t`: the step that contains `t`, clamped to the ends.
    pub fn value_at(&self, t: i64) -> f64 {
        if self.values.is_empty() {
            return f64::NAN;
        }
        let i = (t - self.start).div_euclid(self.step).max(0);
        let i = usize::try_from(i).unwrap_or(usize::MAX).min(self.values.len() - 1);
        self.values[i]
    }

    /// Build a regular series from observed `(time, value)` samples, strictly
    /// increasing in time, by averaging the samples inside each `step`-wide bin
    /// (bins start at the first sample's time rounded down to a multiple of `step`).
    /// Empty bins are filled by linear interpolation between the nearest observed
    /// bins (nearest value at the ends) and counted in `filled`.
    ///
    /// Returns `None` when there is no finite sample.
    pub fn from_samples(id: String, step: i64, samples: &[(i64, f64)]) -> Option<Series> {
        let mut s = Series::binned(id, step, samples)?;
        s.filled = fill_gaps(&mut s.values);
        Some(s)
    }

    /// Like [`Series::from_samples`] but empty bins stay NaN (and `filled` is 0):
    /// for scoring forecasts only against what was observed.
    pub fn binned(id: String, step: i64, samples: &[(i64, f64)]) -> Option<Series> {
        assert!(step > 0, "step must be positive");
        let observed: Vec<(i64, f64)> = samples.iter().copied().filter(|(_, v)| v.is_finite()).collect();
        if observed.is_empty() {
            return None;
        }
        let n = points_needed(samples, step).ok()?;
        let start = samples.iter().map(|s| s.0).min()?.div_euclid(step) * step;
        let mut sum = vec![0.0; n];
        let mut cnt = vec![0u32; n];
        for &(t, v) in &observed {
            let i = usize::try_from((t - start) / step).ok()?;
            sum[i] += v;
            cnt[i] += 1;
        }
        let values: Vec<f64> =
            sum.iter().zip(&cnt).map(|(&s, &c)| if c > 0 { s / f64::from(c) } else { f64::NAN }).collect();
        Some(Series { id, start, step, values, filled: 0 })
    }
}

/// Most values one series read from a file may hold (a year at one second is
/// 31.5 M): past it a reader refuses the file instead of trying to allocate.
pub const MAX_POINTS: usize = 50_000_000;

/// How many values `samples` need at `step`, from the step holding the earliest
/// to the latest; `Err` with the count when that is more than [`MAX_POINTS`].
pub fn points_needed(samples: &[(i64, f64)], step: i64) -> Result<usize, u128> {
    let (Some(first), Some(last)) = (samples.iter().map(|s| s.0).min(), samples.iter().map(|s| s.0).max()) else {
        return Ok(0);
    };
    let start = i128::from(first.div_euclid(step)) * i128::from(step);
    let n = (i128::from(last) - start) / i128::from(step) + 1;
    match usize::try_from(n) {
        Ok(n) if n <= MAX_POINTS => Ok(n),
        _ => Err(u128::try_from(n).unwrap_or(u128::MAX)),
    }
}

/// Replace non-finite values by linear interpolation between the nearest finite
/// neighbours (the nearest finite value at either end). Returns how many were
/// replaced. A slice with no finite value is left as it is.
pub fn fill_gaps(values: &mut [f64]) -> usize {
    let Some(first) = values.iter().position(|v| v.is_finite()) else {
        return 0;
    };
    let mut filled = 0;
    let head = values[first];
    for v in &mut values[..first] {
        *v = head;
        filled += 1;
    }
    let mut prev = first;
    for i in first + 1..values.len() {
        if !values[i].is_finite() {
            continue;
        }
        if i > prev + 1 {
            let (a, b) = (values[prev], values[i]);
            #[allow(clippy::cast_precision_loss, reason = "gap lengths are small")]
            let span = (i - prev) as f64;
            for (k, v) in values[prev + 1..i].iter_mut().enumerate() {
                #[allow(clippy::cast_precision_loss, reason = "gap lengths are small")]
                let f = (k + 1) as f64 / span;
                *v = a + (b - a) * f;
                filled += 1;
            }
        }
        prev = i;
    }
    let tail = values[prev];
    for v in &mut values[prev + 1..] {
        *v = tail;
        filled += 1;
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_interpolated_and_counted() {
        let mut v = [f64::NAN, 1.0, f64::NAN, f64::NAN, 4.0, f64::NAN];
        assert_eq!(fill_gaps(&mut v), 4);
        assert_eq!(v, [1.0, 1.0, 2.0, 3.0, 4.0, 4.0]);
    }

    #[test]
    fn samples_are_binned_by_mean() {
        let s = Series::from_samples("m".into(), 300, &[(610, 1.0), (700, 3.0), (1300, 5.0)]).unwrap();
        assert_eq!(s.start, 600);
        assert_eq!(s.values, vec![2.0, 3.5, 5.0]);
        assert_eq!(s.filled, 1);
        assert_eq!(s.end(), 1200);
        assert!((s.value_at(1000) - 3.5).abs() < 1e-12);
    }

    #[test]
    fn all_missing_gives_none() {
        assert!(Series::from_samples("m".into(), 60, &[(0, f64::NAN)]).is_none());
    }
}
