//! `plan-scale --exact` on a small instance, to check that the exact reference
//! still solves and the planner stays near it (issue 32: at 1,000 jobs × 100
//! nodes × 24 slots the reference stopped solving and nothing failed). The
//! times are by hand, in release (BENCHMARKS.md); this asserts no time.

use std::process::Command;

#[test]
fn plan_scale_exact_solves_and_the_plan_is_within_two_percent_of_it() {
    let args = ["--nodes", "40", "--jobs", "300", "--slots", "24", "--seed", "7", "--exact", "--json"];
    let out = Command::new(env!("CARGO_BIN_EXE_plan-scale")).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "plan-scale {args:?} failed: {stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(r["exact_status"], "optimal", "{r:#}");
    assert_eq!(r["jobs_planned"], 300, "{r:#}");
    assert_eq!(r["capacity_violations"], 0, "{r:#}");
    let (plan, exact) = (r["carbon_kg"].as_f64().unwrap(), r["exact_carbon_kg"].as_f64().unwrap());
    // The reference is a relaxation: a lower bound on any plan.
    assert!(exact <= plan + 1e-9, "{r:#}");
    assert!(plan <= exact * 1.02, "plan {plan:.3} kg against the exact optimum {exact:.3}: {r:#}");
}
