//! One policy over the whole run, step by step. The plan is made with forecasts;
//! the accounting uses the actual trace: power, carbon, overloads.
//!
//! Each powered node runs the agent's local guard, as deployed — the same policy
//! ([`crate::GuardModel`]), so a rise of online load the plan did not foresee
//! slows batch down instead of starving online services. A throttled job's end
//! moves later by the share of the step it lost.
//! - coloc (Koordinator's): batch may use at most `coloc_threshold × cores −
//!   online` (never below the agent's floor, with its dead band).
//! - asap and greenfill, as the agent runs: batch at the kernel's idle priority
//!   gets what online leaves, `cores − online` (`guard_suppress = "auto"` with
//!   `idle_priority`); with `guard_suppress = "always"` (or no idle priority) the
//!   formula with threshold `1 − safety_margin`, the planner's own limit.

use crate::guard::GuardModel;
use crate::inputs::Inputs;
use crate::power::Power;
use crate::scenario::Resolved;
use greenfill_core::guard::{CpuCapPolicy, Suppress};
use greenfill_forecast::{Forecaster, by_name};
use greenfill_planner::{
    Placement, PlanOptions, PoolInput, ProblemBuilder, ProblemError, QueuedJob, RunningJob, SlotClock, Strategy,
};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Batch on its own always-on machines; online on its own.
    Dedicated,
    /// Co-located, first come first served, capacity = cores × (1 − margin) − online now.
    Asap,
    /// Co-located, Koordinator style: batch ≤ threshold × cores − online now.
    Coloc,
    /// Forecast upper bounds + the planner: carbon-aware timing, powering off.
    Greenfill,
}

/// Which of greenfill's parts a run uses: [`Parts::of`] a policy as the
/// scenario runs it; the savings attribution runs policies with other parts
/// to say what each buys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Parts {
    /// Machines of pools that may sleep do (the scenario's power model); off:
    /// they stay powered, as dedicated machines do.
    pub power_down: bool,
    /// The planner sees the carbon forecast; off: a constant (its trace mean),
    /// so it weighs energy alone.
    pub timing: bool,
    /// Each pool's plan sees its own zone's forecast; off: the scenario's one
    /// signal for all.
    pub zones: bool,
}

impl Parts {
    pub const ALL: Parts = Parts { power_down: true, timing: true, zones: true };

    /// As the scenario runs `policy`: dedicated batch machines stay powered
    /// (the baseline a co-location is measured against), the others have all.
    pub fn of(policy: Policy) -> Parts {
        match policy {
            Policy::Dedicated => Parts { power_down: false, ..Parts::ALL },
            _ => Parts::ALL,
        }
    }

    /// Runs of `policy` with `self` and `other` are the same run: asap, coloc
    /// and dedicated plan nothing, so only `power_down` tells them apart, and
    /// `zones` matters only where a pool has a zone.
    pub fn same_run(self, other: Parts, policy: Policy, zoned: bool) -> bool {
        match policy {
            Policy::Greenfill => {
                self.power_down == other.power_down
                    && self.timing == other.timing
                    && (!zoned || !self.timing || self.zones == other.zones)
            }
            _ => self.power_down == other.power_down,
        }
    }
}

impl Policy {
    pub fn parse(s: &str) -> Option<Policy> {
        match s {
            "dedicated" => Some(Policy::Dedicated),
            "asap" => Some(Policy::Asap),
            "coloc" => Some(Policy::Coloc),
            "greenfill" => Some(Policy::Greenfill),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Policy::Dedicated => "dedicated",
            Policy::Asap => "asap",
            Policy::Coloc => "coloc",
            Policy::Greenfill => "greenfill",
        }
    }
}

/// One step of one policy, for the time series.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StepRow {
    pub powered_nodes: u32,
    /// Powered nodes of each pool (in the scenario's order).
    pub powered_by_pool: Vec<u32>,
    /// CPU used / CPU of powered nodes.
    pub cpu_util_powered: f64,
    pub power_kw: f64,
    pub carbon_g_per_kwh: f64,
    pub batch_running: u32,
    pub batch_cores: f64,
    pub overloaded_nodes: u32,
    /// Nodes whose batch the guard capped this step.
    pub throttled_nodes: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyResult {
    pub energy_kwh: f64,
    pub idle_kwh: f64,
    pub dynamic_kwh: f64,
    /// Operational carbon: energy × grid intensity.
    pub carbon_kg: f64,
    /// The energy bill at `[price]`'s day-ahead prices (0 without one).
    pub cost: f64,
    /// Embodied carbon of the powered node-hours (pools' `embodied_g_per_hour`),
    /// apart from `carbon_kg`.
    pub embodied_kg: f64,
    pub node_hours: f64,
    /// CPU used / CPU of powered nodes, summed over the replayed period
    /// (`length`): the fleet's utilisation while work arrives.
    pub mean_cpu_util_powered: f64,
    /// The same over `length` and the drain (no arrivals; there so that every
    /// policy finishes the same work), which lowers it.
    pub mean_cpu_util_powered_with_drain: f64,
    pub jobs_completed: usize,
    pub jobs_late: usize,
    pub jobs_unfinished: usize,
    /// Node-steps in which online + batch CPU use exceeded the node's cores (after
    /// the guard, when it is on: then only where even its floor was too much).
    pub online_overload_steps: usize,
    /// Node-steps in which the guard capped batch below what was running.
    pub guard_throttled_steps: usize,
    /// Batch CPU the guard took back, core-hours (work that ran later instead).
    pub guard_throttled_core_hours: f64,
    pub batch_core_hours: f64,
    /// Suspends and resumes the power-state model made (0 with `power.model = "instant"`).
    pub suspends: usize,
    pub resumes: usize,
    /// Wall-clock time of this policy's run.
    pub run_ms: f64,
    #[serde(skip)]
    pub steps: Vec<StepRow>,
    /// Per job: the step it finished at, if it did (the optimality bound's
    /// jobs and windows).
    #[serde(skip)]
    pub finished_at: Vec<Option<usize>>,
    /// Per job: where and at which step it started (the last start, if any).
    #[serde(skip)]
    pub starts: Vec<Option<JobStart>>,
}

/// Where and when a job started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobStart {
    pub node: usize,
    pub step: usize,
}

impl PolicyResult {
    pub(crate) fn empty(inp: &Inputs) -> PolicyResult {
        PolicyResult {
            energy_kwh: 0.0,
            idle_kwh: 0.0,
            dynamic_kwh: 0.0,
            carbon_kg: 0.0,
            cost: 0.0,
            embodied_kg: 0.0,
            node_hours: 0.0,
            mean_cpu_util_powered: 0.0,
            mean_cpu_util_powered_with_drain: 0.0,
            jobs_completed: 0,
            jobs_late: 0,
            jobs_unfinished: 0,
            online_overload_steps: 0,
            guard_throttled_steps: 0,
            guard_throttled_core_hours: 0.0,
            batch_core_hours: 0.0,
            suspends: 0,
            resumes: 0,
            run_ms: 0.0,
            steps: Vec::with_capacity(inp.steps),
            finished_at: vec![None; inp.jobs.len()],
            starts: Vec::new(),
        }
    }
}

/// The agent's local guard as `policy` runs it, if the scenario has one.
pub(crate) fn guard_for(r: &Resolved, policy: Policy, nodes: usize, step_s: i64) -> Option<GuardModel> {
    let s = &r.scenario;
    let (threshold, quota_loop) = match policy {
        Policy::Coloc => (s.coloc_threshold, true),
        _ => {
            (1.0 - s.safety_margin, Suppress::parse(&s.guard_suppress).unwrap_or_default().quota_loop(s.idle_priority))
        }
    };
    #[allow(clippy::cast_precision_loss, reason = "a step in seconds")]
    s.guard.then(|| {
        let policy = CpuCapPolicy { threshold, quota_loop, ..CpuCapPolicy::default() };
        GuardModel::new(policy, nodes, step_s as f64)
    })
}

/// The accounting of every run, step by step, with the actual online load.
#[derive(Debug)]
pub(crate) struct Meter {
    /// Hours per step.
    sh: f64,
    arrival_steps: usize,
    used_sum: f64,
    cap_sum: f64,
    used_arrivals: f64,
    cap_arrivals: f64,
}

impl Meter {
    pub(crate) fn new(r: &Resolved) -> Meter {
        #[allow(clippy::cast_precision_loss, reason = "a step in seconds")]
        let sh = r.step_s as f64 / 3600.0;
        let arrival_steps = usize::try_from(r.length_s / r.step_s).unwrap_or(usize::MAX);
        Meter { sh, arrival_steps, used_sum: 0.0, cap_sum: 0.0, used_arrivals: 0.0, cap_arrivals: 0.0 }
    }

    /// Step `t`: each powered node's guard, power and carbon; wakes cost
    /// their pools' `wake_wh` in the step they start.
    #[allow(clippy::too_many_arguments, reason = "one step's whole state")]
    pub(crate) fn account(
        &mut self,
        inp: &Inputs,
        st: &mut State,
        mut guard: Option<&mut GuardModel>,
        t: usize,
        powered: &[bool],
        woke: &[usize],
        res: &mut PolicyResult,
    ) -> StepRow {
        let sh = self.sh;
        let ci = inp.carbon[t];
        let mut row = StepRow { carbon_g_per_kwh: ci, powered_by_pool: vec![0; inp.pools.len()], ..StepRow::default() };
        #[allow(clippy::cast_possible_truncation, reason = "running jobs fit u32")]
        {
            row.batch_running = st.running as u32;
        }
        let (mut used, mut cap) = (0.0, 0.0);
        for (node, _) in powered.iter().enumerate().filter(|&(_, &on)| on) {
            let p = &inp.pools[inp.node_pool[node]];
            let mut b = st.batch_cpu[node];
            let online = inp.online_cpu(node, t);
            if let Some(guard) = guard.as_deref_mut() {
                let cap = guard.step(node, p.cores, online);
                if b > cap + 1e-9 {
                    row.throttled_nodes += 1;
                    res.guard_throttled_core_hours += (b - cap) * sh;
                    st.slow_down(node, cap / b);
                    b = cap;
                }
            }
            let load = online + b;
            if load > p.cores + 1e-9 {
                row.overloaded_nodes += 1;
            }
            let u = if p.cores > 0.0 { load / p.cores } else { 0.0 };
            // GPUs: every GPU of a powered node idles, batch's are busy.
            let gpu_w = f64::from(p.gpus) * p.gpu_idle_w + f64::from(st.batch_gpus[node]) * p.gpu_dynamic_w();
            let w = (p.power.watts(u) + gpu_w) * p.pue;
            let idle = p.node_idle_w() * p.pue;
            row.powered_nodes += 1;
            row.powered_by_pool[inp.node_pool[node]] += 1;
            row.power_kw += w / 1000.0;
            res.carbon_kg += w * sh / 1000.0 * inp.carbon_at(inp.node_pool[node], t) / 1000.0;
            res.cost += w * sh / 1000.0 * inp.price_at(inp.node_pool[node], t) / 1000.0;
            row.batch_cores += b;
            res.idle_kwh += idle * sh / 1000.0;
            res.embodied_kg += p.embodied_g_per_hour * sh / 1000.0;
            res.dynamic_kwh += (w - idle) * sh / 1000.0;
            used += load.min(p.cores);
            cap += p.cores;
        }
        for &node in woke {
            let p = &inp.pools[inp.node_pool[node]];
            let kwh = p.wake_wh * p.pue / 1000.0;
            row.power_kw += kwh / sh;
            res.idle_kwh += kwh;
            res.carbon_kg += kwh * inp.carbon_at(inp.node_pool[node], t) / 1000.0;
            res.cost += kwh * inp.price_at(inp.node_pool[node], t) / 1000.0;
        }
        res.energy_kwh += row.power_kw * sh;
        res.node_hours += f64::from(row.powered_nodes) * sh;
        res.online_overload_steps += row.overloaded_nodes as usize;
        res.guard_throttled_steps += row.throttled_nodes as usize;
        row.cpu_util_powered = if cap > 0.0 { used / cap } else { 0.0 };
        self.used_sum += used;
        self.cap_sum += cap;
        if t < self.arrival_steps {
            self.used_arrivals += used;
            self.cap_arrivals += cap;
        }
        row
    }

    /// The run's totals once every step is accounted.
    pub(crate) fn close(&self, inp: &Inputs, st: &State, res: &mut PolicyResult) {
        res.starts = st.started.iter().map(|s| s.map(|(node, step)| JobStart { node, step })).collect();
        res.jobs_unfinished = inp.jobs.len() - res.jobs_completed;
        res.mean_cpu_util_powered = if self.cap_arrivals > 0.0 { self.used_arrivals / self.cap_arrivals } else { 0.0 };
        res.mean_cpu_util_powered_with_drain = if self.cap_sum > 0.0 { self.used_sum / self.cap_sum } else { 0.0 };
    }
}

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) batch_cpu: Vec<f64>,
    pub(crate) batch_mem: Vec<f64>,
    /// GPUs batch holds per node.
    pub(crate) batch_gpus: Vec<u32>,
    /// Jobs ending at each step: (job, node).
    ends: Vec<Vec<(usize, usize)>>,
    /// Arrived, not started, in arrival order.
    queue: Vec<usize>,
    started: Vec<Option<(usize, usize)>>,
    running: usize,
    /// Per job: the step it ends at now, and the share of a step it has lost to
    /// the guard and not yet added to that end.
    end_of: Vec<usize>,
    lost: Vec<f64>,
    /// Running jobs per node.
    pub(crate) on_node: Vec<Vec<usize>>,
}

impl State {
    pub(crate) fn new(inp: &Inputs) -> State {
        let n = inp.nodes();
        State {
            batch_cpu: vec![0.0; n],
            batch_mem: vec![0.0; n],
            batch_gpus: vec![0; n],
            ends: vec![Vec::new(); inp.steps + 1],
            queue: Vec::new(),
            started: vec![None; inp.jobs.len()],
            running: 0,
            end_of: vec![0; inp.jobs.len()],
            lost: vec![0.0; inp.jobs.len()],
            on_node: vec![Vec::new(); n],
        }
    }

    /// The jobs that end at step `t` leave their nodes; returns them.
    pub(crate) fn end_step(&mut self, inp: &Inputs, t: usize, res: &mut PolicyResult, sh: f64) -> Vec<(usize, usize)> {
        let ended = std::mem::take(&mut self.ends[t]);
        for &(job, node) in &ended {
            let j = &inp.jobs[job];
            self.batch_cpu[node] = (self.batch_cpu[node] - j.cores).max(0.0);
            self.batch_mem[node] = (self.batch_mem[node] - j.mem_gib).max(0.0);
            self.batch_gpus[node] = self.batch_gpus[node].saturating_sub(j.gpus);
            if let Some(i) = self.on_node[node].iter().position(|&x| x == job) {
                self.on_node[node].swap_remove(i);
            }
            self.running -= 1;
            res.jobs_completed += 1;
            res.finished_at[job] = Some(t);
            #[allow(clippy::cast_precision_loss, reason = "step counts are small")]
            let hours = j.duration as f64 * sh;
            res.batch_core_hours += j.cores * hours;
            if j.deadline.is_some_and(|d| t > d) {
                res.jobs_late += 1;
            }
        }
        ended
    }

    pub(crate) fn start(&mut self, inp: &Inputs, job: usize, node: usize, t: usize) {
        let j = &inp.jobs[job];
        self.batch_cpu[node] += j.cores;
        self.batch_mem[node] += j.mem_gib;
        self.batch_gpus[node] += j.gpus;
        let end = t + j.duration;
        if end >= self.ends.len() {
            self.ends.resize(end + 1, Vec::new());
        }
        self.ends[end].push((job, node));
        self.end_of[job] = end;
        self.on_node[node].push(job);
        self.started[job] = Some((node, t));
        self.running += 1;
    }

    /// The jobs on `node` ran at `share` of their speed this step.
    fn slow_down(&mut self, node: usize, share: f64) {
        let jobs = std::mem::take(&mut self.on_node[node]);
        for &job in &jobs {
            self.lost[job] += 1.0 - share;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "lost >= 1, small")]
            let steps = self.lost[job].floor() as usize;
            if steps == 0 {
                continue;
            }
            #[allow(clippy::cast_precision_loss, reason = "a few steps")]
            {
                self.lost[job] -= steps as f64;
            }
            let from = self.end_of[job];
            let to = from + steps;
            if let Some(i) = self.ends[from].iter().position(|&(j, _)| j == job) {
                self.ends[from].swap_remove(i);
            }
            if to >= self.ends.len() {
                self.ends.resize(to + 1, Vec::new());
            }
            self.ends[to].push((job, node));
            self.end_of[job] = to;
        }
        self.on_node[node] = jobs;
    }
}

/// The planner refused a problem the simulator built: a bug, since the scenario's
/// options were checked when it was loaded.
#[derive(Debug)]
pub(crate) struct PlanFailed {
    pub(crate) step: usize,
    pub(crate) source: ProblemError,
}

pub(crate) fn run(
    inp: &Inputs,
    r: &Resolved,
    policy: Policy,
    parts: Parts,
    mut progress: impl FnMut(f64),
) -> Result<PolicyResult, PlanFailed> {
    let clock = std::time::Instant::now();
    let s = &r.scenario;
    let n = inp.nodes();
    let mut st = State::new(inp);
    let mut guard = guard_for(r, policy, n, inp.step_s);
    let forecaster: Option<Box<dyn Forecaster>> = by_name(&s.forecast);
    let pinned = !parts.power_down;
    let mut power = r.power.map(|m| Power::new(m, inp, inp.start, pinned));
    let plan_every = usize::try_from(r.plan_every_s / r.step_s).unwrap_or(1).max(1);
    // Node order for first-fit: nodes that are on anyway, then the others.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| !inp.pools[inp.node_pool[i]].always_on);
    let sh = inp.step_s as f64 / 3600.0;
    let mut res = PolicyResult::empty(inp);
    let mut meter = Meter::new(r);
    let mut next = 0;
    for t in 0..inp.steps {
        st.end_step(inp, t, &mut res, sh);
        while next < inp.jobs.len() && inp.jobs[next].arrival <= t {
            st.queue.push(next);
            next += 1;
        }
        let now = inp.start + i64::try_from(t).unwrap_or(0) * inp.step_s;
        if let Some(p) = power.as_mut() {
            p.step(inp, now, &st.on_node);
        }
        match policy {
            Policy::Greenfill => {
                if t % plan_every == 0 {
                    if let Some(p) = power.as_mut() {
                        p.wanted.fill(None);
                    }
                    if !st.queue.is_empty() {
                        plan_and_start(inp, r, parts, &mut st, t, forecaster.as_deref(), power.as_mut())
                            .map_err(|source| PlanFailed { step: t, source })?;
                    }
                }
            }
            _ => first_fit(inp, r, &mut st, t, policy, &order, power.as_mut()),
        }
        // Accounting with the actual online load.
        let powered: Vec<bool> = (0..n)
            .map(|node| match &power {
                Some(m) => m.powered(node),
                None => inp.pools[inp.node_pool[node]].always_on || pinned || st.batch_cpu[node] > 0.0,
            })
            .collect();
        let woke = power.as_ref().map_or(&[][..], |m| m.woke.as_slice());
        let row = meter.account(inp, &mut st, guard.as_mut(), t, &powered, woke, &mut res);
        res.steps.push(row);
        if t % 288 == 0 {
            #[allow(clippy::cast_precision_loss, reason = "step counts are small")]
            progress(t as f64 / inp.steps as f64);
        }
    }
    if let Some(p) = &power {
        (res.suspends, res.resumes) = (p.suspends, p.resumes);
    }
    meter.close(inp, &st, &mut res);
    res.run_ms = clock.elapsed().as_secs_f64() * 1000.0;
    progress(1.0);
    Ok(res)
}

/// Start queued jobs, oldest first, on the first node with room now. With the
/// power-state model, only on nodes that take work; a job that fits on none of
/// them wants the first sleeping node it would fit on (Slurm's resume on demand).
fn first_fit(
    inp: &Inputs,
    r: &Resolved,
    st: &mut State,
    t: usize,
    policy: Policy,
    order: &[usize],
    mut power: Option<&mut Power>,
) {
    if let Some(p) = power.as_deref_mut() {
        p.wanted.fill(None);
    }
    if st.queue.is_empty() {
        return;
    }
    let now = inp.start + i64::try_from(t).unwrap_or(0) * inp.step_s;
    let s = &r.scenario;
    let m = s.safety_margin;
    let free_cpu = |st: &State, node: usize| -> f64 {
        let p = &inp.pools[inp.node_pool[node]];
        let cap = match policy {
            Policy::Dedicated if p.always_on => return 0.0,
            Policy::Dedicated => p.cores * (1.0 - m),
            Policy::Coloc => s.coloc_threshold * p.cores - inp.online_cpu(node, t),
            _ => p.cores * (1.0 - m) - inp.online_cpu(node, t),
        };
        cap - st.batch_cpu[node]
    };
    let free_mem = |st: &State, node: usize| -> f64 {
        let p = &inp.pools[inp.node_pool[node]];
        p.memory_gib * (1.0 - m) - inp.online_mem(node) - st.batch_mem[node]
    };
    let on: Vec<usize> = order.iter().copied().filter(|&i| power.as_deref().is_none_or(|p| p.takes_work(i))).collect();
    let queue = std::mem::take(&mut st.queue);
    let mut left = Vec::with_capacity(queue.len());
    let mut room = on.iter().any(|&i| free_cpu(st, i) > 0.0);
    for job in queue {
        if !room {
            left.push(job);
            continue;
        }
        let j = &inp.jobs[job];
        let fits = |st: &State, i: usize| {
            j.pool.is_none_or(|p| inp.node_pool[i] == p)
                && free_cpu(st, i) + 1e-9 >= j.cores
                && free_mem(st, i) + 1e-9 >= j.mem_gib
                && st.batch_gpus[i] + j.gpus <= inp.pools[inp.node_pool[i]].gpus
        };
        match on.iter().copied().find(|&i| fits(st, i)) {
            Some(node) => {
                st.start(inp, job, node, t);
                if let Some(p) = power.as_deref_mut() {
                    p.worked(node, now);
                }
                room = on.iter().any(|&i| free_cpu(st, i) > 0.0);
            }
            None => left.push(job),
        }
    }
    st.queue = left;
    if let Some(p) = power {
        want_sleeping(inp, st, order, p, now, |st, i| (free_cpu(st, i), free_mem(st, i)));
    }
}

/// The queue's jobs that found no room, packed first-fit onto the nodes that do
/// not take work yet (resuming ones first, as they are coming anyway): each node
/// a job would fit on is wanted now.
fn want_sleeping(
    inp: &Inputs,
    st: &State,
    order: &[usize],
    p: &mut Power,
    now: i64,
    free: impl Fn(&State, usize) -> (f64, f64),
) {
    use greenfill_planner::power::PowerState as S;
    let rank = |s: S| match s {
        S::Resuming => Some(0),
        S::Draining => Some(1),
        S::Off => Some(2),
        _ => None,
    };
    let mut sleeping: Vec<usize> = order.iter().copied().filter(|&i| rank(p.nodes[i].state).is_some()).collect();
    sleeping.sort_by_key(|&i| rank(p.nodes[i].state));
    let mut room: Vec<(f64, f64)> = sleeping.iter().map(|&i| free(st, i)).collect();
    for &job in &st.queue {
        let j = &inp.jobs[job];
        if let Some(k) = room.iter().position(|&(c, m)| c + 1e-9 >= j.cores && m + 1e-9 >= j.mem_gib) {
            room[k].0 -= j.cores;
            room[k].1 -= j.mem_gib;
            p.wanted[sleeping[k]] = Some(now);
        }
    }
}

/// Re-plan the queue with forecasts and start what the plan starts now.
fn plan_and_start(
    inp: &Inputs,
    r: &Resolved,
    parts: Parts,
    st: &mut State,
    t: usize,
    forecaster: Option<&dyn Forecaster>,
    mut power: Option<&mut Power>,
) -> Result<(), ProblemError> {
    let s = &r.scenario;
    let step = r.step_s;
    let slot_steps = usize::try_from(r.slot_s / step).unwrap_or(1).max(1);
    let slots = usize::try_from(r.horizon_s / r.slot_s).unwrap_or(1).max(1);
    let h = slots * slot_steps;
    let season = usize::try_from(86_400 / step).unwrap_or(288).max(2);
    // Upper bound of online utilisation per step ahead and slot, per series: a
    // forecast from the history seen so far, or the actual future for `perfect`.
    let slot_max = |v: &[f64], k: usize| v[k * slot_steps..(k + 1) * slot_steps].iter().copied().fold(0.0, f64::max);
    let upper_slots: Vec<Vec<f64>> = inp
        .online_series
        .iter()
        .map(|series| {
            let now = inp.history + t.min(inp.steps - 1);
            let upper: Vec<f64> = match forecaster {
                Some(f) => match f.forecast(&series[..=now], season, h, s.quantile) {
                    Ok(fc) => fc.upper,
                    Err(_) => vec![1.0; h],
                },
                None => (0..h).map(|k| series[(now + k).min(series.len() - 1)]).collect(),
            };
            (0..slots).map(|k| slot_max(&upper, k).max(0.0)).collect()
        })
        .collect();
    // Mean forecast per slot of a series given per step.
    let slot_means = |at: &dyn Fn(usize) -> f64| -> Vec<f64> {
        (0..slots)
            .map(|k| {
                let a = (t + k * slot_steps).min(inp.steps - 1);
                let b = (t + (k + 1) * slot_steps).min(inp.steps);
                if b > a { (a..b).map(at).sum::<f64>() / (b - a) as f64 } else { at(a) }
            })
            .collect()
    };
    #[allow(clippy::cast_precision_loss, reason = "step counts are small")]
    let carbon = if parts.timing {
        slot_means(&|k| inp.carbon_forecast[k])
    } else {
        vec![inp.carbon_forecast.iter().sum::<f64>() / inp.carbon_forecast.len().max(1) as f64; slots]
    };
    // Per node: forecast online plus the batch already running there.
    let mut pools: Vec<PoolInput> = inp.pools.iter().cloned().map(PoolInput::new).collect();
    for (pi, pool) in pools.iter_mut().enumerate() {
        if inp.pool_zone[pi].is_some() && parts.timing && parts.zones {
            pool.carbon = slot_means(&|k| inp.forecast_at(pi, k));
            if inp.pool_zone[pi].is_some_and(|z| !inp.zones[z].price.is_empty()) {
                pool.price = slot_means(&|k| inp.price_at(pi, k));
            }
        }
        let first = inp.pool_first[pi];
        let nodes = pool.pool.nodes as usize;
        let mut cpu = vec![0.0; nodes * slots];
        let mut mem = vec![0.0; nodes * slots];
        for k in 0..nodes {
            let node = first + k;
            if pool.pool.always_on {
                let f = inp.node_factor[node];
                for (slot, u) in upper_slots[inp.node_series[node]].iter().enumerate() {
                    cpu[k * slots + slot] = (u * f).min(1.0) * pool.pool.cores;
                    mem[k * slots + slot] = inp.online_mem(node);
                }
            }
        }
        pool.online_cpu = cpu;
        pool.online_mem = mem;
        // Kept powered, a pool is as good as always on to the plan.
        pool.pool.always_on |= !parts.power_down;
    }
    let clock = SlotClock { start: inp.start + i64::try_from(t).unwrap_or(0) * step, slot_s: r.slot_s, slots };
    let at_step = |k: usize| inp.start + i64::try_from(k).unwrap_or(i64::MAX / 2 / step) * step;
    let options = PlanOptions {
        cpu_margin: s.safety_margin,
        mem_margin: s.safety_margin,
        time_limit: Duration::from_secs(5),
        strategy: Strategy::Lp,
        delay_cost: s.delay_cost,
        wake_overhead_s: power.as_deref().map_or(0.0, Power::cycle_s),
        objective: r.objective,
        ..PlanOptions::default()
    };
    // Day-ahead prices are known: the planner sees the actual ones (flat
    // without carbon timing, like the intensity).
    #[allow(clippy::cast_precision_loss, reason = "step counts are small")]
    let price = match (inp.price.is_empty(), parts.timing) {
        (true, _) => Vec::new(),
        (false, true) => slot_means(&|k| inp.price[k]),
        (false, false) => vec![inp.price.iter().sum::<f64>() / inp.price.len() as f64; slots],
    };
    let mut builder = ProblemBuilder::new(clock, pools, carbon, options, s.guard_slack).price(price);
    let now = clock.start;
    if let Some(p) = power.as_deref() {
        // Sleeping nodes are capacity from their expected ready time.
        for node in 0..inp.nodes() {
            let pool = inp.node_pool[node];
            let ready = p.nodes[node].ready_at(p.settings(), now);
            if ready != Some(now) {
                builder.unavailable_until(pool, node - inp.pool_first[pool], ready)?;
            }
            if let Some(until) = p.powered_until(node, now) {
                builder.powered_until(pool, node - inp.pool_first[pool], until)?;
            }
        }
    }
    for (end, list) in st.ends.iter().enumerate().skip(t + 1) {
        for &(job, node) in list {
            let pool = inp.node_pool[node];
            let j = &inp.jobs[job];
            let running = RunningJob {
                gpus: j.gpus,
                pool,
                node: node - inp.pool_first[pool],
                cores: j.cores,
                mem_gib: j.mem_gib,
                ends_at: at_step(end),
            };
            builder.running(&running)?;
        }
    }
    for &i in &st.queue {
        let j = &inp.jobs[i];
        #[allow(clippy::cast_precision_loss, reason = "seconds")]
        builder.queue(QueuedJob {
            gpus: j.gpus,
            id: j.id.clone(),
            cores: j.cores,
            mem_gib: j.mem_gib,
            not_before: None,
            deadline: j.deadline.map(at_step),
            duration_s: (j.duration as i64 * step) as f64,
            pausable: false,
            pool: j.pool,
            priority: 0,
            gpu_model: None,
        });
    }
    let built = builder.build()?;
    let plan = built.plan();
    // Jobs whose planned start comes before the next plan start now: waiting for
    // the next plan would start them up to a planning interval late (and miss
    // deadlines planned to the last slot) when slots are shorter than the interval.
    let plan_steps = usize::try_from(r.plan_every_s / step).unwrap_or(1).max(1);
    let starts_before_next = u32::try_from(plan_steps.div_ceil(slot_steps).max(1)).unwrap_or(1);
    let queue = std::mem::take(&mut st.queue);
    let mut left = Vec::with_capacity(queue.len());
    for (idx, job) in queue.into_iter().enumerate() {
        let Placement::Run { pool, node, slots, .. } = &plan.placements[idx] else {
            left.push(job);
            continue;
        };
        let node = inp.pool_first[*pool] + *node as usize;
        let start = slots.first().copied().unwrap_or(0);
        let starts_now = start < starts_before_next;
        let ready = match power.as_deref_mut() {
            None => true,
            Some(p) => {
                if starts_now {
                    let _ = p.nodes[node].undrain(node, now);
                }
                p.takes_work(node)
            }
        };
        if starts_now && ready {
            st.start(inp, job, node, t);
            if let Some(p) = power.as_deref_mut() {
                p.worked(node, now);
            }
            continue;
        }
        if let Some(p) = power.as_deref_mut() {
            let at = clock.time_of(start as usize);
            p.wanted[node] = Some(p.wanted[node].map_or(at, |w| w.min(at)));
        }
        left.push(job);
    }
    st.queue = left;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_job_ends_later_by_the_share_it_lost() {
        // One job on node 0, due to end at step 10; node 1 is idle.
        let mut st = State {
            batch_cpu: vec![4.0, 0.0],
            batch_mem: vec![0.0; 2],
            batch_gpus: vec![0; 2],
            ends: vec![Vec::new(); 12],
            queue: Vec::new(),
            started: vec![Some((0, 0))],
            running: 1,
            end_of: vec![10],
            lost: vec![0.0],
            on_node: vec![vec![0], Vec::new()],
        };
        st.ends[10].push((0, 0));
        st.slow_down(1, 0.0);
        assert_eq!(st.end_of[0], 10, "a cap on another node does not touch it");
        st.slow_down(0, 0.75);
        st.slow_down(0, 0.5);
        assert_eq!(st.end_of[0], 10, "0.75 of a step lost so far");
        st.slow_down(0, 0.5);
        assert_eq!(st.end_of[0], 11);
        assert!((st.lost[0] - 0.25).abs() < 1e-12);
        st.slow_down(0, 0.0);
        st.slow_down(0, 0.25);
        // 0.25 + 1 + 0.75 = 2 more steps; the list grows past its old end.
        assert_eq!(st.end_of[0], 13);
        assert!(st.lost[0].abs() < 1e-12);
        let at: Vec<usize> = (0..st.ends.len()).filter(|&t| !st.ends[t].is_empty()).collect();
        assert_eq!(at, [13], "the job is listed once, at its new end");
        assert_eq!(st.on_node[0], [0]);
    }
}
