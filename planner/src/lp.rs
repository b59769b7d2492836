//! The aggregated plan: how many cores of each job class run in each block of
//! slots, at least carbon, within each class's window and the total capacity.
//!
//! Size: classes (release block × deadline block) × blocks, plus pools × blocks;
//! with at most 48 blocks that is at most ~60k columns, whatever the number of jobs
//! or nodes.

use crate::place::{Context, window};
use crate::problem::Problem;
use good_lp::solvers::highs::highs;
use good_lp::{Expression, ProblemVariables, Solution, SolutionStatus, SolverModel, Variable, constraint, variable};
use std::collections::HashMap;

/// The LP's answer, as per-class, per-slot budgets of cores that placement spends.
#[derive(Debug, Clone)]
pub(crate) struct Quotas {
    /// Class of each job; `u32::MAX` for jobs the LP left out (no window).
    class_of: Vec<u32>,
    slots: usize,
    /// `classes × slots`: cores of the class still planned at that slot.
    remaining: Vec<f64>,
}

impl Quotas {
    /// Share of `cores` not covered by the class's remaining budget at `t`
    /// (1 past the horizon or for a job outside every class).
    pub(crate) fn shortage(&self, job: usize, cores: f64, t: usize) -> f64 {
        let c = self.class_of[job];
        if t >= self.slots || c == u32::MAX {
            return 1.0;
        }
        let r = self.remaining[c as usize * self.slots + t];
        ((cores - r.max(0.0)) / cores).clamp(0.0, 1.0)
    }

    pub(crate) fn consume(&mut self, job: usize, cores: f64, slots: &[u32]) {
        let c = self.class_of[job];
        if c == u32::MAX {
            return;
        }
        for &t in slots {
            let t = t as usize;
            if t < self.slots {
                self.remaining[c as usize * self.slots + t] -= cores;
            }
        }
    }
}

struct Class {
    first_block: usize,
    end_block: usize,
    work: f64,
    max_cores: f64,
    /// GPU-slots of its jobs (their GPUs per core is `gpu_work / work`).
    gpu_work: f64,
}

/// GPUs free per block, the mean over its slots, summed over every node.
fn gpu_capacity(p: &Problem, ctx: &Context, blk: usize, blocks: usize) -> Vec<f64> {
    let mut cap = vec![0.0; blocks];
    let nodes = ctx.free_gpu.len() / ctx.len.max(1);
    for n in 0..nodes {
        for t in 0..p.slots {
            cap[t / blk] += ctx.free_gpu[n * ctx.len + t];
        }
    }
    for (b, c) in cap.iter_mut().enumerate() {
        #[allow(clippy::cast_precision_loss, reason = "block lengths are small")]
        let len = (((b + 1) * blk).min(p.slots) - b * blk) as f64;
        *c /= len;
    }
    cap
}

pub(crate) fn solve(p: &Problem, ctx: &Context) -> Result<(Quotas, String), String> {
    let blk = p.slots.div_ceil(48).max(1);
    let blocks = p.slots.div_ceil(blk);
    let block_len = |b: usize| ((b + 1) * blk).min(p.slots) - b * blk;

    let mut classes: Vec<Class> = Vec::new();
    let mut index: HashMap<(usize, usize), u32> = HashMap::new();
    let mut class_of = vec![u32::MAX; p.jobs.len()];
    let (mut cores_sum, mut mem_sum) = (0.0, 0.0);
    for (i, j) in p.jobs.iter().enumerate() {
        if window(p, ctx, j).is_err() {
            continue;
        }
        let first = j.release / blk;
        let end = j.deadline.map_or(blocks, |d| d.div_ceil(blk)).clamp(first + 1, blocks);
        let c = *index.entry((first, end)).or_insert_with(|| {
            classes.push(Class { first_block: first, end_block: end, work: 0.0, max_cores: 0.0, gpu_work: 0.0 });
            u32::try_from(classes.len() - 1).unwrap_or(u32::MAX)
        });
        class_of[i] = c;
        let k = &mut classes[c as usize];
        #[allow(clippy::cast_precision_loss, reason = "slot counts are small")]
        let slots_in = j.duration.min(p.slots - j.release) as f64;
        k.work += j.cores * slots_in;
        k.gpu_work += f64::from(j.gpus) * slots_in;
        k.max_cores += j.cores;
        cores_sum += j.cores;
        mem_sum += j.mem_gib;
    }
    let quotas_empty = Quotas { class_of: class_of.clone(), slots: p.slots, remaining: Vec::new() };
    if classes.is_empty() {
        return Ok((quotas_empty, "no jobs to plan".into()));
    }

    // Capacity per pool and block in cores, the mean over the block's slots (the
    // quotas are core-slots spread over a block: a node that wakes in the
    // block's second slot, or a one-slot online peak, takes only its share;
    // placement checks every slot). Memory is turned into cores at the queue's
    // mean GiB per core, so a memory-bound pool offers fewer cores.
    let gib_per_core = if cores_sum > 0.0 { mem_sum / cores_sum } else { 0.0 };
    let len = ctx.len;
    let mut cap = vec![0.0; p.pools.len() * blocks];
    for (pool, pi) in p.pools.iter().enumerate() {
        let base = ctx.node_base[pool];
        let nodes = pi.pool.nodes as usize;
        for t in 0..p.slots {
            let (mut cpu, mut mem) = (0.0, 0.0);
            for n in base..base + nodes {
                cpu += ctx.free_cpu[n * len + t];
                mem += ctx.free_mem[n * len + t];
            }
            let cores = if gib_per_core > 0.0 { cpu.min(mem / gib_per_core) } else { cpu };
            #[allow(clippy::cast_precision_loss, reason = "block lengths are small")]
            let share = cores / block_len(t / blk) as f64;
            cap[pool * blocks + t / blk] += share;
        }
    }

    // Costs in grams per core-slot.
    let sh = p.slot_hours();
    // Per pool (its grid zone) and block, pool-major.
    let block_carbon: Vec<f64> = (0..p.pools.len())
        .flat_map(|q| (0..blocks).map(move |b| (q, b)))
        .map(|(q, b)| {
            let r = b * blk..((b + 1) * blk).min(p.slots);
            #[allow(clippy::cast_precision_loss, reason = "block lengths are small")]
            let n = r.len() as f64;
            r.map(|t| p.weighed_carbon_at(q, t)).sum::<f64>() / n
        })
        .collect();
    let max_cost = block_carbon.iter().copied().fold(0.0, f64::max)
        * ctx.watts_per_core.iter().copied().filter(|w| w.is_finite()).fold(0.0, f64::max)
        * sh
        / 1000.0;
    let unplanned_penalty = 100.0 * max_cost + 1.0;
    let earlier = 1e-6 * (max_cost + 1.0);

    let mut vars = ProblemVariables::new();
    let mut y: Vec<Vec<Variable>> = Vec::with_capacity(classes.len());
    for k in &classes {
        y.push((k.first_block..k.end_block).map(|_| vars.add(variable().min(0.0).max(k.max_cores))).collect());
    }
    let u: Vec<Variable> = classes.iter().map(|_| vars.add(variable().min(0.0))).collect();
    let mut s: Vec<(usize, usize, Variable, f64)> = Vec::new();
    for pool in 0..p.pools.len() {
        if !ctx.watts_per_core[pool].is_finite() {
            continue;
        }
        for b in 0..blocks {
            let c = cap[pool * blocks + b];
            if c > 1e-9 {
                let cost = block_carbon[pool * blocks + b] * ctx.watts_per_core[pool] * sh / 1000.0;
                s.push((pool, b, vars.add(variable().min(0.0).max(c)), cost));
            }
        }
    }
    let mut objective = Expression::with_capacity(s.len() + u.len() + y.iter().map(Vec::len).sum::<usize>());
    for &(_, _, v, cost) in &s {
        objective.add_mul(cost, v);
    }
    for &v in &u {
        objective.add_mul(unplanned_penalty, v);
    }
    for (k, ys) in classes.iter().zip(&y) {
        for (i, &v) in ys.iter().enumerate() {
            #[allow(clippy::cast_precision_loss, reason = "block indices are small")]
            objective.add_mul(earlier * (k.first_block + i) as f64, v);
        }
    }
    let secs = p.options.time_limit.as_secs_f64().max(0.01);
    let mut model = vars.minimise(objective).using(highs).set_time_limit(secs).set_threads(1);
    // Per block: what the classes run fits in what the pools offer.
    let mut per_block: Vec<Expression> = (0..blocks).map(|_| Expression::default()).collect();
    for (k, ys) in classes.iter().zip(&y) {
        for (i, &v) in ys.iter().enumerate() {
            per_block[k.first_block + i].add_mul(1.0, v);
        }
    }
    for &(_, b, v, _) in &s {
        per_block[b].add_mul(-1.0, v);
    }
    for e in per_block {
        model = model.with(constraint!(e <= 0.0));
    }
    // Per block: the classes' GPUs (at their GPUs per core) fit the GPUs free.
    if classes.iter().any(|k| k.gpu_work > 0.0) {
        let free = gpu_capacity(p, ctx, blk, blocks);
        let mut per_block: Vec<Expression> = (0..blocks).map(|_| Expression::default()).collect();
        for (k, ys) in classes.iter().zip(&y).filter(|(k, _)| k.gpu_work > 0.0 && k.work > 0.0) {
            for (i, &v) in ys.iter().enumerate() {
                per_block[k.first_block + i].add_mul(k.gpu_work / k.work, v);
            }
        }
        for (e, cap) in per_block.into_iter().zip(free) {
            model = model.with(constraint!(e <= cap));
        }
    }
    // Per class: its work is done in its window, or counted as unplanned.
    for ((k, ys), &uv) in classes.iter().zip(&y).zip(&u) {
        let mut e = Expression::with_capacity(ys.len() + 1);
        for (i, &v) in ys.iter().enumerate() {
            #[allow(clippy::cast_precision_loss, reason = "block lengths are small")]
            e.add_mul(block_len(k.first_block + i) as f64, v);
        }
        e.add_mul(1.0, uv);
        model = model.with(constraint!(e == k.work));
    }
    let solution = model.solve().map_err(|e| e.to_string())?;
    let status = match solution.status() {
        SolutionStatus::Optimal => "optimal",
        SolutionStatus::TimeLimit => "time limit (best solution so far)",
        SolutionStatus::GapLimit => "gap limit",
    };
    let mut remaining = vec![0.0; classes.len() * p.slots];
    for (c, (k, ys)) in classes.iter().zip(&y).enumerate() {
        for (i, &v) in ys.iter().enumerate() {
            let b = k.first_block + i;
            let cores = solution.value(v).max(0.0);
            for t in b * blk..((b + 1) * blk).min(p.slots) {
                remaining[c * p.slots + t] = cores;
            }
        }
    }
    let status = format!(
        "{status}: {} classes, {} blocks of {} slots, {} columns",
        classes.len(),
        blocks,
        blk,
        s.len() + u.len() + y.iter().map(Vec::len).sum::<usize>()
    );
    Ok((Quotas { class_of, slots: p.slots, remaining }, status))
}
