//! The planner's guarantees, checked by an independent verifier on many seeded
//! instances, and its answers to bad input.

use greenfill_core::cluster::{Pool, PowerModel};
use greenfill_planner::synthetic::{Spec, generate};
use greenfill_planner::{
    Objective, Placement, Plan, PlanJob, PlanOptions, PoolInput, Problem, ProblemError, Strategy, WaitReason, exact_lp,
    verify,
};
use proptest::prelude::*;
use std::time::Duration;

/// Validate and plan; the instances here are valid by construction.
fn plan_of(p: &Problem) -> Plan {
    p.clone().validate().expect("a valid instance").plan()
}

const STRATEGIES: [Strategy; 3] = [Strategy::Lp, Strategy::CarbonGreedy, Strategy::EarliestFit];

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// No plan exceeds any node's CPU or memory in any slot, starts a job before its
    /// release, ends one after its deadline without saying it is late, splits a
    /// non-pausable job, or runs a job for other than its duration.
    #[test]
    fn plans_keep_every_rule(
        seed in 0u64..10_000,
        nodes in 1u32..30,
        jobs in 0usize..80,
        slots in 4usize..40,
        pausable in 0.0f64..1.0,
        load in 0.1f64..2.5,
    ) {
        let mut p = generate(&Spec { nodes, jobs, slots, slot_s: 900, seed, pausable, load, ..Spec::default() });
        prop_assert!(p.clone().validate().is_ok());
        for s in STRATEGIES {
            p.options.strategy = s;
            let plan = plan_of(&p);
            let v = verify(&p, &plan.placements, plan.energy.slots);
            prop_assert_eq!(v.total(), 0, "{:?}: {:?}", s, v);
            prop_assert_eq!(plan.placements.len(), p.jobs.len());
            prop_assert!(plan.energy.carbon_kg + 1e-9 >= plan.baseline.carbon_kg);
            for (j, pl) in p.jobs.iter().zip(&plan.placements) {
                if let Placement::Run { slots, late, .. } = pl {
                    prop_assert!(*late == j.deadline.is_some_and(|d| *slots.last().unwrap() as usize >= d));
                }
            }
        }
    }

    /// With GPU pools and jobs that ask for GPUs, the same rules hold, no node
    /// holds more GPUs than it has in any slot, and a GPU job runs only in a
    /// pool with GPUs.
    #[test]
    fn plans_with_gpus_keep_every_rule(
        seed in 0u64..10_000,
        nodes in 5u32..40,
        jobs in 0usize..80,
        slots in 4usize..30,
        gpu_pools in 0.1f64..0.6,
        gpu_jobs in 0.0f64..0.5,
        load in 0.1f64..2.0,
    ) {
        let spec = Spec { nodes, jobs, slots, slot_s: 900, seed, load, gpu_pools, gpu_jobs, ..Spec::default() };
        let mut p = generate(&spec);
        for s in STRATEGIES {
            p.options.strategy = s;
            let plan = plan_of(&p);
            let v = verify(&p, &plan.placements, plan.energy.slots);
            prop_assert_eq!(v.total(), 0, "{:?}: {:?}", s, v);
            for (j, pl) in p.jobs.iter().zip(&plan.placements) {
                if let (Placement::Run { pool, .. }, true) = (pl, j.gpus > 0) {
                    prop_assert!(p.pools[*pool].pool.gpus >= j.gpus);
                }
            }
        }
    }

    /// Same problem, same plan.
    #[test]
    fn plans_are_deterministic(seed in 0u64..1000) {
        let p = generate(&Spec { nodes: 12, jobs: 40, slots: 24, seed, ..Spec::default() });
        let (a, b) = (plan_of(&p), plan_of(&p));
        prop_assert_eq!(a.placements, b.placements);
        prop_assert_eq!(a.energy, b.energy);
    }
}

#[test]
fn carbon_within_two_percent_of_the_exact_optimum_and_below_earliest_fit() {
    for seed in 1..=3 {
        let mut p = generate(&Spec { nodes: 50, jobs: 200, slots: 24, seed, ..Spec::default() });
        let exact = exact_lp(&p.clone().validate().unwrap()).unwrap();
        assert_eq!(exact.status, "optimal");
        let plan = plan_of(&p);
        p.options.strategy = Strategy::EarliestFit;
        let greedy = plan_of(&p);
        let gap = plan.energy.carbon_kg / exact.carbon_kg - 1.0;
        eprintln!(
            "seed {seed}: exact {:.3} kg, greenfill {:.3} kg ({:+.2} %), earliest-fit {:.3} kg; batch part: exact {:.3}, greenfill {:.3}, earliest-fit {:.3}",
            exact.carbon_kg,
            plan.energy.carbon_kg,
            gap * 100.0,
            greedy.energy.carbon_kg,
            exact.batch_carbon_kg,
            plan.energy.carbon_kg - plan.baseline.carbon_kg,
            greedy.energy.carbon_kg - greedy.baseline.carbon_kg,
        );
        assert!(gap > -1e-6, "a plan cannot beat the relaxation's optimum: {gap}");
        assert!(gap < 0.02, "seed {seed}: {:.2} % above the exact optimum", gap * 100.0);
        assert!(plan.energy.carbon_kg < greedy.energy.carbon_kg, "seed {seed}");
        assert_eq!(plan.jobs_planned(), 200);
    }
}

fn pool(name: &str, nodes: u32, cores: f64, mem: f64, always_on: bool) -> PoolInput {
    PoolInput::new(Pool {
        gpus: 0,
        name: name.into(),
        nodes,
        cores,
        memory_gib: mem,
        power: PowerModel::Linear { idle_w: 100.0, max_w: 300.0 },
        pue: 1.2,
        always_on,
        embodied_g_per_hour: 0.0,
        wake_wh: 0.0,
        zone: None,
        gpu_busy_w: 0.0,
        gpu_idle_w: 0.0,
        gpu_model: String::new(),
    })
}

fn job(id: &str, cores: f64, release: usize, duration: usize, deadline: Option<usize>) -> PlanJob {
    PlanJob {
        gpus: 0,
        id: id.into(),
        cores,
        mem_gib: 1.0,
        release,
        deadline,
        duration,
        pausable: false,
        pool: None,
        priority: 0,
        gpu_model: None,
    }
}

#[test]
fn aiming_early_keeps_a_share_of_the_duration_before_the_deadline_when_it_can() {
    let d = |release, deadline, duration, share| job("j", 1.0, release, duration, deadline).aim_early(share).deadline;
    // 5 % of 40 slots = 2 slots held back.
    assert_eq!(d(0, Some(100), 40, 0.05), Some(98));
    // Rounded down: 5 % of 10 slots holds nothing back.
    assert_eq!(d(0, Some(100), 10, 0.05), Some(100));
    // Not before release + duration: 10 + 40 = 50.
    assert_eq!(d(10, Some(51), 40, 0.10), Some(50));
    // Already too tight: the deadline stays; it never moves later.
    assert_eq!(d(10, Some(30), 40, 0.10), Some(30));
    assert_eq!(d(0, None, 40, 0.10), None);
    assert_eq!(d(0, Some(100), 40, 0.0), Some(100));
}

fn problem(pools: Vec<PoolInput>, jobs: Vec<PlanJob>, carbon: Vec<f64>) -> Problem {
    Problem {
        start: 0,
        slot_s: 3600,
        slots: carbon.len(),
        pools,
        carbon,
        price: Vec::new(),
        jobs,
        options: Default::default(),
    }
}

#[test]
fn every_job_gets_a_reason_when_it_cannot_run() {
    let p = problem(
        vec![pool("small", 2, 8.0, 32.0, true), pool("empty", 3, 0.0, 0.0, false)],
        vec![
            job("huge", 64.0, 0, 1, None),
            job("backwards", 1.0, 5, 2, Some(3)),
            job("later", 1.0, 30, 1, None),
            job("fine", 1.0, 0, 2, Some(4)),
        ],
        vec![100.0; 6],
    );
    p.clone().validate().unwrap();
    let plan = plan_of(&p);
    let reason = |i: usize| match &plan.placements[i] {
        Placement::Wait { reason } => Some(*reason),
        Placement::Run { .. } => None,
    };
    assert_eq!(reason(0), Some(WaitReason::LargerThanAnyNode));
    assert_eq!(reason(1), Some(WaitReason::DeadlineImpossible));
    assert_eq!(reason(2), Some(WaitReason::NotReleased));
    assert_eq!(reason(3), None);
    assert_eq!(verify(&p, &plan.placements, plan.energy.slots).total(), 0);
}

#[test]
fn an_overloaded_cluster_reports_late_and_waiting_jobs_instead_of_dropping_them() {
    // One node of 4 usable cores (margin 0), 3 slots, 10 jobs of 2 cores × 2 slots with
    // deadline at slot 3: at most 2 fit before the deadline.
    let mut p = problem(
        vec![pool("one", 1, 4.0, 64.0, true)],
        (0..10).map(|i| job(&format!("j{i}"), 2.0, 0, 2, Some(3))).collect(),
        vec![50.0, 300.0, 50.0],
    );
    p.options.cpu_margin = 0.0;
    let plan = plan_of(&p);
    let on_time = plan.placements.iter().filter(|x| matches!(x, Placement::Run { late: false, .. })).count();
    let late = plan.jobs_late();
    let waiting =
        plan.placements.iter().filter(|x| matches!(x, Placement::Wait { reason: WaitReason::Capacity })).count();
    assert_eq!(on_time, 2);
    assert_eq!(on_time + late + waiting, 10);
    assert_eq!(verify(&p, &plan.placements, plan.energy.slots).total(), 0);
}

#[test]
fn carbon_aware_timing_moves_work_to_the_clean_slot() {
    let mut p = problem(
        vec![pool("a", 1, 16.0, 64.0, true)],
        vec![job("j", 2.0, 0, 1, Some(4))],
        vec![400.0, 380.0, 90.0, 410.0],
    );
    for s in [Strategy::Lp, Strategy::CarbonGreedy] {
        p.options.strategy = s;
        let plan = plan_of(&p);
        assert_eq!(plan.placements[0].start(), Some(2), "{s:?}");
        assert!(matches!(plan.placements[0], Placement::Run { delayed_by: Some(WaitReason::CarbonWindow), .. }));
    }
    p.options.strategy = Strategy::EarliestFit;
    assert_eq!(plan_of(&p).placements[0].start(), Some(0));
}

/// Carbon is lowest in slot 1, the price in slot 3 (and negative there):
/// each objective takes its own slot, and a carbon price moves `both` from
/// the cheap slot to the clean one once a tonne costs more than the price gap.
/// One node with 2 GPUs (and CPU for all): three 1-GPU jobs that could all
/// start now run two at a time, and a running job that holds a GPU leaves one.
#[test]
fn a_node_runs_no_more_gpu_jobs_at_once_than_it_has_gpus() {
    let mut a = pool("gpu", 1, 64.0, 512.0, true);
    a.pool.gpus = 2;
    let gpu_job = |id: &str| PlanJob { gpus: 1, ..job(id, 1.0, 0, 2, Some(8)) };
    let mut p = problem(vec![a], vec![gpu_job("a"), gpu_job("b"), gpu_job("c")], vec![300.0; 8]);
    p.options.delay_cost = 0.5;
    let starts = |p: &Problem| {
        let plan = plan_of(p);
        assert_eq!(verify(p, &plan.placements, plan.energy.slots).total(), 0);
        let mut s: Vec<usize> = plan.placements.iter().map(|x| x.start().unwrap()).collect();
        s.sort_unstable();
        s
    };
    assert_eq!(starts(&p), [0, 0, 2], "two at once, the third after them");
    // A running job holds one GPU for the first 4 slots: one at a time then.
    p.pools[0].gpus_used = vec![1, 1, 1, 1, 0, 0, 0, 0];
    assert_eq!(starts(&p), [0, 2, 4]);
    // More GPUs than any node has: a reason, never a placement.
    p.jobs.push(PlanJob { gpus: 4, ..job("big", 1.0, 0, 1, None) });
    let plan = plan_of(&p);
    assert_eq!(plan.placements[3], Placement::Wait { reason: WaitReason::LargerThanAnyNode });
}

/// Two GPU pools: L4 nodes in the clean zone, A100 nodes in a dirty one. A job
/// asking for an A100 runs only on one, a job for any GPU takes the clean L4,
/// and a model no pool has waits with a reason; `verify` counts a wrong model.
#[test]
fn a_job_asking_for_a_gpu_model_runs_only_in_a_pool_of_that_model() {
    let mut l4 = pool("l4", 1, 32.0, 256.0, true);
    (l4.pool.gpus, l4.pool.gpu_model, l4.pool.zone) = (4, "NVIDIA L4".into(), Some("clean".into()));
    l4.carbon = vec![50.0; 4];
    let mut a100 = pool("a100", 1, 32.0, 256.0, true);
    (a100.pool.gpus, a100.pool.gpu_model, a100.pool.zone) = (4, "NVIDIA A100-SXM4-40GB".into(), Some("dirty".into()));
    a100.carbon = vec![500.0; 4];
    let on =
        |model: Option<&str>| PlanJob { gpus: 1, gpu_model: model.map(Into::into), ..job("j", 1.0, 0, 1, Some(4)) };
    let p = problem(vec![l4, a100], vec![on(Some("A100")), on(None), on(Some("H100"))], vec![300.0; 4]);
    let plan = plan_of(&p);
    assert!(matches!(plan.placements[0], Placement::Run { pool: 1, .. }), "{:?}", plan.placements[0]);
    assert!(matches!(plan.placements[1], Placement::Run { pool: 0, .. }), "{:?}", plan.placements[1]);
    assert_eq!(plan.placements[2], Placement::Wait { reason: WaitReason::LargerThanAnyNode });
    assert_eq!(verify(&p, &plan.placements, plan.energy.slots).total(), 0);
    let mut wrong = plan.placements.clone();
    if let Placement::Run { pool, .. } = &mut wrong[0] {
        *pool = 0;
    }
    assert_eq!(verify(&p, &wrong, plan.energy.slots).pool, 1);
}

/// A GPU job's weight is its GPUs': two always-on nodes, in a dirty zone and a
/// clean one, with flat CPU power. Without busy GPU watts the job adds nothing
/// anywhere and takes the first pool; with them it goes to the clean zone. The
/// plan's energy counts busy and idle GPUs.
#[test]
fn gpu_watts_decide_where_a_gpu_job_runs_and_count_in_the_plans_energy() {
    let gpu_pool = |name: &str, always_on: bool, zone: &str, g: f64| {
        let mut x = pool(name, 1, 32.0, 256.0, always_on);
        x.pool.power = PowerModel::Linear { idle_w: 100.0, max_w: 100.0 };
        (x.pool.gpus, x.pool.gpu_idle_w, x.pool.gpu_busy_w) = (8, 50.0, 50.0);
        x.pool.zone = Some(zone.into());
        x.carbon = vec![g; 4];
        x
    };
    let pools = vec![gpu_pool("dirty", true, "dirty", 500.0), gpu_pool("clean", true, "clean", 50.0)];
    let mut p = problem(pools, vec![PlanJob { gpus: 4, ..job("j", 1.0, 0, 1, Some(4)) }], vec![300.0; 4]);
    // Busy GPUs draw no more than idle ones: the job costs the same anywhere.
    let plan = plan_of(&p);
    assert!(matches!(plan.placements[0], Placement::Run { pool: 0, .. }), "{:?}", plan.placements[0]);
    for q in &mut p.pools {
        q.pool.gpu_busy_w = 300.0;
    }
    let plan = plan_of(&p);
    assert!(matches!(plan.placements[0], Placement::Run { pool: 1, .. }), "{:?}", plan.placements[0]);
    assert_eq!(verify(&p, &plan.placements, plan.energy.slots).total(), 0);
    // Each node (100 W + 8 × 50 W idle) in every slot accounted; the clean one
    // 1 h × 4 × 250 W busy more. × PUE 1.2.
    #[allow(clippy::cast_precision_loss, reason = "a few slots")]
    let hours = plan.energy.slots as f64;
    let (dirty_wh, clean_wh) = (hours * 500.0 * 1.2, (hours * 500.0 + 1000.0) * 1.2);
    let want_kwh = (dirty_wh + clean_wh) / 1000.0;
    assert!((plan.energy.energy_kwh - want_kwh).abs() < 1e-9, "{} vs {want_kwh}", plan.energy.energy_kwh);
    let want_kg = (dirty_wh * 500.0 + clean_wh * 50.0) / 1e6;
    assert!((plan.energy.carbon_kg - want_kg).abs() < 1e-9, "{} vs {want_kg}", plan.energy.carbon_kg);
}

#[test]
fn the_objective_chooses_between_the_clean_slot_and_the_cheap_one() {
    let mut p = problem(
        vec![pool("a", 1, 16.0, 64.0, true)],
        vec![job("j", 2.0, 0, 1, Some(4))],
        vec![400.0, 100.0, 400.0, 400.0],
    );
    p.price = vec![80.0, 80.0, 80.0, -10.0];
    let start = |p: &Problem, objective, s| {
        let mut p = p.clone();
        (p.options.objective, p.options.strategy) = (objective, s);
        plan_of(&p).placements[0].start()
    };
    for s in [Strategy::Lp, Strategy::CarbonGreedy] {
        assert_eq!(start(&p, Objective::Carbon, s), Some(1), "{s:?}");
        assert_eq!(start(&p, Objective::Cost, s), Some(3), "{s:?}");
        // 90 /MWh apart, 300 g/kWh apart: the break-even is 300 /t.
        assert_eq!(start(&p, Objective::Both { carbon_price: 200.0 }, s), Some(3), "{s:?}");
        assert_eq!(start(&p, Objective::Both { carbon_price: 400.0 }, s), Some(1), "{s:?}");
    }
    // The bill is accounted: the node draws 100 W idle plus 2 cores' share of
    // 200 W, × PUE 1.2, for an hour in each slot; the plan covers the horizon
    // and one slot of tail room, where the price repeats from slot 0.
    let mut q = p.clone();
    q.options.objective = Objective::Cost;
    let plan = plan_of(&q);
    let idle = 0.1 * 1.2;
    let busy = (100.0 + 200.0 * 2.0 / 16.0) * 1.2 / 1000.0;
    let bill = idle * 80.0 / 1000.0 * 4.0 + busy * -10.0 / 1000.0;
    assert!((plan.energy.cost - bill).abs() < 1e-9, "{} != {bill}", plan.energy.cost);
}

#[test]
fn an_objective_on_price_needs_a_price_and_a_sane_carbon_price() {
    let p = problem(vec![pool("a", 1, 16.0, 64.0, true)], vec![job("j", 1.0, 0, 1, None)], vec![400.0; 4]);
    let err = |f: &dyn Fn(&mut Problem)| {
        let mut q = p.clone();
        f(&mut q);
        q.validate().map(|_| ()).map_err(|e| e.to_string())
    };
    assert_eq!(
        err(&|q| q.options.objective = Objective::Cost),
        Err("objective = cost: needs a price per slot (the problem's or every pool's), and none was given".into())
    );
    assert_eq!(
        err(&|q| {
            q.price = vec![50.0; 4];
            q.options.objective = Objective::Both { carbon_price: -1.0 };
        }),
        Err("options: objective.carbon_price = -1: must be finite and >= 0 (currency per tonne CO2)".into())
    );
    assert_eq!(err(&|q| q.price = vec![50.0; 3]), Err("price has 3 values for 4 slots".into()));
    assert_eq!(err(&|q| q.price = vec![50.0, f64::NAN, 1.0, 1.0]), Err("price[1] = NaN: prices must be finite".into()));
    // Every pool priced is enough; negative prices are real and kept.
    assert_eq!(
        err(&|q| {
            q.pools[0].price = vec![-5.0; 4];
            q.options.objective = Objective::Cost;
        }),
        Ok(())
    );
}

#[test]
fn pools_in_two_zones_run_a_free_job_where_and_when_it_is_cleanest() {
    // Zone A is clean at night (slot 3), zone B at noon (slot 1) and cleaner still.
    let mut a = pool("a", 1, 16.0, 64.0, true);
    a.carbon = vec![400.0, 380.0, 300.0, 150.0];
    let mut b = pool("b", 1, 16.0, 64.0, true);
    b.carbon = vec![420.0, 100.0, 450.0, 460.0];
    let mut pinned = job("pinned", 2.0, 0, 1, Some(4));
    pinned.pool = Some(0);
    let jobs = vec![job("free", 2.0, 0, 1, Some(4)), pinned];
    let mut p = problem(vec![a, b], jobs, vec![999.0; 4]);
    for s in [Strategy::Lp, Strategy::CarbonGreedy] {
        p.options.strategy = s;
        let plan = plan_of(&p);
        let at = |i: usize| match &plan.placements[i] {
            Placement::Run { pool, slots, .. } => (*pool, slots[0]),
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0), (1, 1), "{s:?}: the free job goes to zone B at noon");
        assert_eq!(at(1), (0, 3), "{s:?}: the pinned job waits for zone A's night");
        // Against timing alone in zone A (the free job kept there): less carbon.
        let one_zone = {
            let mut q = p.clone();
            q.jobs[0].pool = Some(0);
            let plan = plan_of(&q);
            assert_eq!(plan.placements[0].start(), Some(3));
            plan.energy.carbon_kg
        };
        assert!(plan.energy.carbon_kg < one_zone, "{s:?}: {} vs {one_zone}", plan.energy.carbon_kg);
    }
    // A pool's series must match the horizon.
    p.pools[0].carbon = vec![1.0];
    let e = p.clone().validate().unwrap_err().to_string();
    assert!(e.contains("carbon") && e.contains("1 values"), "{e}");
}

#[test]
fn sleeping_nodes_stay_off_when_always_on_nodes_have_room() {
    let p = problem(
        vec![pool("online", 2, 32.0, 128.0, true), pool("spare", 5, 32.0, 128.0, false)],
        (0..6).map(|i| job(&format!("j{i}"), 4.0, 0, 2, Some(6))).collect(),
        vec![200.0; 6],
    );
    let plan = plan_of(&p);
    assert!(plan.powered[1].iter().all(|n| *n == 0), "{:?}", plan.powered[1]);
    assert_eq!(plan.powered[0][0], 2);
}

#[test]
fn memory_binds_as_well_as_cpu() {
    // 64 cores but 16 GiB usable: four 4-GiB jobs at once, whatever the cores.
    let mut p = problem(
        vec![pool("m", 1, 64.0, 16.0, true)],
        (0..6).map(|i| PlanJob { mem_gib: 4.0, ..job(&format!("j{i}"), 1.0, 0, 1, Some(2)) }).collect(),
        vec![100.0, 100.0],
    );
    p.options.mem_margin = 0.0;
    let plan = plan_of(&p);
    assert_eq!(plan.placements.iter().filter(|x| matches!(x, Placement::Run { late: false, .. })).count(), 6);
    let at0 = plan.placements.iter().filter(|x| x.start() == Some(0)).count();
    assert!(at0 <= 4, "{at0}");
    assert_eq!(verify(&p, &plan.placements, plan.energy.slots).total(), 0);
}

#[test]
fn a_tiny_time_limit_still_gives_a_valid_plan() {
    let mut p = generate(&Spec { nodes: 200, jobs: 3000, slots: 96, slot_s: 900, ..Spec::default() });
    p.options.time_limit = Duration::from_millis(1);
    let plan = plan_of(&p);
    assert_eq!(verify(&p, &plan.placements, plan.energy.slots).total(), 0);
    assert!(plan.jobs_planned() > 0, "{}", plan.lp_status);
}

#[test]
fn validation_names_the_field_and_value() {
    let base = problem(vec![pool("a", 1, 8.0, 8.0, true)], vec![job("j", 1.0, 0, 1, None)], vec![100.0, 100.0]);
    let mut p = base.clone();
    p.jobs[0].cores = -1.0;
    assert_eq!(p.clone().validate().unwrap_err().to_string(), "job `j`: cores = -1: must be > 0");
    let mut p = base.clone();
    p.jobs[0].duration = 0;
    assert!(p.clone().validate().unwrap_err().to_string().contains("duration"));
    let mut p = base.clone();
    p.carbon[1] = f64::NAN;
    assert!(matches!(p.clone().validate(), Err(ProblemError::CarbonValue { index: 1, .. })));
    let mut p = base.clone();
    p.pools[0].pool.pue = 0.5;
    assert_eq!(p.clone().validate().unwrap_err().to_string(), "pool `a`: pue = 0.5: must be >= 1");
    let mut p = base.clone();
    p.pools[0].online_cpu = vec![1.0; 3];
    assert!(p.clone().validate().unwrap_err().to_string().contains("online_cpu = 3 values"));
    let mut p = base;
    p.options.cpu_margin = 1.0;
    assert!(p.clone().validate().unwrap_err().to_string().contains("cpu_margin"));
}

/// Flat carbon and ample room: every start costs the same, so a job starts at its
/// release. (Window sums from prefix differences once broke this tie by rounding
/// noise and delayed a job by 15 min "for a cleaner window".)
#[test]
fn equal_costs_start_at_release() {
    for slots in [12usize, 96, 288] {
        let pool = Pool {
            gpus: 0,
            name: "d".into(),
            nodes: 1,
            cores: 2.0,
            memory_gib: 8.0,
            power: PowerModel::Linear { idle_w: 100.0, max_w: 300.0 },
            pue: 1.2,
            always_on: true,
            embodied_g_per_hour: 0.0,
            wake_wh: 0.0,
            zone: None,
            gpu_busy_w: 0.0,
            gpu_idle_w: 0.0,
            gpu_model: String::new(),
        };
        let p = Problem {
            start: 0,
            slot_s: 300,
            slots,
            pools: vec![PoolInput {
                pool,
                online_cpu: vec![0.1; slots],
                online_mem: vec![1.0; slots],
                carbon: vec![],
                price: vec![],
                gpus_used: vec![],
                powered: vec![],
            }],
            carbon: vec![400.0; slots],
            price: vec![],
            jobs: (0..3)
                .map(|i| PlanJob {
                    gpus: 0,
                    id: format!("j{i}"),
                    cores: 0.5,
                    mem_gib: 0.06,
                    release: i,
                    deadline: None,
                    duration: 1,
                    pausable: false,
                    pool: None,
                    priority: 0,
                    gpu_model: None,
                })
                .collect(),
            options: PlanOptions::default(),
        };
        let plan = plan_of(&p);
        for (i, place) in plan.placements.iter().enumerate() {
            assert_eq!(place.start(), Some(i), "{slots} slots, job {i}: {place:?}");
        }
    }
}

/// The always-on node is full of online load for the whole horizon, so the job
/// needs the sleeping node; the first slot is the cleanest.
fn must_wake(deadline: usize) -> Problem {
    let mut online = pool("online", 1, 8.0, 64.0, true);
    online.online_cpu = vec![8.0; 8];
    problem(vec![online, pool("spare", 1, 8.0, 64.0, false)], vec![job("j", 4.0, 0, 2, Some(deadline))], {
        let mut c = vec![300.0; 8];
        c[0] = 50.0;
        c
    })
}

#[test]
fn a_job_that_must_wake_a_node_wakes_it_at_its_latest_start() {
    let mut p = must_wake(6);
    let plan = plan_of(&p);
    assert!(matches!(plan.placements[0], Placement::Run { pool: 1, .. }), "{:?}", plan.placements[0]);
    assert_eq!(plan.placements[0].start(), Some(4), "latest start = deadline 6 − duration 2");
    // Planned to be executed as is, it wakes the node in the cleanest slot.
    p.options.lazy_wake = false;
    assert_eq!(plan_of(&p).placements[0].start(), Some(0));
}

#[test]
fn a_job_that_may_start_after_the_horizon_wakes_nothing() {
    // Deadline 20 in an 8-slot horizon: it waits for room in a later plan.
    let p = must_wake(20);
    let plan = plan_of(&p);
    assert_eq!(plan.placements[0], Placement::Wait { reason: WaitReason::Capacity });
    assert!(plan.powered[1].iter().all(|n| *n == 0), "{:?}", plan.powered[1]);
}

#[test]
fn a_job_starts_on_a_node_that_is_powered_anyway_instead_of_waking_one_later() {
    // Issue 32: a node woken for a job stays up for its `suspend_after`; a plan
    // that took it for asleep moved the job to its latest start and let the node
    // go back to sleep, then woke one again (164 wakes on Double-11 against
    // first-fit's 14).
    let mut p = must_wake(6);
    p.pools[1].pool.nodes = 2;
    p.pools[1].powered = vec![0, 3];
    let plan = plan_of(&p);
    assert!(matches!(plan.placements[0], Placement::Run { pool: 1, node: 1, .. }), "{:?}", plan.placements[0]);
    assert_eq!(plan.placements[0].start(), Some(0), "it runs while node 1 is up, in the cleanest slot");
    // Without it the job waits for its latest start, as before.
    p.pools[1].powered = vec![];
    assert_eq!(plan_of(&p).placements[0].start(), Some(4));
}

#[test]
fn a_run_past_the_horizon_sees_the_last_slots_load_not_the_first_slots() {
    // The spare node is waking (full in slot 0, ready from slot 1). A job whose
    // latest start is 7 runs in slots 7 and 8 of an 8-slot horizon; slot 8 once
    // read slot 0 (`t % slots`), found the node full, and every sleeping node
    // was closed to runs past the horizon (issue 32).
    let mut p = must_wake(9);
    p.pools[1].online_cpu = (0..8).map(|t| if t == 0 { 8.0 } else { 0.0 }).collect();
    let plan = plan_of(&p);
    assert!(matches!(plan.placements[0], Placement::Run { pool: 1, .. }), "{:?}", plan.placements[0]);
    assert_eq!(plan.placements[0].start(), Some(7), "latest start = deadline 9 − duration 2");
}

#[test]
fn a_job_waits_only_for_savings_worth_the_delay() {
    // One always-on node; slot 2 is 0.05 % cleaner than now, slot 3 half as dirty.
    let tiny = problem(
        vec![pool("a", 1, 16.0, 64.0, true)],
        vec![job("j", 2.0, 0, 1, Some(3))],
        vec![400.0, 400.0, 399.8, 400.0],
    );
    // Default: waiting two hours must save more than 0.1 %/h; 0.05 % does not.
    assert_eq!(plan_of(&tiny).placements[0].start(), Some(0));
    let mut pure = tiny.clone();
    pure.options.delay_cost = 0.0;
    assert_eq!(plan_of(&pure).placements[0].start(), Some(2), "carbon alone moves it");
    let big = problem(
        vec![pool("a", 1, 16.0, 64.0, true)],
        vec![job("j", 2.0, 0, 1, Some(4))],
        vec![400.0, 400.0, 400.0, 200.0],
    );
    assert_eq!(plan_of(&big).placements[0].start(), Some(3), "a real saving is worth the wait");
    // The plan still accounts actual carbon, not the weighed one.
    let plan = plan_of(&big);
    let mut flat = big.clone();
    flat.options.delay_cost = 0.0;
    assert!((plan.energy.carbon_kg - plan_of(&flat).energy.carbon_kg).abs() < 1e-12);
}

#[test]
fn a_wake_costs_its_energy_once_per_sleep_and_the_planner_weighs_it() {
    // One sleeping node, two 1-slot jobs: back to back is one wake; the energy
    // of each wake is counted in the plan (PUE 1.2: 100 Wh → 0.12 kWh).
    let plan = |wake_wh: f64, jobs: Vec<PlanJob>| {
        let mut p = pool("sleepy", 1, 8.0, 32.0, false);
        p.pool.wake_wh = wake_wh;
        problem(vec![p], jobs, vec![100.0; 6]).validate().unwrap().plan()
    };
    let jobs = || vec![job("a", 1.0, 0, 1, Some(1)), job("b", 1.0, 1, 1, Some(2))];
    let (cheap, dear) = (plan(0.0, jobs()), plan(100.0, jobs()));
    assert!((dear.energy.energy_kwh - cheap.energy.energy_kwh - 0.12).abs() < 1e-9, "one wake");
    let apart = || vec![job("a", 1.0, 0, 1, Some(1)), job("b", 1.0, 3, 1, Some(4))];
    let (cheap, dear) = (plan(0.0, apart()), plan(100.0, apart()));
    assert!((dear.energy.energy_kwh - cheap.energy.energy_kwh - 0.24).abs() < 1e-9, "two wakes");
    assert!((dear.energy.idle_kwh - cheap.energy.idle_kwh - 0.24).abs() < 1e-9, "wakes count as idle energy");
}

#[test]
fn the_planner_weighs_a_wake_when_it_chooses_a_start() {
    // Job a runs in slot 0. Job b is cleaner in slot 2 (100 g) than right after
    // a in slot 1 (200 g), but slot 2 wakes the node again: a costly wake moves
    // b next to a.
    let start_of_b = |wake_wh: f64| {
        let mut p = pool("sleepy", 1, 8.0, 32.0, false);
        p.pool.wake_wh = wake_wh;
        let mut prob = problem(
            vec![p],
            vec![job("a", 1.0, 0, 1, Some(1)), job("b", 1.0, 1, 1, Some(4))],
            vec![100.0, 200.0, 100.0, 100.0, 100.0, 100.0],
        );
        prob.options.strategy = Strategy::CarbonGreedy;
        prob.options.lazy_wake = false;
        prob.validate().unwrap().plan().placements[1].start()
    };
    assert_eq!(start_of_b(0.0), Some(2));
    assert_eq!(start_of_b(10_000.0), Some(1));
}

#[test]
fn work_waiting_for_a_wake_starts_at_the_ready_slot() {
    // Three sleeping nodes, all ready from slot 1 (waking), flat carbon: the job
    // starts in slot 1, delayed by capacity, not pushed to the LP's next block
    // (block capacity is the mean over its slots, not the minimum).
    let mut p = pool("sleepy", 3, 2.0, 24.0, false);
    p.online_cpu = (0..3).flat_map(|_| (0..180).map(|t| if t == 0 { 2.0 } else { 0.0 })).collect();
    let mut prob = problem(vec![p], vec![job("a", 0.3, 0, 1, None)], vec![400.0; 180]);
    prob.slot_s = 10;
    let plan = prob.validate().unwrap().plan();
    assert_eq!(plan.placements[0].start(), Some(1), "{:?} ({})", plan.placements[0], plan.lp_status);
    assert!(matches!(plan.placements[0], Placement::Run { delayed_by: Some(WaitReason::Capacity), .. }));
}
