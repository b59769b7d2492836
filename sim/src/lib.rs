//! What-if simulation: replay an online usage trace, a batch job trace and a
//! carbon-intensity trace through several policies — among them greenfill's own
//! forecaster and planner, the very code the scheduler runs — and account energy,
//! carbon, utilisation, deadlines and online overloads with the actual traces.
//!
//! Architecture invariant: `sim` calls `greenfill_forecast` and
//! `greenfill_planner` (through its `ProblemBuilder`, as the scheduler does); it
//! never has a copy of either, and does not depend on the scheduler service
//! (`scripts/check-deps.sh`).

mod attribution;
mod bound;
mod engine;
mod guard;
mod inputs;
mod power;
mod replay;
mod report;
mod scenario;
mod sweep;

pub use attribution::{Attribution, Step as AttributionStep, attribute, why_no_attribution};
pub use bound::{Bound, lower_bound};
pub use engine::{JobStart, Parts, Policy, PolicyResult, StepRow};
pub use guard::{GuardModel, TICK_S};
pub use inputs::{Inputs, SimJob, load};
pub use power::SimPower;
pub use replay::{Ended, Fleet};
pub use report::{LIKE_WORK, Saved, Savings, Summary, summarize, write_outputs};
pub use scenario::{POLICIES, PowerSpec, Resolved, Scenario, ScenarioError, forecasts};
pub use sweep::{SweepRow, frontier_html, sweep};

/// Run every policy the scenario names; `progress(policy, share done)`.
pub fn run(
    r: &Resolved,
    inputs: &Inputs,
    mut progress: impl FnMut(&str, f64),
) -> Result<Vec<(Policy, PolicyResult)>, ScenarioError> {
    r.scenario
        .policies
        .iter()
        .filter_map(|name| Policy::parse(name))
        .map(|p| {
            let res = engine::run(inputs, r, p, Parts::of(p), |f| progress(p.name(), f)).map_err(|e| {
                ScenarioError::Plan { path: r.path.clone(), policy: p.name(), step: e.step, source: Box::new(e.source) }
            })?;
            Ok((p, res))
        })
        .collect()
}
