//! The cluster vocabulary the planner and the simulator share: pools of like nodes
//! and how much power a node draws.

use serde::{Deserialize, Serialize};

/// Power a node draws as a function of its CPU utilisation `u ∈ [0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PowerModel {
    /// `P(u) = idle + (max − idle) · u`.
    Linear { idle_w: f64, max_w: f64 },
    /// A SPECpower-style table: watts at 0 %, 10 %, …, 100 % load (11 points),
    /// linearly interpolated; loads past 100 % read the last point.
    Table { watts: Vec<f64> },
}

/// Why a power model is not usable.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PowerModelError {
    #[error("idle_w = {idle} and max_w = {max}: need 0 <= idle_w <= max_w")]
    Linear { idle: f64, max: f64 },
    #[error("watts has {0} points: a table needs 11 (0 %, 10 %, …, 100 %)")]
    TableLength(usize),
    #[error("watts[{index}] = {value}: table points must be finite, >= 0 and not decreasing")]
    TablePoint { index: usize, value: f64 },
}

impl PowerModel {
    pub fn validate(&self) -> Result<(), PowerModelError> {
        match self {
            PowerModel::Linear { idle_w, max_w } => {
                if !(idle_w.is_finite() && max_w.is_finite() && 0.0 <= *idle_w && idle_w <= max_w) {
                    return Err(PowerModelError::Linear { idle: *idle_w, max: *max_w });
                }
            }
            PowerModel::Table { watts } => {
                if watts.len() != 11 {
                    return Err(PowerModelError::TableLength(watts.len()));
                }
                for (i, w) in watts.iter().enumerate() {
                    if !w.is_finite() || *w < 0.0 || (i > 0 && *w < watts[i - 1]) {
                        return Err(PowerModelError::TablePoint { index: i, value: *w });
                    }
                }
            }
        }
        Ok(())
    }

    /// Watts at utilisation `u` (clamped to `[0, 1]`).
    pub fn watts(&self, u: f64) -> f64 {
        let u = if u.is_nan() { 0.0 } else { u.clamp(0.0, 1.0) };
        match self {
            PowerModel::Linear { idle_w, max_w } => idle_w + (max_w - idle_w) * u,
            PowerModel::Table { watts } => {
                let x = u * 10.0;
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "x is in [0, 10]")]
                let i = (x.floor() as usize).min(9);
                let f = x - f64::from(u8::try_from(i).unwrap_or(9));
                watts[i] + (watts[i + 1] - watts[i]) * f
            }
        }
    }

    pub fn idle_w(&self) -> f64 {
        self.watts(0.0)
    }

    pub fn max_w(&self) -> f64 {
        self.watts(1.0)
    }
}

/// A set of like nodes. Nodes of an `always_on` pool run online services and are
/// never powered off; the others (dedicated batch or spare capacity) may sleep when
/// the plan does not need them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub name: String,
    pub nodes: u32,
    pub cores: f64,
    pub memory_gib: f64,
    pub power: PowerModel,
    #[serde(default = "default_pue")]
    pub pue: f64,
    #[serde(default)]
    pub always_on: bool,
}

fn default_pue() -> f64 {
    1.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_and_table_models() {
        let l = PowerModel::Linear { idle_w: 100.0, max_w: 300.0 };
        assert_eq!(l.watts(0.5), 200.0);
        assert_eq!(l.watts(2.0), 300.0);
        assert_eq!(l.watts(f64::NAN), 100.0);
        let t = PowerModel::Table { watts: (0..=10).map(|i| 50.0 + 10.0 * f64::from(i)).collect() };
        assert!(t.validate().is_ok());
        assert!((t.watts(0.25) - 75.0).abs() < 1e-9);
        assert_eq!(t.watts(1.0), 150.0);
        assert!(PowerModel::Table { watts: vec![1.0; 3] }.validate().is_err());
        assert!(PowerModel::Linear { idle_w: 10.0, max_w: 5.0 }.validate().is_err());
    }
}
