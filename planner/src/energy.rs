//! Energy and carbon of a plan, from its placements alone.

use crate::place::Context;
use crate::problem::{Placement, Problem};
use serde::Serialize;

/// Energy of a plan over the slots it covers (the horizon plus the tail of runs
/// that go past it). Facility figures: IT power × PUE.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Energy {
    pub energy_kwh: f64,
    /// Drawn by powered nodes at zero load, and by wakes (`Pool::wake_wh`).
    pub idle_kwh: f64,
    /// Drawn above idle by online and batch load.
    pub dynamic_kwh: f64,
    pub carbon_kg: f64,
    /// The energy bill at the problem's prices (0 when none was given).
    pub cost: f64,
    /// Slots accounted.
    pub slots: usize,
}

/// Batch CPU and memory per node and slot (`node × len`), from placements.
pub(crate) fn batch_use(
    p: &Problem,
    node_base: &[usize],
    len: usize,
    placements: &[Placement],
) -> (Vec<f64>, Vec<f64>) {
    let total = node_base.last().map_or(0, |b| b + p.pools.last().map_or(0, |x| x.pool.nodes as usize));
    let (mut cpu, mut mem) = (vec![0.0; total * len], vec![0.0; total * len]);
    for (j, pl) in p.jobs.iter().zip(placements) {
        if let Placement::Run { pool, node, slots, .. } = pl {
            let row = (node_base[*pool] + *node as usize) * len;
            for &t in slots {
                cpu[row + t as usize] += j.cores;
                mem[row + t as usize] += j.mem_gib;
            }
        }
    }
    (cpu, mem)
}

pub(crate) fn account(p: &Problem, ctx: &Context, placements: &[Placement]) -> (Energy, Vec<Vec<u32>>) {
    let len = ctx.len;
    let (batch, _) = batch_use(p, &ctx.node_base, len, placements);
    let sh = p.slot_hours();
    let mut e = Energy { slots: len, ..Energy::default() };
    let mut powered = Vec::with_capacity(p.pools.len());
    for (pool, pi) in p.pools.iter().enumerate() {
        let mut on = vec![0u32; len];
        let model = &pi.pool.power;
        let idle_w = model.idle_w();
        // GPUs: idle while the node is powered, busy while running work holds them.
        let gpu_idle_w = f64::from(pi.pool.gpus) * pi.pool.gpu_idle_w;
        let wake_kwh = pi.pool.wake_wh * pi.pool.pue / 1000.0;
        for n in 0..pi.pool.nodes as usize {
            let row = (ctx.node_base[pool] + n) * len;
            for (t, count) in on.iter_mut().enumerate() {
                let b = batch[row + t];
                if !pi.pool.always_on && b <= 0.0 {
                    continue;
                }
                // A sleeping node powered now and not the slot before (or with
                // nothing running on it at the start) is woken: its wake energy.
                let woken = !pi.pool.always_on
                    && if t == 0 { pi.online_cpu_at(p.slots, n, 0) <= 0.0 } else { batch[row + t - 1] <= 0.0 };
                if woken && wake_kwh > 0.0 {
                    e.energy_kwh += wake_kwh;
                    e.idle_kwh += wake_kwh;
                    e.carbon_kg += wake_kwh * p.carbon_at(pool, t) / 1000.0;
                    e.cost += wake_kwh * p.price_at(pool, t) / 1000.0;
                }
                *count += 1;
                let load = pi.online_cpu_at(p.slots, n, t.min(p.slots - 1)) + b;
                let u = if pi.pool.cores > 0.0 { load / pi.pool.cores } else { 0.0 };
                let gpu_busy_w = f64::from(pi.gpus_used_at(p.slots, n, t.min(p.slots - 1))) * pi.pool.gpu_dynamic_w();
                let w = model.watts(u) + gpu_idle_w + gpu_busy_w;
                let kwh = w * pi.pool.pue * sh / 1000.0;
                e.energy_kwh += kwh;
                e.idle_kwh += (idle_w + gpu_idle_w) * pi.pool.pue * sh / 1000.0;
                e.dynamic_kwh += (w - idle_w - gpu_idle_w) * pi.pool.pue * sh / 1000.0;
                e.carbon_kg += kwh * p.carbon_at(pool, t) / 1000.0;
                e.cost += kwh * p.price_at(pool, t) / 1000.0;
            }
        }
        powered.push(on);
    }
    gpu_energy(p, placements, &mut e);
    (e, powered)
}

/// What planned jobs' GPUs draw above idle while they run.
fn gpu_energy(p: &Problem, placements: &[Placement], e: &mut Energy) {
    let sh = p.slot_hours();
    for (j, pl) in p.jobs.iter().zip(placements) {
        let Placement::Run { pool, slots, .. } = pl else { continue };
        let pi = &p.pools[*pool].pool;
        let kwh = f64::from(j.gpus) * pi.gpu_dynamic_w() * pi.pue * sh / 1000.0;
        if kwh <= 0.0 {
            continue;
        }
        for &t in slots {
            e.energy_kwh += kwh;
            e.dynamic_kwh += kwh;
            e.carbon_kg += kwh * p.carbon_at(*pool, t as usize) / 1000.0;
            e.cost += kwh * p.price_at(*pool, t as usize) / 1000.0;
        }
    }
}
