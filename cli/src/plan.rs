//! `greenfill plan`: plan offline from files.

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use greenfill_core::cluster::ClusterConfig;
use greenfill_core::data::{CarbonOptions, JobFormat, load_carbon, load_jobs, load_wide};
use greenfill_core::time::{format_timestamp, parse_duration, parse_step, parse_timestamp};
use greenfill_planner::input::{OFFSET_LIMIT, queued_jobs, slot_values};
use greenfill_planner::{Placement, PlanOptions, PoolInput, ProblemBuilder, SlotClock, Strategy, WaitReason, verify};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub(crate) struct PlanArgs {
    /// How to reach the scheduler, for its current plan (without --cluster).
    #[command(flatten)]
    pub(crate) conn: crate::client::Conn,
    /// Cluster TOML: pools (nodes, cores, memory_gib, power, pue, always_on) and
    /// margins. Without it, the scheduler's current plan is shown.
    #[arg(long, requires = "jobs")]
    cluster: Option<PathBuf>,
    /// Batch jobs: greenfill CSV (arrival,duration,cpus[,memory][,deadline][,pausable][,id]),
    /// GAIA or Alibaba 2017.
    #[arg(long, requires = "cluster")]
    jobs: Option<PathBuf>,
    /// With the scheduler's plan: include a row per job.
    #[arg(long, conflicts_with = "cluster")]
    include_jobs: bool,
    /// Carbon-intensity forecast CSV (gCO2/kWh); see `greenfill data inspect`.
    #[arg(long)]
    carbon: Option<PathBuf>,
    /// Carbon intensity to use when no --carbon file is given, gCO2/kWh.
    #[arg(long, default_value_t = 400.0)]
    carbon_constant: f64,
    /// Online usage forecast CSV: a time column and one column per pool named after
    /// it, CPU use as a share of each node's cores (0-1); `<pool>:mem` columns for
    /// memory as a share of each node's memory.
    #[arg(long)]
    online: Option<PathBuf>,
    /// First slot's time (default: the carbon file's start, else the first arrival).
    #[arg(long)]
    start: Option<String>,
    /// Slot length.
    #[arg(long, default_value = "15m", value_parser = step_arg)]
    slot: i64,
    /// How far ahead to plan.
    #[arg(long, default_value = "24h", value_parser = step_arg)]
    horizon: i64,
    /// How to plan; the baselines are there for comparison.
    #[arg(long, value_enum, default_value = "lp")]
    strategy: StrategyArg,
    /// Wall-clock limit for the LP solver.
    #[arg(long, default_value = "10s")]
    time_limit: String,
    /// Print JSON (with every job's placement) instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StrategyArg {
    Lp,
    CarbonGreedy,
    EarliestFit,
}

fn step_arg(s: &str) -> Result<i64, String> {
    parse_step(s).ok_or_else(|| format!("`{s}` is not a duration: e.g. 900, 15m, 24h"))
}

#[derive(Debug, Serialize)]
struct Output {
    start: String,
    slot_s: i64,
    slots: usize,
    strategy: Strategy,
    jobs_total: usize,
    jobs_planned: usize,
    jobs_late: usize,
    jobs_waiting: usize,
    waiting_by_reason: BTreeMap<String, usize>,
    energy_kwh: f64,
    idle_kwh: f64,
    dynamic_kwh: f64,
    carbon_kg: f64,
    /// What the batch work adds to the cluster with no batch.
    batch_energy_kwh: f64,
    batch_carbon_kg: f64,
    powered_nodes: BTreeMap<String, Vec<u32>>,
    solve_ms: f64,
    lp_status: String,
    capacity_violations: usize,
    jobs: Vec<JobOut>,
}

#[derive(Debug, Serialize)]
struct JobOut {
    id: String,
    #[serde(flatten)]
    placement: PlacementOut,
}

#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum PlacementOut {
    Run { pool: String, node: u32, start: String, end: String, late: bool, delayed_by: Option<WaitReason> },
    Wait { reason: WaitReason },
}

impl PlanArgs {
    /// `Some((include_jobs, json))` when this asks for the scheduler's live plan.
    pub(crate) fn live(&self) -> Option<(bool, bool)> {
        self.cluster.is_none().then_some((self.include_jobs, self.json))
    }
}

pub(crate) fn run(args: &PlanArgs) -> Result<()> {
    let (Some(cluster), Some(jobs)) = (&args.cluster, &args.jobs) else {
        bail!("--cluster and --jobs are both needed")
    };
    let cluster = ClusterConfig::load(cluster)?;
    let slot_s = args.slot;
    let slots = usize::try_from(args.horizon / slot_s).unwrap_or(0);
    if slots == 0 {
        bail!("--horizon {} s is shorter than one --slot of {slot_s} s", args.horizon);
    }
    let trace = load_jobs(jobs, JobFormat::Auto)?;
    let carbon_series = match &args.carbon {
        Some(path) => Some(load_carbon(path, &CarbonOptions::default())?.series),
        None => None,
    };
    let start = match (&args.start, &carbon_series) {
        (Some(s), _) => parse_timestamp(s).with_context(|| format!("--start `{s}` is not a timestamp"))?,
        (None, Some(c)) => c.start,
        (None, None) => {
            let first = trace.jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
            if first < OFFSET_LIMIT { 0 } else { first.div_euclid(slot_s) * slot_s }
        }
    };
    let carbon = match &carbon_series {
        Some(c) => slot_values(c, start, slot_s, slots),
        None => vec![args.carbon_constant; slots],
    };
    let machine_gib = cluster.pools.iter().map(|p| p.memory_gib).fold(0.0, f64::max);
    let jobs = queued_jobs(&trace.jobs, start, machine_gib, 2_000_000)
        .map_err(|e| anyhow::anyhow!("{}: {e}", jobs.display()))?;
    let mut pools: Vec<PoolInput> = cluster.pools.iter().cloned().map(PoolInput::new).collect();
    if let Some(path) = &args.online {
        let series = load_wide(path, None)?;
        for s in &series {
            let (name, mem) = match s.id.strip_suffix(":mem") {
                Some(n) => (n, true),
                None => (s.id.as_str(), false),
            };
            let Some(pi) = pools.iter_mut().find(|p| p.pool.name == name) else {
                bail!(
                    "{}: column `{}` names no pool (pools: {})",
                    path.display(),
                    s.id,
                    cluster.pools.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
                );
            };
            let values = slot_values(s, start, slot_s, slots);
            if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                bail!("{}: column `{}`: value {v} is not a share between 0 and 1", path.display(), s.id);
            }
            let scale = if mem { pi.pool.memory_gib } else { pi.pool.cores };
            let v: Vec<f64> = values.iter().map(|x| x * scale).collect();
            if mem { pi.online_mem = v } else { pi.online_cpu = v }
        }
    }
    let time_limit = parse_duration(&args.time_limit)
        .with_context(|| format!("--time-limit `{}` is not a duration", args.time_limit))?;
    let strategy = match args.strategy {
        StrategyArg::Lp => Strategy::Lp,
        StrategyArg::CarbonGreedy => Strategy::CarbonGreedy,
        StrategyArg::EarliestFit => Strategy::EarliestFit,
    };
    let options = PlanOptions {
        cpu_margin: cluster.cpu_margin,
        mem_margin: cluster.mem_margin,
        time_limit: Duration::from_secs_f64(time_limit),
        strategy,
        // A one-shot plan is executed as is: wake at the cleanest start, and
        // weigh carbon alone (no later plan will need the capacity back).
        lazy_wake: false,
        delay_cost: 0.0,
        // Its wakes are the wakes it plans; no power cycle follows a one-shot plan.
        wake_overhead_s: 0.0,
        objective: greenfill_planner::Objective::Carbon,
    };
    // No guard slack: a one-shot plan is not redone as the guard slows jobs.
    let mut builder = ProblemBuilder::new(SlotClock { start, slot_s, slots }, pools, carbon, options, 0.0);
    for job in jobs {
        builder.queue(job);
    }
    let built = builder.build()?;
    let plan = built.plan();
    let problem = &built.problem;
    let violations = verify(problem, &plan.placements, plan.energy.slots);
    let mut waiting_by_reason = BTreeMap::new();
    let slot_time = |t: usize| format_timestamp(start + i64::try_from(t).unwrap_or(0) * slot_s);
    let jobs_out: Vec<JobOut> = problem
        .jobs
        .iter()
        .zip(&plan.placements)
        .map(|(j, p)| JobOut {
            id: j.id.clone(),
            placement: match p {
                Placement::Run { pool, node, slots, late, delayed_by } => PlacementOut::Run {
                    pool: problem.pools[*pool].pool.name.clone(),
                    node: *node,
                    start: slot_time(slots[0] as usize),
                    end: slot_time(*slots.last().unwrap_or(&0) as usize + 1),
                    late: *late,
                    delayed_by: *delayed_by,
                },
                Placement::Wait { reason } => {
                    *waiting_by_reason.entry(format!("{reason:?}")).or_insert(0) += 1;
                    PlacementOut::Wait { reason: *reason }
                }
            },
        })
        .collect();
    let out = Output {
        start: format_timestamp(start),
        slot_s,
        slots,
        strategy,
        jobs_total: problem.jobs.len(),
        jobs_planned: plan.jobs_planned(),
        jobs_late: plan.jobs_late(),
        jobs_waiting: problem.jobs.len() - plan.jobs_planned(),
        waiting_by_reason,
        energy_kwh: plan.energy.energy_kwh,
        idle_kwh: plan.energy.idle_kwh,
        dynamic_kwh: plan.energy.dynamic_kwh,
        carbon_kg: plan.energy.carbon_kg,
        batch_energy_kwh: plan.energy.energy_kwh - plan.baseline.energy_kwh,
        batch_carbon_kg: plan.energy.carbon_kg - plan.baseline.carbon_kg,
        powered_nodes: problem
            .pools
            .iter()
            .zip(&plan.powered)
            .map(|(p, v)| (p.pool.name.clone(), v[..slots].to_vec()))
            .collect(),
        solve_ms: plan.solve_ms,
        lp_status: plan.lp_status.clone(),
        capacity_violations: violations.capacity,
        jobs: jobs_out,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("plan from {} for {} slots of {} s ({:?})", out.start, slots, slot_s, strategy);
        println!(
            "  jobs      {} planned ({} late), {} waiting of {}",
            out.jobs_planned, out.jobs_late, out.jobs_waiting, out.jobs_total
        );
        for (reason, n) in &out.waiting_by_reason {
            println!("            {n} waiting: {reason}");
        }
        println!(
            "  energy    {:.1} kWh ({:.1} idle, {:.1} dynamic); batch adds {:.1} kWh",
            out.energy_kwh, out.idle_kwh, out.dynamic_kwh, out.batch_energy_kwh
        );
        println!("  carbon    {:.2} kg CO2; batch adds {:.2} kg", out.carbon_kg, out.batch_carbon_kg);
        for (pool, v) in &out.powered_nodes {
            println!(
                "  powered   {pool}: min {} max {} nodes",
                v.iter().min().unwrap_or(&0),
                v.iter().max().unwrap_or(&0)
            );
        }
        println!("  solved    in {:.1} ms; LP {}", out.solve_ms, out.lp_status);
        println!("  check     {} capacity violations", out.capacity_violations);
    }
    if violations.total() > 0 {
        bail!("internal error: the plan breaks {violations:?}; please report it");
    }
    Ok(())
}
