//! GPU power through NVML (nvml-wrapper), behind the `nvml` cargo feature. The
//! library is loaded at run time: a machine without `libnvidia-ml.so` (or a build
//! without the feature) reports GPUs as absent, with the reason, never an error.

/// Where GPU readings come from, once per agent.
#[derive(Debug)]
pub struct Gpus {
    #[cfg(feature = "nvml")]
    nvml: Option<nvml_wrapper::Nvml>,
    /// Why there are no GPU readings (empty when NVML is loaded).
    pub absent_reason: String,
}

/// One GPU's power draw.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuPower {
    pub index: u32,
    pub watts: f64,
}

impl Gpus {
    /// Load NVML from the default library name.
    pub fn open() -> Gpus {
        Gpus::open_from(None)
    }

    /// Load NVML from `lib` (a path or a library name), or the default name.
    #[cfg(feature = "nvml")]
    pub fn open_from(lib: Option<&std::ffi::OsStr>) -> Gpus {
        let mut b = nvml_wrapper::Nvml::builder();
        if let Some(l) = lib {
            b.lib_path(l);
        }
        match b.init() {
            Ok(n) => Gpus { nvml: Some(n), absent_reason: String::new() },
            Err(e) => Gpus { nvml: None, absent_reason: format!("NVML not available: {e}") },
        }
    }

    #[cfg(not(feature = "nvml"))]
    pub fn open_from(_lib: Option<&std::ffi::OsStr>) -> Gpus {
        Gpus { absent_reason: "built without the `nvml` feature".into() }
    }

    /// Power of every GPU, or `None` when GPUs are absent. A GPU whose reading
    /// fails is left out (the others are still reported).
    pub fn read(&self) -> Option<Vec<GpuPower>> {
        #[cfg(feature = "nvml")]
        {
            let n = self.nvml.as_ref()?;
            let count = n.device_count().ok()?;
            Some(
                (0..count)
                    .filter_map(|i| {
                        let mw = n.device_by_index(i).ok()?.power_usage().ok()?;
                        Some(GpuPower { index: i, watts: f64::from(mw) / 1000.0 })
                    })
                    .collect(),
            )
        }
        #[cfg(not(feature = "nvml"))]
        None
    }
}
