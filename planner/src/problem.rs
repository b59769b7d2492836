use greenfill_core::cluster::{Pool, PowerModelError};
use serde::Serialize;
use std::time::Duration;

/// A pool and the online services' forecast use of it.
#[derive(Debug, Clone)]
pub struct PoolInput {
    pub pool: Pool,
    /// Online CPU use (cores) per node and slot, upper bound: either one value per
    /// slot shared by every node (`slots` values) or per node (`nodes × slots`,
    /// node-major). Empty = no online load.
    pub online_cpu: Vec<f64>,
    /// Online memory use (GiB), laid out like `online_cpu`.
    pub online_mem: Vec<f64>,
    /// Forecast carbon intensity of this pool's grid zone per slot (g/kWh);
    /// empty = the problem's [`Problem::carbon`]. Pools in different zones
    /// let a job run where, as well as when, it is cleanest.
    pub carbon: Vec<f64>,
    /// Day-ahead electricity price of this pool's bidding zone per slot
    /// (currency per MWh, may be negative); empty = the problem's
    /// [`Problem::price`].
    pub price: Vec<f64>,
    /// GPUs in use per node and slot (`nodes × slots`, node-major) by work the
    /// plan does not place (running jobs); empty = none.
    pub gpus_used: Vec<u32>,
    /// Per node of a pool that sleeps: the slots from now in which it is powered
    /// whatever the plan does (awake, or waking, and not yet past its
    /// `suspend_after`), so work placed there adds no idle power and no wake.
    /// Empty = no node is known to be awake.
    pub powered: Vec<usize>,
}

impl PoolInput {
    pub fn new(pool: Pool) -> PoolInput {
        PoolInput {
            pool,
            online_cpu: Vec::new(),
            online_mem: Vec::new(),
            carbon: Vec::new(),
            price: Vec::new(),
            gpus_used: Vec::new(),
            powered: Vec::new(),
        }
    }

    /// Slots from now in which `node` is powered anyway.
    pub fn powered_slots(&self, node: usize) -> usize {
        self.powered.get(node).copied().unwrap_or(0)
    }

    fn at(v: &[f64], slots: usize, node: usize, t: usize) -> f64 {
        match v.len() {
            0 => 0.0,
            n if n == slots => v[t],
            _ => v[node * slots + t],
        }
    }

    /// Online CPU on `node` at horizon slot `t < slots`.
    pub fn online_cpu_at(&self, slots: usize, node: usize, t: usize) -> f64 {
        Self::at(&self.online_cpu, slots, node, t)
    }

    pub fn online_mem_at(&self, slots: usize, node: usize, t: usize) -> f64 {
        Self::at(&self.online_mem, slots, node, t)
    }

    /// GPUs of `node` in use at horizon slot `t < slots` by work the plan does not place.
    pub fn gpus_used_at(&self, slots: usize, node: usize, t: usize) -> u32 {
        self.gpus_used.get(node * slots + t).copied().unwrap_or(0)
    }
}

/// One batch job as the planner sees it, in slots of the horizon.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanJob {
    pub id: String,
    /// Cores, > 0.
    pub cores: f64,
    /// Memory in GiB, >= 0.
    pub mem_gib: f64,
    /// First slot it may run in (0 = now).
    pub release: usize,
    /// Slot by which it must have finished (exclusive end); `None` = no deadline,
    /// but it should start within the horizon.
    pub deadline: Option<usize>,
    /// Slots of running, >= 1.
    pub duration: usize,
    /// May run in pieces (any `duration` slots of its window, on one node).
    pub pausable: bool,
    /// Only this pool (by index into [`Problem::pools`]).
    pub pool: Option<usize>,
    pub priority: i32,
    /// Whole GPUs on its node for every slot it runs (0 = none).
    pub gpus: u32,
    /// Only pools whose GPU model contains this ([`Pool::has_gpu_model`]).
    pub gpu_model: Option<String>,
}

/// The share of a job's duration its planned end keeps before the deadline by
/// default (see [`PlanJob::aim_early`]). Measured in the simulator, which models
/// the agent's guard: with 0, two of six seeds of the under-used fleet had one late
/// job each; 0.05 and 0.10 had none, at the same carbon within 0.3 points.
pub const GUARD_SLACK: f64 = 0.05;

impl PlanJob {
    /// Aim to finish `share` of the duration (whole slots, rounded down) before
    /// the deadline, never before `release + duration` and never after the
    /// deadline. The agent's guard slows a running job when online load rises
    /// past its forecast bound; a job planned to end right at its deadline then
    /// ends late. A job that cannot keep the slack is planned as if it had none.
    #[must_use]
    pub fn aim_early(mut self, share: f64) -> PlanJob {
        if let Some(d) = self.deadline {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                clippy::cast_precision_loss,
                reason = "a share of a slot count, floored and >= 0"
            )]
            let hold = (share.max(0.0) * self.duration as f64).floor() as usize;
            self.deadline = Some(d.saturating_sub(hold).max(self.release + self.duration).min(d));
        }
        self
    }
}

/// How to plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Aggregated LP for the time profile, then LP-guided placement (the default).
    #[default]
    Lp,
    /// Each job, earliest deadline first, in the cheapest-carbon window that fits.
    CarbonGreedy,
    /// Each job, in arrival order, at the earliest start that fits (first-fit).
    EarliestFit,
}

/// What a plan minimises per kWh a slot draws.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Objective {
    /// Grams of CO2 (the grid's intensity).
    #[default]
    Carbon,
    /// The energy bill (the day-ahead price).
    Cost,
    /// The bill plus carbon at `carbon_price` currency per tonne:
    /// price + carbon_price × intensity / 1000, per MWh.
    Both { carbon_price: f64 },
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanOptions {
    /// Share of each node's CPU kept free on top of the online upper bound.
    pub cpu_margin: f64,
    /// Share of each node's memory kept free on top of the online upper bound.
    pub mem_margin: f64,
    /// Wall-clock limit for the LP; past it the best solution so far guides placement.
    pub time_limit: Duration,
    pub strategy: Strategy,
    /// A job with a deadline that needs a sleeping node is planned to wake it at
    /// its latest start rather than at its cleanest: right when plans are redone
    /// as time passes (the scheduler, the simulator), since a later plan may find
    /// the job room on nodes that are on anyway. Off for a plan executed as is.
    pub lazy_wake: bool,
    /// What waiting costs, as a share of the carbon per hour of delay: a job
    /// waits for a cleaner start only when it saves more than this per hour
    /// waited. Co-located capacity taken later is capacity later arrivals cannot
    /// have; the simulator measured 0.001 (0.1 %/h) turning part of greenfill's
    /// backlog-driven wakes into on-time runs (under-used fleet, CISO: 1.6 % →
    /// 2.6 % below asap) for 0.2 points of pure timing savings (3.1 % → 2.9 %).
    pub delay_cost: f64,
    /// Seconds of idle power one power cycle of a sleeping node costs on top of
    /// the work it wakes for: its wake latency, the `suspend_after` it stays up
    /// once idle, and its suspend. The plan weighs a wake at this plus the pool's
    /// `wake_wh`, so it packs work onto nodes that are awake rather than cycling
    /// machines (issue 32: 164 wakes against first-fit's 14 on Double-11). The
    /// scheduler and the simulator set it from their power settings.
    pub wake_overhead_s: f64,
    /// What the plan weighs: carbon (the default), the energy bill, or both.
    /// Any but carbon needs a price (`Problem::price` or each pool's).
    pub objective: Objective,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            cpu_margin: 0.1,
            mem_margin: 0.1,
            time_limit: Duration::from_secs(10),
            strategy: Strategy::Lp,
            lazy_wake: true,
            delay_cost: 0.001,
            wake_overhead_s: 0.0,
            objective: Objective::Carbon,
        }
    }
}

/// Everything the planner needs. Build it (callers with live state use
/// [`crate::ProblemBuilder`]), [`Problem::validate`] it into a [`ValidProblem`],
/// then [`ValidProblem::plan`] it.
#[derive(Debug, Clone)]
pub struct Problem {
    /// Unix seconds of slot 0.
    pub start: i64,
    pub slot_s: i64,
    pub slots: usize,
    pub pools: Vec<PoolInput>,
    /// Forecast carbon intensity per slot, gCO2/kWh (`slots` values). Past the
    /// horizon (a job that runs on) the forecast repeats from slot 0: a daily cycle.
    pub carbon: Vec<f64>,
    /// Day-ahead price per slot, currency per MWh (`slots` values, or empty
    /// when the objective is carbon and no cost is accounted); repeats past
    /// the horizon like `carbon`.
    pub price: Vec<f64>,
    pub jobs: Vec<PlanJob>,
    pub options: PlanOptions,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProblemError {
    #[error("slots = {0}: a horizon needs at least one slot")]
    NoSlots(usize),
    #[error("slot_s = {0}: the slot length must be positive")]
    SlotLength(i64),
    #[error("carbon has {got} values for {slots} slots")]
    CarbonLength { got: usize, slots: usize },
    #[error("carbon[{index}] = {value}: intensities must be finite and >= 0")]
    CarbonValue { index: usize, value: f64 },
    #[error("price has {got} values for {slots} slots")]
    PriceLength { got: usize, slots: usize },
    #[error("price[{index}] = {value}: prices must be finite")]
    PriceValue { index: usize, value: f64 },
    #[error("objective = {0}: needs a price per slot (the problem's or every pool's), and none was given")]
    NoPrice(&'static str),
    #[error("pool `{pool}`: {field} = {value}: {why}")]
    Pool { pool: String, field: &'static str, value: String, why: &'static str },
    #[error("pool `{pool}`: power: {source}")]
    Power {
        pool: String,
        #[source]
        source: PowerModelError,
    },
    #[error("job `{job}`: {field} = {value}: {why}")]
    Job { job: String, field: &'static str, value: String, why: &'static str },
    #[error("options: {field} = {value}: {why}")]
    Option { field: &'static str, value: String, why: &'static str },
}

impl PlanOptions {
    /// Every option out of range, each named with its value. The scheduler's
    /// config, the simulator's scenario and [`Problem::validate`] all check
    /// options here, so a bad margin is refused where it is read, not at the
    /// first plan.
    pub fn errors(&self) -> Vec<ProblemError> {
        let mut out = Vec::new();
        let mut bad = |field, value: f64, why| out.push(ProblemError::Option { field, value: value.to_string(), why });
        for (field, v) in [("cpu_margin", self.cpu_margin), ("mem_margin", self.mem_margin)] {
            if !(0.0..1.0).contains(&v) {
                bad(field, v, "must be in [0, 1)");
            }
        }
        if !(0.0..=1.0).contains(&self.delay_cost) {
            bad("delay_cost", self.delay_cost, "must be in [0, 1] (share of carbon per hour waited)");
        }
        if self.time_limit.is_zero() {
            bad("time_limit", 0.0, "must be positive");
        }
        if !(self.wake_overhead_s.is_finite() && self.wake_overhead_s >= 0.0) {
            bad("wake_overhead_s", self.wake_overhead_s, "must be finite and >= 0 (seconds of idle power)");
        }
        if let Objective::Both { carbon_price } = self.objective
            && !(carbon_price.is_finite() && carbon_price >= 0.0)
        {
            bad("objective.carbon_price", carbon_price, "must be finite and >= 0 (currency per tonne CO2)");
        }
        out
    }
}

/// A carbon intensity given as a setting (a constant, a fallback): finite and
/// >= 0 gCO2/kWh, or the error naming `field`.
pub fn intensity_error(field: &'static str, value: f64) -> Option<ProblemError> {
    (!(value.is_finite() && value >= 0.0)).then(|| ProblemError::Option {
        field,
        value: value.to_string(),
        why: "must be a finite intensity >= 0 (gCO2/kWh)",
    })
}

/// A [`Problem`] whose every field was checked: the only thing that can be
/// planned. Read it through `Deref`; change it by taking the problem back out.
#[derive(Debug, Clone)]
pub struct ValidProblem(Problem);

impl std::ops::Deref for ValidProblem {
    type Target = Problem;
    fn deref(&self) -> &Problem {
        &self.0
    }
}

impl ValidProblem {
    pub fn into_problem(self) -> Problem {
        self.0
    }
}

impl Problem {
    /// Check every field; the first problem found is named with its value.
    pub fn validate(self) -> Result<ValidProblem, ProblemError> {
        self.check()?;
        Ok(ValidProblem(self))
    }

    fn check(&self) -> Result<(), ProblemError> {
        if self.slots == 0 {
            return Err(ProblemError::NoSlots(self.slots));
        }
        if self.slot_s <= 0 {
            return Err(ProblemError::SlotLength(self.slot_s));
        }
        if self.carbon.len() != self.slots {
            return Err(ProblemError::CarbonLength { got: self.carbon.len(), slots: self.slots });
        }
        if let Some((index, &value)) = self.carbon.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
            return Err(ProblemError::CarbonValue { index, value });
        }
        if let Some(e) = self.options.errors().into_iter().next() {
            return Err(e);
        }
        self.check_price()?;
        for p in &self.pools {
            self.validate_pool(p)?;
        }
        for j in &self.jobs {
            let err = |field, value: String, why| ProblemError::Job { job: j.id.clone(), field, value, why };
            if !(j.cores.is_finite() && j.cores > 0.0) {
                return Err(err("cores", j.cores.to_string(), "must be > 0"));
            }
            if !(j.mem_gib.is_finite() && j.mem_gib >= 0.0) {
                return Err(err("mem_gib", j.mem_gib.to_string(), "must be >= 0"));
            }
            if j.duration == 0 {
                return Err(err("duration", "0".into(), "must be at least one slot"));
            }
            if let Some(p) = j.pool
                && p >= self.pools.len()
            {
                return Err(err("pool", p.to_string(), "no such pool"));
            }
        }
        Ok(())
    }

    fn validate_pool(&self, p: &PoolInput) -> Result<(), ProblemError> {
        let name = p.pool.name.clone();
        let err = |field, value: String, why| ProblemError::Pool { pool: name.clone(), field, value, why };
        if !(p.pool.cores.is_finite() && p.pool.cores >= 0.0) {
            return Err(err("cores", p.pool.cores.to_string(), "must be >= 0"));
        }
        if !(p.pool.memory_gib.is_finite() && p.pool.memory_gib >= 0.0) {
            return Err(err("memory_gib", p.pool.memory_gib.to_string(), "must be >= 0"));
        }
        if !(p.pool.pue.is_finite() && p.pool.pue >= 1.0) {
            return Err(err("pue", p.pool.pue.to_string(), "must be >= 1"));
        }
        p.pool.power.validate().map_err(|source| ProblemError::Power { pool: name.clone(), source })?;
        if !(p.carbon.is_empty() || p.carbon.len() == self.slots) {
            return Err(err(
                "carbon",
                format!("{} values", p.carbon.len()),
                "need none (the problem's) or one per slot",
            ));
        }
        if let Some(x) = p.carbon.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
            return Err(err("carbon", x.to_string(), "intensities must be finite and >= 0"));
        }
        let nodes = usize::try_from(p.pool.nodes).unwrap_or(usize::MAX);
        for (field, v) in [("online_cpu", &p.online_cpu), ("online_mem", &p.online_mem)] {
            if !(v.is_empty() || v.len() == self.slots || Some(v.len()) == nodes.checked_mul(self.slots)) {
                return Err(err(field, format!("{} values", v.len()), "need none, one per slot, or nodes × slots"));
            }
            if let Some(x) = v.iter().find(|x| !(x.is_finite() && **x >= 0.0)) {
                return Err(err(field, x.to_string(), "online use must be finite and >= 0"));
            }
        }
        if !(p.powered.is_empty() || p.powered.len() == nodes) {
            return Err(err("powered", format!("{} values", p.powered.len()), "need none or one per node"));
        }
        Ok(())
    }

    /// Slots the planner looks at: the horizon plus room for jobs that start in it
    /// and run past its end.
    pub(crate) fn extended_slots(&self) -> usize {
        let longest = self.jobs.iter().map(|j| j.duration).max().unwrap_or(0);
        self.slots + longest.min(self.slots * 4)
    }

    fn check_price(&self) -> Result<(), ProblemError> {
        if !(self.price.is_empty() || self.price.len() == self.slots) {
            return Err(ProblemError::PriceLength { got: self.price.len(), slots: self.slots });
        }
        let all = self.price.iter().chain(self.pools.iter().flat_map(|p| &p.price));
        if let Some((index, &value)) = all.enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(ProblemError::PriceValue { index, value });
        }
        if let Some(p) = self.pools.iter().find(|p| !(p.price.is_empty() || p.price.len() == self.slots)) {
            return Err(ProblemError::Pool {
                pool: p.pool.name.clone(),
                field: "price",
                value: format!("{} values", p.price.len()),
                why: "needs one per slot, or none for the problem's",
            });
        }
        match self.options.objective {
            Objective::Carbon => Ok(()),
            _ if self.priced() => Ok(()),
            Objective::Cost => Err(ProblemError::NoPrice("cost")),
            Objective::Both { .. } => Err(ProblemError::NoPrice("both")),
        }
    }

    /// Whether a price is known for every pool (so the plan's cost is accounted).
    pub fn priced(&self) -> bool {
        !self.price.is_empty() || (!self.pools.is_empty() && self.pools.iter().all(|p| !p.price.is_empty()))
    }

    /// Price of `pool`'s bidding zone at any slot (currency/MWh); past the
    /// horizon it repeats; 0 where none is known.
    pub(crate) fn price_at(&self, pool: usize, t: usize) -> f64 {
        let own = &self.pools[pool].price;
        if !own.is_empty() {
            own[t % self.slots]
        } else if self.price.is_empty() {
            0.0
        } else {
            self.price[t % self.slots]
        }
    }

    /// Carbon intensity of `pool`'s zone at any slot; past the horizon it repeats.
    pub(crate) fn carbon_at(&self, pool: usize, t: usize) -> f64 {
        let own = &self.pools[pool].carbon;
        if own.is_empty() { self.carbon[t % self.slots] } else { own[t % self.slots] }
    }

    /// What the plan *weighs* per kWh in `pool` at slot `t`: the objective's
    /// value (g CO2, or currency per MWh) plus the delay cost
    /// (`options.delay_cost` of its size per hour from now, so a negative
    /// price also grows less attractive with waiting). Accounting uses
    /// `carbon_at` and `price_at`.
    pub(crate) fn weighed_carbon_at(&self, pool: usize, t: usize) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "slot indices are small")]
        let hours = t as f64 * self.slot_hours();
        let w = match self.options.objective {
            Objective::Carbon => self.carbon_at(pool, t),
            Objective::Cost => self.price_at(pool, t),
            Objective::Both { carbon_price } => {
                self.price_at(pool, t) + carbon_price * self.carbon_at(pool, t) / 1000.0
            }
        };
        if w >= 0.0 { w * (1.0 + self.options.delay_cost * hours) } else { w * (1.0 - self.options.delay_cost * hours) }
    }

    pub(crate) fn slot_hours(&self) -> f64 {
        #[allow(clippy::cast_precision_loss, reason = "slot lengths are small")]
        let h = self.slot_s as f64 / 3600.0;
        h
    }
}

/// Why a job does not run (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// Its release is past the horizon.
    NotReleased,
    /// No node has room for it in its window.
    Capacity,
    /// It could start earlier, but a cleaner window comes before its deadline.
    CarbonWindow,
    /// Its deadline is before release + duration.
    DeadlineImpossible,
    /// No pool it may use has a node large enough.
    LargerThanAnyNode,
}

/// What the plan does with one job.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Placement {
    Run {
        pool: usize,
        node: u32,
        /// The slots it runs in, increasing; contiguous unless the job is pausable.
        slots: Vec<u32>,
        /// It ends after its deadline (reported, not dropped).
        late: bool,
        /// Why it starts after its release, if it does.
        delayed_by: Option<WaitReason>,
    },
    Wait {
        reason: WaitReason,
    },
}

impl Placement {
    pub fn start(&self) -> Option<usize> {
        match self {
            Placement::Run { slots, .. } => slots.first().map(|s| *s as usize),
            Placement::Wait { .. } => None,
        }
    }
}

/// The planner's answer.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One per job, in [`Problem::jobs`] order.
    pub placements: Vec<Placement>,
    /// Powered nodes per pool per slot (`pools × extended slots`).
    pub powered: Vec<Vec<u32>>,
    pub energy: crate::Energy,
    /// The same cluster over the same slots with no batch work: `energy − baseline`
    /// is what the batch work costs.
    pub baseline: crate::Energy,
    pub build_ms: f64,
    pub lp_ms: f64,
    pub place_ms: f64,
    pub solve_ms: f64,
    /// What the LP did: `optimal`, `time limit`, `failed (…)`, or `not used`.
    pub lp_status: String,
}

impl Plan {
    pub fn jobs_planned(&self) -> usize {
        self.placements.iter().filter(|p| matches!(p, Placement::Run { .. })).count()
    }

    pub fn jobs_late(&self) -> usize {
        self.placements.iter().filter(|p| matches!(p, Placement::Run { late: true, .. })).count()
    }
}
