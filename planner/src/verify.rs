//! An independent check of a plan: capacity use recomputed from the placements and
//! the problem's raw inputs (not from the planner's own bookkeeping).

use crate::energy::batch_use;
use crate::problem::{Placement, Problem};
use serde::Serialize;

/// Counts of broken rules; all zero for a correct plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Violations {
    /// (node, slot) cells where online upper bound + margin + batch exceeds CPU or memory.
    pub capacity: usize,
    /// Jobs that run before their release.
    pub release: usize,
    /// Jobs that end after their deadline without being marked late.
    pub deadline: usize,
    /// Non-pausable jobs that run in pieces.
    pub pieces: usize,
    /// Jobs that run for a number of slots other than their duration (within the
    /// slots the plan covers).
    pub duration: usize,
    /// Jobs placed on a pool they may not use, or on a node that does not exist.
    pub pool: usize,
    /// (node, slot) cells where running work and planned jobs hold more GPUs
    /// than the node has.
    pub gpus: usize,
}

impl Violations {
    pub fn total(&self) -> usize {
        self.capacity + self.release + self.deadline + self.pieces + self.duration + self.pool + self.gpus
    }
}

/// Check `placements` against `p`. `len` is the number of slots the plan covers.
pub fn verify(p: &Problem, placements: &[Placement], len: usize) -> Violations {
    let mut v = Violations::default();
    let mut base = Vec::with_capacity(p.pools.len());
    let mut acc = 0;
    for pi in &p.pools {
        base.push(acc);
        acc += pi.pool.nodes as usize;
    }
    for (j, pl) in p.jobs.iter().zip(placements) {
        let Placement::Run { pool, node, slots, late, .. } = pl else { continue };
        if *pool >= p.pools.len()
            || *node >= p.pools[*pool].pool.nodes
            || j.pool.is_some_and(|q| q != *pool)
            || (j.gpus > 0 && !p.pools[*pool].pool.has_gpu_model(j.gpu_model.as_deref()))
        {
            v.pool += 1;
            continue;
        }
        let first = slots.first().map_or(0, |s| *s as usize);
        let last = slots.last().map_or(0, |s| *s as usize);
        if first < j.release {
            v.release += 1;
        }
        if let Some(d) = j.deadline
            && last + 1 > d
            && !late
        {
            v.deadline += 1;
        }
        if !j.pausable && last + 1 - first != slots.len() {
            v.pieces += 1;
        }
        if slots.len() != j.duration.min(len - first) || slots.windows(2).any(|w| w[1] <= w[0]) {
            v.duration += 1;
        }
    }
    v.gpus = gpu_overuse(p, &base, len, placements);
    let (cpu, mem) = batch_use(p, &base, len, placements);
    for (pool, pi) in p.pools.iter().enumerate() {
        let cpu_cap = pi.pool.cores * (1.0 - p.options.cpu_margin);
        let mem_cap = pi.pool.memory_gib * (1.0 - p.options.mem_margin);
        for n in 0..pi.pool.nodes as usize {
            let row = (base[pool] + n) * len;
            for t in 0..len {
                let (b_cpu, b_mem) = (cpu[row + t], mem[row + t]);
                if b_cpu == 0.0 && b_mem == 0.0 {
                    continue;
                }
                let on_cpu = pi.online_cpu_at(p.slots, n, t.min(p.slots - 1));
                let on_mem = pi.online_mem_at(p.slots, n, t.min(p.slots - 1));
                if on_cpu + b_cpu > cpu_cap + 1e-6 || on_mem + b_mem > mem_cap + 1e-6 {
                    v.capacity += 1;
                }
            }
        }
    }
    v
}

/// Cells where GPUs held (running work, from the raw input) plus GPUs planned
/// exceed the node's.
fn gpu_overuse(p: &Problem, base: &[usize], len: usize, placements: &[Placement]) -> usize {
    let total = base.last().map_or(0, |b| b + p.pools.last().map_or(0, |x| x.pool.nodes as usize));
    let mut held = vec![0u32; total * len];
    for (j, pl) in p.jobs.iter().zip(placements) {
        if let (Placement::Run { pool, node, slots, .. }, true) = (pl, j.gpus > 0) {
            for &t in slots {
                held[(base[*pool] + *node as usize) * len + t as usize] += j.gpus;
            }
        }
    }
    let mut over = 0;
    for (pool, pi) in p.pools.iter().enumerate() {
        for n in 0..pi.pool.nodes as usize {
            for t in 0..len {
                let planned = held[(base[pool] + n) * len + t];
                if planned > 0 && planned + pi.gpus_used_at(p.slots, n, t.min(p.slots - 1)) > pi.pool.gpus {
                    over += 1;
                }
            }
        }
    }
    over
}
