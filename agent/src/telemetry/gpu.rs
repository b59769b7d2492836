//! GPUs: inventory, telemetry and power limits, behind [`GpuSource`].
//!
//! - [`Nvml`] is the real thing (nvml-wrapper, the `nvml` cargo feature). The
//!   library is loaded at run time: a machine without `libnvidia-ml.so` (or a
//!   build without the feature) reports GPUs as absent, with the reason, never
//!   an error.
//! - [`FakeGpus`] holds what NVML's structs hold, in a JSON file that it reads at
//!   every call and writes on every power-limit change, so a test (or a test's
//!   agent process) changes a GPU's load and reads back the limits set.
//!
//! Units are NVML's converted once here: watts (NVML: mW), joules (mJ), bytes.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One process using a GPU, as NVML lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuProcess {
    pub pid: u32,
    /// GPU memory it holds, bytes (NVML may not know: 0).
    #[serde(default)]
    pub memory_bytes: u64,
    /// Its share of the GPU's SMs over NVML's last sample, %, where NVML has it.
    #[serde(default)]
    pub sm_util_pct: Option<u32>,
}

/// One GPU: identity, load, power and who uses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuDevice {
    pub index: u32,
    pub uuid: String,
    /// NVML's name, e.g. "NVIDIA A100-SXM4-40GB".
    pub model: String,
    /// `/dev/nvidia<minor>`; the device cgroup rules name it.
    pub minor: u32,
    pub memory_total_bytes: u64,
    pub memory_used_bytes: u64,
    /// GPU utilisation, % of the last sample period.
    pub utilisation_pct: u32,
    pub power_w: f64,
    /// The power limit in force, and the range the card accepts.
    pub power_limit_w: f64,
    pub power_limit_min_w: f64,
    pub power_limit_max_w: f64,
    /// Energy since the driver loaded (Volta and later), joules.
    #[serde(default)]
    pub energy_j: Option<f64>,
    #[serde(default)]
    pub processes: Vec<GpuProcess>,
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("GPU {index}: power limit {watts} W is outside the card's range {min}–{max} W")]
    LimitOutOfRange { index: u32, watts: f64, min: f64, max: f64 },
    #[error("GPU {index}: no such GPU")]
    NoSuchGpu { index: u32 },
    #[error("GPU {index}: {op}: {message}")]
    Driver { index: u32, op: &'static str, message: String },
    #[error("fake GPUs {path}: {message}")]
    Fake { path: String, message: String },
}

/// Where GPU facts come from and where power limits go.
pub trait GpuSource: Send + Sync + std::fmt::Debug {
    /// Every GPU of the node. A GPU that cannot be read is left out, with a log line.
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError>;
    /// Set GPU `index`'s power limit (needs root on real cards).
    fn set_power_limit(&self, index: u32, watts: f64) -> Result<(), GpuError>;
}

/// Refuse a limit outside a card's range, as NVML does (`InvalidArg`), naming it.
pub fn check_limit(d: &GpuDevice, watts: f64) -> Result<(), GpuError> {
    if !(d.power_limit_min_w..=d.power_limit_max_w).contains(&watts) {
        return Err(GpuError::LimitOutOfRange {
            index: d.index,
            watts,
            min: d.power_limit_min_w,
            max: d.power_limit_max_w,
        });
    }
    Ok(())
}

/// The node's GPUs, once per agent: a source, or why there is none.
#[derive(Debug, Clone)]
pub struct Gpus {
    source: Option<Arc<dyn GpuSource>>,
    /// Why there are no GPU readings (empty when a source is loaded).
    pub absent_reason: String,
}

/// One GPU's power draw.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPower {
    pub index: u32,
    pub watts: f64,
}

impl Gpus {
    /// NVML from the default library name, or the fake named by
    /// `GREENFILL_FAKE_GPUS` (a JSON file of [`GpuDevice`]s; tests only).
    pub fn open() -> Gpus {
        match std::env::var_os("GREENFILL_FAKE_GPUS") {
            Some(p) => Gpus::with_source(Arc::new(FakeGpus::new(PathBuf::from(p)))),
            None => Gpus::open_from(None),
        }
    }

    pub fn with_source(source: Arc<dyn GpuSource>) -> Gpus {
        Gpus { source: Some(source), absent_reason: String::new() }
    }

    pub fn absent(reason: impl Into<String>) -> Gpus {
        Gpus { source: None, absent_reason: reason.into() }
    }

    /// Load NVML from `lib` (a path or a library name), or the default name.
    #[cfg(feature = "nvml")]
    pub fn open_from(lib: Option<&std::ffi::OsStr>) -> Gpus {
        match Nvml::open(lib) {
            Ok(n) => Gpus::with_source(Arc::new(n)),
            Err(e) => Gpus::absent(format!("NVML not available: {e}")),
        }
    }

    #[cfg(not(feature = "nvml"))]
    pub fn open_from(_lib: Option<&std::ffi::OsStr>) -> Gpus {
        Gpus::absent("built without the `nvml` feature")
    }

    pub fn source(&self) -> Option<&Arc<dyn GpuSource>> {
        self.source.as_ref()
    }

    /// Every GPU, or `None` when GPUs are absent or cannot be listed.
    pub fn devices(&self) -> Option<Vec<GpuDevice>> {
        match self.source.as_ref()?.devices() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list GPUs");
                None
            }
        }
    }

    /// Power of every GPU, or `None` when GPUs are absent.
    pub fn read(&self) -> Option<Vec<GpuPower>> {
        Some(self.devices()?.iter().map(|d| GpuPower { index: d.index, watts: d.power_w }).collect())
    }
}

/// The fake: a JSON array of [`GpuDevice`] in a file.
#[derive(Debug)]
pub struct FakeGpus {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl FakeGpus {
    pub fn new(path: PathBuf) -> FakeGpus {
        FakeGpus { path, lock: std::sync::Mutex::new(()) }
    }

    /// Write `devices` as the fake's state.
    pub fn write(path: &Path, devices: &[GpuDevice]) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(devices).map_err(std::io::Error::other)?)?;
        std::fs::rename(tmp, path)
    }

    fn err(&self, message: impl ToString) -> GpuError {
        GpuError::Fake { path: self.path.display().to_string(), message: message.to_string() }
    }

    fn load(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let b = std::fs::read(&self.path).map_err(|e| self.err(e))?;
        serde_json::from_slice(&b).map_err(|e| self.err(e))
    }
}

impl GpuSource for FakeGpus {
    fn devices(&self) -> Result<Vec<GpuDevice>, GpuError> {
        let _l = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.load()
    }

    fn set_power_limit(&self, index: u32, watts: f64) -> Result<(), GpuError> {
        let _l = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut all = self.load()?;
        let d = all.iter_mut().find(|d| d.index == index).ok_or(GpuError::NoSuchGpu { index })?;
        check_limit(d, watts)?;
        d.power_limit_w = watts;
        FakeGpus::write(&self.path, &all).map_err(|e| self.err(e))
    }
}

#[cfg(feature = "nvml")]
pub use real::Nvml;

#[cfg(feature = "nvml")]
mod real {
    use super::{GpuDevice, GpuError, GpuProcess, GpuSource};
    use nvml_wrapper::enums::device::UsedGpuMemory;

    /// NVML, loaded at run time.
    #[derive(Debug)]
    pub struct Nvml(nvml_wrapper::Nvml);

    fn driver(index: u32, op: &'static str) -> impl Fn(nvml_wrapper::error::NvmlError) -> GpuError {
        move |e| GpuError::Driver { index, op, message: e.to_string() }
    }

    impl Nvml {
        pub fn open(lib: Option<&std::ffi::OsStr>) -> Result<Nvml, nvml_wrapper::error::NvmlError> {
            let mut b = nvml_wrapper::Nvml::builder();
            if let Some(l) = lib {
                b.lib_path(l);
            }
            b.init().map(Nvml)
        }

        fn device(&self, i: u32) -> Result<GpuDevice, GpuError> {
            let d = self.0.device_by_index(i).map_err(driver(i, "open"))?;
            let mem = d.memory_info().map_err(driver(i, "memory"))?;
            let limits = d.power_management_limit_constraints().map_err(driver(i, "power limit range"))?;
            let mut processes: Vec<GpuProcess> = d
                .running_compute_processes()
                .unwrap_or_default()
                .into_iter()
                .map(|p| GpuProcess {
                    pid: p.pid,
                    memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => b,
                        UsedGpuMemory::Unavailable => 0,
                    },
                    sm_util_pct: None,
                })
                .collect();
            // Per-process SM shares over NVML's recent samples, where the card has them.
            if let Ok(samples) = d.process_utilization_stats(None) {
                for s in samples {
                    if let Some(p) = processes.iter_mut().find(|p| p.pid == s.pid) {
                        p.sm_util_pct = Some(s.sm_util);
                    }
                }
            }
            let mw = |v: u32| f64::from(v) / 1000.0;
            #[allow(clippy::cast_precision_loss, reason = "mJ counters fit an f64's mantissa for centuries")]
            Ok(GpuDevice {
                index: i,
                uuid: d.uuid().map_err(driver(i, "uuid"))?,
                model: d.name().map_err(driver(i, "name"))?,
                minor: d.minor_number().map_err(driver(i, "minor number"))?,
                memory_total_bytes: mem.total,
                memory_used_bytes: mem.used,
                utilisation_pct: d.utilization_rates().map(|u| u.gpu).unwrap_or(0),
                power_w: d.power_usage().map(mw).map_err(driver(i, "power"))?,
                power_limit_w: d.power_management_limit().map(mw).map_err(driver(i, "power limit"))?,
                power_limit_min_w: mw(limits.min_limit),
                power_limit_max_w: mw(limits.max_limit),
                energy_j: d.total_energy_consumption().ok().map(|mj| mj as f64 / 1000.0),
                processes,
            })
        }
    }

    impl GpuSource for Nvml {
        fn devices(&self) -> Result<Vec<GpuDevice>, GpuError> {
            let count = self.0.device_count().map_err(driver(0, "count"))?;
            Ok((0..count)
                .filter_map(|i| {
                    self.device(i).map_err(|e| tracing::warn!(error = %e, "a GPU left out of this reading")).ok()
                })
                .collect())
        }

        fn set_power_limit(&self, index: u32, watts: f64) -> Result<(), GpuError> {
            let d = self.device(index)?;
            super::check_limit(&d, watts)?;
            let mut dev = self.0.device_by_index(index).map_err(driver(index, "open"))?;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a checked limit in W")]
            dev.set_power_management_limit((watts * 1000.0).round() as u32).map_err(driver(index, "set power limit"))
        }
    }
}
