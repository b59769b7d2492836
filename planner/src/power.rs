//! Node power states: which machines to drain, suspend and resume, from the plan.
//!
//! Slurm's power saving as a pure state machine (`SuspendTime`, `SuspendTimeout`,
//! `ResumeTimeout`, excluded nodes, resuming nodes counted as coming capacity),
//! with what Slurm leaves to the site added: a warm reserve per pool, a minimum
//! off time and a cap on suspends per node per day, so nodes do not flap. The
//! scheduler and the simulator drive this same machine: they observe the world
//! (a node registered, went silent, how many jobs it runs, when the plan next
//! wants it) and carry out the calls it returns (a driver's suspend or resume).
//! It has no clock: `now` is given.
//!
//! ```text
//!   on ──(not wanted soon, no new work for suspend_after)──► draining
//!   draining ──(wanted again)──► on        draining ──(no jobs left: Suspend)──► suspending
//!   suspending ──(node silent)──► off      suspending ──(suspend_timeout)──► failed
//!   off ──(wanted, min_off passed: Resume)──► resuming ──(registered)──► on
//!   resuming ──(resume_timeout)──► failed  off | resuming | failed ──(registered)──► on
//!   failed during a suspend, node still registered, min_off passed ──► on
//! ```

use serde::{Deserialize, Serialize};

/// A day, for the cap on suspends.
const DAY_S: i64 = 86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    /// Powered and taking work.
    On,
    /// Powered, takes no new work; suspends when its running jobs have finished.
    Draining,
    /// The driver was asked to suspend it; waiting for it to go silent.
    Suspending,
    Off,
    /// The driver was asked to resume it; waiting for it to register.
    Resuming,
    /// A suspend or resume that did not complete in time, or a driver error.
    Failed,
}

impl PowerState {
    pub const ALL: [PowerState; 6] = [
        PowerState::On,
        PowerState::Draining,
        PowerState::Suspending,
        PowerState::Off,
        PowerState::Resuming,
        PowerState::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PowerState::On => "on",
            PowerState::Draining => "draining",
            PowerState::Suspending => "suspending",
            PowerState::Off => "off",
            PowerState::Resuming => "resuming",
            PowerState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<PowerState> {
        PowerState::ALL.into_iter().find(|p| p.name() == s)
    }

    /// New work may be dispatched to it.
    pub fn takes_work(self) -> bool {
        self == PowerState::On
    }

    /// It draws power (every state but `off`; a failed node's state is unknown
    /// and counted as powered).
    pub fn powered(self) -> bool {
        self != PowerState::Off
    }
}

/// One pool's power policy. Times in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PowerSettings {
    /// A node that got no new work for this long, and that the plan does not
    /// want soon, is drained (Slurm's `SuspendTime`).
    pub suspend_after_s: i64,
    /// How long a resume takes until the node runs work (the planner counts a
    /// resuming node as capacity from then).
    pub wake_s: i64,
    /// Resume this much earlier than the wake latency alone asks: the time
    /// between two plans plus one slot. A plan starts work only at a slot
    /// boundary after the node's ready time, so without the slot a plan that
    /// waits for a wake would put it one slot ahead at every round, forever.
    pub lead_s: i64,
    /// A node still registered this long after its suspend is `failed`.
    pub suspend_timeout_s: i64,
    /// A node not registered this long after its resume is `failed`.
    pub resume_timeout_s: i64,
    /// An `off` node stays off at least this long.
    pub min_off_s: i64,
    /// Idle powered nodes the pool keeps warm for bursts.
    pub reserve: u32,
    /// Suspends per node in any 24 h at most.
    pub max_suspends_per_day: u32,
    /// Driver calls per pool per minute at most (Slurm's `SuspendRate` and
    /// `ResumeRate`; 0 = no limit): a BMC network or a site program is not hit
    /// by a whole pool at once. The earliest-wanted nodes wake first.
    pub suspend_rate: u32,
    pub resume_rate: u32,
}

impl Default for PowerSettings {
    fn default() -> Self {
        PowerSettings {
            suspend_after_s: 600,
            wake_s: 300,
            lead_s: 60,
            suspend_timeout_s: 300,
            resume_timeout_s: 900,
            min_off_s: 1800,
            reserve: 0,
            max_suspends_per_day: 12,
            suspend_rate: 60,
            resume_rate: 300,
        }
    }
}

/// A setting out of range: its key, value and the rule.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {why}")]
pub struct SettingError {
    pub key: &'static str,
    pub value: String,
    pub why: &'static str,
}

impl PowerSettings {
    /// Every setting out of range, each named (keys as in the config files).
    pub fn errors(&self) -> Vec<SettingError> {
        let mut out = Vec::new();
        for (key, v) in [
            ("suspend_after", self.suspend_after_s),
            ("wake", self.wake_s),
            ("lead", self.lead_s),
            ("min_off", self.min_off_s),
        ] {
            if v < 0 {
                out.push(SettingError { key, value: format!("{v}s"), why: "must not be negative" });
            }
        }
        for (key, v) in [("suspend_timeout", self.suspend_timeout_s), ("resume_timeout", self.resume_timeout_s)] {
            if v <= 0 {
                out.push(SettingError { key, value: format!("{v}s"), why: "must be positive" });
            }
        }
        if self.resume_timeout_s > 0 && self.resume_timeout_s < self.wake_s {
            out.push(SettingError {
                key: "resume_timeout",
                value: format!("{}s", self.resume_timeout_s),
                why: "must be at least the wake latency (`wake`)",
            });
        }
        if self.max_suspends_per_day == 0 {
            out.push(SettingError {
                key: "max_suspends_per_day",
                value: "0".into(),
                why: "must be at least 1 (pin the pool to keep its nodes on)",
            });
        }
        out
    }
}

/// One node's power state and what the machine remembers about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodePower {
    pub state: PowerState,
    /// Unix seconds it entered `state`.
    pub since: i64,
    /// Never drained or suspended (pools that run online services, the exclude list).
    pub pinned: bool,
    /// The last time it got new work (or came on).
    pub last_work: i64,
    /// Suspends started in the last 24 h.
    pub suspends: Vec<i64>,
    /// The state `failed` was entered from (`suspending` or `resuming`).
    pub failed_during: Option<PowerState>,
    /// When it was last resumed (for `resume_rate`).
    #[serde(default)]
    pub last_resume: Option<i64>,
    /// Why it is in its state, for people.
    pub reason: String,
}

impl NodePower {
    pub fn on(now: i64, pinned: bool) -> NodePower {
        NodePower {
            state: PowerState::On,
            since: now,
            pinned,
            last_work: now,
            suspends: Vec::new(),
            failed_during: None,
            last_resume: None,
            reason: "registered".into(),
        }
    }

    /// The first time it could run new work: now when it is on (or draining,
    /// which a plan may cancel), its expected ready time when it is resuming or
    /// off (after its minimum off time), never when it failed.
    pub fn ready_at(&self, s: &PowerSettings, now: i64) -> Option<i64> {
        match self.state {
            PowerState::On | PowerState::Draining => Some(now),
            PowerState::Resuming => Some(now.max(self.since + s.wake_s)),
            PowerState::Off | PowerState::Suspending => Some(now.max(self.since + s.min_off_s) + s.wake_s),
            PowerState::Failed => None,
        }
    }

    /// Until when it stays powered whatever the plan does: an `on` node until
    /// `suspend_after` past its last work, a resuming one until that long past
    /// its expected registration; `None` for nodes going or gone to sleep (and
    /// failed ones). A draining node's running jobs keep it up on their own.
    pub fn powered_until(&self, s: &PowerSettings, now: i64) -> Option<i64> {
        match self.state {
            PowerState::On => Some(now.max(self.last_work + s.suspend_after_s)),
            PowerState::Resuming => Some(now.max(self.since + s.wake_s) + s.suspend_after_s),
            _ => None,
        }
    }

    /// The plan dispatches new work to a draining node: it takes work again
    /// (the `draining → on` edge, at dispatch rather than at the next round).
    pub fn undrain(&mut self, node: usize, now: i64) -> Option<Transition> {
        (self.state == PowerState::Draining)
            .then(|| self.set(node, now, PowerState::On, "new work dispatched".into(), None))
    }

    /// The driver answered a suspend or resume with an error: `failed`, with it.
    pub fn driver_failed(&mut self, node: usize, now: i64, why: &str) -> Option<Transition> {
        if !matches!(self.state, PowerState::Suspending | PowerState::Resuming) {
            return None;
        }
        Some(self.set(node, now, PowerState::Failed, format!("driver: {why}"), None))
    }

    fn set(&mut self, node: usize, now: i64, to: PowerState, reason: String, call: Option<Call>) -> Transition {
        let from = self.state;
        self.failed_during = (to == PowerState::Failed).then_some(from);
        if to == PowerState::On {
            self.last_work = now;
        }
        self.state = to;
        self.since = now;
        self.reason.clone_from(&reason);
        Transition { node, from, to, call, reason }
    }
}

/// What the caller saw of a node this round.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Seen {
    /// When its current registration began (its agent's session opened, or the
    /// simulated machine came up); `None` when it is not registered.
    pub registered_at: Option<i64>,
    /// Batch jobs running on it.
    pub running: usize,
    /// The plan's first start of new work on it (unix seconds), if any.
    pub wanted_at: Option<i64>,
}

/// A driver call the caller must make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Suspend,
    Resume,
}

/// A change of one node's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// Index into the nodes given to [`step`].
    pub node: usize,
    pub from: PowerState,
    pub to: PowerState,
    /// The driver call that carries it out, if any.
    pub call: Option<Call>,
    pub reason: String,
}

/// One round of one pool: reconcile what was seen, then drain, suspend and
/// resume as the plan wants. Mutates `nodes` and returns what changed, in node
/// order within each phase. `seen` has one entry per node.
pub fn step(s: &PowerSettings, now: i64, nodes: &mut [NodePower], seen: &[Seen]) -> Vec<Transition> {
    assert_eq!(nodes.len(), seen.len(), "one observation per node");
    let mut out = Vec::new();
    for (i, (n, o)) in nodes.iter_mut().zip(seen).enumerate() {
        out.extend(reconcile(s, now, i, n, o));
        n.suspends.retain(|&t| t > now - DAY_S);
        if o.wanted_at.is_some_and(|w| w <= now) && n.state.takes_work() {
            n.last_work = now;
        }
    }
    let soon = |o: &Seen| o.wanted_at.is_some_and(|w| w < now + s.min_off_s + s.wake_s + s.lead_s);
    let mut suspends =
        budget(s.suspend_rate, nodes.iter().filter(|n| n.suspends.last().is_some_and(|&t| t > now - 60)));
    // Draining nodes wanted again take work again; drained ones suspend.
    for (i, (n, o)) in nodes.iter_mut().zip(seen).enumerate() {
        if n.state != PowerState::Draining {
            continue;
        }
        if soon(o) {
            out.push(n.set(i, now, PowerState::On, "the plan wants it again".into(), None));
        } else if o.running == 0 && suspends > 0 {
            suspends -= 1;
            n.suspends.push(now);
            out.push(n.set(i, now, PowerState::Suspending, "drained".into(), Some(Call::Suspend)));
        }
    }
    out.extend(drain(s, now, nodes, seen, &soon, suspends));
    let resumes = budget(s.resume_rate, nodes.iter().filter(|n| n.last_resume.is_some_and(|t| t > now - 60)));
    out.extend(resume(s, now, nodes, seen, resumes));
    out
}

/// Calls left this minute under `rate` (0 = no limit), given the nodes called in it.
fn budget<'a>(rate: u32, called: impl Iterator<Item = &'a NodePower>) -> usize {
    if rate == 0 {
        return usize::MAX;
    }
    usize::try_from(rate).unwrap_or(usize::MAX).saturating_sub(called.count())
}

/// Registrations, silences and timeouts.
fn reconcile(s: &PowerSettings, now: i64, i: usize, n: &mut NodePower, o: &Seen) -> Option<Transition> {
    let registered_since = o.registered_at.is_some_and(|r| r >= n.since);
    let t = match n.state {
        PowerState::Off | PowerState::Resuming | PowerState::Failed if registered_since => {
            (PowerState::On, format!("registered while {}", n.state.name()))
        }
        PowerState::Suspending if o.registered_at.is_none() => {
            (PowerState::Off, "went silent after its suspend".into())
        }
        PowerState::Suspending if now - n.since > s.suspend_timeout_s => (
            PowerState::Failed,
            format!(
                "still registered {} s after its suspend (suspend_timeout {} s)",
                now - n.since,
                s.suspend_timeout_s
            ),
        ),
        PowerState::Resuming if now - n.since > s.resume_timeout_s => (
            PowerState::Failed,
            format!("not registered {} s after its resume (resume_timeout {} s)", now - n.since, s.resume_timeout_s),
        ),
        PowerState::Failed
            if n.failed_during == Some(PowerState::Suspending)
                && o.registered_at.is_some()
                && now - n.since >= s.min_off_s =>
        {
            (PowerState::On, format!("back in service {} s after a failed suspend", now - n.since))
        }
        _ => return None,
    };
    Some(n.set(i, now, t.0, t.1, None))
}

/// Drain the nodes the plan does not want soon and that got no new work for
/// `suspend_after`, keeping `reserve` idle ones warm and within the daily cap.
fn drain(
    s: &PowerSettings,
    now: i64,
    nodes: &mut [NodePower],
    seen: &[Seen],
    soon: &dyn Fn(&Seen) -> bool,
    calls: usize,
) -> Vec<Transition> {
    let cap = usize::try_from(s.max_suspends_per_day).unwrap_or(usize::MAX);
    let spare = |n: &NodePower, o: &Seen| n.state == PowerState::On && !n.pinned && !soon(o);
    let mut idle: Vec<usize> = Vec::new();
    let mut busy: Vec<usize> = Vec::new();
    let mut warm = 0usize;
    for (i, (n, o)) in nodes.iter().zip(seen).enumerate() {
        if !spare(n, o) {
            continue;
        }
        if o.running == 0 {
            warm += 1;
        }
        if now - n.last_work >= s.suspend_after_s && n.suspends.len() < cap {
            if o.running == 0 { idle.push(i) } else { busy.push(i) }
        }
    }
    // The longest idle go first; the most recently used stay warm.
    idle.sort_by_key(|&i| (nodes[i].last_work, i));
    let keep = usize::try_from(s.reserve).unwrap_or(usize::MAX);
    // Idle nodes suspend at once, so they need a call this minute.
    let may = warm.saturating_sub(keep).min(idle.len()).min(calls);
    let mut out = Vec::new();
    for i in idle.into_iter().take(may).chain(busy) {
        let n = &mut nodes[i];
        let why = format!("not wanted by the plan and no new work for {} s", now - n.last_work);
        out.push(n.set(i, now, PowerState::Draining, why, None));
        // An idle node suspends in the same round.
        if seen[i].running == 0 {
            n.suspends.push(now);
            out.push(n.set(i, now, PowerState::Suspending, "drained".into(), Some(Call::Suspend)));
        }
    }
    out
}

/// Resume the off nodes the plan wants within their wake latency (and lead),
/// earliest wanted first and at most `calls`, then enough to refill the warm
/// reserve.
fn resume(s: &PowerSettings, now: i64, nodes: &mut [NodePower], seen: &[Seen], mut calls: usize) -> Vec<Transition> {
    let may = |n: &NodePower| n.state == PowerState::Off && now >= n.since + s.min_off_s;
    let mut out = Vec::new();
    let mut due: Vec<(i64, usize)> = nodes
        .iter()
        .zip(seen)
        .enumerate()
        .filter_map(|(i, (n, o))| o.wanted_at.filter(|w| may(n) && w - s.wake_s - s.lead_s <= now).map(|w| (w, i)))
        .collect();
    due.sort_unstable();
    for (w, i) in due {
        if calls == 0 {
            break;
        }
        calls -= 1;
        let why = format!("the plan runs work on it at {w} (wake {} s)", s.wake_s);
        nodes[i].last_resume = Some(now);
        out.push(nodes[i].set(i, now, PowerState::Resuming, why, Some(Call::Resume)));
    }
    let warm = nodes
        .iter()
        .zip(seen)
        .filter(|(n, o)| {
            !n.pinned
                && o.running == 0
                && o.wanted_at.is_none()
                && matches!(n.state, PowerState::On | PowerState::Resuming)
        })
        .count();
    let short = usize::try_from(s.reserve).unwrap_or(usize::MAX).saturating_sub(warm);
    let refill: Vec<usize> = (0..nodes.len()).filter(|&i| may(&nodes[i])).take(short.min(calls)).collect();
    for i in refill {
        nodes[i].last_resume = Some(now);
        out.push(nodes[i].set(i, now, PowerState::Resuming, "refills the warm reserve".into(), Some(Call::Resume)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: PowerSettings = PowerSettings {
        suspend_after_s: 600,
        wake_s: 300,
        lead_s: 60,
        suspend_timeout_s: 300,
        resume_timeout_s: 900,
        min_off_s: 1800,
        reserve: 0,
        max_suspends_per_day: 2,
        suspend_rate: 0,
        resume_rate: 0,
    };

    fn up(at: i64) -> Seen {
        Seen { registered_at: Some(at), ..Seen::default() }
    }

    #[test]
    fn an_idle_node_sleeps_after_suspend_after_and_wakes_for_the_plan() {
        let mut n = vec![NodePower::on(0, false), NodePower::on(0, true)];
        assert!(step(&S, 599, &mut n, &[up(0), up(0)]).is_empty(), "not idle long enough");
        let t = step(&S, 600, &mut n, &[up(0), up(0)]);
        assert_eq!(
            t.iter().map(|t| (t.node, t.to, t.call)).collect::<Vec<_>>(),
            [(0, PowerState::Draining, None), (0, PowerState::Suspending, Some(Call::Suspend))]
        );
        assert_eq!(n[1].state, PowerState::On, "a pinned node never sleeps");
        // Silent: off. Wanted at 3000, but the minimum off time runs to 2400 + 60.
        let t = step(&S, 660, &mut n, &[Seen::default(), up(0)]);
        assert_eq!((t[0].to, n[0].state), (PowerState::Off, PowerState::Off));
        assert_eq!(n[0].ready_at(&S, 700), Some(660 + 1800 + 300));
        let want = Seen { wanted_at: Some(2760), ..Seen::default() };
        assert!(step(&S, 2000, &mut n, &[want, up(0)]).is_empty(), "min_off not over");
        let t = step(&S, 2460, &mut n, &[want, up(0)]);
        assert_eq!((t[0].to, t[0].call), (PowerState::Resuming, Some(Call::Resume)));
        assert_eq!(n[0].ready_at(&S, 2500), Some(2760), "counted as capacity from its ready time");
        let t = step(&S, 2700, &mut n, &[Seen { registered_at: Some(2690), ..want }, up(0)]);
        assert_eq!(t[0].to, PowerState::On);
    }

    #[test]
    fn a_node_wanted_soon_is_not_drained_and_a_draining_node_wanted_again_stays() {
        let mut n = vec![NodePower::on(0, false)];
        let soon = Seen { registered_at: Some(0), running: 1, wanted_at: Some(1000 + 1800) };
        assert!(step(&S, 1000, &mut n, &[soon]).is_empty(), "wanted before it could be off and back");
        let busy = Seen { registered_at: Some(0), running: 1, wanted_at: None };
        let t = step(&S, 1000, &mut n, &[busy]);
        assert_eq!(t.len(), 1, "busy: drains, does not suspend yet: {t:?}");
        assert_eq!(n[0].state, PowerState::Draining);
        assert!(step(&S, 1100, &mut n, &[busy]).is_empty(), "its jobs still run");
        let t = step(&S, 1200, &mut n, &[Seen { wanted_at: Some(1200), ..busy }]);
        assert_eq!(t[0].to, PowerState::On, "wanted again: the drain is cancelled");
        assert_eq!(n[0].last_work, 1200, "new work resets the idle clock");
    }

    #[test]
    fn timeouts_fail_and_a_registration_recovers() {
        let mut n = vec![NodePower::on(0, false), NodePower::on(0, false)];
        step(&S, 600, &mut n, &[up(0), up(0)]);
        assert!(n.iter().all(|n| n.state == PowerState::Suspending));
        // Node 0 never goes silent; node 1 does, then is resumed and never registers.
        let t = step(&S, 901, &mut n, &[up(0), Seen::default()]);
        assert_eq!(t.iter().map(|t| t.to).collect::<Vec<_>>(), [PowerState::Failed, PowerState::Off]);
        assert!(n[0].reason.contains("suspend_timeout 300 s"), "{}", n[0].reason);
        assert_eq!(n[0].ready_at(&S, 1000), None, "a failed node is no capacity");
        let want = Seen { wanted_at: Some(3000), ..Seen::default() };
        let t = step(&S, 2800, &mut n, &[up(0), want]);
        assert_eq!(
            t.iter().map(|t| (t.node, t.to)).collect::<Vec<_>>(),
            [(0, PowerState::On), (1, PowerState::Resuming)]
        );
        assert!(t[0].reason.contains("after a failed suspend"), "{t:?}");
        let busy = Seen { registered_at: Some(0), running: 1, wanted_at: Some(3701) };
        let t = step(&S, 3701, &mut n, &[busy, want]);
        assert_eq!(t.iter().map(|t| (t.node, t.to)).collect::<Vec<_>>(), [(1, PowerState::Failed)]);
        assert!(n[1].reason.contains("resume_timeout 900 s"), "{}", n[1].reason);
        let t = step(&S, 4000, &mut n, &[busy, up(3990)]);
        assert_eq!(t.iter().map(|t| (t.node, t.to)).collect::<Vec<_>>(), [(1, PowerState::On)]);
        // A registration older than the failure does not count.
        let mut f = vec![NodePower { state: PowerState::Failed, since: 100, ..NodePower::on(0, false) }];
        assert!(step(&S, 200, &mut f, &[up(50)]).is_empty());
    }

    #[test]
    fn the_reserve_stays_warm_and_the_daily_cap_stops_flapping() {
        let s = PowerSettings { reserve: 1, ..S };
        let mut n: Vec<NodePower> = (0..3).map(|_| NodePower::on(0, false)).collect();
        n[2].last_work = 500;
        let all_up = [up(0), up(0), up(0)];
        let t = step(&s, 1100, &mut n, &all_up);
        let slept: Vec<usize> = t.iter().filter(|t| t.to == PowerState::Suspending).map(|t| t.node).collect();
        assert_eq!(slept, [0, 1], "the most recently used node stays warm");
        // Reserve refill: the warm node gets work; an off node comes back.
        step(&s, 1160, &mut n, &[Seen::default(), Seen::default(), up(0)]);
        let busy = Seen { registered_at: Some(0), running: 1, wanted_at: Some(3000) };
        let t = step(&s, 2960, &mut n, &[Seen::default(), Seen::default(), busy]);
        assert_eq!(t.iter().map(|t| (t.node, t.call)).collect::<Vec<_>>(), [(0, Some(Call::Resume))]);
        // The cap: two suspends in a day, then the node stays on.
        let mut m = vec![NodePower::on(0, false)];
        for k in 0..3 {
            let base = k * 5000;
            step(&S, base + 600, &mut m, &[up(base)]);
            step(&S, base + 700, &mut m, &[Seen::default()]);
            step(&S, base + 2600, &mut m, &[Seen { wanted_at: Some(base + 2600), ..Seen::default() }]);
            step(&S, base + 2700, &mut m, &[up(base + 2690)]);
            m[0].last_work = base;
        }
        assert_eq!(m[0].suspends.len(), 2);
        assert_eq!(m[0].state, PowerState::On, "third suspend in a day refused");
        // A day after the first, it may sleep again.
        m[0].last_work = 0;
        step(&S, 86_400 + 601, &mut m, &[up(0)]);
        assert_eq!(m[0].state, PowerState::Suspending);
    }

    #[test]
    fn calls_per_minute_are_capped_and_the_earliest_wanted_wake_first() {
        let s = PowerSettings { suspend_rate: 2, resume_rate: 1, ..S };
        let mut n: Vec<NodePower> = (0..3).map(|_| NodePower::on(0, false)).collect();
        let t = step(&s, 600, &mut n, &[up(0), up(0), up(0)]);
        assert_eq!(t.iter().filter(|t| t.call == Some(Call::Suspend)).count(), 2, "two calls this minute");
        assert_eq!(n[2].state, PowerState::On, "the third waits");
        assert!(step(&s, 630, &mut n, &[Seen::default(), Seen::default(), up(0)]).iter().all(|t| t.call.is_none()));
        let t = step(&s, 661, &mut n, &[Seen::default(), Seen::default(), up(0)]);
        assert_eq!(t.iter().filter(|t| t.call == Some(Call::Suspend)).count(), 1, "a minute later: the third");
        // Both off nodes wanted; one resume a minute, the earlier wanted first.
        let want = |w| Seen { wanted_at: Some(w), ..Seen::default() };
        let t = step(&s, 3000, &mut n, &[want(3200), want(3100), Seen::default()]);
        let resumed: Vec<usize> = t.iter().filter(|t| t.call == Some(Call::Resume)).map(|t| t.node).collect();
        assert_eq!(resumed, [1]);
        let t = step(&s, 3061, &mut n, &[want(3200), Seen::default(), Seen::default()]);
        assert_eq!(t.iter().filter(|t| t.call == Some(Call::Resume)).map(|t| t.node).collect::<Vec<_>>(), [0]);
    }

    #[test]
    fn a_driver_error_fails_the_node_with_its_answer() {
        let mut n = vec![NodePower::on(0, false)];
        step(&S, 600, &mut n, &[up(0)]);
        let t = n[0].driver_failed(0, 610, "HTTP 401 Unauthorized from https://bmc/redfish").unwrap();
        assert_eq!((t.from, t.to), (PowerState::Suspending, PowerState::Failed));
        assert!(n[0].reason.contains("401"));
        assert!(n[0].driver_failed(0, 620, "again").is_none(), "only a pending call can fail");
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = PowerSettings { wake_s: -1, resume_timeout_s: 0, max_suspends_per_day: 0, ..S };
        let keys: Vec<&str> = bad.errors().iter().map(|e| e.key).collect();
        assert_eq!(keys, ["wake", "resume_timeout", "max_suspends_per_day"]);
        assert!(S.errors().is_empty());
        assert_eq!(PowerState::parse("resuming"), Some(PowerState::Resuming));
    }
}
