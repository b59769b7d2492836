//! Binding jobs to nodes and slots, exactly, per node and per slot.

use crate::blockmax::BlockMax;
use crate::lp::Quotas;
use crate::problem::{Placement, PlanJob, Problem, Strategy, WaitReason};
use greenfill_core::cluster::PowerModel;

/// Per-node capacity left for batch, and the facts about pools the passes share.
#[derive(Debug)]
pub(crate) struct Context {
    /// Slots looked at: the horizon plus room for runs past its end.
    pub(crate) len: usize,
    /// Index of each pool's first node in the flat per-node arrays.
    pub(crate) node_base: Vec<usize>,
    /// Batch CPU each node may use per slot (`node × len`, node-major):
    /// `cores × (1 − cpu_margin) − online`, never below 0.
    pub(crate) free_cpu: Vec<f64>,
    pub(crate) free_mem: Vec<f64>,
    /// GPUs free per node and slot, laid out like `free_cpu` (whole numbers,
    /// as f64 for the block maxima); empty when no job asks for one.
    pub(crate) free_gpu: Vec<f64>,
    /// Per pool: the most a single node can give a batch job (an empty node).
    pub(crate) node_cpu: Vec<f64>,
    pub(crate) node_mem: Vec<f64>,
    /// Per pool: watts per core of batch, PUE included; for pools that may sleep,
    /// the idle watts of a woken node are spread over its cores.
    pub(crate) watts_per_core: Vec<f64>,
    /// Pools, cheapest watts per core first.
    pub(crate) pool_order: Vec<usize>,
    /// Per pool: kWh per slot of a node's idle power, and of one core's dynamic
    /// power (PUE included); times gCO2/kWh they give grams.
    pub(crate) idle_g_per_slot: Vec<f64>,
    /// Per pool: kWh a wake costs (`Pool::wake_wh` plus the idle power of
    /// `PlanOptions::wake_overhead_s`, facility), × intensity = g.
    pub(crate) wake_g: Vec<f64>,
    /// Per pool: its power model is not a straight line (a table), so where a
    /// job runs changes its dynamic power.
    pub(crate) curved: Vec<bool>,
    /// Per node (flat): the slots from now in which it is powered anyway
    /// (`PoolInput::powered`); 0 for nodes that are not known to be awake.
    pub(crate) powered: Vec<usize>,
    /// Per pool that sleeps: its nodes (flat) that are up now, powered anyway or
    /// running work; a job may take one before any node is woken for it.
    pub(crate) awake: Vec<Vec<usize>>,
    pub(crate) dyn_g_per_core_slot: Vec<f64>,
    /// What one busy GPU adds per slot, kWh at the meter (× weight = grams).
    pub(crate) gpu_dyn_g_slot: Vec<f64>,
    /// What the plan weighs per kWh in each pool and slot (pool-major,
    /// [`Problem::weighed_carbon_at`]), computed once: placement asks for it
    /// per candidate slot.
    weights: Vec<f64>,
}

impl Context {
    pub(crate) fn new(p: &Problem) -> Context {
        let len = p.extended_slots();
        let mut node_base = Vec::with_capacity(p.pools.len());
        let total: usize = p.pools.iter().map(|x| x.pool.nodes as usize).sum();
        let mut free_cpu = Vec::with_capacity(total * len);
        let mut free_mem = Vec::with_capacity(total * len);
        let (mut node_cpu, mut node_mem, mut wpc) = (Vec::new(), Vec::new(), Vec::new());
        let (mut idle_g, mut dyn_g, mut wake_g) = (Vec::new(), Vec::new(), Vec::new());
        let mut gpu_dyn_g = Vec::with_capacity(p.pools.len());
        let mut powered = Vec::with_capacity(total);
        let mut curved = Vec::new();
        let mut awake = Vec::with_capacity(p.pools.len());
        let sh = p.slot_hours();
        for pi in &p.pools {
            node_base.push(free_cpu.len() / len.max(1));
            let cpu = pi.pool.cores * (1.0 - p.options.cpu_margin);
            let mem = pi.pool.memory_gib * (1.0 - p.options.mem_margin);
            node_cpu.push(cpu);
            curved.push(matches!(pi.pool.power, PowerModel::Table { .. }));
            node_mem.push(mem);
            awake.push(Vec::new());
            for n in 0..pi.pool.nodes as usize {
                powered.push(if pi.pool.always_on { 0 } else { pi.powered_slots(n) });
                // Past the horizon the last slot's load holds: wrapping around to
                // the first slots would repeat a node's wake latency and its
                // running jobs there, and close every sleeping node to a job that
                // runs past the end (issue 32: such jobs found room only on a
                // node already awake, and woke one for their earliest start).
                let last = p.slots - 1;
                for t in 0..len {
                    free_cpu.push((cpu - pi.online_cpu_at(p.slots, n, t.min(last))).max(0.0));
                }
                let busy = len > 0 && free_cpu[free_cpu.len() - len] + EPS < cpu;
                if !pi.pool.always_on && (pi.powered_slots(n) > 0 || busy) {
                    awake.last_mut().expect("pushed above").push(free_cpu.len() / len - 1);
                }
                for t in 0..len {
                    free_mem.push((mem - pi.online_mem_at(p.slots, n, t.min(last))).max(0.0));
                }
            }
            let pm = &pi.pool.power;
            let per_core = |x: f64| if pi.pool.cores > 0.0 { x / pi.pool.cores } else { f64::INFINITY };
            let dynamic = per_core(pm.max_w() - pm.idle_w());
            // A node's idle draw includes its GPUs': powering down a GPU node saves them too.
            let idle_w = pi.pool.node_idle_w();
            let wake = if pi.pool.always_on { 0.0 } else { per_core(idle_w) };
            wpc.push(pi.pool.pue * (dynamic + wake));
            idle_g.push(idle_w * pi.pool.pue * sh / 1000.0);
            gpu_dyn_g.push(pi.pool.gpu_dynamic_w() * pi.pool.pue * sh / 1000.0);
            let cycle_wh = pi.pool.wake_wh + idle_w * p.options.wake_overhead_s / 3600.0;
            wake_g.push(cycle_wh * pi.pool.pue / 1000.0);
            dyn_g.push(if dynamic.is_finite() { dynamic * pi.pool.pue * sh / 1000.0 } else { 0.0 });
        }
        let mut pool_order: Vec<usize> = (0..p.pools.len()).collect();
        pool_order.sort_by(|a, b| wpc[*a].total_cmp(&wpc[*b]));
        let weights = (0..p.pools.len()).flat_map(|q| (0..len).map(move |t| p.weighed_carbon_at(q, t))).collect();
        Context {
            weights,
            free_gpu: free_gpus(p, len),
            len,
            node_base,
            free_cpu,
            free_mem,
            node_cpu,
            node_mem,
            watts_per_core: wpc,
            pool_order,
            idle_g_per_slot: idle_g,
            wake_g,
            curved,
            powered,
            awake,
            dyn_g_per_core_slot: dyn_g,
            gpu_dyn_g_slot: gpu_dyn_g,
        }
    }
}

impl Context {
    /// [`Problem::weighed_carbon_at`] of `pool` at `t < len`, from the table.
    #[inline]
    pub(crate) fn weight(&self, pool: usize, t: usize) -> f64 {
        self.weights[pool * self.len + t]
    }
}

/// GPUs free per node and slot (the pool's less what running work holds; past
/// the horizon the last slot's), or nothing when no job asks for a GPU.
fn free_gpus(p: &Problem, len: usize) -> Vec<f64> {
    if p.jobs.iter().all(|j| j.gpus == 0) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for pi in &p.pools {
        for n in 0..pi.pool.nodes as usize {
            out.extend(
                (0..len)
                    .map(|t| f64::from(pi.pool.gpus.saturating_sub(pi.gpus_used_at(p.slots, n, t.min(p.slots - 1))))),
            );
        }
    }
    out
}

/// A job's window of start slots, or why it has none.
pub(crate) fn window(p: &Problem, ctx: &Context, j: &PlanJob) -> Result<(usize, usize), WaitReason> {
    if j.release >= p.slots {
        return Err(WaitReason::NotReleased);
    }
    if let Some(d) = j.deadline
        && j.release + j.duration > d
    {
        return Err(WaitReason::DeadlineImpossible);
    }
    let fits = |pool: usize| {
        let pl = &p.pools[pool].pool;
        ctx.node_cpu[pool] >= j.cores
            && ctx.node_mem[pool] >= j.mem_gib
            && pl.gpus >= j.gpus
            && (j.gpus == 0 || pl.has_gpu_model(j.gpu_model.as_deref()))
    };
    let any = match j.pool {
        Some(pool) => fits(pool),
        None => (0..p.pools.len()).any(|q| p.pools[q].pool.nodes > 0 && fits(q)),
    };
    if !any {
        return Err(WaitReason::LargerThanAnyNode);
    }
    let latest = match j.deadline {
        Some(d) => d - j.duration,
        None => p.slots - 1,
    };
    Ok((j.release, latest.min(ctx.len.saturating_sub(1))))
}

struct State<'a> {
    p: &'a Problem,
    ctx: &'a Context,
    free_cpu: Vec<f64>,
    free_mem: Vec<f64>,
    free_gpu: Vec<f64>,
    /// Block maxima of `free_gpu` (when a job asks for GPUs).
    gpu_max: Option<BlockMax>,
    /// Per pool and slot: the sum of free CPU over its nodes (a quick "cannot fit").
    pool_free: Vec<f64>,
    /// Per pool and start: the smallest (cores, mem, slots) that found no node, so a
    /// larger request at that start is refused without a scan.
    failed: Vec<Option<(f64, f64, usize)>>,
    quotas: Option<Quotas>,
    /// Per pool, slot and size bucket `k`: every node of the pool below this index
    /// (relative to the pool's first node) has less than `BUCKETS[k]` free cores,
    /// so a job of at least that many cores starts its scan there.
    full_below: Vec<u32>,
    /// The same for memory, with thresholds `MEM_BUCKETS` (GiB).
    mem_full_below: Vec<u32>,
    /// Per slot, the most free CPU and memory in each block of nodes: a scan
    /// jumps over blocks where no node has room.
    cpu_max: BlockMax,
    mem_max: BlockMax,
    /// Carbon spread of the horizon plus one: a quota shortage of one slot costs
    /// more than any difference in carbon.
    spread: f64,
    /// Per slot: the least weighed carbon over every pool's zone, which orders
    /// the starts of a job that may run in any pool.
    least_carbon: Vec<f64>,
    /// Pools are in zones of different intensities, so the first pool with
    /// room is not necessarily the cleanest.
    zoned: bool,
}

const EPS: f64 = 1e-9;

/// Core thresholds of the scan cursors.
const BUCKETS: [f64; 9] = [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// GiB thresholds of the memory scan cursors.
const MEM_BUCKETS: [f64; 10] = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The largest bucket whose threshold is at most `x`.
fn bucket(thresholds: &[f64], x: f64) -> Option<usize> {
    thresholds.iter().rposition(|&b| b <= x + EPS)
}

impl State<'_> {
    fn fits_pool(&self, pool: usize, j: &PlanJob, slots: &[u32]) -> bool {
        let len = self.ctx.len;
        self.p.pools[pool].pool.gpus >= j.gpus
            && slots.iter().all(|&t| self.pool_free[pool * len + t as usize] + EPS >= j.cores)
    }

    /// Whether `node` has `j`'s GPUs free in every one of `slots`.
    fn gpus_fit(&self, node: usize, j: &PlanJob, slots: &[u32]) -> bool {
        let row = node * self.ctx.len;
        j.gpus == 0 || slots.iter().all(|&t| self.free_gpu[row + t as usize] + EPS >= f64::from(j.gpus))
    }

    /// What `j`'s dynamic power on `node` over `slots` costs beyond the pool's
    /// straight-line watts per core, in grams: the pool's power curve between
    /// the node's planned load and that plus `j` (negative on a node where the
    /// curve is flatter than its chord).
    fn curve_g(&self, pool: usize, node: usize, j: &PlanJob, slots: &[u32]) -> f64 {
        let pi = &self.p.pools[pool].pool;
        let row = node * self.ctx.len;
        let g_per_w = pi.pue * self.p.slot_hours() / 1000.0;
        let line = self.ctx.dyn_g_per_core_slot[pool] * j.cores;
        slots
            .iter()
            .map(|&t| {
                // Online and planned batch: the room the margin leaves, less what is free.
                let used = (self.ctx.node_cpu[pool] - self.free_cpu[row + t as usize]).max(0.0);
                let delta = pi.power.watts((used + j.cores) / pi.cores) - pi.power.watts(used / pi.cores);
                (delta * g_per_w - line) * self.ctx.weight(pool, t as usize)
            })
            .sum()
    }

    /// A node of `pool` with room for `j` in every one of `slots`, and the grams of
    /// CO2 it adds beyond the pool's straight-line dynamic power: the idle power
    /// of a sleeping node woken for slots it would sleep (none for nodes that
    /// never sleep, or are awake anyway), and on a curved power model the
    /// difference the node's load makes. Among the first few nodes that fit, the
    /// cheapest wins. Without `wake`, a pool that sleeps offers only its nodes
    /// that are up in every one of `slots`.
    fn find_node(&mut self, pool: usize, j: &PlanJob, slots: &[u32], wake: bool) -> Option<(usize, f64)> {
        let len = self.ctx.len;
        let start = slots[0] as usize;
        let key = pool * len + start;
        // The memo describes contiguous runs from `start`; a pausable job's scattered
        // slots neither use nor feed it.
        // A GPU job's failure says nothing of jobs without GPUs: it neither uses
        // nor feeds the memo either.
        let contiguous =
            j.gpus == 0 && (slots.len() == 1 || (slots[slots.len() - 1] - slots[0]) as usize + 1 == slots.len());
        if contiguous
            && let Some((c, m, n)) = self.failed[key]
            && j.cores + EPS >= c
            && j.mem_gib + EPS >= m
            && slots.len() >= n
        {
            return None;
        }
        if !self.fits_pool(pool, j, slots) {
            return None;
        }
        let base = self.ctx.node_base[pool];
        let nodes = self.p.pools[pool].pool.nodes as usize;
        let cursor = |v: &[u32], n: usize, k: Option<usize>| match k {
            Some(k) => slots.iter().map(|&t| v[(pool * len + t as usize) * n + k] as usize).max().unwrap_or(0),
            None => 0,
        };
        let skip = cursor(&self.full_below, BUCKETS.len(), bucket(&BUCKETS, j.cores)).max(cursor(
            &self.mem_full_below,
            MEM_BUCKETS.len(),
            bucket(&MEM_BUCKETS, j.mem_gib),
        ));
        let sleeps = !self.p.pools[pool].pool.always_on;
        // Up nodes only: the pool's awake list, none of the scan.
        let awake_only = sleeps && !wake;
        let ctx = self.ctx;
        let listed: &[usize] = if awake_only { &ctx.awake[pool] } else { &[] };
        let end = if awake_only { base + skip } else { base + nodes };
        let idle = self.ctx.idle_g_per_slot[pool];
        // On a power curve that is not a line, the same work costs less on a
        // less loaded node: look at a few.
        let curved = self.ctx.curved[pool];
        let first_only = self.p.options.strategy == Strategy::EarliestFit;
        let mut best: Option<(usize, f64)> = None;
        let mut fitting = 0;
        let (mut listed_at, mut scan_from) = (0, base + skip);
        loop {
            // The pool's awake list first, then the scan of its nodes in order.
            let node = if let Some(&node) = listed.get(listed_at) {
                listed_at += 1;
                if !self.fits_on(node, j, slots) {
                    continue;
                }
                node
            } else {
                let Some(node) = self.next_fit(j, slots, scan_from, end) else { break };
                scan_from = node + 1;
                node
            };
            if !self.gpus_fit(node, j, slots) {
                continue;
            }
            let row = node * len;
            if !sleeps && !curved {
                best = Some((node, 0.0));
                break;
            }
            let powered = self.ctx.powered[node];
            let asleep = |t: usize| t >= powered && self.free_cpu[row + t] + EPS >= self.ctx.node_cpu[pool];
            if awake_only && slots.iter().any(|&t| asleep(t as usize)) {
                continue;
            }
            let woken = asleep(start) && (start == 0 || asleep(start - 1));
            let mut added: f64 = slots
                .iter()
                .filter(|&&t| sleeps && asleep(t as usize))
                .map(|&t| idle * self.ctx.weight(pool, t as usize))
                .sum();
            if curved {
                added += self.curve_g(pool, node, j, slots);
            }
            // Waking it from sleep costs its wake energy once.
            if sleeps && woken {
                added += self.ctx.wake_g[pool] * self.ctx.weight(pool, start);
            }
            if best.is_none_or(|(_, w)| added < w) {
                best = Some((node, added));
            }
            fitting += 1;
            if (added == 0.0 && !curved) || fitting >= 8 || first_only {
                break;
            }
        }
        // A failure among up nodes says nothing of the pool's others.
        if best.is_none() && contiguous && !awake_only {
            let smaller = match self.failed[key] {
                Some((c, m, n)) => j.cores <= c && j.mem_gib <= m && slots.len() <= n,
                None => true,
            };
            if smaller {
                self.failed[key] = Some((j.cores, j.mem_gib, slots.len()));
            }
        }
        best
    }

    /// Whether `node` has room for `j` in every one of `slots`.
    fn fits_on(&self, node: usize, j: &PlanJob, slots: &[u32]) -> bool {
        let row = node * self.ctx.len;
        slots.iter().all(|&t| {
            let i = row + t as usize;
            self.free_cpu[i] + EPS >= j.cores && self.free_mem[i] + EPS >= j.mem_gib
        })
    }

    /// The first node in `from..end` with room for `j` in every one of `slots`:
    /// a node's own row is read until a slot without room, and the blocks of
    /// nodes with no room in that slot are skipped.
    fn next_fit(&self, j: &PlanJob, slots: &[u32], from: usize, end: usize) -> Option<usize> {
        let len = self.ctx.len;
        let gpus = f64::from(j.gpus);
        let gpu_max = self.gpu_max.as_ref().filter(|_| j.gpus > 0);
        let mut n = from;
        while n < end {
            let row = n * len;
            let full = slots.iter().map(|&t| t as usize).find(|&t| {
                self.free_cpu[row + t] + EPS < j.cores
                    || self.free_mem[row + t] + EPS < j.mem_gib
                    || (gpu_max.is_some() && self.free_gpu[row + t] + EPS < gpus)
            });
            let Some(t) = full else { return Some(n) };
            // The next node with room for all it asks in slot `t`: each search
            // starts where the one before stopped, so they agree only on a node
            // with room for every resource.
            let mut m = n + 1;
            n = loop {
                let cpu = self.cpu_max.next(&self.free_cpu, t, m, end, j.cores)?;
                let mem = self.mem_max.next(&self.free_mem, t, cpu, end, j.mem_gib)?;
                let last = match gpu_max {
                    Some(g) => g.next(&self.free_gpu, t, mem, end, gpus)?,
                    None => mem,
                };
                if last == cpu {
                    break cpu;
                }
                m = last;
            };
        }
        None
    }

    fn commit(&mut self, pool: usize, node: usize, job: usize, j: &PlanJob, slots: &[u32]) {
        let len = self.ctx.len;
        let gpus = f64::from(j.gpus);
        for &t in slots {
            let i = node * len + t as usize;
            let (cpu_was, mem_was) = (self.free_cpu[i], self.free_mem[i]);
            self.free_cpu[i] = (cpu_was - j.cores).max(0.0);
            self.free_mem[i] = (mem_was - j.mem_gib).max(0.0);
            if j.gpus > 0 {
                let was = self.free_gpu[i];
                self.free_gpu[i] = (was - gpus).max(0.0);
                if let Some(g) = &mut self.gpu_max {
                    g.lowered(&self.free_gpu, node, t as usize, was);
                }
            }
            self.cpu_max.lowered(&self.free_cpu, node, t as usize, cpu_was);
            self.mem_max.lowered(&self.free_mem, node, t as usize, mem_was);
            self.pool_free[pool * len + t as usize] -= j.cores;
            let base = self.ctx.node_base[pool];
            let nodes = self.p.pools[pool].pool.nodes as usize;
            let cell = pool * len + t as usize;
            advance(
                &mut self.full_below[cell * BUCKETS.len()..(cell + 1) * BUCKETS.len()],
                &BUCKETS,
                &self.free_cpu,
                base,
                nodes,
                len,
                t as usize,
            );
            advance(
                &mut self.mem_full_below[cell * MEM_BUCKETS.len()..(cell + 1) * MEM_BUCKETS.len()],
                &MEM_BUCKETS,
                &self.free_mem,
                base,
                nodes,
                len,
                t as usize,
            );
        }
        if let Some(q) = &mut self.quotas {
            q.consume(job, j.cores, slots);
        }
    }

    /// Per-slot cost of running `j` in slot `t` under the strategy.
    fn slot_cost(&self, job: usize, j: &PlanJob, t: usize, spread: f64) -> f64 {
        let carbon = match j.pool {
            Some(q) => self.ctx.weight(q, t),
            None => self.least_carbon[t],
        };
        match &self.quotas {
            Some(q) => carbon + spread * q.shortage(job, j.cores, t),
            None => carbon,
        }
    }

    /// The slots of candidate `c` for `j`, written into `out`.
    fn slots_of(&self, j: &PlanJob, c: &Cand, out: &mut Vec<u32>) {
        out.clear();
        match c {
            Cand::Start(s) => {
                let s = *s as usize;
                #[allow(clippy::cast_possible_truncation, reason = "slot indices are far below u32::MAX")]
                out.extend((s..(s + j.duration).min(self.ctx.len)).map(|t| t as u32));
            }
            Cand::Slots(v) => out.extend_from_slice(v),
        }
    }

    /// Place `j` on one of `candidates` (best first by the strategy's score).
    /// Earliest-fit takes the first run and pool that fit. The others look at the
    /// first few runs that fit anywhere (candidates come ordered by carbon plus
    /// LP-quota shortage), and take the run, pool and node that add the least
    /// carbon (dynamic power, plus idle power of any node it wakes), and take it.
    fn try_candidates(&mut self, job: usize, j: &PlanJob, candidates: &[Cand], wake: bool) -> Option<Choice> {
        const LOOK: usize = 3;
        let first_only = self.p.options.strategy == Strategy::EarliestFit;
        let pools: Vec<usize> = match j.pool {
            Some(pool) => vec![pool],
            None => self
                .ctx
                .pool_order
                .iter()
                .copied()
                .filter(|&q| self.ctx.node_cpu[q] + EPS >= j.cores && self.ctx.node_mem[q] + EPS >= j.mem_gib)
                .filter(|&q| {
                    let pl = &self.p.pools[q].pool;
                    j.gpus == 0 || (pl.gpus >= j.gpus && pl.has_gpu_model(j.gpu_model.as_deref()))
                })
                .collect(),
        };
        let pools: Vec<usize> = pools
            .into_iter()
            .filter(|&q| wake || self.p.pools[q].pool.always_on || !self.ctx.awake[q].is_empty())
            .collect();
        if pools.is_empty() {
            return None;
        }
        let mut earliest_failed = usize::MAX;
        let mut best: Option<(f64, Vec<u32>, usize, usize)> = None;
        let mut feasible = 0;
        let mut slots = Vec::with_capacity(j.duration);
        for c in candidates {
            self.slots_of(j, c, &mut slots);
            let mut here: Option<(f64, usize, usize)> = None;
            for &pool in &pools {
                if let Some((node, added)) = self.find_node(pool, j, &slots, wake) {
                    let dynamic: f64 = slots.iter().map(|&t| self.ctx.weight(pool, t as usize)).sum::<f64>()
                        * (self.ctx.dyn_g_per_core_slot[pool] * j.cores
                            + self.ctx.gpu_dyn_g_slot[pool] * f64::from(j.gpus));
                    let cost = dynamic + added;
                    if here.is_none_or(|(c, _, _)| cost < c) {
                        here = Some((cost, pool, node));
                    }
                    if first_only || (self.p.pools[pool].pool.always_on && !self.zoned) {
                        // Pools are in order of watts per core; in one zone, an
                        // always-on pool with room is the cheapest that can follow.
                        break;
                    }
                }
            }
            match here {
                Some((cost, pool, node)) => {
                    // The LP's quotas already ordered the candidates; among the
                    // first few that fit, the least added carbon wins.
                    if best.as_ref().is_none_or(|(bc, ..)| cost < *bc) {
                        best = Some((cost, slots.clone(), pool, node));
                    }
                    feasible += 1;
                    if first_only || feasible >= LOOK {
                        break;
                    }
                }
                None => earliest_failed = earliest_failed.min(slots[0] as usize),
            }
        }
        let (_, slots, pool, node) = best?;
        self.commit(pool, node, job, j, &slots);
        let blocked = earliest_failed < slots[0] as usize;
        Some(Choice { slots, pool, node, blocked })
    }
}

/// Where and when a job runs, and what it adds.
struct Choice {
    slots: Vec<u32>,
    pool: usize,
    /// Index in the flat node arrays.
    node: usize,
    /// A start earlier than the chosen one was tried and was full.
    blocked: bool,
}

/// Move each cursor past the nodes (from the pool's `base`) whose `free` at slot
/// `t` is below the cursor's threshold.
fn advance(cursors: &mut [u32], thresholds: &[f64], free: &[f64], base: usize, nodes: usize, len: usize, t: usize) {
    for (cursor, threshold) in cursors.iter_mut().zip(thresholds) {
        while (*cursor as usize) < nodes && free[(base + *cursor as usize) * len + t] + EPS < *threshold {
            *cursor += 1;
        }
    }
}

/// A candidate run: `duration` slots from a start, or an explicit set (pausable).
enum Cand {
    Start(u32),
    Slots(Vec<u32>),
}

/// Candidate runs for `j` whose start lies in `[lo, hi]`, best first.
fn candidates(st: &State<'_>, job: usize, j: &PlanJob, lo: usize, hi: usize, strategy: Strategy) -> Vec<Cand> {
    let len = st.ctx.len;
    let d = j.duration;
    #[allow(clippy::cast_possible_truncation, reason = "slot indices are far below u32::MAX")]
    let start = |s: usize| Cand::Start(s as u32);
    if strategy == Strategy::EarliestFit {
        return (lo..=hi).map(start).collect();
    }
    let spread = st.spread;
    let end = (hi + d).min(len);
    let cost: Vec<f64> = (lo..end).map(|t| st.slot_cost(job, j, t, spread)).collect();
    let mut prefix = vec![0.0; cost.len() + 1];
    for (i, c) in cost.iter().enumerate() {
        prefix[i + 1] = prefix[i] + c;
    }
    let mut starts: Vec<(f64, usize)> = (lo..=hi)
        .map(|s| {
            let a = s - lo;
            let b = (a + d).min(cost.len());
            #[allow(clippy::cast_precision_loss, reason = "slot counts are small")]
            let missing = (a + d - b) as f64 * spread;
            (prefix[b] - prefix[a] + missing, s)
        })
        .collect();
    // Window sums come from prefix differences, which carry rounding noise; equal
    // costs must tie (and go to the earlier start), so compare them quantised.
    let scale = starts.iter().map(|x| x.0.abs()).fold(0.0, f64::max).max(1.0) * 1e-9;
    #[allow(clippy::cast_possible_truncation, reason = "a sort key; costs / scale stay far inside i64")]
    starts.sort_by_key(|x| ((x.0 / scale).round() as i64, x.1));
    let mut out: Vec<Cand> = Vec::with_capacity(starts.len() + 1);
    if j.pausable && d > 1 {
        // The `d` cheapest slots of the whole window, in time order.
        let wend = j.deadline.unwrap_or(len).min(len);
        let mut slots: Vec<(f64, usize)> = (lo..wend).map(|t| (st.slot_cost(job, j, t, spread), t)).collect();
        if slots.len() >= d {
            slots.sort_by(|x, y| x.0.total_cmp(&y.0).then(x.1.cmp(&y.1)));
            #[allow(clippy::cast_possible_truncation, reason = "slot indices are far below u32::MAX")]
            let mut pick: Vec<u32> = slots[..d].iter().map(|(_, t)| *t as u32).collect();
            pick.sort_unstable();
            if pick.windows(2).any(|w| w[1] != w[0] + 1) {
                out.push(Cand::Slots(pick));
            }
        }
    }
    out.extend(starts.into_iter().map(|(_, s)| start(s)));
    out
}

pub(crate) fn place(p: &Problem, ctx: &Context, quotas: Option<&Quotas>) -> Vec<Placement> {
    let strategy = p.options.strategy;
    let len = ctx.len;
    let mut pool_free = vec![0.0; p.pools.len() * len];
    for (pool, pi) in p.pools.iter().enumerate() {
        let base = ctx.node_base[pool];
        for node in base..base + pi.pool.nodes as usize {
            for t in 0..len {
                pool_free[pool * len + t] += ctx.free_cpu[node * len + t];
            }
        }
    }
    let mut st = State {
        p,
        ctx,
        free_cpu: ctx.free_cpu.clone(),
        free_gpu: ctx.free_gpu.clone(),
        gpu_max: (!ctx.free_gpu.is_empty()).then(|| BlockMax::new(&ctx.free_gpu, ctx.free_gpu.len() / len.max(1), len)),
        free_mem: ctx.free_mem.clone(),
        pool_free,
        failed: vec![None; p.pools.len() * len],
        quotas: quotas.cloned(),
        full_below: vec![0; p.pools.len() * len * BUCKETS.len()],
        mem_full_below: vec![0; p.pools.len() * len * MEM_BUCKETS.len()],
        cpu_max: BlockMax::new(&ctx.free_cpu, ctx.free_cpu.len() / len.max(1), len),
        mem_max: BlockMax::new(&ctx.free_mem, ctx.free_mem.len() / len.max(1), len),
        zoned: p.pools.iter().any(|q| !q.carbon.is_empty() && q.carbon != p.carbon),
        least_carbon: (0..len)
            .map(|t| (0..p.pools.len()).map(|q| p.weighed_carbon_at(q, t)).fold(f64::INFINITY, f64::min))
            .collect(),
        spread: {
            let (lo, hi) = (0..p.slots)
                .flat_map(|t| (0..p.pools.len()).map(move |q| p.weighed_carbon_at(q, t)))
                .fold((f64::INFINITY, 0.0f64), |(a, b), c| (a.min(c), b.max(c)));
            hi - lo + 1.0
        },
    };
    let mut order: Vec<usize> = (0..p.jobs.len()).collect();
    match strategy {
        Strategy::EarliestFit => order.sort_by_key(|&i| (p.jobs[i].release, i)),
        Strategy::Lp | Strategy::CarbonGreedy => order.sort_by(|&a, &b| {
            let (x, y) = (&p.jobs[a], &p.jobs[b]);
            let latest = |j: &PlanJob| j.deadline.map_or(usize::MAX, |d| d - j.duration.min(d));
            #[allow(clippy::cast_precision_loss, reason = "sizes are small")]
            let size = |j: &PlanJob| j.cores * j.duration as f64;
            latest(x)
                .cmp(&latest(y))
                .then(y.priority.cmp(&x.priority))
                .then(size(y).total_cmp(&size(x)))
                .then(a.cmp(&b))
        }),
    }
    let mut out = vec![Placement::Wait { reason: WaitReason::Capacity }; p.jobs.len()];
    // Waking late only pays where a sleeping node costs idle power.
    let lazy_wake = p.options.lazy_wake && p.pools.iter().any(|pi| !pi.pool.always_on && pi.pool.power.idle_w() > 0.0);
    for job in order {
        let j = &p.jobs[job];
        let (lo, hi) = match window(p, ctx, j) {
            Ok(w) => w,
            Err(reason) => {
                out[job] = Placement::Wait { reason };
                continue;
            }
        };
        let cands = candidates(&st, job, j, lo, hi, strategy);
        // Nodes that are on anyway first; a sleeping node is woken only for a job
        // that fits nowhere else in its window (earliest-fit takes any pool), and
        // only when its latest start lies inside the horizon: a woken node stays
        // powered for the job's whole run, and a job that may still start after
        // the horizon waits for room on nodes that are on anyway in a later plan.
        // With `lazy_wake` (and sleeping nodes that draw idle power when woken), a
        // job with a deadline wakes its node at its latest start, the last
        // responsible moment, if it can: until then each new plan,
        // with jobs finished and fresher forecasts, may find it room on nodes that
        // are on anyway (the simulator measured 2.5 % less carbon than waking at
        // the cleanest start).
        let may_wake = j.deadline.is_none_or(|d| d - j.duration < p.slots);
        let placed = match strategy {
            Strategy::EarliestFit => st.try_candidates(job, j, &cands, true),
            _ => st.try_candidates(job, j, &cands, false).or_else(|| {
                if !may_wake {
                    return None;
                }
                if lazy_wake && j.deadline.is_some() {
                    #[allow(clippy::cast_possible_truncation, reason = "slot indices are far below u32::MAX")]
                    let latest = [Cand::Start(hi as u32)];
                    if let Some(placed) = st.try_candidates(job, j, &latest, true) {
                        return Some(placed);
                    }
                }
                st.try_candidates(job, j, &cands, true)
            }),
        };
        if let Some(Choice { slots, pool, node, blocked, .. }) = placed {
            let start = slots[0] as usize;
            let delayed_by =
                (start > j.release).then_some(if blocked { WaitReason::Capacity } else { WaitReason::CarbonWindow });
            #[allow(clippy::cast_possible_truncation, reason = "node counts fit u32")]
            let node = (node - ctx.node_base[pool]) as u32;
            out[job] = Placement::Run { pool, node, slots, late: false, delayed_by };
            continue;
        }
        // No room before the deadline: run it as early as possible after all, late,
        // and say so; a job is never dropped silently.
        if j.deadline.is_some() && may_wake {
            let late = PlanJob { deadline: None, pausable: false, ..j.clone() };
            let hi = (p.slots - 1).min(len.saturating_sub(1));
            let cands = candidates(&st, job, &late, lo, hi, Strategy::EarliestFit);
            if let Some(Choice { slots, pool, node, .. }) = st.try_candidates(job, &late, &cands, true) {
                #[allow(clippy::cast_possible_truncation, reason = "node counts fit u32")]
                let node = (node - ctx.node_base[pool]) as u32;
                let late_end = slots.last().map_or(0, |t| *t as usize + 1) > j.deadline.unwrap_or(usize::MAX);
                out[job] = Placement::Run { pool, node, slots, late: late_end, delayed_by: Some(WaitReason::Capacity) };
                continue;
            }
        }
        out[job] = Placement::Wait { reason: WaitReason::Capacity };
    }
    out
}
