//! greenfill's scheduler: the planner, used unchanged by the scheduler service and
//! by the simulator.
//!
//! Architecture invariant: the planner is a pure function of its [`Problem`]: no IO,
//! no clock, no async. Same problem, same plan.

pub mod input;
pub mod planner;
pub mod service;
pub mod store;
pub mod synthetic;

pub use planner::{
    Energy, GUARD_SLACK, Placement, Plan, PlanJob, PlanOptions, PoolInput, Problem, ProblemError, Strategy, Violations,
    WaitReason, exact_lp, verify,
};
