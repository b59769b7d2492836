//! Power readings and the model used where no sensor exists.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSource {
    Rapl,
    Nvml,
    /// Estimated from utilisation by the configured model.
    Model,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PowerReading {
    pub component: String,
    pub source: PowerSource,
    pub watts: f64,
}

/// `P = cpus × (idle + (max − idle) × u)`. Defaults: Cloud Carbon Footprint's
/// average per-vCPU coefficients, 0.74 W idle and 3.5 W at full load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearPowerModel {
    pub idle_w_per_cpu: f64,
    pub max_w_per_cpu: f64,
}

impl Default for LinearPowerModel {
    fn default() -> Self {
        LinearPowerModel { idle_w_per_cpu: 0.74, max_w_per_cpu: 3.5 }
    }
}

impl LinearPowerModel {
    pub fn reading(&self, cores_used: f64, cpus: usize) -> PowerReading {
        #[allow(clippy::cast_precision_loss, reason = "CPU counts are small")]
        let n = cpus as f64;
        let u = if n > 0.0 { (cores_used / n).clamp(0.0, 1.0) } else { 0.0 };
        PowerReading {
            component: "node".into(),
            source: PowerSource::Model,
            watts: n * (self.idle_w_per_cpu + (self.max_w_per_cpu - self.idle_w_per_cpu) * u),
        }
    }
}
