//! Turning trace records and series into planner inputs: offsets into times,
//! bytes into GiB, series into per-slot values. Pure functions; no IO.

use crate::QueuedJob;
use greenfill_core::Series;
use greenfill_core::data::{JobMemory, JobRecord};

/// Arrivals before this (unix seconds, 2001-09-09) are offsets from the plan's
/// start, as in GAIA and Alibaba traces, rather than timestamps.
pub const OFFSET_LIMIT: i64 = 1_000_000_000;

/// Jobs for [`crate::ProblemBuilder::queue`] from trace records, with times made
/// absolute: an arrival or deadline below [`OFFSET_LIMIT`] counts from `start`.
/// `machine_gib` turns a machine-share memory request (Alibaba 2017) into GiB. A
/// record with `instances > 1` becomes that many jobs (`id#k`), up to `max_jobs`
/// in all.
pub fn queued_jobs(
    records: &[JobRecord],
    start: i64,
    machine_gib: f64,
    max_jobs: usize,
) -> Result<Vec<QueuedJob>, String> {
    let mut out = Vec::with_capacity(records.len());
    let absolute = |t: i64| -> i64 { if t < OFFSET_LIMIT { start + t } else { t } };
    for r in records {
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
            #[allow(clippy::cast_precision_loss, reason = "seconds")]
            out.push(QueuedJob {
                id,
                cores: r.cpus,
                mem_gib,
                not_before: Some(absolute(r.arrival)),
                deadline: r.deadline.map(absolute),
                duration_s: r.duration as f64,
                pausable: r.pausable,
                pool: None,
                priority: 0,
                gpus: r.gpus,
                gpu_model: None,
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
            gpus: 1,
            instances: 2,
            line: 2,
        };
        let j = queued_jobs(std::slice::from_ref(&r), 5000, 64.0, 10).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(
            (j[0].not_before, j[0].deadline, j[0].duration_s, j[0].mem_gib),
            (Some(6000), Some(14_000), 1801.0, 2.0)
        );
        assert_eq!(j[1].id, "a#1");
        assert!(queued_jobs(&[r], 0, 64.0, 1).unwrap_err().contains("2 instances"));
    }
}
