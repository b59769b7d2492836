//! Each finished job's energy and carbon, and the counterfactual: the same
//! energy had it started at submission, so a saving is honest and may be
//! negative. Summed per pool and user as counters (never a series per job).
//!
//! Energy is the job's CPU seconds (from its cgroup) × the node's dynamic
//! watts per core (`[power]`: `(max_w − idle_w) / cores`) × PUE: the work the
//! job added, not a share of the node's idle power. A GPU job adds its GPUs'
//! energy: NVML's counter over its run where the node has one (its GPUs were
//! its alone), else GPUs × `gpu_busy_w` × run time, × PUE. The intensity is the
//! job's zone's, averaged over the hours it ran (what was in force then, kept
//! by the zone); the signal the plan decided on is named beside it. SCI
//! (ISO/IEC 21031) = (E × I + M) per job, M = the pool's embodied carbon per
//! node-hour × run hours × the job's share of the node's cores.

use super::State;
use greenfill_proto::v1 as pb;
use std::collections::BTreeMap;

/// How the energy is found (the ledger says which).
pub const ENERGY_SOURCE: &str = "power-model";

/// The ledger of `job`, which ended at `end` on a node of `pool` with `cores`.
pub fn make(st: &State, job: &pb::Job, pool: &str, cores: f64, status: &pb::JobStatus, end: i64) -> pb::JobLedger {
    let power = &st.config.power;
    let cores = cores.max(1e-9);
    let cpu_seconds = status.cpu_seconds.max(0.0);
    let start = job.started_at.as_ref().map_or(end, |t| t.seconds).min(end);
    let gpu = gpu_energy(st, job, pool, status, end - start);
    let energy_kwh = cpu_seconds * (power.max_w - power.idle_w).max(0.0) / cores * power.pue / 3.6e6 + gpu.kwh;
    let submitted = job.submitted_at.as_ref().map_or(start, |t| t.seconds).min(start);
    let run_s = end - start;
    let zone = st.carbon.zone_of(pool);
    let intensity = zone.mean(start, end.max(start + 1));
    let counterfactual = zone.mean(submitted, (submitted + run_s).max(submitted + 1));
    let job_cores = job.spec.as_ref().map_or(0.0, |s| s.cpu_cores);
    let embodied_per_h = st.config.pools.iter().find(|p| p.name == pool).map_or(0.0, |p| p.embodied_g_per_hour);
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let run_h = run_s as f64 / 3600.0;
    let embodied_g = embodied_per_h * run_h * (job_cores / cores).min(1.0);
    let signal = zone.signal();
    let carbon_g = energy_kwh * intensity;
    let counterfactual_g = energy_kwh * counterfactual;
    // The bill at the day-ahead price while it ran, and from its submission.
    let price = st.price.as_ref().map(|m| m.of_zone(&zone.name)).and_then(|p| {
        let (now, currency) = p.mean(start, end.max(start + 1))?;
        let (then, _) = p.mean(submitted, (submitted + run_s).max(submitted + 1))?;
        Some((now, then, currency))
    });
    let (price_per_mwh, counterfactual_price, currency) = price.unwrap_or_default();
    let (cost, counterfactual_cost) = (energy_kwh * price_per_mwh / 1000.0, energy_kwh * counterfactual_price / 1000.0);
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    pb::JobLedger {
        energy_kwh,
        energy_source: ENERGY_SOURCE.into(),
        intensity_g_per_kwh: intensity,
        carbon_g,
        counterfactual_intensity_g_per_kwh: counterfactual,
        counterfactual_carbon_g: counterfactual_g,
        saved_g: counterfactual_g - carbon_g,
        embodied_g,
        sci_g: carbon_g + embodied_g,
        zone: zone.name.clone(),
        signal_source: signal.source,
        signal_kind: signal.forecast.provenance.signal.as_str().into(),
        run_seconds: run_s as f64,
        cpu_seconds,
        pool: pool.to_owned(),
        price_per_mwh,
        cost,
        counterfactual_cost,
        saved_cost: counterfactual_cost - cost,
        currency,
        gpu_energy_kwh: gpu.kwh,
        gpu_energy_source: gpu.source.into(),
    }
}

/// A job's GPU energy at the wall and where it came from.
struct GpuEnergy {
    kwh: f64,
    source: &'static str,
}

/// NVML's counter delta the agent reported, else GPUs × busy watts × run time; × PUE.
fn gpu_energy(st: &State, job: &pb::Job, pool: &str, status: &pb::JobStatus, run_s: i64) -> GpuEnergy {
    let gpus = job.spec.as_ref().map_or(0, |s| s.gpus);
    if gpus == 0 {
        return GpuEnergy { kwh: 0.0, source: "" };
    }
    let pue = st.config.power.pue;
    if let Some(j) = status.gpu_energy_j {
        return GpuEnergy { kwh: j * pue / 3.6e6, source: "nvml" };
    }
    let decl = st.config.pools.iter().find(|p| p.name == pool);
    let busy_w = decl.and_then(|p| p.gpu_busy_w).unwrap_or(st.config.power.gpu_busy_w);
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let kwh = f64::from(gpus) * busy_w * run_s.max(0) as f64 * pue / 3.6e6;
    GpuEnergy { kwh, source: "power-model" }
}

/// Every finished job's ledger that ended at or after `since`, summed per
/// (pool, user, zone, UTC day), in that order. From the jobs themselves (each
/// ledger is stored with its job), so a restart loses nothing.
pub fn totals(inner: &super::Inner, since: i64) -> Vec<pb::LedgerRow> {
    let mut rows: BTreeMap<(String, String, String, String), pb::LedgerRow> = BTreeMap::new();
    for e in inner.jobs.values() {
        let Some(l) = &e.job.ledger else { continue };
        let end = e.job.finished_at.as_ref().or(e.job.updated_at.as_ref()).map_or(0, |t| t.seconds);
        if end < since {
            continue;
        }
        // Ledgers from before they named their pool: the node's.
        let pool = if l.pool.is_empty() {
            inner.nodes.get(&e.job.node).map_or_else(String::new, |n| n.register.pool.clone())
        } else {
            l.pool.clone()
        };
        let user = if e.job.owner.is_empty() { "admin".to_owned() } else { e.job.owner.clone() };
        let day =
            chrono::DateTime::from_timestamp(end, 0).map_or_else(String::new, |d| d.format("%Y-%m-%d").to_string());
        let key = (pool, user, l.zone.clone(), day);
        let row = rows.entry(key.clone()).or_insert_with(|| pb::LedgerRow {
            pool: key.0,
            user: key.1,
            zone: key.2,
            day: key.3,
            ..pb::LedgerRow::default()
        });
        row.add(&pb::LedgerRow::of_job(l));
    }
    rows.into_values().collect()
}

/// The ledgers summed per (pool, user), since this process started.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    joules: f64,
    grams: f64,
    counterfactual_grams: f64,
    embodied_grams: f64,
    cost: f64,
    counterfactual_cost: f64,
    jobs: f64,
}

static SUMS: std::sync::Mutex<BTreeMap<(String, String), Sums>> = std::sync::Mutex::new(BTreeMap::new());

/// Add a ledger to the counters of its pool and user (the job's owner;
/// `admin` for a shared token): a handful of series, never one per job.
pub fn count(job: &pb::Job, pool: &str, l: &pb::JobLedger) {
    let user = if job.owner.is_empty() { "admin".to_owned() } else { job.owner.clone() };
    let mut sums = SUMS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let s = sums.entry((pool.to_owned(), user)).or_default();
    s.joules += l.energy_kwh * 3.6e6;
    s.grams += l.carbon_g;
    s.counterfactual_grams += l.counterfactual_carbon_g;
    s.embodied_grams += l.embodied_g;
    s.cost += l.cost;
    s.counterfactual_cost += l.counterfactual_cost;
    s.jobs += 1.0;
}

/// One of the ledger's counters: its name, help and value of a sum.
struct Counter {
    name: &'static str,
    help: &'static str,
    get: fn(&Sums) -> f64,
}

/// The ledger's counters (a test checks the dashboard's queries against these names).
const COUNTERS: [Counter; 7] = [
    Counter {
        name: "greenfill_job_energy_joules_total",
        help: "Energy of finished jobs (CPU time × the power model × PUE).",
        get: |s| s.joules,
    },
    Counter {
        name: "greenfill_job_carbon_grams_total",
        help: "Carbon of finished jobs at their zone's intensity while they ran, g CO2e.",
        get: |s| s.grams,
    },
    Counter {
        name: "greenfill_job_counterfactual_carbon_grams_total",
        help: "Carbon the same jobs would have emitted had each started at submission, g CO2e.",
        get: |s| s.counterfactual_grams,
    },
    Counter {
        name: "greenfill_job_embodied_carbon_grams_total",
        help: "Embodied carbon of finished jobs' share of their nodes, g CO2e.",
        get: |s| s.embodied_grams,
    },
    Counter {
        name: "greenfill_job_energy_cost_total",
        help: "Energy bill of finished jobs at the day-ahead price while they ran, in [price]'s currency (0 without).",
        get: |s| s.cost,
    },
    Counter {
        name: "greenfill_job_counterfactual_energy_cost_total",
        help: "Energy bill the same jobs would have had started at submission, in [price]'s currency (0 without).",
        get: |s| s.counterfactual_cost,
    },
    Counter { name: "greenfill_jobs_accounted_total", help: "Finished jobs with a carbon ledger.", get: |s| s.jobs },
];

/// The names of the ledger's counters.
pub fn counter_names() -> impl Iterator<Item = &'static str> {
    COUNTERS.iter().map(|c| c.name)
}

/// The counters' exposition text (the facade's counters are integers; these
/// are grams and joules with fractions).
pub fn render() -> String {
    let sums = SUMS.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    let mut out = String::new();
    for Counter { name, help, get } in &COUNTERS {
        let samples: Vec<_> = sums
            .iter()
            .map(|((pool, user), s)| (vec![("pool", pool.clone()), ("user", user.clone())], get(s)))
            .collect();
        if !samples.is_empty() {
            out.push_str(&greenfill_runtime::metrics::counter_text(name, help, &samples));
        }
    }
    out
}
