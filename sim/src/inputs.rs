//! Everything a run reads, loaded once and shared by every policy: the online
//! utilisation per step, the carbon intensity per step (actual and as forecast),
//! the jobs in steps, and each node's fixed share of its pool's load.

use crate::scenario::{Resolved, ScenarioError};
use greenfill_core::cluster::Pool;
use greenfill_core::data::{CarbonOptions, JobFormat, JobMemory, UsageOptions, load_carbon, load_jobs, load_usage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

#[derive(Debug, Clone)]
pub struct SimJob {
    pub id: String,
    pub arrival: usize,
    /// Steps of running, >= 1.
    pub duration: usize,
    pub cores: f64,
    pub mem_gib: f64,
    /// Step by which it should have finished.
    pub deadline: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Inputs {
    pub start: i64,
    pub step_s: i64,
    /// Steps simulated: arrivals for `length`, then the drain.
    pub steps: usize,
    pub pools: Vec<Pool>,
    pub pool_first: Vec<usize>,
    pub node_pool: Vec<usize>,
    /// Each node's load = pool utilisation × this factor.
    pub node_factor: Vec<f64>,
    /// Online CPU utilisation (share of cores) of always-on pools, per step.
    pub online: Vec<f64>,
    /// `online.history` steps of the trace before the run, then `online`: what
    /// the forecaster may see at step `t` is `online_past[..=history + t]`.
    pub online_past: Vec<f64>,
    pub history: usize,
    pub online_mem_share: f64,
    /// Actual carbon intensity per step, gCO2/kWh.
    pub carbon: Vec<f64>,
    /// What the planner is told: actual × (1 + noise), per step.
    pub carbon_forecast: Vec<f64>,
    /// Sorted by arrival.
    pub jobs: Vec<SimJob>,
}

impl Inputs {
    pub fn nodes(&self) -> usize {
        self.node_pool.len()
    }

    /// Online CPU on `node` at step `t`, cores.
    pub fn online_cpu(&self, node: usize, t: usize) -> f64 {
        let p = &self.pools[self.node_pool[node]];
        if !p.always_on {
            return 0.0;
        }
        (self.online[t] * self.node_factor[node]).clamp(0.0, 1.0) * p.cores
    }

    pub fn online_mem(&self, node: usize) -> f64 {
        let p = &self.pools[self.node_pool[node]];
        if p.always_on { self.online_mem_share * p.memory_gib } else { 0.0 }
    }
}

fn err(r: &Resolved, message: String) -> ScenarioError {
    ScenarioError::Invalid { path: r.path.clone(), message }
}

pub fn load(r: &Resolved) -> Result<Inputs, ScenarioError> {
    let s = &r.scenario;
    let steps = usize::try_from((r.length_s + r.drain_s) / r.step_s).unwrap_or(0);
    if r.length_s < r.step_s {
        return Err(err(r, format!("length = {:?} is shorter than one step", s.length)));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);

    // Online: the trace's utilisation as a share, replayed from its start.
    let data_err = |path: &std::path::Path| {
        let p = path.display().to_string();
        move |source| ScenarioError::Data { path: p.clone(), source }
    };
    let usage = load_usage(&r.online_file, &UsageOptions { step: Some(r.step_s), ..UsageOptions::default() })
        .map_err(data_err(&r.online_file))?;
    let series = match &s.online.series {
        Some(id) => usage.series.iter().find(|x| &x.id == id).ok_or_else(|| {
            err(
                r,
                format!(
                    "online.series = {id:?}: not in the file (found: {})",
                    usage.series.iter().map(|x| x.id.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?,
        None => usage.series.first().ok_or_else(|| err(r, "online.file has no series".into()))?,
    };
    let to_share = match usage.unit.as_str() {
        "percent" => 0.01,
        "fraction" => 1.0,
        other => {
            return Err(err(
                r,
                format!(
                    "online.file: values are in `{other}`, not a utilisation share or percent; use a usage trace of utilisation"
                ),
            ));
        }
    };
    let history = usize::try_from(r.online_history_s / r.step_s).unwrap_or(0);
    let online_past: Vec<f64> = (0..history + steps)
        .map(|t| (series.values[t % series.values.len()] * to_share * s.online.scale).max(0.0))
        .collect();
    let online = online_past[history..].to_vec();

    // Carbon.
    let carbon: Vec<f64> = match (&r.carbon_file, s.carbon.constant) {
        (Some(path), _) => {
            let c = load_carbon(path, &CarbonOptions::default()).map_err(data_err(path))?.series;
            let origin = if (c.start..=c.end()).contains(&r.start) { r.start } else { c.start };
            (0..steps)
                .map(|t| {
                    let at = origin + i64::try_from(t).unwrap_or(0) * r.step_s;
                    // Past the file's end, start again from its beginning.
                    let span = c.end() - c.start + c.step;
                    c.value_at(c.start + (at - c.start).rem_euclid(span))
                })
                .collect()
        }
        (None, Some(k)) => vec![k; steps],
        (None, None) => unreachable!("validated: one of file or constant"),
    };
    let normal = Normal::new(0.0, s.carbon.forecast_error.max(1e-12)).map_err(|e| err(r, e.to_string()))?;
    let carbon_forecast: Vec<f64> = carbon
        .iter()
        .map(|c| if s.carbon.forecast_error > 0.0 { (c * (1.0 + normal.sample(&mut rng))).max(0.0) } else { *c })
        .collect();

    // Nodes.
    let mut pool_first = Vec::new();
    let mut node_pool = Vec::new();
    let mut node_factor = Vec::new();
    for (i, p) in s.cluster.pools.iter().enumerate() {
        pool_first.push(node_pool.len());
        for _ in 0..p.nodes {
            node_pool.push(i);
            node_factor.push(1.0 + s.online.node_spread * rng.random_range(-1.0..=1.0));
        }
    }

    // Jobs.
    let trace = load_jobs(&r.batch_file, JobFormat::Auto).map_err(data_err(&r.batch_file))?;
    let first = trace.jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
    let machine_gib = s.cluster.pools.iter().map(|p| p.memory_gib).fold(0.0, f64::max);
    let step = r.step_s;
    let mut jobs = Vec::new();
    for j in &trace.jobs {
        let offset = j.arrival - first;
        if offset >= r.length_s {
            continue;
        }
        if s.batch.sample < 1.0 && !rng.random_bool(s.batch.sample) {
            continue;
        }
        let cores = j.cpus * s.batch.cpus_scale;
        #[allow(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
        let mem_gib = match j.memory {
            Some(JobMemory::Bytes(b)) => b as f64 / f64::from(1u32 << 30),
            Some(JobMemory::MachineShare(x)) => x * machine_gib,
            None => cores * s.batch.memory_gib_per_core,
        };
        let arrival = usize::try_from(offset.div_euclid(step)).unwrap_or(0);
        let duration = usize::try_from((j.duration + step - 1) / step).unwrap_or(1).max(1);
        let deadline = r.deadline_slack_s.map(|slack| arrival + duration + usize::try_from(slack / step).unwrap_or(0));
        for k in 0..j.instances.max(1) {
            jobs.push(SimJob {
                id: if j.instances > 1 { format!("{}#{k}", j.id) } else { j.id.clone() },
                arrival,
                duration,
                cores,
                mem_gib,
                deadline,
            });
        }
        if s.batch.max_jobs.is_some_and(|m| jobs.len() >= m) {
            jobs.truncate(s.batch.max_jobs.unwrap_or(usize::MAX));
            break;
        }
    }
    jobs.sort_by_key(|j| j.arrival);
    let largest = s.cluster.pools.iter().map(|p| p.cores * (1.0 - s.safety_margin)).fold(0.0, f64::max);
    if let Some(j) = jobs.iter().find(|j| j.cores > largest) {
        return Err(err(
            r,
            format!(
                "batch: job `{}` needs {} cores; the largest node offers {largest:.1} after the safety margin (scale with batch.cpus_scale)",
                j.id, j.cores
            ),
        ));
    }
    Ok(Inputs {
        start: r.start,
        step_s: r.step_s,
        steps,
        pools: s.cluster.pools.clone(),
        pool_first,
        node_pool,
        node_factor,
        online,
        online_past,
        history,
        online_mem_share: s.online.memory_share,
        carbon,
        carbon_forecast,
        jobs,
    })
}
