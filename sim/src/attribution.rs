//! Where greenfill's saving comes from (issue 27): from batch on dedicated
//! machines to greenfill one part at a time, each step a run of its own on the
//! same traces. Step k's saving is run k−1's energy and carbon minus run k's, so
//! the steps sum to the whole saving (dedicated − greenfill) by construction;
//! what the table adds is which part earns it.

use crate::engine::{self, Parts, Policy, PolicyResult};
use crate::inputs::Inputs;
use crate::report::{LIKE_WORK, unlike_work};
use crate::scenario::{Resolved, ScenarioError};
use serde::Serialize;

/// One step of the ladder.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What this step adds, e.g. "+ carbon timing".
    pub step: &'static str,
    /// The policy run and the parts it had.
    pub policy: &'static str,
    pub parts: Parts,
    pub energy_kwh: f64,
    pub carbon_kg: f64,
    /// The energy bill at `[price]`'s prices (0 without one).
    pub cost: f64,
    pub batch_core_hours: f64,
    /// Against the step before (the first: against dedicated).
    pub saved_kwh: f64,
    pub saved_kg: f64,
    pub saved_cost: f64,
    /// Of greenfill's whole carbon and energy saving against dedicated.
    pub share_of_carbon_pct: f64,
    pub share_of_energy_pct: f64,
    /// Its batch core-hours are within [`LIKE_WORK`] of dedicated's.
    pub like_work: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attribution {
    /// Dedicated − greenfill: what the steps sum to.
    pub total_saved_kwh: f64,
    pub total_saved_kg: f64,
    pub total_saved_cost: f64,
    pub steps: Vec<Step>,
}

const OFF: Parts = Parts { power_down: false, timing: false, zones: false };
const SLEEP: Parts = Parts { power_down: true, ..OFF };

/// The ladder: each step turns one more part on. Power-down comes first: it is
/// what a co-location's saving is made of (the machines it frees must sleep),
/// and alone it is what a site gets without co-location.
const LADDER: [(&str, Policy, Parts); 5] = [
    ("power-down of idle batch machines", Policy::Dedicated, SLEEP),
    ("+ co-location, first fit", Policy::Asap, SLEEP),
    ("+ forecast placement", Policy::Greenfill, SLEEP),
    ("+ carbon timing", Policy::Greenfill, Parts { timing: true, ..SLEEP }),
    ("+ zone placement", Policy::Greenfill, Parts::ALL),
];

/// Why `results` (a `run` of the scenario) cannot be attributed, if it cannot:
/// it needs dedicated and greenfill, on like work.
pub fn why_no_attribution(results: &[(Policy, PolicyResult)]) -> Option<String> {
    let get = |p: Policy| results.iter().find(|(q, _)| *q == p).map(|(_, x)| x);
    match (get(Policy::Dedicated), get(Policy::Greenfill)) {
        (Some(d), Some(g)) => unlike_work("dedicated", d, g),
        _ => Some(format!(
            "the scenario's policies must include dedicated and greenfill (it runs {})",
            results.iter().map(|(p, _)| p.name()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Run the ladder's steps that `results` (a `run` of the scenario) does not
/// hold already; `None` where [`why_no_attribution`] says why.
/// `progress(step, share done)`.
pub fn attribute(
    r: &Resolved,
    inputs: &Inputs,
    results: &[(Policy, PolicyResult)],
    mut progress: impl FnMut(&str, f64),
) -> Result<Option<Attribution>, ScenarioError> {
    let get = |p: Policy| results.iter().find(|(q, _)| *q == p).map(|(_, x)| x);
    let (Some(dedicated), Some(greenfill)) = (get(Policy::Dedicated), get(Policy::Greenfill)) else {
        return Ok(None);
    };
    if why_no_attribution(results).is_some() {
        return Ok(None);
    }
    let zoned = inputs.pool_zone.iter().any(Option::is_some);
    // Zone placement is a step only where pools have zones.
    let ladder: Vec<_> = LADDER.iter().filter(|(_, _, parts)| zoned || *parts != Parts::ALL).collect();
    let ran = |policy: Policy, parts: Parts| get(policy).filter(|_| parts.same_run(Parts::of(policy), policy, zoned));
    let mut runs: Vec<Option<PolicyResult>> = Vec::with_capacity(ladder.len());
    for &&(step, policy, parts) in &ladder {
        if ran(policy, parts).is_some() {
            runs.push(None);
            continue;
        }
        let res = engine::run(inputs, r, policy, parts, |f| progress(step, f)).map_err(|e| ScenarioError::Plan {
            path: r.path.clone(),
            policy: policy.name(),
            step: e.step,
            source: Box::new(e.source),
        })?;
        runs.push(Some(res));
    }
    let mut chain: Vec<&PolicyResult> = vec![dedicated];
    for (&&(_, policy, parts), own) in ladder.iter().zip(&runs) {
        chain.push(own.as_ref().or_else(|| ran(policy, parts)).expect("run above or by the scenario"));
    }
    // Timing weighs what the objective says: carbon, or the bill.
    let label = |step: &'static str| match step {
        "+ carbon timing" if r.objective != greenfill_planner::Objective::Carbon => "+ timing (by the objective)",
        s => s,
    };
    let steps = ladder
        .iter()
        .zip(chain.windows(2))
        .map(|(&&(step, policy, parts), w)| row(label(step), policy, parts, w[0], w[1], dedicated, greenfill))
        .collect();
    Ok(Some(Attribution {
        total_saved_kwh: dedicated.energy_kwh - greenfill.energy_kwh,
        total_saved_kg: dedicated.carbon_kg - greenfill.carbon_kg,
        total_saved_cost: dedicated.cost - greenfill.cost,
        steps,
    }))
}

fn row(
    step: &'static str,
    policy: Policy,
    parts: Parts,
    before: &PolicyResult,
    this: &PolicyResult,
    dedicated: &PolicyResult,
    greenfill: &PolicyResult,
) -> Step {
    let share = |x: f64, total: f64| if total.abs() > 0.0 { x / total * 100.0 } else { 0.0 };
    let (saved_kwh, saved_kg) = (before.energy_kwh - this.energy_kwh, before.carbon_kg - this.carbon_kg);
    let most = dedicated.batch_core_hours.max(this.batch_core_hours);
    Step {
        step,
        policy: policy.name(),
        parts,
        energy_kwh: this.energy_kwh,
        carbon_kg: this.carbon_kg,
        cost: this.cost,
        batch_core_hours: this.batch_core_hours,
        saved_kwh,
        saved_kg,
        saved_cost: before.cost - this.cost,
        share_of_carbon_pct: share(saved_kg, dedicated.carbon_kg - greenfill.carbon_kg),
        share_of_energy_pct: share(saved_kwh, dedicated.energy_kwh - greenfill.energy_kwh),
        like_work: most <= 0.0 || (dedicated.batch_core_hours - this.batch_core_hours).abs() <= LIKE_WORK * most,
    }
}
