//! Grid carbon signals for planning and for accounting.
//!
//! Every provider answers in its own shape and unit; a [`Source`] turns its
//! answer into a [`Forecast`]: points in g CO2e/kWh with their provenance
//! (provider, zone, average or marginal, when the provider made it). The
//! providers are the UK's NESO Carbon Intensity API, Fraunhofer ISE's
//! Energy-Charts, Electricity Maps v3 and WattTime v3; a file and a constant
//! need no network. A [`Zone`] asks its sources in order, caches answers,
//! keeps away from a provider that asked it to (`Retry-After`), and degrades
//! from a failed source to its last good forecast, then to the next source.
//!
//! Day-ahead electricity prices come the same way ([`price`]): Energy-Charts,
//! ENTSO-E, a file or a constant, in currency per MWh.
//!
//! Nothing here knows the scheduler: [`Zone::refresh`] is called by whoever
//! owns the clock, and the last good forecast is handed out for persisting.

mod chain;
mod config;
mod electricity_maps;
mod energy_charts;
#[cfg(feature = "fixture")]
pub mod fixture;
mod http;
mod neso;
pub mod price;
mod watttime;

pub use chain::{Fallback, Past, Persisted, Signal, Zone};
pub use config::{BadKey, SourceConfig, ZoneConfig};

use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Pounds per MWh to grams per kWh: 453.59237 g per lb, 1000 kWh per MWh.
pub const LB_PER_MWH_TO_G_PER_KWH: f64 = 0.453_592_37;

/// What an intensity stands for (SCI: location-based, average or marginal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    /// The generation mix's mean emissions per kWh.
    Average,
    /// The emissions of the generator that follows a change in demand.
    Marginal,
}

impl SignalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Average => "average",
            SignalKind::Marginal => "marginal",
        }
    }
}

/// Where a forecast came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `neso`, `energy-charts`, `electricity-maps`, `watttime`, `file`, `constant`.
    pub provider: String,
    /// The provider's zone or region (`GB`, `13`, `de`, `CAISO_NORTH`, …).
    pub zone: String,
    pub signal: SignalKind,
    /// Unix seconds the provider made it (its own field where it has one, else
    /// when it was fetched).
    pub generated_at: i64,
}

/// One interval's intensity: from `at` for the forecast's `step_s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub at: i64,
    pub g_per_kwh: f64,
}

/// A provider's answer in g CO2e/kWh, sorted by time, gaps left as gaps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Forecast {
    pub provenance: Provenance,
    /// The length of each point's interval, seconds.
    pub step_s: i64,
    pub points: Vec<Point>,
}

impl Forecast {
    /// Sort, drop values that are not finite and >= 0, and the second of two
    /// points at one time. Fails when nothing is left.
    pub fn new(provenance: Provenance, step_s: i64, mut points: Vec<Point>) -> Result<Forecast, SourceError> {
        points.retain(|p| p.g_per_kwh.is_finite() && p.g_per_kwh >= 0.0);
        points.sort_by_key(|p| p.at);
        points.dedup_by_key(|p| p.at);
        if points.is_empty() {
            return Err(SourceError::Empty { provider: provenance.provider, zone: provenance.zone });
        }
        Ok(Forecast { provenance, step_s: step_s.max(1), points })
    }

    /// The end of the last point's interval.
    pub fn covers_until(&self) -> i64 {
        self.points.last().map_or(i64::MIN, |p| p.at + self.step_s)
    }

    /// Intervals missing between the first and the last point.
    pub fn gaps(&self) -> usize {
        let step = self.step_s;
        self.points.windows(2).map(|w| usize::try_from(((w[1].at - w[0].at) / step - 1).max(0)).unwrap_or(0)).sum()
    }

    /// The intensity in force at `t`: the point whose interval holds it; in a
    /// gap, the line between the points either side; before the first point
    /// the first, after the last the last (a forecast is held, not extended).
    pub fn at(&self, t: i64) -> f64 {
        let i = self.points.partition_point(|p| p.at <= t);
        if i == 0 {
            return self.points[0].g_per_kwh;
        }
        let prev = self.points[i - 1];
        if t < prev.at + self.step_s || i == self.points.len() {
            return prev.g_per_kwh;
        }
        let next = self.points[i];
        #[allow(clippy::cast_precision_loss, reason = "seconds within a forecast")]
        let share = (t - prev.at) as f64 / (next.at - prev.at) as f64;
        prev.g_per_kwh + share * (next.g_per_kwh - prev.g_per_kwh)
    }

    /// Mean intensity over `[from, to)`, sampled each minute (providers' steps
    /// are 5 to 60 minutes).
    pub fn mean(&self, from: i64, to: i64) -> f64 {
        if to <= from {
            return self.at(from);
        }
        let step = 60;
        let (mut t, mut sum, mut n) = (from, 0.0, 0.0);
        while t < to {
            sum += self.at(t);
            n += 1.0;
            t += step;
        }
        sum / n
    }

    /// Mean intensity per slot of `slot_s` from `start`, `slots` of them.
    pub fn slot_means(&self, start: i64, slot_s: i64, slots: usize) -> Vec<f64> {
        (0..slots)
            .map(|s| {
                let from = start + slot_s * i64::try_from(s).unwrap_or(i64::MAX / 2);
                self.mean(from, from + slot_s)
            })
            .collect()
    }
}

/// Why a source gave no forecast. Each names the provider and carries the
/// provider's own message where it sent one; a credential never appears.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SourceError {
    #[error("{provider}: {status} (credentials refused): {message}")]
    Unauthorized { provider: String, status: u16, message: String },
    #[error("{provider}: 403 Forbidden (the account may not see this zone or signal): {message}")]
    Forbidden { provider: String, message: String },
    #[error("{provider}: zone {zone:?} is unknown to the provider: {message}")]
    UnknownZone { provider: String, zone: String, message: String },
    #[error("{provider}: 429 Too Many Requests{}: {message}", retry_after.map(|d| format!(", retry after {} s", d.as_secs())).unwrap_or_default())]
    RateLimited { provider: String, retry_after: Option<Duration>, message: String },
    #[error("{provider}: the server answered {status}: {message}")]
    Server { provider: String, status: u16, message: String },
    #[error("{provider}: no answer from {url} within {} s", timeout.as_secs_f64())]
    Timeout { provider: String, url: String, timeout: Duration },
    #[error("{provider}: {url}: {detail}")]
    Transport { provider: String, url: String, detail: String },
    #[error("{provider}: the answer is not in the documented format: {detail}")]
    Malformed { provider: String, detail: String },
    #[error("{provider}: no intensity for zone {zone:?} in the answer")]
    Empty { provider: String, zone: String },
    #[error("{provider}: {detail}")]
    Local { provider: String, detail: String },
    #[error("{provider}: no day-ahead price for zone {zone:?}: {message}")]
    NoPrices { provider: String, zone: String, message: String },
}

impl SourceError {
    /// A short label for logs and metrics (`unauthorized`, `rate_limited`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::Unauthorized { .. } => "unauthorized",
            SourceError::Forbidden { .. } => "forbidden",
            SourceError::UnknownZone { .. } => "unknown_zone",
            SourceError::RateLimited { .. } => "rate_limited",
            SourceError::Server { .. } => "server",
            SourceError::Timeout { .. } => "timeout",
            SourceError::Transport { .. } => "transport",
            SourceError::Malformed { .. } => "malformed",
            SourceError::Empty { .. } => "empty",
            SourceError::Local { .. } => "local",
            SourceError::NoPrices { .. } => "no_prices",
        }
    }

    /// How long the provider asked to be left alone.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SourceError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Errors of the configuration, not of the moment: a scheduler refuses to
    /// start on them.
    pub fn is_config(&self) -> bool {
        matches!(self, SourceError::UnknownZone { .. })
    }
}

/// A future a source returns (boxed: sources live behind `dyn Source`).
pub type Fetch<'a> = Pin<Box<dyn Future<Output = Result<Forecast, SourceError>> + Send + 'a>>;

/// A carbon signal provider for one zone.
pub trait Source: Send + Sync + std::fmt::Debug {
    /// `provider:zone`, for logs, metrics and the plan.
    fn name(&self) -> String;
    /// The forecast from about `now` on (with what the provider has of the past hours).
    fn fetch(&self, now: i64) -> Fetch<'_>;
    /// How often it is worth asking (the provider's own update interval).
    fn refresh(&self) -> Duration {
        Duration::from_secs(30 * 60)
    }
}

/// A constant intensity (the last resort; also a config's `kind = "constant"`).
#[derive(Debug, Clone)]
pub struct Constant {
    pub g_per_kwh: f64,
}

impl Source for Constant {
    fn name(&self) -> String {
        format!("constant:{}", self.g_per_kwh)
    }

    fn fetch(&self, now: i64) -> Fetch<'_> {
        let provenance = Provenance {
            provider: "constant".into(),
            zone: String::new(),
            signal: SignalKind::Average,
            generated_at: now,
        };
        let f =
            Forecast::new(provenance, 3600, vec![Point { at: now - now.rem_euclid(3600), g_per_kwh: self.g_per_kwh }]);
        Box::pin(std::future::ready(f))
    }

    fn refresh(&self) -> Duration {
        Duration::from_secs(3600)
    }
}

/// A carbon CSV (any format `greenfill data inspect` reads), replayed by
/// position in its own span: a file of last year is this year's forecast.
#[derive(Debug, Clone)]
pub struct File {
    pub path: std::path::PathBuf,
    series: greenfill_core::Series,
    /// How far ahead a forecast reaches, seconds.
    horizon_s: i64,
}

impl File {
    pub fn load(path: &std::path::Path) -> Result<File, SourceError> {
        let trace = greenfill_core::data::load_carbon(path, &greenfill_core::data::CarbonOptions::default())
            .map_err(|e| SourceError::Local { provider: "file".into(), detail: e.to_string() })?;
        Ok(File { path: path.to_owned(), series: trace.series, horizon_s: 2 * 86_400 })
    }

    /// Forecasts that reach `horizon_s` ahead instead of two days.
    pub fn reaching(self, horizon_s: i64) -> File {
        File { horizon_s, ..self }
    }

    /// `horizon_s` (two days unless set) from the hour before `now`, at the file's step.
    fn forecast(&self, now: i64) -> Result<Forecast, SourceError> {
        let s = &self.series;
        let n = i64::try_from(s.values.len()).unwrap_or(1).max(1);
        let span = s.step * n;
        let from = now - now.rem_euclid(s.step.max(1)) - 3600;
        let points = (0..(self.horizon_s + 3600) / s.step.max(1))
            .map(|k| {
                let at = from + k * s.step;
                let i = usize::try_from((at - s.start).rem_euclid(span.max(1)) / s.step.max(1)).unwrap_or(0);
                Point { at, g_per_kwh: s.values.get(i).copied().unwrap_or(f64::NAN) }
            })
            .collect();
        let provenance = Provenance {
            provider: "file".into(),
            zone: self.path.display().to_string(),
            signal: SignalKind::Average,
            generated_at: now,
        };
        Forecast::new(provenance, s.step, points)
    }
}

impl Source for File {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn fetch(&self, now: i64) -> Fetch<'_> {
        Box::pin(std::future::ready(self.forecast(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast(points: &[(i64, f64)]) -> Forecast {
        let provenance =
            Provenance { provider: "t".into(), zone: "z".into(), signal: SignalKind::Average, generated_at: 0 };
        Forecast::new(provenance, 1800, points.iter().map(|&(at, g_per_kwh)| Point { at, g_per_kwh }).collect())
            .unwrap()
    }

    #[test]
    fn a_forecast_holds_its_ends_and_bridges_a_gap_linearly() {
        let f = forecast(&[(0, 100.0), (1800, 200.0), (7200, 500.0), (3600, f64::NAN)]);
        assert_eq!(f.points.len(), 3, "NaN dropped");
        assert_eq!(f.gaps(), 2);
        assert_eq!(f.at(-10), 100.0);
        assert_eq!(f.at(1799), 100.0);
        assert_eq!(f.at(1800), 200.0);
        // 3600 lies in the gap after 1800's interval: the line from 200 at 1800 to 500 at 7200.
        assert!((f.at(3600) - (200.0 + 300.0 * 1800.0 / 5400.0)).abs() < 1e-9);
        assert_eq!(f.at(100_000), 500.0);
        assert_eq!(f.covers_until(), 9000);
        assert!((f.mean(0, 3600) - 150.0).abs() < 1e-9);
        assert_eq!(f.slot_means(0, 1800, 2), vec![100.0, 200.0]);
    }

    #[test]
    fn nothing_usable_is_an_error_naming_the_provider() {
        let provenance =
            Provenance { provider: "neso".into(), zone: "GB".into(), signal: SignalKind::Average, generated_at: 0 };
        let e = Forecast::new(provenance, 1800, vec![Point { at: 0, g_per_kwh: -1.0 }]).unwrap_err();
        assert_eq!(e.to_string(), "neso: no intensity for zone \"GB\" in the answer");
    }
}
