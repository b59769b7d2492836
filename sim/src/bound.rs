//! The best possible (issue 27): a lower bound on the operational carbon of any
//! schedule that finishes a run's jobs on the scenario's fleet, knowing the
//! future — the actual online use and carbon, not forecasts. It is an LP over
//! hour slots for the whole run. Each relaxation can only lower it:
//!
//! - jobs may run in fractions, pause, and split across machines of a pool (a
//!   pool is one machine of the pool's summed free CPU each step);
//! - capacity is CPU (no memory, no safety margin, no guard): per pool and
//!   hour, the sum over its nodes and steps of `cores − online`; and GPUs: a
//!   job's GPUs per core-hour within the pool's GPU-hours (powered, for a pool
//!   that sleeps), only in pools whose nodes have as many GPUs as it asks;
//! - a GPU job's GPUs cost their busy watts above idle per GPU-hour;
//! - a job's window is the hours from its arrival to the later of its deadline
//!   and the step it finished in the run (a run that was late is not forced to
//!   be on time), its first and last hours whole;
//! - batch power costs the pool's least watts per core of any stretch of its
//!   power curve, at the hour's cleanest intensity;
//! - machines that sleep are powered in fractions, cost idle power only while
//!   powered (no wake energy, no wake latency, no idle wait before a suspend,
//!   no minimum off time).
//!
//! The always-on machines' own draw at their actual online load (the
//! `baseline`) is the same in every schedule and counted exactly, step by step.
//! Jobs the run did not finish are left out: their partial work only added to
//! the run's carbon. The bound holds for a run without overload steps (where
//! online plus batch never exceeded a machine's cores).

use crate::engine::PolicyResult;
use crate::inputs::Inputs;
use good_lp::solvers::highs::highs;
use good_lp::{Expression, ProblemVariables, Solution, SolutionStatus, SolverModel, constraint, variable};
use greenfill_core::cluster::{Pool, PowerModel};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct Bound {
    /// The lower bound on the run's operational carbon.
    pub carbon_kg: f64,
    /// The always-on machines at their online load, no batch: in every schedule.
    pub baseline_kg: f64,
    /// The run's carbon over the bound, minus one, in %.
    pub gap_pct: f64,
    /// The run's batch carbon (above the baseline) over the bound's.
    pub batch_ratio: f64,
    pub jobs: usize,
    pub columns: usize,
    pub solve_ms: f64,
    pub status: String,
}

/// Steps per hour slot, and hours in the run.
struct Hours {
    per: usize,
    count: usize,
}

impl Hours {
    fn of(&self, step: usize) -> usize {
        (step / self.per).min(self.count - 1)
    }

    fn steps(&self, h: usize, total: usize) -> std::ops::Range<usize> {
        h * self.per..((h + 1) * self.per).min(total)
    }
}

/// The bound for `run`'s finished jobs. `Err` names what the solver said.
pub fn lower_bound(inp: &Inputs, run: &PolicyResult) -> Result<Bound, String> {
    let t0 = Instant::now();
    let step_h = inp.step_s as f64 / 3600.0;
    let hours = Hours { per: usize::try_from(3600 / inp.step_s.max(1)).unwrap_or(1).max(1), count: 0 };
    let hours = Hours { count: inp.steps.div_ceil(hours.per).max(1), ..hours };
    let pools = inp.pools.len();
    let baseline_kg = baseline(inp, step_h);
    let Hourly { free, cleanest } = hourly(inp, &hours, step_h);
    // kg per core-hour of batch and per powered node-hour of a sleeping pool.
    let kg = |pool: usize, h: usize, watts: f64| {
        watts * inp.pools[pool].pue / 1000.0 * cleanest[pool * hours.count + h] / 1000.0
    };

    let mut vars = ProblemVariables::new();
    let mut objective = Expression::default();
    let mut used: Vec<Expression> = (0..pools * hours.count).map(|_| Expression::default()).collect();
    let mut gpu_used: Vec<Expression> = (0..pools * hours.count).map(|_| Expression::default()).collect();
    let mut rows: Vec<(Expression, f64)> = Vec::new();
    let mut slot_rows: Vec<(Expression, f64)> = Vec::new();
    let (mut columns, mut jobs) = (0, 0);
    for (job, j) in inp.jobs.iter().enumerate() {
        let Some(done) = run.finished_at[job] else { continue };
        jobs += 1;
        let last = j.deadline.map_or(inp.steps - 1, |d| d.max(done)).min(inp.steps - 1);
        let mut row = Expression::default();
        for h in hours.of(j.arrival)..=hours.of(last) {
            let mut at_h = Expression::default();
            // GPUs per core of this job.
            let gpc = if j.cores > 0.0 { f64::from(j.gpus) / j.cores } else { 0.0 };
            for pool in (0..pools).filter(|&p| j.pool.is_none_or(|q| q == p) && inp.pools[p].gpus >= j.gpus) {
                // Core-hours of this job in this hour on this pool.
                let x = vars.add(variable().min(0.0));
                columns += 1;
                let p = &inp.pools[pool];
                objective.add_mul(kg(pool, h, least_watts_per_core(p) + gpc * p.gpu_dynamic_w()), x);
                row.add_mul(1.0, x);
                at_h.add_mul(1.0, x);
                used[pool * hours.count + h].add_mul(1.0, x);
                if j.gpus > 0 {
                    gpu_used[pool * hours.count + h].add_mul(gpc, x);
                }
            }
            slot_rows.push((at_h, j.cores));
        }
        #[allow(clippy::cast_precision_loss, reason = "step counts are small")]
        rows.push((row, j.cores * j.duration as f64 * step_h));
    }
    let mut capacity: Vec<(Expression, f64)> = Vec::new();
    for pool in 0..pools {
        let p = &inp.pools[pool];
        for h in 0..hours.count {
            let mut u = std::mem::take(&mut used[pool * hours.count + h]);
            let mut g = std::mem::take(&mut gpu_used[pool * hours.count + h]);
            #[allow(clippy::cast_precision_loss, reason = "step counts are small")]
            let node_h = f64::from(p.nodes) * hours.steps(h, inp.steps).len() as f64 * step_h;
            if p.always_on {
                capacity.push((u, free[pool * hours.count + h]));
                if p.gpus > 0 {
                    capacity.push((g, f64::from(p.gpus) * node_h));
                }
                continue;
            }
            // Powered node-hours, at most the pool's nodes for the hour.
            let y = vars.add(variable().min(0.0).max(node_h));
            columns += 1;
            objective.add_mul(kg(pool, h, p.node_idle_w()), y);
            u.add_mul(-p.cores, y);
            capacity.push((u, 0.0));
            if p.gpus > 0 {
                g.add_mul(-f64::from(p.gpus), y);
                capacity.push((g, 0.0));
            }
        }
    }
    let mut model = vars.minimise(objective.clone()).using(highs).set_threads(1);
    for (row, need) in rows {
        model = model.with(constraint!(row == need));
    }
    for (row, most) in slot_rows.into_iter().chain(capacity) {
        model = model.with(constraint!(row <= most));
    }
    let solution = model.solve().map_err(|e| format!("the bound's LP ({columns} columns): {e}"))?;
    let status = match solution.status() {
        SolutionStatus::Optimal => "optimal",
        SolutionStatus::TimeLimit => "time limit (not optimal)",
        SolutionStatus::GapLimit => "gap limit",
    };
    let batch = solution.eval(&objective);
    let carbon_kg = baseline_kg + batch;
    Ok(Bound {
        carbon_kg,
        baseline_kg,
        gap_pct: if carbon_kg > 0.0 { (run.carbon_kg / carbon_kg - 1.0) * 100.0 } else { 0.0 },
        batch_ratio: if batch > 0.0 { (run.carbon_kg - baseline_kg) / batch } else { f64::INFINITY },
        jobs,
        columns,
        solve_ms: t0.elapsed().as_secs_f64() * 1000.0,
        status: status.to_owned(),
    })
}

/// Per pool and hour (index `pool × hours + h`): free core-hours, and the
/// cleanest intensity (g/kWh).
struct Hourly {
    free: Vec<f64>,
    cleanest: Vec<f64>,
}

fn hourly(inp: &Inputs, hours: &Hours, step_h: f64) -> Hourly {
    let cells = inp.pools.len() * hours.count;
    let (mut free, mut cleanest) = (vec![0.0; cells], vec![f64::INFINITY; cells]);
    for pool in 0..inp.pools.len() {
        for h in 0..hours.count {
            for t in hours.steps(h, inp.steps) {
                cleanest[pool * hours.count + h] = cleanest[pool * hours.count + h].min(inp.carbon_at(pool, t));
            }
        }
    }
    for node in 0..inp.nodes() {
        let pool = inp.node_pool[node];
        let cores = inp.pools[pool].cores;
        for h in 0..hours.count {
            let core_h: f64 = hours.steps(h, inp.steps).map(|t| (cores - inp.online_cpu(node, t)).max(0.0)).sum();
            free[pool * hours.count + h] += core_h * step_h;
        }
    }
    Hourly { free, cleanest }
}

/// The always-on machines at their actual online load, no batch, step by step
/// (the simulator's own accounting); machines that sleep are off.
fn baseline(inp: &Inputs, step_h: f64) -> f64 {
    let mut kg = 0.0;
    for node in 0..inp.nodes() {
        let pool = inp.node_pool[node];
        let p = &inp.pools[pool];
        if !p.always_on {
            continue;
        }
        for t in 0..inp.steps {
            let u = if p.cores > 0.0 { inp.online_cpu(node, t) / p.cores } else { 0.0 };
            let w = p.power.watts(u) + f64::from(p.gpus) * p.gpu_idle_w;
            kg += w * p.pue * step_h / 1000.0 * inp.carbon_at(pool, t) / 1000.0;
        }
    }
    kg
}

/// The least watts one more core of batch adds anywhere on the pool's curve.
fn least_watts_per_core(p: &Pool) -> f64 {
    if p.cores <= 0.0 {
        return 0.0;
    }
    let per_u = match &p.power {
        PowerModel::Linear { idle_w, max_w } => max_w - idle_w,
        PowerModel::Table { watts } => {
            let span = (watts.len().max(2) - 1) as f64;
            watts.windows(2).map(|w| (w[1] - w[0]) * span).fold(f64::INFINITY, f64::min)
        }
    };
    per_u.max(0.0) / p.cores
}
