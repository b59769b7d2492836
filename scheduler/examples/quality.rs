use greenfill_scheduler::synthetic::{Spec, generate};
use greenfill_scheduler::{Strategy, exact_lp, verify};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let spec = Spec { jobs: args[0], nodes: args[1] as u32, slots: args[2], seed: args[3] as u64, ..Spec::default() };
    let mut p = generate(&spec);

    for s in [Strategy::Lp, Strategy::CarbonGreedy, Strategy::EarliestFit] {
        p.options.strategy = s;
        let plan = p.plan();
        let base = plan.baseline;
        let v = verify(&p, &plan.placements, plan.energy.slots);
        println!("{s:?}: batch {:.3} kg idle+{:.1} dyn+{:.1} kwh; carbon {:.3} kg planned {}/{} late {} ms {:.1} viol {:?} lp {}", plan.energy.carbon_kg - base.carbon_kg, plan.energy.idle_kwh - base.idle_kwh, plan.energy.dynamic_kwh - base.dynamic_kwh, plan.energy.carbon_kg, plan.jobs_planned(), p.jobs.len(), plan.jobs_late(), plan.solve_ms, v, plan.lp_status);
    }
    if args.get(4) == Some(&1) {
        let e = exact_lp(&p).unwrap();
        println!("exact: {:.3} kg batch {:.3} unplanned {:.1} cols {} ms {:.0} {}", e.carbon_kg, e.batch_carbon_kg, e.unplanned_core_slots, e.columns, e.solve_ms, e.status);
    }
}
