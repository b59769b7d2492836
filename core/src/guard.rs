//! The guard's CPU cap as a pure policy: what the node agent enforces every tick
//! and what the simulator models every step, from one function.
//!
//! Koordinator's CPU suppress: batch may use at most `threshold × cpus − online`,
//! never less than `floor_cores`. A cut applies at once; a rise is limited to
//! `step_up_cores` per tick; a change smaller than the dead band is noise in the
//! online measurement and is ignored. Online CPU pressure past `psi_threshold`
//! halves the cap; a cap from the scheduler applies on top while valid.
//!
//! Where batch runs at the kernel's idle priority (`cpu.idle = 1`: every online
//! task preempts batch at wake-up), this quota loop is off by default
//! ([`Suppress::Auto`]): batch takes what online leaves, and only the scheduler's
//! cap applies. Measured with memcached beside batch (BENCHMARKS.md, "Online
//! latency beside batch"): on top of idle priority the formula's quota raised p99
//! and cut the harvest (it leaves CPUs idle that online then wakes on slowly),
//! and online pressure halving cut the harvest to 20 % at 40 % load for stalls
//! that were online's own (its threads waiting on each other and the client):
//! batch at idle priority was not what they waited for.

use std::fmt::Write as _;

/// Changes of the cap smaller than this (cores) are held back: they track noise.
pub const DEAD_BAND_CORES: f64 = 0.05;

/// When the quota loop (the usage formula `threshold × cpus − online` and the
/// online-pressure halving) caps batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suppress {
    /// Only where batch lacks the kernel's idle priority (Linux < 5.15).
    #[default]
    Auto,
    /// Always, as Koordinator's CPU suppress does.
    Always,
    /// Never: only the scheduler's cap.
    Never,
}

impl Suppress {
    pub fn parse(s: &str) -> Option<Suppress> {
        match s {
            "auto" => Some(Suppress::Auto),
            "always" => Some(Suppress::Always),
            "never" => Some(Suppress::Never),
            _ => None,
        }
    }

    /// The quota loop runs, given whether batch has the kernel's idle priority.
    pub fn quota_loop(self, idle_priority: bool) -> bool {
        match self {
            Suppress::Auto => !idle_priority,
            Suppress::Always => true,
            Suppress::Never => false,
        }
    }
}

/// The guard's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuCapPolicy {
    /// Share of the node's CPUs that online + batch may use together.
    pub threshold: f64,
    /// The quota loop runs (see [`Suppress::quota_loop`]); off, the target is
    /// every CPU and only the scheduler's cap lowers it.
    pub quota_loop: bool,
    /// Batch is never capped below this many cores (jobs keep making progress).
    pub floor_cores: f64,
    /// Largest rise of the cap per tick, cores.
    pub step_up_cores: f64,
    /// CPU pressure (PSI `some avg10`, %) of online services above which the cap
    /// is halved each tick.
    pub psi_threshold: f64,
}

impl Default for CpuCapPolicy {
    fn default() -> CpuCapPolicy {
        CpuCapPolicy { threshold: 0.9, quota_loop: true, floor_cores: 0.1, step_up_cores: 0.5, psi_threshold: 20.0 }
    }
}

/// What one decision sees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuCapInput {
    pub cpus: f64,
    /// Cores online services (everything but batch) use now.
    pub online: f64,
    /// CPU pressure of online services, when it is measured.
    pub online_psi: Option<f64>,
    /// A cap from the scheduler in force now.
    pub scheduler_cap: Option<f64>,
    /// Ticks since the last decision (1 in the agent; a simulator step is many).
    pub ticks: f64,
    /// A pressure trigger on an online cgroup fired since the last decision
    /// (sub-second; the `avg10` in `online_psi` lags by seconds).
    pub pressure_event: bool,
}

/// What the cap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapAction {
    /// The first decision: the target as is.
    Set,
    Hold,
    Raise,
    Cut,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CpuCapDecision {
    /// Batch cores allowed until the next decision.
    pub cap: f64,
    pub action: CapAction,
    /// Online pressure lowered the target.
    pub psi_cut: bool,
    /// The formula with its numbers, for the log.
    pub reason: String,
}

impl CpuCapPolicy {
    /// The next cap, from the one in force (`None` before the first decision).
    pub fn decide(&self, previous: Option<f64>, input: &CpuCapInput) -> CpuCapDecision {
        let (mut target, mut reason) = if self.quota_loop {
            let target = (self.threshold * input.cpus - input.online).max(self.floor_cores);
            let reason = format!(
                "cap = max(threshold {:.2} × cpus {} − online {:.2}, floor {:.2}) = {target:.2}",
                self.threshold, input.cpus, input.online, self.floor_cores
            );
            (target, reason)
        } else {
            (input.cpus, format!("cap = cpus {} (batch at idle priority: no quota loop)", input.cpus))
        };
        let mut psi_cut = false;
        let pressure = input.online_psi.filter(|p| *p > self.psi_threshold);
        if self.quota_loop && (pressure.is_some() || input.pressure_event) {
            let cut = (previous.unwrap_or(target) / 2.0).max(self.floor_cores);
            if cut < target {
                target = cut;
                psi_cut = true;
                let _ = match pressure {
                    Some(p) => write!(
                        reason,
                        "; online CPU pressure {p:.1}% > {:.1}%: halved to {target:.2}",
                        self.psi_threshold
                    ),
                    None => write!(reason, "; online CPU pressure trigger fired: halved to {target:.2}"),
                };
            }
        }
        if let Some(cap) = input.scheduler_cap.filter(|cap| *cap < target) {
            target = cap.max(self.floor_cores);
            let _ = write!(reason, "; scheduler cap {cap:.2}");
        }
        let (cap, action) = match previous {
            None => (target, CapAction::Set),
            Some(old) if (target - old).abs() < DEAD_BAND_CORES => (old, CapAction::Hold),
            Some(old) if target > old => {
                let up = target.min(old + self.step_up_cores * input.ticks.max(1.0));
                let _ = write!(reason, "; rise limited to {:.2}/tick", self.step_up_cores);
                (up, if up > old + 1e-3 { CapAction::Raise } else { CapAction::Hold })
            }
            Some(old) if target < old - 1e-3 => (target, CapAction::Cut),
            Some(old) => (old, CapAction::Hold),
        };
        CpuCapDecision { cap, action, psi_cut, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(cpus: f64, online: f64) -> CpuCapInput {
        CpuCapInput { cpus, online, online_psi: None, scheduler_cap: None, ticks: 1.0, pressure_event: false }
    }

    #[test]
    fn cuts_at_once_rises_slowly_and_ignores_noise() {
        let p = CpuCapPolicy { threshold: 0.65, ..CpuCapPolicy::default() };
        let first = p.decide(None, &input(16.0, 4.0));
        assert!((first.cap - 6.4).abs() < 1e-9 && first.action == CapAction::Set, "{first:?}");
        let cut = p.decide(Some(6.4), &input(16.0, 9.0));
        assert!((cut.cap - 1.4).abs() < 1e-9 && cut.action == CapAction::Cut);
        let up = p.decide(Some(1.4), &input(16.0, 1.0));
        assert!((up.cap - 1.9).abs() < 1e-9 && up.action == CapAction::Raise);
        // A simulator step of 300 ticks may rise 150 cores: to the target.
        let step = p.decide(Some(1.4), &CpuCapInput { ticks: 300.0, ..input(16.0, 1.0) });
        assert!((step.cap - 9.4).abs() < 1e-9);
        let noise = p.decide(Some(6.4), &input(16.0, 4.03));
        assert!((noise.cap - 6.4).abs() < 1e-12 && noise.action == CapAction::Hold);
        let floor = p.decide(Some(1.0), &input(16.0, 16.0));
        assert!((floor.cap - 0.1).abs() < 1e-9);
        assert!(floor.reason.contains("threshold 0.65 × cpus 16 − online 16.00"), "{}", floor.reason);
    }

    #[test]
    fn pressure_halves_and_the_scheduler_caps() {
        let p = CpuCapPolicy::default();
        let psi = p.decide(Some(4.0), &CpuCapInput { online_psi: Some(30.0), ..input(16.0, 1.0) });
        assert!((psi.cap - 2.0).abs() < 1e-9 && psi.psi_cut, "{psi:?}");
        let calm = p.decide(Some(4.0), &CpuCapInput { online_psi: Some(10.0), ..input(16.0, 1.0) });
        assert!(!calm.psi_cut);
        let sched = p.decide(None, &CpuCapInput { scheduler_cap: Some(3.0), ..input(16.0, 1.0) });
        assert!((sched.cap - 3.0).abs() < 1e-9 && sched.reason.contains("scheduler cap 3.00"));
        let event = p.decide(Some(4.0), &CpuCapInput { pressure_event: true, ..input(16.0, 1.0) });
        assert!((event.cap - 2.0).abs() < 1e-9 && event.psi_cut && event.reason.contains("trigger fired"), "{event:?}");
    }

    #[test]
    fn at_idle_priority_only_the_scheduler_cuts() {
        assert!(Suppress::Auto.quota_loop(false) && !Suppress::Auto.quota_loop(true));
        assert!(Suppress::Always.quota_loop(true) && !Suppress::Never.quota_loop(false));
        let p = CpuCapPolicy { quota_loop: false, ..CpuCapPolicy::default() };
        // Online at 15 of 16 cores: the formula would give the floor; idle priority gives batch every CPU.
        let busy = p.decide(Some(16.0), &input(16.0, 15.0));
        assert!((busy.cap - 16.0).abs() < 1e-9 && busy.action == CapAction::Hold, "{busy:?}");
        assert!(busy.reason.contains("idle priority"), "{}", busy.reason);
        let psi =
            p.decide(Some(16.0), &CpuCapInput { online_psi: Some(40.0), pressure_event: true, ..input(16.0, 15.0) });
        assert!((psi.cap - 16.0).abs() < 1e-9 && !psi.psi_cut, "{psi:?}");
        let sched = p.decide(Some(16.0), &CpuCapInput { scheduler_cap: Some(2.0), ..input(16.0, 1.0) });
        assert!((sched.cap - 2.0).abs() < 1e-9);
    }
}
