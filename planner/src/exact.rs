//! The exact reference: a time-indexed LP with one column per job × node × slot
//! (the relaxation that lets a job run in fractions and pieces), sleeping nodes'
//! power as a continuous variable. Its optimum is a lower bound on the carbon of
//! any plan for the same problem. Nodes of a pool with the same free capacity in
//! every slot are one column set with their summed capacity: any solution of the
//! per-node LP sums to one of the merged LP, and a merged solution split evenly
//! is one of the per-node LP at the same cost, so the optimum is the same (issue
//! 32: 962,820 columns at 1,000 jobs × 100 nodes × 24 slots no longer solved in
//! 600 s; merged, they are a fifth of that).

use crate::energy::account;
use crate::place::{Context, window};
use crate::problem::{Placement, WaitReason};
use good_lp::solvers::highs::highs;
use good_lp::{Expression, ProblemVariables, Solution, SolutionStatus, SolverModel, Variable, constraint, variable};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct ExactResult {
    /// Optimal carbon of the whole cluster over the same slots the planner accounts
    /// (online load and always-on idle power included), kg.
    pub carbon_kg: f64,
    /// The part due to batch work (total minus the cluster with no batch), kg.
    pub batch_carbon_kg: f64,
    /// Core-slots of batch work the LP could not fit.
    pub unplanned_core_slots: f64,
    pub columns: usize,
    pub solve_ms: f64,
    pub status: String,
}

pub fn exact_lp(p: &crate::ValidProblem) -> Result<ExactResult, String> {
    let t0 = Instant::now();
    let ctx = Context::new(p);
    let len = ctx.len;
    let sh = p.slot_hours();
    let idle = vec![Placement::Wait { reason: WaitReason::Capacity }; p.jobs.len()];
    let (baseline, _) = account(p, &ctx, &idle);

    let mut vars = ProblemVariables::new();
    let classes = classes(p, &ctx);
    let total_nodes = classes.len();
    let pool_of: Vec<usize> = classes.iter().map(|c| c.pool).collect();
    // kg per core-slot of batch on a node of `pool` at `t`, and per powered slot.
    let g = |pool: usize, t: usize| p.pools[pool].pool.pue * sh / 1000.0 * p.carbon_at(pool, t) / 1000.0;
    let dyn_w = |pool: usize| {
        let pm = &p.pools[pool].pool.power;
        (pm.max_w() - pm.idle_w()) / p.pools[pool].pool.cores
    };
    let max_cost = (0..p.slots)
        .flat_map(|t| (0..p.pools.len()).map(move |q| (q, t)))
        .filter(|(q, _)| p.pools[*q].pool.cores > 0.0)
        .map(|(q, t)| g(q, t) * (dyn_w(q) + p.pools[q].pool.power.idle_w() / p.pools[q].pool.cores))
        .fold(0.0, f64::max);
    let penalty = 100.0 * max_cost + 1.0;

    let mut objective = Expression::default();
    let mut node_cpu: Vec<Expression> = (0..total_nodes * p.slots).map(|_| Expression::default()).collect();
    let mut node_mem: Vec<Expression> = (0..total_nodes * p.slots).map(|_| Expression::default()).collect();
    let mut job_rows: Vec<(Expression, f64)> = Vec::new();
    let mut job_slot_rows: Vec<Expression> = Vec::new();
    let mut unplanned: Vec<(Variable, f64)> = Vec::new();
    let mut columns = 0;
    for j in &p.jobs {
        if window(p, &ctx, j).is_err() {
            continue;
        }
        let end = j.deadline.unwrap_or(p.slots).min(p.slots);
        let mut row = Expression::default();
        for t in j.release..end {
            let mut js = Expression::default();
            for (n, &pool) in pool_of.iter().enumerate() {
                if j.pool.is_some_and(|q| q != pool) || ctx.node_cpu[pool] < j.cores || ctx.node_mem[pool] < j.mem_gib {
                    continue;
                }
                let x = vars.add(variable().min(0.0).max(1.0));
                columns += 1;
                objective.add_mul(g(pool, t) * dyn_w(pool) * j.cores, x);
                row.add_mul(1.0, x);
                js.add_mul(1.0, x);
                node_cpu[n * p.slots + t].add_mul(j.cores, x);
                node_mem[n * p.slots + t].add_mul(j.mem_gib, x);
            }
            job_slot_rows.push(js);
        }
        let u = vars.add(variable().min(0.0));
        columns += 1;
        #[allow(clippy::cast_precision_loss, reason = "slot counts are small")]
        let d = j.duration as f64;
        objective.add_mul(penalty, u);
        row.add_mul(1.0, u);
        job_rows.push((row, d));
        unplanned.push((u, j.cores));
    }
    let mut powered: Vec<(usize, Variable)> = Vec::new();
    for (n, &pool) in pool_of.iter().enumerate() {
        if p.pools[pool].pool.always_on {
            continue;
        }
        for t in 0..p.slots {
            let y = vars.add(variable().min(0.0).max(classes[n].count));
            columns += 1;
            objective.add_mul(g(pool, t) * p.pools[pool].pool.power.idle_w(), y);
            powered.push((n * p.slots + t, y));
        }
    }
    let secs = p.options.time_limit.as_secs_f64().max(0.01);
    let mut model = vars.minimise(objective.clone()).using(highs).set_time_limit(secs).set_threads(1);
    for (row, d) in job_rows {
        model = model.with(constraint!(row == d));
    }
    for js in job_slot_rows {
        model = model.with(constraint!(js <= 1.0));
    }
    let mut is_powered: Vec<Option<Variable>> = vec![None; total_nodes * p.slots];
    for (i, y) in powered {
        is_powered[i] = Some(y);
    }
    for (i, (mut cpu, mut mem)) in node_cpu.into_iter().zip(node_mem).enumerate() {
        let (n, t) = (i / p.slots, i % p.slots);
        let pool = pool_of[n];
        match is_powered[i] {
            Some(y) => {
                cpu.add_mul(-ctx.node_cpu[pool], y);
                mem.add_mul(-ctx.node_mem[pool], y);
                model = model.with(constraint!(cpu <= 0.0)).with(constraint!(mem <= 0.0));
            }
            None => {
                let (row, k) = (classes[n].node * len + t, classes[n].count);
                model = model
                    .with(constraint!(cpu <= k * ctx.free_cpu[row]))
                    .with(constraint!(mem <= k * ctx.free_mem[row]));
            }
        }
    }
    let solution = model.solve().map_err(|e| e.to_string())?;
    let status = match solution.status() {
        SolutionStatus::Optimal => "optimal",
        SolutionStatus::TimeLimit => "time limit (not optimal)",
        SolutionStatus::GapLimit => "gap limit",
    };
    let unplanned_core_slots: f64 = unplanned.iter().map(|(u, c)| solution.value(*u) * c).sum();
    let batch = solution.eval(&objective) - penalty * unplanned.iter().map(|(u, _)| solution.value(*u)).sum::<f64>();
    Ok(ExactResult {
        carbon_kg: baseline.carbon_kg + batch,
        batch_carbon_kg: batch,
        unplanned_core_slots,
        columns,
        solve_ms: t0.elapsed().as_secs_f64() * 1000.0,
        status: status.to_owned(),
    })
}

/// Nodes the LP need not tell apart: one pool, the same free CPU and memory in
/// every slot, and powered alike.
struct Class {
    pool: usize,
    /// Its first node (flat index), whose rows stand for all.
    node: usize,
    count: f64,
}

fn classes(p: &crate::ValidProblem, ctx: &Context) -> Vec<Class> {
    let len = ctx.len;
    let same = |a: usize, b: usize| {
        let rows = |v: &[f64], n: usize| v[n * len..n * len + p.slots].to_vec();
        rows(&ctx.free_cpu, a) == rows(&ctx.free_cpu, b)
            && rows(&ctx.free_mem, a) == rows(&ctx.free_mem, b)
            && ctx.powered[a] == ctx.powered[b]
    };
    let mut out: Vec<Class> = Vec::new();
    for (pool, pi) in p.pools.iter().enumerate() {
        let base = ctx.node_base[pool];
        let first = out.len();
        for node in base..base + pi.pool.nodes as usize {
            match out[first..].iter_mut().find(|c| same(c.node, node)) {
                Some(c) => c.count += 1.0,
                None => out.push(Class { pool, node, count: 1.0 }),
            }
        }
    }
    out
}
