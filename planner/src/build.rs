//! The one way from live state to a [`ValidProblem`]: the scheduler's queue, the
//! simulator's step loop and `greenfill plan`'s files all go through
//! [`ProblemBuilder`], so a job's release, deadline and duration are turned into
//! slots by one rule ([`SlotClock`]), running jobs are load by one rule, and the
//! guard slack is applied once.

use crate::problem::{Placement, Plan, PlanJob, PlanOptions, PoolInput, Problem, ProblemError, ValidProblem};

/// The planner's clock: slot 0 starts at `start` (unix seconds), each slot is
/// `slot_s` long, the horizon has `slots` of them.
///
/// The rounding rule, the same for every caller: a job may start at the first
/// slot boundary at or after its release (rounded up), must end by the last slot
/// boundary at or before its deadline (rounded down), and holds whole slots for
/// its duration (rounded up). A plan therefore never starts a job early, never
/// promises an end after its deadline, and never gives a job less time than it
/// asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotClock {
    pub start: i64,
    pub slot_s: i64,
    pub slots: usize,
}

impl SlotClock {
    /// The first slot a job released at `at` may run in (0 if already released).
    pub fn release(&self, at: i64) -> usize {
        let after = (at - self.start).max(0);
        usize::try_from(after.div_euclid(self.slot_s) + i64::from(after.rem_euclid(self.slot_s) > 0))
            .unwrap_or(usize::MAX)
    }

    /// The slot by which a job due at `at` must have ended (exclusive end).
    pub fn deadline(&self, at: i64) -> usize {
        usize::try_from((at - self.start).max(0).div_euclid(self.slot_s)).unwrap_or(usize::MAX)
    }

    /// Slots a run of `secs` seconds holds, at least one.
    pub fn duration(&self, secs: f64) -> usize {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "a ceiling of a non-negative slot count, clamped"
        )]
        let slots = (secs / self.slot_s as f64).ceil().clamp(1.0, 1e12) as usize;
        slots
    }

    /// Unix seconds at the start of slot `slot`.
    pub fn time_of(&self, slot: usize) -> i64 {
        self.start + i64::try_from(slot).unwrap_or(i64::MAX / 2 / self.slot_s) * self.slot_s
    }
}

/// A job waiting for the plan, in wall-clock terms.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedJob {
    pub id: String,
    pub cores: f64,
    pub mem_gib: f64,
    /// Unix seconds before which it may not start (`None` = now).
    pub not_before: Option<i64>,
    /// Unix seconds by which it must have ended.
    pub deadline: Option<i64>,
    pub duration_s: f64,
    pub pausable: bool,
    /// Only this pool (index into the builder's pools).
    pub pool: Option<usize>,
    pub priority: i32,
    /// Whole GPUs on its node while it runs.
    pub gpus: u32,
    /// Only pools whose GPU model contains this.
    pub gpu_model: Option<String>,
}

/// A job already running: load on its node until it ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunningJob {
    pub pool: usize,
    /// Index of the node inside its pool.
    pub node: usize,
    pub cores: f64,
    pub mem_gib: f64,
    /// Unix seconds at which it is expected to end; a job past its expected end
    /// still holds its node for one more slot.
    pub ends_at: i64,
    /// The GPUs it holds on its node.
    pub gpus: u32,
}

/// Gathers pools, carbon and jobs, then validates them into a [`Built`] problem.
#[derive(Debug, Clone)]
pub struct ProblemBuilder {
    clock: SlotClock,
    pools: Vec<PoolInput>,
    carbon: Vec<f64>,
    price: Vec<f64>,
    options: PlanOptions,
    guard_slack: f64,
    jobs: Vec<PlanJob>,
    missed_deadline: Vec<bool>,
}

/// A validated problem and what the builder had to change to make it plannable.
#[derive(Debug, Clone)]
pub struct Built {
    pub problem: ValidProblem,
    /// Per job: its deadline could no longer be met, so the plan runs it as soon
    /// as it can and reports it late (a job is never dropped for its deadline).
    pub missed_deadline: Vec<bool>,
}

impl Built {
    /// Plan, reporting as late every job whose deadline had already become
    /// impossible.
    pub fn plan(&self) -> Plan {
        let mut plan = self.problem.plan();
        for (placement, missed) in plan.placements.iter_mut().zip(&self.missed_deadline) {
            if let (Placement::Run { late, .. }, true) = (placement, *missed) {
                *late = true;
            }
        }
        plan
    }
}

impl ProblemBuilder {
    /// `pools` carry the online upper bounds (none, one per slot, or one per node
    /// and slot); `carbon` one forecast value per slot; every job's end is aimed
    /// `guard_slack` of its duration before its deadline ([`PlanJob::aim_early`]).
    pub fn new(
        clock: SlotClock,
        pools: Vec<PoolInput>,
        carbon: Vec<f64>,
        options: PlanOptions,
        guard_slack: f64,
    ) -> ProblemBuilder {
        ProblemBuilder {
            clock,
            pools,
            carbon,
            price: Vec::new(),
            options,
            guard_slack,
            jobs: Vec::new(),
            missed_deadline: Vec::new(),
        }
    }

    /// The day-ahead price per slot (currency/MWh) for pools without their own.
    #[must_use]
    pub fn price(mut self, price: Vec<f64>) -> ProblemBuilder {
        self.price = price;
        self
    }

    pub fn clock(&self) -> SlotClock {
        self.clock
    }

    /// A running job's CPU and memory count as load on its node, from now until
    /// the slot in which it is expected to end (at least the first slot).
    pub fn running(&mut self, job: &RunningJob) -> Result<(), ProblemError> {
        let slots = self.clock.slots;
        let held = self.clock.release(job.ends_at).clamp(1, slots);
        let Some(input) = self.pools.get_mut(job.pool) else {
            return Err(ProblemError::Job {
                job: "(running)".into(),
                field: "pool",
                value: job.pool.to_string(),
                why: "no such pool",
            });
        };
        let nodes = input.pool.nodes as usize;
        if job.node >= nodes {
            return Err(ProblemError::Pool {
                pool: input.pool.name.clone(),
                field: "node",
                value: job.node.to_string(),
                why: "a running job names a node past the pool's size",
            });
        }
        let (cores, mem) = (input.pool.cores, input.pool.memory_gib);
        let cpu = per_node(&mut input.online_cpu, nodes, slots);
        add_load(&mut cpu[job.node * slots..job.node * slots + held], job.cores, cores);
        let memory = per_node(&mut input.online_mem, nodes, slots);
        add_load(&mut memory[job.node * slots..job.node * slots + held], job.mem_gib, mem);
        if job.gpus > 0 {
            input.gpus_used.resize(nodes * slots, 0);
            for g in &mut input.gpus_used[job.node * slots..job.node * slots + held] {
                *g = g.saturating_add(job.gpus);
            }
        }
        Ok(())
    }

    /// A node that cannot run new work before `ready_at` (unix seconds; `None`:
    /// not in this horizon): a sleeping node's wake latency, a failed node. Its
    /// CPU and memory are held whole until the slot it is ready in, so the LP
    /// and the placement both see it as capacity from then on.
    pub fn unavailable_until(&mut self, pool: usize, node: usize, ready_at: Option<i64>) -> Result<(), ProblemError> {
        let slots = self.clock.slots;
        let held = ready_at.map_or(slots, |t| self.clock.release(t).min(slots));
        if held == 0 {
            return Ok(());
        }
        let input = self.node_of(pool, node, "an unavailable node past the pool's size")?;
        let nodes = input.pool.nodes as usize;
        let (cores, mem) = (input.pool.cores, input.pool.memory_gib);
        per_node(&mut input.online_cpu, nodes, slots)[node * slots..node * slots + held].fill(cores);
        per_node(&mut input.online_mem, nodes, slots)[node * slots..node * slots + held].fill(mem);
        Ok(())
    }

    /// A node of a pool that sleeps which is powered now (awake, or waking) and
    /// stays so until `until` (unix seconds) whatever the plan does: the idle
    /// time after which it may suspend. Work placed there in the slots it is
    /// powered in (at least the first) costs no idle power and no wake, so a job
    /// that woke a node starts there rather than being re-planned later while
    /// the node goes back to sleep.
    pub fn powered_until(&mut self, pool: usize, node: usize, until: i64) -> Result<(), ProblemError> {
        let held = self.clock.release(until).clamp(1, self.clock.slots);
        let input = self.node_of(pool, node, "a powered node past the pool's size")?;
        let nodes = input.pool.nodes as usize;
        input.powered.resize(nodes, 0);
        input.powered[node] = held;
        Ok(())
    }

    /// The input of `pool`, with `node` checked against the pool's size.
    fn node_of(&mut self, pool: usize, node: usize, past: &'static str) -> Result<&mut PoolInput, ProblemError> {
        let Some(input) = self.pools.get_mut(pool) else {
            return Err(ProblemError::Job {
                job: "(node)".into(),
                field: "pool",
                value: pool.to_string(),
                why: "no such pool",
            });
        };
        if node >= input.pool.nodes as usize {
            return Err(ProblemError::Pool {
                pool: input.pool.name.clone(),
                field: "node",
                value: node.to_string(),
                why: past,
            });
        }
        Ok(input)
    }

    /// A node with no memory for new work before `until` (unix seconds): one
    /// that just evicted batch for memory cools down. Its memory is held whole
    /// until the slot `until` falls in; its CPU stays (work with no memory may
    /// still go there), and running jobs keep running.
    pub fn no_new_memory_until(&mut self, pool: usize, node: usize, until: i64) -> Result<(), ProblemError> {
        let slots = self.clock.slots;
        let held = self.clock.release(until).min(slots);
        let input = self.node_of(pool, node, "a cooling node past the pool's size")?;
        let nodes = input.pool.nodes as usize;
        let mem = input.pool.memory_gib;
        per_node(&mut input.online_mem, nodes, slots)[node * slots..node * slots + held].fill(mem);
        Ok(())
    }

    /// Queue a job for the plan; returns its index in the problem's jobs.
    pub fn queue(&mut self, job: QueuedJob) -> usize {
        let release = job.not_before.map_or(0, |t| self.clock.release(t));
        let duration = self.clock.duration(job.duration_s);
        let due = job.deadline.map(|t| self.clock.deadline(t));
        let deadline = due.filter(|d| *d >= release + duration);
        self.missed_deadline.push(due.is_some() && deadline.is_none());
        self.jobs.push(
            PlanJob {
                id: job.id,
                cores: job.cores,
                mem_gib: job.mem_gib,
                release,
                deadline,
                duration,
                pausable: job.pausable,
                pool: job.pool,
                priority: job.priority,
                gpus: job.gpus,
                gpu_model: job.gpu_model,
            }
            .aim_early(self.guard_slack),
        );
        self.jobs.len() - 1
    }

    pub fn jobs(&self) -> &[PlanJob] {
        &self.jobs
    }

    /// Validate; every error is named with its field and value.
    pub fn build(self) -> Result<Built, ProblemError> {
        let problem = Problem {
            start: self.clock.start,
            slot_s: self.clock.slot_s,
            slots: self.clock.slots,
            pools: self.pools,
            carbon: self.carbon,
            price: self.price,
            jobs: self.jobs,
            options: self.options,
        };
        Ok(Built { problem: problem.validate()?, missed_deadline: self.missed_deadline })
    }
}

/// The online values laid out per node (`nodes × slots`), expanding the empty
/// and the shared per-slot layouts.
fn per_node(values: &mut Vec<f64>, nodes: usize, slots: usize) -> &mut [f64] {
    if values.len() != nodes * slots {
        let shared = std::mem::take(values);
        *values = (0..nodes * slots)
            .map(|i| match shared.len() {
                0 => 0.0,
                n if n == slots => shared[i % slots],
                _ => 0.0,
            })
            .collect();
    }
    values
}

fn add_load(values: &mut [f64], amount: f64, most: f64) {
    for v in values {
        *v = (*v + amount).min(most.max(*v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenfill_core::cluster::{Pool, PowerModel};

    const CLOCK: SlotClock = SlotClock { start: 1000, slot_s: 900, slots: 8 };

    #[test]
    fn one_rounding_rule() {
        // Release: up to the next boundary; in the past: now.
        assert_eq!(CLOCK.release(1000), 0);
        assert_eq!(CLOCK.release(1001), 1);
        assert_eq!(CLOCK.release(1900), 1);
        assert_eq!(CLOCK.release(0), 0);
        // Deadline: down to the boundary before it.
        assert_eq!(CLOCK.deadline(1899), 0);
        assert_eq!(CLOCK.deadline(1900), 1);
        assert_eq!(CLOCK.deadline(500), 0);
        // Duration: up, at least one slot.
        assert_eq!(CLOCK.duration(0.0), 1);
        assert_eq!(CLOCK.duration(900.0), 1);
        assert_eq!(CLOCK.duration(901.0), 2);
        assert_eq!(CLOCK.time_of(3), 1000 + 3 * 900);
    }

    fn pool(nodes: u32) -> PoolInput {
        PoolInput::new(Pool {
            gpus: 0,
            name: "p".into(),
            nodes,
            cores: 8.0,
            memory_gib: 32.0,
            power: PowerModel::Linear { idle_w: 100.0, max_w: 300.0 },
            pue: 1.0,
            always_on: true,
            embodied_g_per_hour: 0.0,
            wake_wh: 0.0,
            zone: None,
            gpu_busy_w: 0.0,
            gpu_idle_w: 0.0,
            gpu_model: String::new(),
        })
    }

    fn queued(id: &str, deadline: Option<i64>) -> QueuedJob {
        QueuedJob {
            gpus: 0,
            id: id.into(),
            cores: 1.0,
            mem_gib: 0.0,
            not_before: None,
            deadline,
            duration_s: 1800.0,
            pausable: false,
            pool: None,
            priority: 0,
            gpu_model: None,
        }
    }

    #[test]
    fn running_jobs_are_load_until_their_end_slot() {
        let mut shared = pool(2);
        shared.online_cpu = vec![1.0; 8];
        let mut b = ProblemBuilder::new(CLOCK, vec![shared], vec![100.0; 8], PlanOptions::default(), 0.0);
        // Ends 1.5 slots from now: holds slots 0 and 1 of node 1.
        b.running(&RunningJob { gpus: 0, pool: 0, node: 1, cores: 2.0, mem_gib: 4.0, ends_at: 1000 + 1350 }).unwrap();
        // Past its expected end: still holds the first slot.
        b.running(&RunningJob { gpus: 0, pool: 0, node: 0, cores: 3.0, mem_gib: 0.0, ends_at: 0 }).unwrap();
        let built = b.build().unwrap();
        let p = &built.problem.pools[0];
        assert_eq!(&p.online_cpu[..8], &[4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(&p.online_cpu[8..], &[3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]);
        assert_eq!(&p.online_mem[8..10], &[4.0, 4.0]);
        let mut bad = ProblemBuilder::new(CLOCK, vec![pool(1)], vec![100.0; 8], PlanOptions::default(), 0.0);
        let e = bad
            .running(&RunningJob { gpus: 0, pool: 0, node: 1, cores: 1.0, mem_gib: 0.0, ends_at: 5000 })
            .unwrap_err();
        assert!(e.to_string().contains("node = 1"), "{e}");
    }

    #[test]
    fn a_waking_node_is_capacity_from_its_ready_slot() {
        let mut b = ProblemBuilder::new(CLOCK, vec![pool(3)], vec![100.0; 8], PlanOptions::default(), 0.0);
        // Ready 2.1 slots from now: slots 0..3 held; a failed node: all; ready now: none.
        b.unavailable_until(0, 0, Some(1000 + 1900)).unwrap();
        b.unavailable_until(0, 1, None).unwrap();
        b.unavailable_until(0, 2, Some(500)).unwrap();
        assert!(b.unavailable_until(0, 3, None).is_err());
        b.queue(queued("a", None));
        let built = b.build().unwrap();
        let p = &built.problem.pools[0];
        assert_eq!(&p.online_cpu[..8], &[8.0, 8.0, 8.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        assert_eq!(&p.online_cpu[8..16], &[8.0; 8]);
        assert_eq!(&p.online_mem[..4], &[32.0, 32.0, 32.0, 0.0]);
        assert_eq!(&p.online_cpu[16..], &[0.0; 8]);
        let plan = built.plan();
        assert!(matches!(plan.placements[0], Placement::Run { node: 2, .. }), "{:?}", plan.placements[0]);
    }

    #[test]
    fn a_cooling_node_has_no_memory_for_new_work_but_keeps_its_cpu() {
        let mut b = ProblemBuilder::new(CLOCK, vec![pool(2)], vec![100.0; 8], PlanOptions::default(), 0.0);
        // Evicted: no new memory until 1.2 slots from now (slots 0 and 1).
        b.no_new_memory_until(0, 0, 1000 + 1100).unwrap();
        assert!(b.no_new_memory_until(0, 2, 5000).is_err());
        b.queue(QueuedJob { mem_gib: 4.0, ..queued("a", None) });
        let built = b.build().unwrap();
        let p = &built.problem.pools[0];
        assert_eq!(&p.online_mem[..3], &[32.0, 32.0, 0.0]);
        // The CPU is not held (an untouched input stays empty: all zero).
        assert!(p.online_cpu.iter().all(|c| *c == 0.0), "{:?}", p.online_cpu);
        let plan = built.plan();
        assert!(matches!(plan.placements[0], Placement::Run { node: 1, .. }), "{:?}", plan.placements[0]);
        assert_eq!(plan.placements[0].start(), Some(0));
    }

    #[test]
    fn a_deadline_that_cannot_be_met_runs_now_and_is_reported_late() {
        let mut b = ProblemBuilder::new(CLOCK, vec![pool(1)], vec![100.0; 8], PlanOptions::default(), 0.05);
        b.queue(queued("ok", Some(1000 + 6 * 900)));
        b.queue(queued("missed", Some(1000 + 900)));
        let built = b.build().unwrap();
        assert_eq!(built.problem.jobs[0].deadline, Some(6));
        assert_eq!(built.problem.jobs[1].deadline, None);
        assert_eq!(built.missed_deadline, [false, true]);
        let plan = built.plan();
        assert!(matches!(plan.placements[0], Placement::Run { late: false, .. }));
        assert!(matches!(plan.placements[1], Placement::Run { late: true, .. }), "{:?}", plan.placements[1]);
        assert_eq!(plan.placements[1].start(), Some(0));
    }
}
