//! The scenario file (TOML) and its validation. Unknown keys are refused with the
//! keys that are allowed; every error names the key and the value.

use crate::power::SimPower;
use greenfill_core::cluster::{ClusterConfig, Pool};
use greenfill_core::time::{parse_duration, parse_step, parse_timestamp};
use greenfill_planner::power::PowerSettings;
use greenfill_planner::{Objective, PlanOptions, ProblemError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    /// First step's time (RFC 3339).
    pub start: String,
    /// How long jobs arrive for, e.g. `7d`.
    pub length: String,
    /// After `length`, every policy runs on this long with no new arrivals so the
    /// work started or queued can finish and all policies do the same work
    /// (default 2d).
    #[serde(default = "d_drain")]
    pub drain: String,
    /// Simulation step (default 5m).
    #[serde(default = "d_step")]
    pub step: String,
    /// greenfill re-plans this often (default 15m).
    #[serde(default = "d_plan_every")]
    pub plan_every: String,
    /// Planning horizon (default 24h) and slot (default 15m).
    #[serde(default = "d_horizon")]
    pub horizon: String,
    #[serde(default = "d_plan_every")]
    pub slot: String,
    #[serde(default)]
    pub seed: u64,
    /// Share of each node's CPU and memory batch must leave free on top of the
    /// online upper bound (greenfill, asap).
    #[serde(default = "d_margin")]
    pub safety_margin: f64,
    /// Koordinator-style CPU threshold for `coloc`: batch may use
    /// `threshold × cores − online` (default 0.65).
    #[serde(default = "d_threshold")]
    pub coloc_threshold: f64,
    /// Model the agent's local guard on co-located nodes (default on, as deployed):
    /// batch is capped at `threshold × cores − online` each step, with threshold
    /// `1 − safety_margin` for asap and greenfill and `coloc_threshold` for coloc,
    /// and throttled jobs finish later. Off: batch keeps what it was given and the
    /// excess shows up only as online overloads.
    #[serde(default = "d_true")]
    pub guard: bool,
    /// When the guard's formula caps batch (asap, greenfill), as the agent's
    /// `--cpu-suppress`: `auto` (default) only where batch lacks the kernel's
    /// idle priority, `always`, `never`. Without the formula batch gets what
    /// online leaves (`cores − online`). coloc always uses its formula.
    #[serde(default = "d_suppress")]
    pub guard_suppress: String,
    /// The nodes' kernel has `cpu.idle` (Linux 5.15+), so the agent runs batch at
    /// idle priority (default true).
    #[serde(default = "d_true")]
    pub idle_priority: bool,
    /// greenfill plans each job to end this share of its duration before its
    /// deadline, for the guard slowing it (default: the scheduler's, 0.05).
    #[serde(default = "d_guard_slack")]
    pub guard_slack: f64,
    /// What waiting costs greenfill's plans, as a share of carbon per hour of
    /// delay (default: the planner's, 0.001).
    #[serde(default = "d_delay_cost")]
    pub delay_cost: f64,
    /// Online forecaster for greenfill: `greenfill`, `seasonal_naive`,
    /// `koordinator_p95`, `daily_profile` or `perfect` (the actual future, for an
    /// upper limit).
    #[serde(default = "d_forecast")]
    pub forecast: String,
    /// Quantile of the online upper bound (default 0.95).
    #[serde(default = "d_quantile")]
    pub quantile: f64,
    /// Policies to compare (default all four).
    #[serde(default = "d_policies")]
    pub policies: Vec<String>,
    pub cluster: ClusterSpec,
    pub online: OnlineSpec,
    pub batch: BatchSpec,
    pub carbon: CarbonSpec,
    /// How the batch machines that co-location leaves idle are powered off and on.
    #[serde(default)]
    pub power: PowerSpec,
    /// Day-ahead electricity price: the bill of every policy, and what
    /// `[objective]` weighs when its mode is `cost` or `both`. Optional.
    pub price: Option<PriceSpec>,
    /// What greenfill's plans minimise (default: carbon).
    #[serde(default)]
    pub objective: ObjectiveSpec,
}

/// `[price]`: the day-ahead price the fleet pays, per MWh. The planner is
/// told the actual price: day-ahead prices are known before the day starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSpec {
    /// CSV of `time,price` (or Energy-Charts' and ENTSO-E's column names);
    /// replayed from the row at `start` like the carbon file. Negative prices
    /// are kept.
    pub file: Option<PathBuf>,
    /// One price for every hour instead of a file.
    pub constant: Option<f64>,
    /// The currency the prices are in, for the output (default EUR).
    #[serde(default = "d_currency")]
    pub currency: String,
    /// Bidding zones by the names of `[carbon.zones]`: a pool in such a zone
    /// pays this zone's price (pools without one, or in a zone with no price
    /// here, pay `file` / `constant`).
    #[serde(default)]
    pub zones: std::collections::BTreeMap<String, ZoneSpec>,
}

/// `[objective]`: per kWh, greenfill weighs grams of CO2 (`carbon`), the
/// bill (`cost`), or the bill plus carbon at `carbon_price` per tonne
/// (`both`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectiveSpec {
    #[serde(default = "d_objective_mode")]
    pub mode: String,
    /// Currency per tonne CO2 (e.g. the EU ETS's ~80 EUR); only with `both`.
    #[serde(default)]
    pub carbon_price: f64,
}

impl Default for ObjectiveSpec {
    fn default() -> Self {
        ObjectiveSpec { mode: d_objective_mode(), carbon_price: 0.0 }
    }
}

fn d_currency() -> String {
    "EUR".into()
}

fn d_objective_mode() -> String {
    "carbon".into()
}

/// The planner's objective from `[objective]`, with `[price]` present or not;
/// errors name the key.
fn resolve_objective(o: &ObjectiveSpec, priced: bool) -> Result<Objective, String> {
    if !(o.carbon_price.is_finite() && o.carbon_price >= 0.0) {
        return Err(format!("objective.carbon_price = {}: must be >= 0 (currency per tonne CO2)", o.carbon_price));
    }
    let objective = match o.mode.as_str() {
        "carbon" => Objective::Carbon,
        "cost" => Objective::Cost,
        "both" => Objective::Both { carbon_price: o.carbon_price },
        other => return Err(format!("objective.mode = {other:?}: must be one of carbon, cost, both")),
    };
    if objective != Objective::Carbon && !priced {
        return Err(format!("objective.mode = {:?}: needs a [price] section (file or constant)", o.mode));
    }
    if o.carbon_price > 0.0 && o.mode != "both" {
        return Err(format!(
            "objective.carbon_price = {}: only weighed with objective.mode = \"both\" (mode is {:?})",
            o.carbon_price, o.mode
        ));
    }
    Ok(objective)
}

/// The power-state model: the scheduler's own machine
/// ([`greenfill_planner::power`]) with a machine's suspend and wake latencies,
/// or `instant` (a node draws power exactly while it runs batch: no wake
/// latency, no idle wait before a suspend, no minimum off time).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSpec {
    /// `states` (default) or `instant`.
    #[serde(default = "d_power_model")]
    pub model: String,
    /// From resume to running work (default 5m).
    #[serde(default = "d_wake")]
    pub wake: String,
    /// From suspend to off (default 1m).
    #[serde(default = "d_suspend")]
    pub suspend: String,
    /// An off node stays off at least this long (default 30m).
    #[serde(default = "d_min_off")]
    pub min_off: String,
    /// No new work this long before a node is drained (default 10m).
    #[serde(default = "d_suspend_after")]
    pub suspend_after: String,
    /// Idle nodes per pool kept powered for bursts (default 0).
    #[serde(default)]
    pub reserve: u32,
    /// Suspends per node per day at most (default 12).
    #[serde(default = "d_max_suspends")]
    pub max_suspends_per_day: u32,
    /// Suspends and resumes per pool per minute at most (Slurm's defaults, 60
    /// and 300; 0 = no limit).
    #[serde(default = "d_suspend_rate")]
    pub suspend_rate: u32,
    #[serde(default = "d_resume_rate")]
    pub resume_rate: u32,
}

impl Default for PowerSpec {
    fn default() -> Self {
        PowerSpec {
            model: d_power_model(),
            wake: d_wake(),
            suspend: d_suspend(),
            min_off: d_min_off(),
            suspend_after: d_suspend_after(),
            reserve: 0,
            max_suspends_per_day: d_max_suspends(),
            suspend_rate: d_suspend_rate(),
            resume_rate: d_resume_rate(),
        }
    }
}

fn d_power_model() -> String {
    "states".into()
}
fn d_wake() -> String {
    "5m".into()
}
fn d_suspend() -> String {
    "1m".into()
}
fn d_min_off() -> String {
    "30m".into()
}
fn d_suspend_after() -> String {
    "10m".into()
}
fn d_max_suspends() -> u32 {
    12
}
fn d_suspend_rate() -> u32 {
    60
}
fn d_resume_rate() -> u32 {
    300
}

/// Pools as in a cluster file. Always-on pools carry the online load; the others
/// are the batch machines that `dedicated` runs batch on and that co-location
/// policies may power off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub pools: Vec<Pool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineSpec {
    /// Usage trace (any format `greenfill data inspect` reads as usage); replayed
    /// from its first value at `start`, repeated if shorter than the run.
    pub file: PathBuf,
    /// Which series of the file (default: the first).
    pub series: Option<String>,
    /// Every series of the file, one per always-on node in turn (node i replays
    /// series i mod count), instead of one series for all (default false).
    #[serde(default)]
    pub per_node: bool,
    /// Multiply the trace's utilisation by this (default 1).
    #[serde(default = "d_one")]
    pub scale: f64,
    /// Each node's load differs from the pool's by a fixed factor drawn in
    /// `1 ± node_spread` (default 0.2).
    #[serde(default = "d_spread")]
    pub node_spread: f64,
    /// Online memory use as a share of each node's memory (default 0.4).
    #[serde(default = "d_mem_share")]
    pub memory_share: f64,
    /// The first `history` of the trace is telemetry from before `start`: the
    /// forecaster sees it, nothing is simulated on it, and the run replays the
    /// trace from there (default `0`: no history, the forecaster starts cold, as
    /// on a fresh install). A running scheduler keeps 14 days.
    #[serde(default = "d_zero")]
    pub history: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Job trace: GAIA, Alibaba 2017 or greenfill CSV; arrivals are offsets from
    /// the trace's first arrival, replayed from `start`. Give this or `generate`.
    pub file: Option<PathBuf>,
    /// Generated jobs instead of a trace (seeded), e.g. Let's Wait Awhile's ML jobs.
    pub generate: Option<GenerateSpec>,
    /// Hours from UTC of the users' local time, for workdays (default 0).
    #[serde(default)]
    pub utc_offset_hours: f64,
    /// Keep at most this many jobs (the first to arrive).
    pub max_jobs: Option<usize>,
    /// Keep each job with this probability (seeded; default 1).
    #[serde(default = "d_one")]
    pub sample: f64,
    /// Multiply each job's cores by this (default 1).
    #[serde(default = "d_one")]
    pub cpus_scale: f64,
    /// Memory per core where the trace gives none, GiB (default 2).
    #[serde(default = "d_gib")]
    pub memory_gib_per_core: f64,
    /// Deadline = arrival + duration + this slack (default 24h); `none` for none;
    /// `next_workday` for Let's Wait Awhile's rule: a job due to end outside 09:00
    /// to 17:00 on a workday (local time) may end as late as 09:00 on the next
    /// workday.
    #[serde(default = "d_slack")]
    pub deadline_slack: String,
    /// Job i may run only in pool i mod pools (each job has its home zone):
    /// carbon-aware timing without moving work between zones, to compare with
    /// jobs free to run in any pool (default false).
    #[serde(default)]
    pub pin_to_pools: bool,
    /// GPUs for jobs whose trace gives none, drawn (seeded): see [`GpuDraw`].
    pub gpus: Option<GpuDraw>,
}

/// A generated GPU ask: each job asks for GPUs with probability `share`, its
/// count drawn uniformly from `per_job` (repeat a value to weigh it). For traces
/// without GPUs (GAIA's PAI arrivals, say); a trace's own `gpus` column wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuDraw {
    pub share: f64,
    pub per_job: Vec<u32>,
}

/// Jobs generated like Let's Wait Awhile's (Wiesner et al. 2021): on each workday
/// a Poisson number of jobs arrive at half-hour marks between `from_hour` and
/// `to_hour` local time, each lasting a whole number of half hours drawn
/// uniformly from `[min_duration, max_duration)`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// Mean jobs per workday (LWA: 3,387 a year ≈ 13).
    pub per_workday: f64,
    pub min_duration: String,
    pub max_duration: String,
    #[serde(default = "d_from_hour")]
    pub from_hour: f64,
    #[serde(default = "d_to_hour")]
    pub to_hour: f64,
    /// Cores per job (default 1).
    #[serde(default = "d_one")]
    pub cores: f64,
}

fn d_from_hour() -> f64 {
    9.0
}
fn d_to_hour() -> f64 {
    17.0
}

/// When a batch job is due.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DeadlineRule {
    None,
    /// Arrival + duration + this many seconds.
    Slack(i64),
    /// Let's Wait Awhile's `next_workday`.
    NextWorkday,
}

/// What a generated batch is, with its durations in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Generate {
    pub per_workday: f64,
    pub min_duration_s: i64,
    pub max_duration_s: i64,
    pub from_hour: f64,
    pub to_hour: f64,
    pub cores: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarbonSpec {
    /// Carbon-intensity CSV; replayed from the row at `start` (or its first row
    /// when `start` is outside the file).
    pub file: Option<PathBuf>,
    /// Constant intensity instead of a file, gCO2/kWh (China's grid factor 0.6101
    /// kg/kWh is 610.1).
    pub constant: Option<f64>,
    /// Relative error of the planner's carbon forecast: seeded Gaussian noise with
    /// this standard deviation (Let's Wait Awhile used 0.05). Default 0 (perfect).
    #[serde(default)]
    pub forecast_error: f64,
    /// What the planner is told instead: a forecast CSV in the same format,
    /// replayed like `file` (e.g. a day-ahead forecast archive). Not with
    /// `forecast_error`.
    pub forecast_file: Option<PathBuf>,
    /// Grid zones by name, each a carbon CSV replayed like `file`, for pools
    /// that name a `zone` (`forecast_error` applies to each). Pools without one
    /// take `file` / `constant`.
    #[serde(default)]
    pub zones: std::collections::BTreeMap<String, ZoneSpec>,
}

/// `[carbon.zones.NAME]`: one grid zone's intensity.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneSpec {
    pub file: PathBuf,
}

fn d_step() -> String {
    "5m".into()
}
fn d_drain() -> String {
    "2d".into()
}
fn d_plan_every() -> String {
    "15m".into()
}
fn d_horizon() -> String {
    "24h".into()
}
fn d_margin() -> f64 {
    0.1
}
fn d_true() -> bool {
    true
}
fn d_threshold() -> f64 {
    0.65
}
fn d_forecast() -> String {
    "greenfill".into()
}
fn d_quantile() -> f64 {
    0.95
}
fn d_policies() -> Vec<String> {
    POLICIES.iter().map(|s| (*s).to_owned()).collect()
}
fn d_one() -> f64 {
    1.0
}
fn d_suppress() -> String {
    "auto".into()
}

fn d_guard_slack() -> f64 {
    greenfill_planner::GUARD_SLACK
}
fn d_delay_cost() -> f64 {
    greenfill_planner::PlanOptions::default().delay_cost
}
fn d_zero() -> String {
    "0".into()
}
fn d_spread() -> f64 {
    0.2
}
fn d_mem_share() -> f64 {
    0.4
}
fn d_gib() -> f64 {
    2.0
}
fn d_slack() -> String {
    "24h".into()
}

pub const POLICIES: [&str; 4] = ["dedicated", "asap", "coloc", "greenfill"];
/// The online forecasters a scenario may name: the forecast crate's models, then
/// `perfect` (the actual future).
pub fn forecasts() -> Vec<&'static str> {
    greenfill_forecast::models().iter().map(|m| m.name()).chain(["perfect"]).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
    /// A trace the scenario names could not be read (the error names the file).
    #[error(transparent)]
    Data(greenfill_core::data::DataError),
    /// The planner refused a problem built from a loaded scenario: a bug.
    #[error("{path}: internal error: policy {policy}, step {step}: the planner refused its problem: {source}")]
    Plan {
        path: String,
        policy: &'static str,
        step: usize,
        #[source]
        source: Box<greenfill_planner::ProblemError>,
    },
}

/// A scenario with its times parsed and its paths resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub scenario: Scenario,
    pub path: String,
    pub start: i64,
    pub length_s: i64,
    pub drain_s: i64,
    /// Steps of online history before `start` (`online.history`).
    pub online_history_s: i64,
    pub step_s: i64,
    pub plan_every_s: i64,
    pub horizon_s: i64,
    pub slot_s: i64,
    pub deadline: DeadlineRule,
    pub online_file: PathBuf,
    /// The job trace, or the jobs to generate.
    pub batch_file: Option<PathBuf>,
    pub generate: Option<Generate>,
    pub carbon_file: Option<PathBuf>,
    pub carbon_forecast_file: Option<PathBuf>,
    /// Each zone's carbon file, by name.
    pub zone_files: Vec<(String, PathBuf)>,
    /// `[price]`'s file, if it has one.
    pub price_file: Option<PathBuf>,
    /// Each `[price.zones]` zone's price file, by name.
    pub price_zone_files: Vec<(String, PathBuf)>,
    pub objective: Objective,
    /// The power-state model; `None` = `instant`.
    pub power: Option<SimPower>,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Resolved, ScenarioError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io { path: name.clone(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Scenario::parse(&name, &text, base)
    }

    /// Parse `text`; relative file paths are taken from `base`.
    pub fn parse(path: &str, text: &str, base: &Path) -> Result<Resolved, ScenarioError> {
        let s: Scenario = toml::from_str(text)
            .map_err(|e| ScenarioError::Invalid { path: path.to_owned(), message: e.to_string() })?;
        let bad = |message: String| ScenarioError::Invalid { path: path.to_owned(), message };
        let step = |key: &str, v: &str| {
            parse_step(v).ok_or_else(|| bad(format!("{key} = {v:?}: not a duration (e.g. 5m, 24h, 7d)")))
        };
        let start = parse_timestamp(&s.start)
            .ok_or_else(|| bad(format!("start = {:?}: not a timestamp (e.g. 2022-06-01T00:00:00Z)", s.start)))?;
        let length_s = step("length", &s.length)?;
        let drain_s = if s.drain == "0" { 0 } else { step("drain", &s.drain)? };
        let step_s = step("step", &s.step)?;
        let online_history_s = if s.online.history == "0" { 0 } else { step("online.history", &s.online.history)? };
        if online_history_s % step_s != 0 {
            return Err(bad(format!(
                "online.history = {:?}: must be a whole number of steps ({step_s} s)",
                s.online.history
            )));
        }
        let plan_every_s = step("plan_every", &s.plan_every)?;
        let horizon_s = step("horizon", &s.horizon)?;
        let slot_s = step("slot", &s.slot)?;
        for (key, v) in [("plan_every", plan_every_s), ("slot", slot_s)] {
            if v % step_s != 0 {
                return Err(bad(format!("{key} = {v} s: must be a whole number of steps ({step_s} s)")));
            }
        }
        if horizon_s < slot_s || horizon_s % slot_s != 0 {
            return Err(bad(format!("horizon = {horizon_s} s: must be a whole number (≥ 1) of slots ({slot_s} s)")));
        }
        let known = forecasts();
        if !known.contains(&s.forecast.as_str()) {
            return Err(bad(format!("forecast = {:?}: allowed values are {}", s.forecast, known.join(", "))));
        }
        for p in &s.policies {
            if !POLICIES.contains(&p.as_str()) {
                return Err(bad(format!(
                    "policies: {p:?} is not a policy; allowed values are {}",
                    POLICIES.join(", ")
                )));
            }
        }
        if greenfill_core::guard::Suppress::parse(&s.guard_suppress).is_none() {
            return Err(bad(format!(
                "guard_suppress = {:?}: allowed values are auto, always, never",
                s.guard_suppress
            )));
        }
        let mut out_of_range = Vec::new();
        for (key, v, lo, hi) in [
            ("coloc_threshold", s.coloc_threshold, 0.01, 1.0),
            ("guard_slack", s.guard_slack, 0.0, 0.5),
            ("quantile", s.quantile, 0.5, 0.999),
            ("online.scale", s.online.scale, 0.0, 100.0),
            ("online.node_spread", s.online.node_spread, 0.0, 0.9),
            ("online.memory_share", s.online.memory_share, 0.0, 0.99),
            ("batch.sample", s.batch.sample, 0.0, 1.0),
            ("batch.cpus_scale", s.batch.cpus_scale, 0.001, 1000.0),
            ("batch.memory_gib_per_core", s.batch.memory_gib_per_core, 0.0, 1e4),
            ("carbon.forecast_error", s.carbon.forecast_error, 0.0, 10.0),
        ] {
            if !(v >= lo && v <= hi) {
                out_of_range.push(format!("{key} = {v}: must be between {lo} and {hi}"));
            }
        }
        if let Some(g) = &s.batch.gpus {
            if !(0.0..=1.0).contains(&g.share) {
                out_of_range.push(format!("batch.gpus.share = {}: must be between 0 and 1", g.share));
            }
            if g.per_job.is_empty() || g.per_job.contains(&0) {
                out_of_range.push(format!("batch.gpus.per_job = {:?}: need one or more counts, each >= 1", g.per_job));
            }
        }
        for p in &s.cluster.pools {
            if !(p.gpu_idle_w >= 0.0 && p.gpu_busy_w >= p.gpu_idle_w) {
                out_of_range.push(format!(
                    "cluster.pools `{}`: gpu_idle_w = {}, gpu_busy_w = {}: need 0 <= gpu_idle_w <= gpu_busy_w",
                    p.name, p.gpu_idle_w, p.gpu_busy_w
                ));
            }
        }
        // safety_margin and delay_cost become planner options: the planner's
        // rules check them (mem_margin is the same value as cpu_margin).
        let options = PlanOptions {
            cpu_margin: s.safety_margin,
            mem_margin: s.safety_margin,
            delay_cost: s.delay_cost,
            ..PlanOptions::default()
        };
        for e in options.errors() {
            match e {
                ProblemError::Option { field: "cpu_margin", value, why } => {
                    out_of_range.push(format!("safety_margin = {value}: {why}"));
                }
                ProblemError::Option { field: "delay_cost", value, why } => {
                    out_of_range.push(format!("delay_cost = {value}: {why}"));
                }
                _ => {}
            }
        }
        if !out_of_range.is_empty() {
            return Err(bad(out_of_range.join("; ")));
        }
        ClusterConfig { cpu_margin: s.safety_margin, mem_margin: s.safety_margin, pools: s.cluster.pools.clone() }
            .validate(&format!("{path} [cluster]"))
            .map_err(|e| bad(e.to_string()))?;
        if !s.cluster.pools.iter().any(|p| p.always_on) {
            return Err(bad("cluster.pools: no pool has always_on = true; online load needs one".into()));
        }
        let deadline = match s.batch.deadline_slack.as_str() {
            "none" => DeadlineRule::None,
            "next_workday" => DeadlineRule::NextWorkday,
            v => DeadlineRule::Slack(
                parse_duration(v)
                    .map(|x| {
                        #[allow(clippy::cast_possible_truncation, reason = "durations are far below i64::MAX seconds")]
                        let x = x as i64;
                        x
                    })
                    .ok_or_else(|| {
                        bad(format!(
                            "batch.deadline_slack = {v:?}: a duration (e.g. 12h), \"none\" or \"next_workday\""
                        ))
                    })?,
            ),
        };
        if !(-14.0..=14.0).contains(&s.batch.utc_offset_hours) {
            return Err(bad(format!(
                "batch.utc_offset_hours = {}: must be between -14 and 14",
                s.batch.utc_offset_hours
            )));
        }
        let generate = match (&s.batch.file, &s.batch.generate) {
            (Some(_), None) => None,
            (None, Some(g)) => {
                let min_duration_s = step("batch.generate.min_duration", &g.min_duration)?;
                let max_duration_s = step("batch.generate.max_duration", &g.max_duration)?;
                if max_duration_s <= min_duration_s {
                    return Err(bad(format!(
                        "batch.generate.max_duration = {:?}: must be longer than min_duration ({:?})",
                        g.max_duration, g.min_duration
                    )));
                }
                if !(0.0..=24.0).contains(&g.from_hour) || !(g.from_hour..=24.0).contains(&g.to_hour) {
                    return Err(bad(format!(
                        "batch.generate: from_hour = {}, to_hour = {}: need 0 <= from_hour <= to_hour <= 24",
                        g.from_hour, g.to_hour
                    )));
                }
                if !((0.0..=1e6).contains(&g.per_workday) && g.cores > 0.0 && g.cores.is_finite()) {
                    return Err(bad(format!(
                        "batch.generate: per_workday = {}, cores = {}: need per_workday in 0..=1e6 and cores > 0",
                        g.per_workday, g.cores
                    )));
                }
                Some(Generate {
                    per_workday: g.per_workday,
                    min_duration_s,
                    max_duration_s,
                    from_hour: g.from_hour,
                    to_hour: g.to_hour,
                    cores: g.cores,
                })
            }
            _ => return Err(bad("batch: give exactly one of file or generate".into())),
        };
        let carbon_file = match (&s.carbon.file, s.carbon.constant) {
            (Some(f), None) => Some(base.join(f)),
            (None, Some(c)) if c.is_finite() && c >= 0.0 => None,
            (None, Some(c)) => return Err(bad(format!("carbon.constant = {c}: must be >= 0 (gCO2/kWh)"))),
            _ => return Err(bad("carbon: give exactly one of file or constant".into())),
        };
        if s.online.per_node && s.online.series.is_some() {
            return Err(bad("online.per_node = true: not with online.series (one series, or all of them)".into()));
        }
        if s.carbon.forecast_file.is_some() && s.carbon.forecast_error > 0.0 {
            return Err(bad(format!(
                "carbon.forecast_error = {}: not with carbon.forecast_file (the file is the forecast)",
                s.carbon.forecast_error
            )));
        }
        let power = resolve_power(&s.power, plan_every_s + slot_s).map_err(bad)?;
        let price_file = match s.price.as_ref().map(|p| (&p.file, p.constant)) {
            None => None,
            Some((Some(f), None)) => Some(base.join(f)),
            Some((None, Some(c))) if c.is_finite() => None,
            Some((None, Some(c))) => {
                return Err(bad(format!("price.constant = {c}: must be finite (currency per MWh)")));
            }
            Some(_) => return Err(bad("price: give exactly one of file or constant".into())),
        };
        let objective = resolve_objective(&s.objective, s.price.is_some()).map_err(bad)?;
        let price_zones = s.price.as_ref().map(|p| &p.zones);
        if let Some(z) = price_zones.into_iter().flat_map(|z| z.keys()).find(|z| !s.carbon.zones.contains_key(*z)) {
            let known: Vec<&str> = s.carbon.zones.keys().map(String::as_str).collect();
            return Err(bad(format!(
                "price.zones.{z}: no such zone; a price zone is one of [carbon.zones] ({})",
                known.join(", ")
            )));
        }
        for (i, p) in s.cluster.pools.iter().enumerate() {
            if let Some(z) = p.zone.as_deref().filter(|z| !s.carbon.zones.contains_key(*z)) {
                let known: Vec<&str> = s.carbon.zones.keys().map(String::as_str).collect();
                return Err(bad(format!(
                    "cluster.pools[{i}].zone = {z:?}: no such zone; [carbon.zones] has: {}",
                    known.join(", ")
                )));
            }
        }
        Ok(Resolved {
            zone_files: s.carbon.zones.iter().map(|(n, z)| (n.clone(), base.join(&z.file))).collect(),
            price_file,
            price_zone_files: price_zones
                .into_iter()
                .flat_map(|z| z.iter().map(|(n, f)| (n.clone(), base.join(&f.file))))
                .collect(),
            objective,
            power,
            carbon_forecast_file: s.carbon.forecast_file.as_ref().map(|f| base.join(f)),
            online_file: base.join(&s.online.file),
            batch_file: s.batch.file.as_ref().map(|f| base.join(f)),
            generate,
            carbon_file,
            scenario: s,
            path: path.to_owned(),
            start,
            length_s,
            drain_s,
            online_history_s,
            step_s,
            plan_every_s,
            horizon_s,
            slot_s,
            deadline,
        })
    }
}

/// The `[power]` table as the machine's settings (`lead` = the planning
/// interval plus a slot); every bad key named at once.
fn resolve_power(p: &PowerSpec, lead_s: i64) -> Result<Option<SimPower>, String> {
    match p.model.as_str() {
        "instant" => return Ok(None),
        "states" => {}
        m => return Err(format!("power.model = {m:?}: allowed values are states, instant")),
    }
    let mut errors = Vec::new();
    let mut secs = |key: &str, v: &str| match (v, parse_step(v)) {
        ("0", _) => 0,
        (_, Some(s)) => s,
        (_, None) => {
            errors.push(format!("power.{key} = {v:?}: not a duration (e.g. 5m, 30m)"));
            0
        }
    };
    let wake_s = secs("wake", &p.wake);
    let suspend_s = secs("suspend", &p.suspend);
    let settings = PowerSettings {
        suspend_after_s: secs("suspend_after", &p.suspend_after),
        wake_s,
        lead_s,
        // A simulated machine answers on time; the timeouts only bound it.
        suspend_timeout_s: suspend_s.max(1) * 10,
        resume_timeout_s: wake_s.max(1) * 10,
        min_off_s: secs("min_off", &p.min_off),
        reserve: p.reserve,
        max_suspends_per_day: p.max_suspends_per_day,
        suspend_rate: p.suspend_rate,
        resume_rate: p.resume_rate,
    };
    errors.extend(settings.errors().into_iter().map(|e| format!("power.{e}")));
    if errors.is_empty() { Ok(Some(SimPower { settings, suspend_s })) } else { Err(errors.join("; ")) }
}
