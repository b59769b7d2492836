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
    /// Embodied (manufacturing) carbon amortised per powered node-hour, grams
    /// CO2e (default 0: operational carbon only).
    #[serde(default)]
    pub embodied_g_per_hour: f64,
    /// Energy one wake of a sleeping node costs on top of its idle power while it
    /// boots, Wh (default 0; a BMC's power log gives it). The planner weighs it
    /// when it wakes a node and counts it in a plan's energy.
    #[serde(default)]
    pub wake_wh: f64,
    /// Its grid zone (the simulator's `[carbon.zones]`); `None` = the one
    /// carbon series of the scenario or cluster.
    #[serde(default)]
    pub zone: Option<String>,
    /// GPUs per node (default 0). A job asking for GPUs runs only on a node
    /// with that many free in every slot it runs.
    #[serde(default)]
    pub gpus: u32,
    /// The GPUs' model (NVML's name, e.g. "NVIDIA A100-SXM4-40GB"): a job asking
    /// for a model runs only in a pool whose model contains it. Empty = unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub gpu_model: String,
    /// Watts per GPU when idle and when busy (default 0: GPUs left out of the
    /// power model). A powered node draws `gpus × gpu_idle_w` more, and each GPU
    /// a job holds `gpu_busy_w − gpu_idle_w` more.
    #[serde(default)]
    pub gpu_idle_w: f64,
    #[serde(default)]
    pub gpu_busy_w: f64,
}

impl Pool {
    /// A powered node's idle watts, GPUs included.
    pub fn node_idle_w(&self) -> f64 {
        self.power.idle_w() + f64::from(self.gpus) * self.gpu_idle_w
    }

    /// What one busy GPU draws above its idle, watts.
    pub fn gpu_dynamic_w(&self) -> f64 {
        (self.gpu_busy_w - self.gpu_idle_w).max(0.0)
    }

    /// Whether a job asking for GPU model `model` (`None` = any) may run here.
    pub fn has_gpu_model(&self, model: Option<&str>) -> bool {
        model.is_none_or(|m| self.gpu_model.contains(m))
    }
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

/// A cluster file (TOML): pools and the margins batch must leave free.
///
/// ```toml
/// cpu_margin = 0.1
/// mem_margin = 0.1
///
/// [[pools]]
/// name = "web"
/// nodes = 40
/// cores = 64
/// memory_gib = 256
/// pue = 1.2
/// always_on = true
/// power = { kind = "linear", idle_w = 150, max_w = 400 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default = "default_margin")]
    pub cpu_margin: f64,
    #[serde(default = "default_margin")]
    pub mem_margin: f64,
    pub pools: Vec<Pool>,
}

fn default_margin() -> f64 {
    0.1
}

/// A cluster file that could not be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: pools[{index}] (`{name}`): {message}")]
    Pool { path: String, index: usize, name: String, message: String },
}

impl ClusterConfig {
    pub fn load(path: &std::path::Path) -> Result<ClusterConfig, ClusterError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io { path: name.clone(), source })?;
        ClusterConfig::parse(&name, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<ClusterConfig, ClusterError> {
        let c: ClusterConfig =
            toml::from_str(text).map_err(|e| ClusterError::Parse { path: path.to_owned(), message: e.to_string() })?;
        c.validate(path)?;
        Ok(c)
    }

    /// Check margins and pools; errors name `path` and the key.
    pub fn validate(&self, path: &str) -> Result<(), ClusterError> {
        let c = self;
        let bad = |message: String| ClusterError::Parse { path: path.to_owned(), message };
        for (key, v) in [("cpu_margin", c.cpu_margin), ("mem_margin", c.mem_margin)] {
            if !(0.0..1.0).contains(&v) {
                return Err(bad(format!("{key} = {v}: must be in [0, 1)")));
            }
        }
        if c.pools.is_empty() {
            return Err(bad("no [[pools]]: a cluster needs at least one pool".into()));
        }
        for (index, p) in c.pools.iter().enumerate() {
            let err =
                |message: String| ClusterError::Pool { path: path.to_owned(), index, name: p.name.clone(), message };
            if p.name.is_empty() || c.pools[..index].iter().any(|q| q.name == p.name) {
                return Err(err("name must be non-empty and unique".into()));
            }
            for (key, v) in [("cores", p.cores), ("memory_gib", p.memory_gib)] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(err(format!("{key} = {v}: must be >= 0")));
                }
            }
            if !(p.pue.is_finite() && p.pue >= 1.0) {
                return Err(err(format!("pue = {}: must be >= 1", p.pue)));
            }
            if !(p.embodied_g_per_hour.is_finite() && p.embodied_g_per_hour >= 0.0) {
                return Err(err(format!("embodied_g_per_hour = {}: must be >= 0", p.embodied_g_per_hour)));
            }
            if !(p.wake_wh.is_finite() && p.wake_wh >= 0.0) {
                return Err(err(format!("wake_wh = {}: must be >= 0", p.wake_wh)));
            }
            p.power.validate().map_err(|e| err(format!("power: {e}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = ClusterConfig::parse(
            "c.toml",
            "cpu_margin = 0.2\n[[pools]]\nname = \"web\"\nnodes = 40\ncores = 64\nmemory_gib = 256\npue = 1.2\nalways_on = true\npower = { kind = \"linear\", idle_w = 150, max_w = 400 }\n",
        )
        .unwrap();
        assert_eq!(c.pools[0].nodes, 40);
        assert_eq!(c.mem_margin, 0.1);
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            (
                "[[pools]]\nname='a'\nnodes=1\ncores=1\nmemory_gib=1\nwatts=3\npower={kind='linear',idle_w=1,max_w=2}",
                "unknown field `watts`",
            ),
            (
                "[[pools]]\nname='a'\nnodes=1\ncores=1\nmemory_gib=1\npower={kind='cubic'}",
                "unknown variant `cubic`, expected `linear` or `table`",
            ),
            (
                "[[pools]]\nname='a'\nnodes=1\ncores=1\nmemory_gib=1\npue=0.9\npower={kind='linear',idle_w=1,max_w=2}",
                "pools[0] (`a`): pue = 0.9",
            ),
            (
                "[[pools]]\nname='a'\nnodes=1\ncores=1\nmemory_gib=1\npower={kind='linear',idle_w=5,max_w=2}",
                "power: idle_w = 5 and max_w = 2",
            ),
            (
                "cpu_margin = 1.5\n[[pools]]\nname='a'\nnodes=1\ncores=1\nmemory_gib=1\npower={kind='linear',idle_w=1,max_w=2}",
                "cpu_margin = 1.5",
            ),
            (
                "[[pools]]\nname='a'\nnodes=1\ncores=1\nmemory_gib=1\nembodied_g_per_hour=-3\npower={kind='linear',idle_w=1,max_w=2}",
                "pools[0] (`a`): embodied_g_per_hour = -3: must be >= 0",
            ),
            ("pools = []", "no [[pools]]"),
            (
                "[[pools]]\nname='a'\ncores=1\nmemory_gib=1\npower={kind='linear',idle_w=1,max_w=2}",
                "missing field `nodes`",
            ),
        ];
        for (text, want) in cases {
            let e = ClusterConfig::parse("c.toml", text).unwrap_err().to_string();
            assert!(e.contains(want), "got `{e}`, want `{want}`");
        }
    }
}
