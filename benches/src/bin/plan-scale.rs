//! Plan a seeded synthetic cluster and queue of a given size and print the figures.
//!
//! `cargo run --release -p greenfill-benches --bin plan-scale -- --nodes 10000 --jobs 100000 --slots 96 --json`

use clap::Parser;
use greenfill_planner::synthetic::{Spec, generate};
use greenfill_planner::{Strategy, exact_lp, verify};
use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Plan a seeded synthetic instance and report time, carbon and memory")]
struct Args {
    #[arg(long, default_value_t = 100)]
    nodes: u32,
    #[arg(long, default_value_t = 1000)]
    jobs: usize,
    #[arg(long, default_value_t = 24)]
    slots: usize,
    /// Slot length in seconds.
    #[arg(long, default_value_t = 3600)]
    slot_s: i64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Batch demand as a share of batch capacity.
    #[arg(long, default_value_t = 0.5)]
    load: f64,
    /// Share of the pools whose nodes have 8 GPUs (issue 31's bar: 0.25).
    #[arg(long, default_value_t = 0.0)]
    gpu_pools: f64,
    /// Share of the jobs that ask for 1, 2 or 4 GPUs.
    #[arg(long, default_value_t = 0.0)]
    gpu_jobs: f64,
    /// Also solve the exact per-node LP on the same instance (slow past ~10^6 columns).
    #[arg(long)]
    exact: bool,
    /// Also plan with the carbon-greedy and earliest-fit baselines.
    #[arg(long)]
    baselines: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    nodes: u32,
    jobs: usize,
    slots: usize,
    seed: u64,
    generate_ms: f64,
    build_ms: f64,
    lp_ms: f64,
    place_ms: f64,
    solve_ms: f64,
    lp_status: String,
    carbon_kg: f64,
    batch_carbon_kg: f64,
    energy_kwh: f64,
    jobs_planned: usize,
    jobs_late: usize,
    capacity_violations: usize,
    other_violations: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    carbon_greedy_batch_carbon_kg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    earliest_fit_batch_carbon_kg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    earliest_fit_solve_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exact_carbon_kg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exact_batch_carbon_kg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exact_solve_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exact_columns: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exact_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    speedup_vs_exact: Option<f64>,
    peak_rss_mb: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let t = Instant::now();
    let mut p = generate(&Spec {
        nodes: a.nodes,
        jobs: a.jobs,
        slots: a.slots,
        slot_s: a.slot_s,
        seed: a.seed,
        load: a.load,
        gpu_pools: a.gpu_pools,
        gpu_jobs: a.gpu_jobs,
        ..Spec::default()
    });
    let generate_ms = t.elapsed().as_secs_f64() * 1000.0;
    let plan = p.clone().validate()?.plan();
    let v = verify(&p, &plan.placements, plan.energy.slots);
    let mut r = Report {
        nodes: a.nodes,
        jobs: a.jobs,
        slots: a.slots,
        seed: a.seed,
        generate_ms,
        build_ms: plan.build_ms,
        lp_ms: plan.lp_ms,
        place_ms: plan.place_ms,
        solve_ms: plan.solve_ms,
        lp_status: plan.lp_status.clone(),
        carbon_kg: plan.energy.carbon_kg,
        batch_carbon_kg: plan.energy.carbon_kg - plan.baseline.carbon_kg,
        energy_kwh: plan.energy.energy_kwh,
        jobs_planned: plan.jobs_planned(),
        jobs_late: plan.jobs_late(),
        capacity_violations: v.capacity,
        other_violations: v.total() - v.capacity,
        carbon_greedy_batch_carbon_kg: None,
        earliest_fit_batch_carbon_kg: None,
        earliest_fit_solve_ms: None,
        exact_carbon_kg: None,
        exact_batch_carbon_kg: None,
        exact_solve_ms: None,
        exact_columns: None,
        exact_status: None,
        speedup_vs_exact: None,
        peak_rss_mb: None,
    };
    drop(plan);
    if a.baselines {
        for s in [Strategy::CarbonGreedy, Strategy::EarliestFit] {
            p.options.strategy = s;
            let b = p.clone().validate()?.plan();
            let batch = b.energy.carbon_kg - b.baseline.carbon_kg;
            if s == Strategy::CarbonGreedy {
                r.carbon_greedy_batch_carbon_kg = Some(batch);
            } else {
                r.earliest_fit_batch_carbon_kg = Some(batch);
                r.earliest_fit_solve_ms = Some(b.solve_ms);
            }
        }
        p.options.strategy = Strategy::Lp;
    }
    r.peak_rss_mb = greenfill_benches::peak_rss_mb();
    if a.exact {
        p.options.time_limit = std::time::Duration::from_secs(600);
        let e = exact_lp(&p.clone().validate()?).map_err(anyhow::Error::msg)?;
        r.exact_carbon_kg = Some(e.carbon_kg);
        r.exact_batch_carbon_kg = Some(e.batch_carbon_kg);
        r.exact_solve_ms = Some(e.solve_ms);
        r.exact_columns = Some(e.columns);
        r.exact_status = Some(e.status);
        r.speedup_vs_exact = Some(e.solve_ms / r.solve_ms);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("{} nodes, {} jobs, {} slots (seed {})", r.nodes, r.jobs, r.slots, r.seed);
        println!(
            "  solve      {:.1} ms (build {:.1}, LP {:.1}, place {:.1}); LP {}",
            r.solve_ms, r.build_ms, r.lp_ms, r.place_ms, r.lp_status
        );
        println!(
            "  planned    {} ({} late); violations {} capacity, {} other",
            r.jobs_planned, r.jobs_late, r.capacity_violations, r.other_violations
        );
        println!("  carbon     {:.3} kg, of which batch {:.3} kg", r.carbon_kg, r.batch_carbon_kg);
        if let (Some(cg), Some(ef)) = (r.carbon_greedy_batch_carbon_kg, r.earliest_fit_batch_carbon_kg) {
            println!("  baselines  batch carbon: carbon-greedy {cg:.3} kg, earliest-fit {ef:.3} kg");
        }
        if let (Some(c), Some(ms)) = (r.exact_carbon_kg, r.exact_solve_ms) {
            println!(
                "  exact LP   {c:.3} kg in {ms:.0} ms ({} columns, {}); planner is {:.2} % above, {:.0}× faster",
                r.exact_columns.unwrap_or(0),
                r.exact_status.as_deref().unwrap_or(""),
                (r.carbon_kg / c - 1.0) * 100.0,
                ms / r.solve_ms
            );
        }
        println!("  peak RSS   {:.1} MiB", r.peak_rss_mb.unwrap_or(f64::NAN));
    }
    Ok(())
}
