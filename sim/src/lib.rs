//! What-if simulation: replay an online usage trace, a batch job trace and a
//! carbon-intensity trace through several policies — among them greenfill's own
//! forecaster and planner, the very code the scheduler runs — and account energy,
//! carbon, utilisation, deadlines and online overloads with the actual traces.
//!
//! Architecture invariant: `sim` calls `greenfill_forecast` and
//! `greenfill_scheduler::Problem::plan`; it never has a copy of either.

mod engine;
mod inputs;
mod report;
mod scenario;
mod sweep;

pub use engine::{Policy, PolicyResult, StepRow};
pub use inputs::{Inputs, SimJob, load};
pub use report::{Saved, Savings, Summary, summarize, write_outputs};
pub use scenario::{POLICIES, Resolved, Scenario, ScenarioError, forecasts};
pub use sweep::{SweepRow, sweep};

/// Run every policy the scenario names; `progress(policy, share done)`.
pub fn run(r: &Resolved, inputs: &Inputs, mut progress: impl FnMut(&str, f64)) -> Vec<(Policy, PolicyResult)> {
    r.scenario
        .policies
        .iter()
        .filter_map(|name| Policy::parse(name))
        .map(|p| {
            let res = engine::run(inputs, r, p, |f| progress(p.name(), f));
            (p, res)
        })
        .collect()
}
