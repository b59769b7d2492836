//! Seeded synthetic planning instances: a cluster of co-located (always-on) and
//! dedicated (may sleep) pools with a diurnal online load, a solar-shaped carbon
//! curve, and a queue of batch jobs. The same seed gives the same instance, so
//! tests, benchmarks and the exact-LP comparison run on identical inputs.

use crate::{PlanJob, PlanOptions, PoolInput, Problem};
use greenfill_core::cluster::{Pool, PowerModel};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::f64::consts::PI;

#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub nodes: u32,
    pub jobs: usize,
    pub slots: usize,
    /// Slot length in seconds.
    pub slot_s: i64,
    pub seed: u64,
    /// Share of jobs that may run in pieces.
    pub pausable: f64,
    /// Batch demand as a share of the cluster's batch capacity over the horizon.
    pub load: f64,
    /// Share of the pools (the last ones) whose nodes have 8 GPUs each.
    pub gpu_pools: f64,
    /// Share of the jobs that ask for 1, 2 or 4 GPUs.
    pub gpu_jobs: f64,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            nodes: 50,
            jobs: 200,
            slots: 24,
            slot_s: 3600,
            seed: 1,
            pausable: 0.3,
            load: 0.5,
            gpu_pools: 0.0,
            gpu_jobs: 0.0,
        }
    }
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "small generated sizes"
)]
pub fn generate(spec: &Spec) -> Problem {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let t = spec.slots;
    let pools_n = (spec.nodes / 5).clamp(1, 20) as usize;
    let day = (86_400 / spec.slot_s).max(1) as f64;
    let mut pools = Vec::with_capacity(pools_n);
    let mut left = spec.nodes;
    for i in 0..pools_n {
        let nodes = if i + 1 == pools_n { left } else { spec.nodes / pools_n as u32 };
        left -= nodes;
        let cores = [32.0, 48.0, 64.0, 96.0][rng.random_range(0..4)];
        let gib_per_core = [2.0, 4.0, 8.0][rng.random_range(0..3)];
        let idle_per_core = rng.random_range(1.0..3.0);
        let max_per_core = idle_per_core + rng.random_range(2.0..6.0);
        let always_on = i % 10 < 7;
        let pool = Pool {
            name: format!("pool-{i}"),
            nodes,
            cores,
            memory_gib: cores * gib_per_core,
            power: PowerModel::Linear { idle_w: idle_per_core * cores, max_w: max_per_core * cores },
            pue: rng.random_range(1.1..1.6),
            always_on,
            embodied_g_per_hour: 0.0,
            wake_wh: 0.0,
            zone: None,
            // The last share of the pools are GPU pools (no draw: the same seed
            // gives the same instance with or without them).
            gpus: if (pools_n - i) as f64 <= spec.gpu_pools * pools_n as f64 { 8 } else { 0 },
            gpu_busy_w: 0.0,
            gpu_idle_w: 0.0,
            gpu_model: String::new(),
        };
        let mut input = PoolInput::new(pool);
        if always_on {
            let base = rng.random_range(0.10..0.25);
            let amp = rng.random_range(0.05..0.25);
            let phase = rng.random_range(0.0..2.0 * PI);
            input.online_cpu = (0..t)
                .map(|s| {
                    let x = base
                        + amp * (0.5 + 0.5 * (2.0 * PI * s as f64 / day + phase).sin())
                        + rng.random_range(0.0..0.03);
                    x * cores
                })
                .collect();
            let mem = rng.random_range(0.3..0.5) * cores * gib_per_core;
            input.online_mem = vec![mem; t];
        }
        pools.push(input);
    }
    // Carbon: a daily curve with a midday solar valley, plus noise.
    let carbon: Vec<f64> = (0..t)
        .map(|s| {
            let hour = (s as f64 / day * 24.0) % 24.0;
            let solar = (-((hour - 13.0) / 3.0).powi(2)).exp();
            (300.0 - 130.0 * solar + 20.0 * (2.0 * PI * hour / 24.0).cos() + rng.random_range(-10.0..10.0)).max(20.0)
        })
        .collect();
    // Batch capacity (cores × slots) of the whole cluster, to size the queue.
    let capacity: f64 = pools
        .iter()
        .map(|p| {
            let cap = p.pool.cores * 0.9 * f64::from(p.pool.nodes);
            let online: f64 =
                if p.online_cpu.is_empty() { 0.0 } else { p.online_cpu.iter().sum::<f64>() * f64::from(p.pool.nodes) };
            cap * t as f64 - online
        })
        .sum();
    let cores_choices = [0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 8.0];
    let mut jobs = Vec::with_capacity(spec.jobs);
    let mean_work = capacity * spec.load / spec.jobs.max(1) as f64;
    for i in 0..spec.jobs {
        let cores = cores_choices[rng.random_range(0..cores_choices.len())];
        let max_d = (t / 4).max(1);
        let duration = ((mean_work / cores / 2.3).clamp(1.0, max_d as f64) * rng.random_range(0.3..1.7))
            .round()
            .clamp(1.0, max_d as f64) as usize;
        let release = rng.random_range(0..=(t * 3 / 4).min(t - duration));
        let room = t - release - duration;
        let slack = if room == 0 { 0 } else { rng.random_range(0..=room) };
        jobs.push(PlanJob {
            id: format!("job-{i}"),
            cores,
            mem_gib: cores * rng.random_range(1.0..6.0),
            release,
            deadline: Some(release + duration + slack),
            duration,
            pausable: rng.random_bool(spec.pausable),
            pool: None,
            priority: 0,
            gpus: if spec.gpu_jobs > 0.0 && rng.random_bool(spec.gpu_jobs) {
                [1, 2, 4][rng.random_range(0..3)]
            } else {
                0
            },
            gpu_model: None,
        });
    }
    Problem {
        start: 1_654_041_600,
        slot_s: spec.slot_s,
        slots: t,
        pools,
        carbon,
        price: Vec::new(),
        jobs,
        options: PlanOptions::default(),
    }
}
