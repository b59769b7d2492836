//! greenfill's planner: where and when every batch job runs, and how many nodes
//! stay powered. The scheduler service, the simulator and `greenfill plan` all
//! call this crate; none has a copy of it.
//!
//! Architecture invariant: the planner is a pure function of its [`Problem`]: no
//! IO, no clock, no async. Same problem, same plan. This crate must not depend on
//! tonic, hyper, tokio or rusqlite (`scripts/test.sh` checks `cargo tree`).
//!
//! # Shape
//! 1. **Plan** ([`lp`]): an aggregated LP, solved by HiGHS with a time limit. Jobs
//!    are grouped into classes by release and deadline, slots into blocks (at most
//!    48), pools into capacity segments ordered by watts per core (free capacity on
//!    always-on nodes, then waking a sleeping node). It decides how many cores of
//!    each class run in each block: a time profile that respects every class's
//!    window and the total capacity, at least carbon. Its size does not grow with
//!    the number of jobs or nodes.
//! 2. **Place** ([`place`]): a greedy pass binds each real job to a node and start
//!    slot, earliest deadline first, choosing the start whose slots are cheapest in
//!    carbon *and* within its class's quota from the LP, then the most efficient
//!    pool with a node that fits (CPU and memory, every slot of the run). Capacity
//!    is checked per node and per slot here, so the plan never exceeds it whatever
//!    the LP said.
//! 3. **Account** ([`energy`]): powered nodes per pool and slot, idle and dynamic
//!    energy, carbon, from the placements alone. [`verify`] recomputes capacity use
//!    from the placements independently.
//!
//! [`exact_lp`] is the per-node time-indexed LP (one column per job × node × slot):
//! the reference optimum for small instances.

mod blockmax;
mod energy;
mod exact;
pub mod input;
mod lp;
mod place;
pub mod power;
mod problem;
pub mod synthetic;
mod verify;

mod build;

pub use build::{Built, ProblemBuilder, QueuedJob, RunningJob, SlotClock};
pub use energy::Energy;
pub use exact::{ExactResult, exact_lp};
pub use problem::{
    GUARD_SLACK, Objective, Placement, Plan, PlanJob, PlanOptions, PoolInput, Problem, ProblemError, Strategy,
    ValidProblem, WaitReason, intensity_error,
};
pub use verify::{Violations, verify};

use std::time::Instant;

impl ValidProblem {
    /// Plan this problem. Never panics; every job ends up placed or waiting with
    /// a reason.
    pub fn plan(&self) -> Plan {
        let t0 = Instant::now();
        let ctx = place::Context::new(self);
        let build_ms = ms(t0);
        let t1 = Instant::now();
        let (quotas, lp_status) = match self.options.strategy {
            Strategy::Lp => match lp::solve(self, &ctx) {
                Ok((q, status)) => (Some(q), status),
                Err(e) => (None, format!("lp failed ({e}); carbon-greedy placement")),
            },
            Strategy::CarbonGreedy => (None, "not used".to_owned()),
            Strategy::EarliestFit => (None, "not used".to_owned()),
        };
        let lp_ms = ms(t1);
        let t2 = Instant::now();
        let placements = place::place(self, &ctx, quotas.as_ref());
        let place_ms = ms(t2);
        let (energy, powered) = energy::account(self, &ctx, &placements);
        let none = vec![Placement::Wait { reason: WaitReason::Capacity }; self.jobs.len()];
        let (baseline, _) = energy::account(self, &ctx, &none);
        Plan { placements, powered, energy, baseline, build_ms, lp_ms, place_ms, solve_ms: ms(t0), lp_status }
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}
