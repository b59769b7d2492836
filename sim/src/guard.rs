//! The agent's guard as the simulator runs it: the same policy
//! ([`greenfill_core::guard::CpuCapPolicy`]) the agent enforces every tick,
//! decided once per step for every powered node, with the cap carried from step
//! to step as the agent carries it from tick to tick. A step of `step_s` seconds
//! is `step_s / TICK_S` of the agent's ticks (its rise limit scales with them).
//! The simulator has no PSI: online pressure never halves the cap here.
//!
//! Where the agent runs batch at the kernel's idle priority without the usage
//! formula ([`greenfill_core::guard::Suppress::Auto`] on a 5.15+ kernel), batch
//! gets the CPU online leaves, `cores − online`: the qos benchmark measured
//! 93–99 % of the idle CPU harvested that way, with online p99 unchanged.

use greenfill_core::guard::{CpuCapInput, CpuCapPolicy};

/// The agent's default tick (`--interval 1s`).
pub const TICK_S: f64 = 1.0;

/// Per node, the cap in force.
#[derive(Debug, Clone)]
pub struct GuardModel {
    policy: CpuCapPolicy,
    ticks_per_step: f64,
    caps: Vec<Option<f64>>,
}

impl GuardModel {
    pub fn new(policy: CpuCapPolicy, nodes: usize, step_s: f64) -> GuardModel {
        GuardModel { policy, ticks_per_step: (step_s / TICK_S).max(1.0), caps: vec![None; nodes] }
    }

    /// The batch cap of `node` for this step, given its cores and its online use.
    pub fn step(&mut self, node: usize, cores: f64, online: f64) -> f64 {
        let input = CpuCapInput {
            cpus: cores,
            online,
            online_psi: None,
            scheduler_cap: None,
            ticks: self.ticks_per_step,
            pressure_event: false,
        };
        let cap = self.policy.decide(self.caps[node], &input).cap;
        self.caps[node] = Some(cap);
        if self.policy.quota_loop {
            cap
        } else {
            // Idle priority: online preempts batch, which gets what online leaves.
            cap.min((cores - online).max(0.0))
        }
    }
}
