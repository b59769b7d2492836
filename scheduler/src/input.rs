//! Turning trace records and series into planner inputs: times into slots,
//! bytes into GiB, series into per-slot values. Pure functions; no IO.

use crate::planner::PlanJob;
use greenfill_core::Series;
use greenfill_core::data::{JobMemory, JobRecord};

/// Arrivals before this (unix seconds, 2001-09-09) are offsets from the plan's
/// start, as in GAIA and Alibaba traces, rather than timestamps.
pub const OFFSET_LIMIT: i64 = 1_000_000_000;

/// Planner jobs from trace records. `machine_gib` turns a machine-share memory
/// request (Alibaba 2017) into GiB. A record with `instances > 1` becomes that many
/// jobs (`id#k`), up to `max_jobs` in all.
pub fn plan_jobs(
    records: &[JobRecord],
    start: i64,
    slot_s: i64,
    machine_gib: f64,
    max_jobs: usize,
) -> Result<Vec<PlanJob>, String> {
    let mut out = Vec::with_capacity(records.len());
    let to_slot = |t: i64| -> i64 { if t < OFFSET_LIMIT { t } else { t - start } };
    for r in records {
        let rel = to_slot(r.arrival).max(0);
        let release =
            usize::try_from(rel.div_euclid(slot_s) + i64::from(rel.rem_euclid(slot_s) > 0)).unwrap_or(usize::MAX);
        let duration = usize::try_from((r.duration + slot_s - 1) / slot_s).unwrap_or(usize::MAX).max(1);
        let deadline = r.deadline.map(|d| usize::try_from(to_slot(d).div_euclid(slot_s)).unwrap_or(0));
        #[allow(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
        let mem_gib = match r.memory {
            Some(JobMemory::Bytes(b)) => b as f64 / f64::from(1u32 << 30),
            Some(JobMemory::MachineShare(s)) => s * machine_gib,
            None => 0.0,
        };
        let n = r.instances.max(1) as usize;
        if out.len() + n > max_jobs {
            return Err(format!(
                "line {}: job `{}` has {} instances; the queue would exceed {max_jobs} jobs",
                r.line, r.id, r.instances
            ));
        }
        for k in 0..n {
            let id = if n == 1 { r.id.clone() } else { format!("{}#{k}", r.id) };
            out.push(PlanJob {
                id,
                cores: r.cpus,
                mem_gib,
                release,
                deadline,
                duration,
                pausable: r.pausable,
                pool: None,
                priority: 0,
            });
        }
    }
    Ok(out)
}

/// The mean of `series` over each of `slots` slots of `slot_s` seconds from
/// `start`; a slot with no point of its own takes the value at its middle (the
/// series' ends stretch outward).
pub fn slot_values(series: &Series, start: i64, slot_s: i64, slots: usize) -> Vec<f64> {
    (0..slots)
        .map(|i| {
            let a = start + i64::try_from(i).unwrap_or(i64::MAX / 2) * slot_s;
            let b = a + slot_s;
            let (mut sum, mut n) = (0.0, 0u32);
            let mut t = a + (series.start - a).rem_euclid(series.step);
            while t < b {
                if t >= series.start && t <= series.end() {
                    sum += series.value_at(t);
                    n += 1;
                }
                t += series.step;
            }
            if n > 0 { sum / f64::from(n) } else { series.value_at(a + slot_s / 2) }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hourly_series_into_quarter_hours_and_back() {
        let s = Series { id: "ci".into(), start: 0, step: 3600, values: vec![100.0, 200.0, 300.0], filled: 0 };
        assert_eq!(slot_values(&s, 0, 900, 5), vec![100.0, 100.0, 100.0, 100.0, 200.0]);
        assert_eq!(slot_values(&s, 0, 7200, 2), vec![150.0, 300.0]);
        assert_eq!(slot_values(&s, 36_000, 3600, 1), vec![300.0]);
    }

    #[test]
    fn records_become_slots() {
        let r = JobRecord {
            id: "a".into(),
            arrival: 1000,
            duration: 1801,
            cpus: 2.0,
            memory: Some(JobMemory::Bytes(2 << 30)),
            deadline: Some(9000),
            pausable: true,
            instances: 2,
            line: 2,
        };
        let j = plan_jobs(std::slice::from_ref(&r), 0, 900, 64.0, 10).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!((j[0].release, j[0].duration, j[0].deadline, j[0].mem_gib), (2, 3, Some(10), 2.0));
        assert_eq!(j[1].id, "a#1");
        assert!(plan_jobs(&[r], 0, 900, 64.0, 1).unwrap_err().contains("2 instances"));
    }
}
