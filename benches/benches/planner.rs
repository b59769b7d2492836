//! Planner speed on seeded synthetic instances (`cargo bench -p greenfill-benches`).

use criterion::{Criterion, criterion_group, criterion_main};
use greenfill_planner::Strategy;
use greenfill_planner::synthetic::{Spec, generate};
use std::hint::black_box;

fn plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.sample_size(10);
    for (nodes, jobs, slots) in [(50, 200, 24), (100, 1000, 24), (1000, 10_000, 96)] {
        let mut p =
            generate(&Spec { nodes, jobs, slots, slot_s: 86_400 / i64::try_from(slots).unwrap(), ..Spec::default() });
        for s in [Strategy::Lp, Strategy::EarliestFit] {
            p.options.strategy = s;
            let valid = p.clone().validate().expect("synthetic instances are valid");
            g.bench_function(format!("{s:?}/{nodes}n_{jobs}j_{slots}s"), |b| b.iter(|| black_box(valid.plan())));
        }
    }
    g.finish();
}

criterion_group!(benches, plan);
criterion_main!(benches);
