//! Everything a run reads, loaded once and shared by every policy: the online
//! utilisation per step, the carbon intensity per step (actual and as forecast),
//! the jobs in steps, and each node's fixed share of its pool's load.

use crate::scenario::{DeadlineRule, Generate, Resolved, ScenarioError};
use greenfill_core::cluster::Pool;
use greenfill_core::data::{
    CarbonOptions, CarbonTrace, DataError, JobFormat, JobMemory, UsageOptions, load_carbon, load_jobs, load_price,
    load_usage,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Poisson};

#[derive(Debug, Clone)]
pub struct SimJob {
    pub id: String,
    pub arrival: usize,
    /// Steps of running, >= 1.
    pub duration: usize,
    pub cores: f64,
    pub mem_gib: f64,
    /// Step by which it should have finished.
    pub deadline: Option<usize>,
    /// The only pool it may run in (`batch.pin_to_pools`).
    pub pool: Option<usize>,
    /// Whole GPUs on its node while it runs.
    pub gpus: u32,
}

/// One grid zone's intensity per step.
#[derive(Debug, Clone)]
pub struct ZoneCarbon {
    pub name: String,
    pub actual: Vec<f64>,
    pub forecast: Vec<f64>,
    /// The zone's day-ahead price per step (`[price.zones]`; empty: `price`).
    pub price: Vec<f64>,
}

#[derive(Debug, Clone)]
pub struct Inputs {
    pub start: i64,
    pub step_s: i64,
    /// Steps simulated: arrivals for `length`, then the drain.
    pub steps: usize,
    pub pools: Vec<Pool>,
    pub pool_first: Vec<usize>,
    pub node_pool: Vec<usize>,
    /// Each node's load = pool utilisation × this factor.
    pub node_factor: Vec<f64>,
    /// Online CPU utilisation (share of cores) of always-on nodes, per step: the
    /// mean over their series (for reports).
    pub online: Vec<f64>,
    /// Each online series: `online.history` steps of the trace before the run,
    /// then the run. What the forecaster may see at step `t` is
    /// `online_series[k][..=history + t]`.
    pub online_series: Vec<Vec<f64>>,
    /// Which of `online_series` each node replays (0 unless `online.per_node`).
    pub node_series: Vec<usize>,
    pub history: usize,
    pub online_mem_share: f64,
    /// Actual carbon intensity per step, gCO2/kWh.
    pub carbon: Vec<f64>,
    /// What the planner is told: actual × (1 + noise), per step.
    pub carbon_forecast: Vec<f64>,
    /// `[carbon.zones]`, and each pool's zone among them (`None`: `carbon`).
    pub zones: Vec<ZoneCarbon>,
    pub pool_zone: Vec<Option<usize>>,
    /// Day-ahead price per step, currency per MWh (empty without `[price]`).
    pub price: Vec<f64>,
    /// Sorted by arrival.
    pub jobs: Vec<SimJob>,
}

impl Inputs {
    pub fn nodes(&self) -> usize {
        self.node_pool.len()
    }

    /// Actual intensity at step `t` in `pool`'s zone.
    pub fn carbon_at(&self, pool: usize, t: usize) -> f64 {
        self.pool_zone[pool].map_or(self.carbon[t], |z| self.zones[z].actual[t])
    }

    /// The price `pool` pays at step `t`: its zone's, else `[price]`'s (0 without).
    pub fn price_at(&self, pool: usize, t: usize) -> f64 {
        let own = self.pool_zone[pool].map(|z| &self.zones[z].price).filter(|p| !p.is_empty());
        own.unwrap_or(&self.price).get(t).copied().unwrap_or(0.0)
    }

    /// The forecast the planner sees for `pool`'s zone at step `t`.
    pub fn forecast_at(&self, pool: usize, t: usize) -> f64 {
        self.pool_zone[pool].map_or(self.carbon_forecast[t], |z| self.zones[z].forecast[t])
    }

    /// Online CPU on `node` at step `t`, cores.
    pub fn online_cpu(&self, node: usize, t: usize) -> f64 {
        let p = &self.pools[self.node_pool[node]];
        if !p.always_on {
            return 0.0;
        }
        (self.online_at(node, t) * self.node_factor[node]).clamp(0.0, 1.0) * p.cores
    }

    /// The utilisation share of `node`'s series at step `t` (before its factor).
    pub fn online_at(&self, node: usize, t: usize) -> f64 {
        self.online_series[self.node_series[node]][self.history + t]
    }

    pub fn online_mem(&self, node: usize) -> f64 {
        let p = &self.pools[self.node_pool[node]];
        if p.always_on { self.online_mem_share * p.memory_gib } else { 0.0 }
    }
}

fn err(r: &Resolved, message: String) -> ScenarioError {
    ScenarioError::Invalid { path: r.path.clone(), message }
}

pub fn load(r: &Resolved) -> Result<Inputs, ScenarioError> {
    let s = &r.scenario;
    let steps = usize::try_from((r.length_s + r.drain_s) / r.step_s).unwrap_or(0);
    if r.length_s < r.step_s {
        return Err(err(r, format!("length = {:?} is shorter than one step", s.length)));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);

    // Online: the trace's utilisation as a share, replayed from its start.
    let usage = load_usage(&r.online_file, &UsageOptions { step: Some(r.step_s), ..UsageOptions::default() })
        .map_err(ScenarioError::Data)?;
    let chosen: Vec<&greenfill_core::Series> = match (&s.online.series, s.online.per_node) {
        (Some(id), _) => vec![usage.series.iter().find(|x| &x.id == id).ok_or_else(|| {
            err(
                r,
                format!(
                    "online.series = {id:?}: not in the file (found: {})",
                    usage.series.iter().map(|x| x.id.as_str()).collect::<Vec<_>>().join(", ")
                ),
            )
        })?],
        (None, true) => usage.series.iter().collect(),
        (None, false) => vec![usage.series.first().ok_or_else(|| err(r, "online.file has no series".into()))?],
    };
    if chosen.is_empty() {
        return Err(err(r, "online.file has no series".into()));
    }
    let to_share = match usage.unit.as_str() {
        "percent" => 0.01,
        "fraction" => 1.0,
        other => {
            return Err(err(
                r,
                format!(
                    "online.file: values are in `{other}`, not a utilisation share or percent; use a usage trace of utilisation"
                ),
            ));
        }
    };
    let history = usize::try_from(r.online_history_s / r.step_s).unwrap_or(0);
    let online_series: Vec<Vec<f64>> = chosen
        .iter()
        .map(|series| {
            (0..history + steps)
                .map(|t| (series.values[t % series.values.len()] * to_share * s.online.scale).max(0.0))
                .collect()
        })
        .collect();

    // Carbon: a file replayed from `start` (or its first row), or a constant.
    type Loader = fn(&std::path::Path, &CarbonOptions) -> Result<CarbonTrace, DataError>;
    let replay_with = |path: &std::path::Path, load: Loader| -> Result<Vec<f64>, ScenarioError> {
        let c = load(path, &CarbonOptions::default()).map_err(ScenarioError::Data)?.series;
        let origin = if (c.start..=c.end()).contains(&r.start) { r.start } else { c.start };
        Ok((0..steps)
            .map(|t| {
                let at = origin + i64::try_from(t).unwrap_or(0) * r.step_s;
                // Past the file's end, start again from its beginning.
                let span = c.end() - c.start + c.step;
                c.value_at(c.start + (at - c.start).rem_euclid(span))
            })
            .collect())
    };
    let replay = |path: &std::path::Path| replay_with(path, load_carbon);
    let price = match (&r.price_file, s.price.as_ref().and_then(|p| p.constant)) {
        (Some(path), _) => replay_with(path, load_price)?,
        (None, Some(k)) => vec![k; steps],
        (None, None) => Vec::new(),
    };
    let carbon: Vec<f64> = match (&r.carbon_file, s.carbon.constant) {
        (Some(path), _) => replay(path)?,
        (None, Some(k)) => vec![k; steps],
        (None, None) => unreachable!("validated: one of file or constant"),
    };
    let normal = Normal::new(0.0, s.carbon.forecast_error.max(1e-12)).map_err(|e| err(r, e.to_string()))?;
    let mut noisy = |actual: &[f64]| -> Vec<f64> {
        actual
            .iter()
            .map(|c| if s.carbon.forecast_error > 0.0 { (c * (1.0 + normal.sample(&mut rng))).max(0.0) } else { *c })
            .collect()
    };
    let carbon_forecast: Vec<f64> = match &r.carbon_forecast_file {
        Some(path) => replay(path)?,
        None => noisy(&carbon),
    };
    let mut zones = Vec::with_capacity(r.zone_files.len());
    for (name, path) in &r.zone_files {
        let actual = replay(path)?;
        let forecast = noisy(&actual);
        let price = match r.price_zone_files.iter().find(|(n, _)| n == name) {
            Some((_, p)) => replay_with(p, load_price)?,
            None => Vec::new(),
        };
        zones.push(ZoneCarbon { name: name.clone(), actual, forecast, price });
    }
    let pool_zone: Vec<Option<usize>> =
        s.cluster.pools.iter().map(|p| p.zone.as_ref().and_then(|z| zones.iter().position(|c| &c.name == z))).collect();

    // Nodes.
    let mut pool_first = Vec::new();
    let mut node_pool = Vec::new();
    let mut node_factor = Vec::new();
    let mut node_series = Vec::new();
    let mut online_nodes = 0;
    for (i, p) in s.cluster.pools.iter().enumerate() {
        pool_first.push(node_pool.len());
        for _ in 0..p.nodes {
            node_pool.push(i);
            node_factor.push(1.0 + s.online.node_spread * rng.random_range(-1.0..=1.0));
            // Always-on nodes take the series in turn.
            node_series.push(if p.always_on { online_nodes % online_series.len() } else { 0 });
            online_nodes += usize::from(p.always_on);
        }
    }
    // Each series weighs as many always-on nodes as replay it.
    let mut weight = vec![0usize; online_series.len()];
    for (n, &k) in node_series.iter().enumerate() {
        weight[k] += usize::from(s.cluster.pools[node_pool[n]].always_on);
    }
    let total = weight.iter().sum::<usize>().max(1);
    #[allow(clippy::cast_precision_loss, reason = "node counts are small")]
    let online: Vec<f64> = (0..steps)
        .map(|t| online_series.iter().zip(&weight).map(|(v, w)| v[history + t] * *w as f64).sum::<f64>() / total as f64)
        .collect();

    let machine_gib = s.cluster.pools.iter().map(|p| p.memory_gib).fold(0.0, f64::max);
    let raw: Vec<RawJob> = match (&r.batch_file, &r.generate) {
        (Some(path), _) => {
            let trace = load_jobs(path, JobFormat::Auto).map_err(ScenarioError::Data)?;
            let first = trace.jobs.iter().map(|j| j.arrival).min().unwrap_or(0);
            trace
                .jobs
                .iter()
                .map(|j| {
                    let cores = j.cpus * s.batch.cpus_scale;
                    #[allow(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
                    let mem_gib = match j.memory {
                        Some(JobMemory::Bytes(b)) => b as f64 / f64::from(1u32 << 30),
                        Some(JobMemory::MachineShare(x)) => x * machine_gib,
                        None => cores * s.batch.memory_gib_per_core,
                    };
                    RawJob {
                        id: j.id.clone(),
                        offset: j.arrival - first,
                        duration_s: j.duration,
                        // Measured from the same origin as the arrival.
                        deadline_offset: j.deadline.map(|d| d - first),
                        cores,
                        mem_gib,
                        instances: j.instances,
                        gpus: j.gpus,
                    }
                })
                .collect()
        }
        (None, Some(g)) => generate(g, r, &mut rng)
            .into_iter()
            .enumerate()
            .map(|(i, (at, dur))| {
                let cores = g.cores * s.batch.cpus_scale;
                RawJob {
                    id: format!("gen-{i}"),
                    offset: at,
                    duration_s: dur,
                    deadline_offset: None,
                    cores,
                    mem_gib: cores * s.batch.memory_gib_per_core,
                    instances: 1,
                    gpus: 0,
                }
            })
            .collect(),
        (None, None) => return Err(err(r, "batch: give exactly one of file or generate".into())),
    };
    let step = r.step_s;
    let offset_s = hours_to_s(s.batch.utc_offset_hours);
    let mut jobs = Vec::new();
    for job in raw {
        if job.offset >= r.length_s {
            continue;
        }
        if s.batch.sample < 1.0 && !rng.random_bool(s.batch.sample) {
            continue;
        }
        let arrival = usize::try_from(job.offset.div_euclid(step)).unwrap_or(0);
        let duration = usize::try_from((job.duration_s + step - 1) / step).unwrap_or(1).max(1);
        let deadline = match (job.deadline_offset, r.deadline) {
            // A deadline in the trace is the job's own; the rule is for jobs without one.
            (Some(d), _) => Some(usize::try_from(d.div_euclid(step)).unwrap_or(0)),
            (None, DeadlineRule::None) => None,
            (None, DeadlineRule::Slack(slack)) => Some(arrival + duration + usize::try_from(slack / step).unwrap_or(0)),
            (None, DeadlineRule::NextWorkday) => {
                let end = r.start + job.offset + job.duration_s;
                let due = next_workday_deadline(end, offset_s) - r.start;
                Some(usize::try_from(due.div_euclid(step)).unwrap_or(0).max(arrival + duration))
            }
        };
        // Drawn only where the scenario asks, so other scenarios' seeded runs are unchanged.
        let gpus = match &s.batch.gpus {
            Some(d) if job.gpus == 0 && !d.per_job.is_empty() && rng.random_bool(d.share.clamp(0.0, 1.0)) => {
                d.per_job[rng.random_range(0..d.per_job.len())]
            }
            _ => job.gpus,
        };
        for k in 0..job.instances.max(1) {
            jobs.push(SimJob {
                id: if job.instances > 1 { format!("{}#{k}", job.id) } else { job.id.clone() },
                arrival,
                duration,
                cores: job.cores,
                mem_gib: job.mem_gib,
                deadline,
                pool: None,
                gpus,
            });
        }
        if s.batch.max_jobs.is_some_and(|m| jobs.len() >= m) {
            jobs.truncate(s.batch.max_jobs.unwrap_or(usize::MAX));
            break;
        }
    }
    jobs.sort_by_key(|j| j.arrival);
    if s.batch.pin_to_pools {
        for (i, j) in jobs.iter_mut().enumerate() {
            j.pool = Some(i % s.cluster.pools.len().max(1));
        }
    }
    if let Some(j) = jobs.iter().max_by_key(|j| j.gpus)
        && let Some(most) = s.cluster.pools.iter().map(|p| p.gpus).max()
        && j.gpus > most
    {
        return Err(err(r, format!("batch: job `{}` needs {} GPUs; the most any node has is {most}", j.id, j.gpus)));
    }
    let largest = s.cluster.pools.iter().map(|p| p.cores * (1.0 - s.safety_margin)).fold(0.0, f64::max);
    if let Some(j) = jobs.iter().find(|j| j.cores > largest) {
        return Err(err(
            r,
            format!(
                "batch: job `{}` needs {} cores; the largest node offers {largest:.1} after the safety margin (scale with batch.cpus_scale)",
                j.id, j.cores
            ),
        ));
    }
    Ok(Inputs {
        start: r.start,
        step_s: r.step_s,
        steps,
        pools: s.cluster.pools.clone(),
        pool_first,
        node_pool,
        node_factor,
        online,
        online_series,
        node_series,
        history,
        online_mem_share: s.online.memory_share,
        carbon,
        carbon_forecast,
        zones,
        pool_zone,
        price,
        jobs,
    })
}

/// A job as read from a trace or generated, before it is put in steps.
struct RawJob {
    id: String,
    /// Seconds after the first arrival.
    offset: i64,
    duration_s: i64,
    /// The trace's own deadline, seconds after the first arrival.
    deadline_offset: Option<i64>,
    cores: f64,
    mem_gib: f64,
    instances: u32,
    gpus: u32,
}

fn hours_to_s(h: f64) -> i64 {
    #[allow(clippy::cast_possible_truncation, reason = "|hours| <= 14, checked with the scenario")]
    let s = (h * 3600.0).round() as i64;
    s
}

/// Monday = 0 for the local day `day` (days since 1970-01-01, a Thursday).
fn weekday(day: i64) -> i64 {
    (day + 3).rem_euclid(7)
}

/// Let's Wait Awhile's `next_workday` rule: a job due to end at `end` (UTC
/// seconds) inside 09:00–17:00 of a workday, local time (`offset_s` from UTC),
/// is due then; otherwise it is due at 09:00 on the next workday (the same day
/// when it ends before 09:00 on a workday).
pub(crate) fn next_workday_deadline(end: i64, offset_s: i64) -> i64 {
    let local = end + offset_s;
    let day = local.div_euclid(86_400);
    let tod = local.rem_euclid(86_400);
    let nine = 9 * 3600;
    if weekday(day) < 5 && (nine..=17 * 3600).contains(&tod) {
        return end;
    }
    let mut d = if weekday(day) < 5 && tod < nine { day } else { day + 1 };
    while weekday(d) >= 5 {
        d += 1;
    }
    d * 86_400 + nine - offset_s
}

/// Generated jobs as (seconds after start, duration in seconds), in arrival order.
fn generate(g: &Generate, r: &Resolved, rng: &mut ChaCha8Rng) -> Vec<(i64, i64)> {
    let offset_s = hours_to_s(r.scenario.batch.utc_offset_hours);
    let half = 1800;
    let marks = ((hours_to_s(g.to_hour) - hours_to_s(g.from_hour)) / half).max(1);
    let durations = ((g.max_duration_s - g.min_duration_s) / half).max(1);
    let per_day = Poisson::new(g.per_workday.max(1e-9)).ok();
    let mut out = Vec::new();
    let first_day = (r.start + offset_s).div_euclid(86_400);
    let last_day = (r.start + r.length_s + offset_s).div_euclid(86_400);
    for day in first_day..=last_day {
        if weekday(day) >= 5 {
            continue;
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a small count")]
        let n = per_day.as_ref().map_or(0, |p| p.sample(rng) as u64);
        let mut day_jobs: Vec<(i64, i64)> = (0..n)
            .map(|_| {
                let at = day * 86_400 - offset_s + hours_to_s(g.from_hour) + rng.random_range(0..marks) * half;
                let dur = g.min_duration_s + rng.random_range(0..durations) * half;
                (at - r.start, dur)
            })
            .filter(|(at, _)| (0..r.length_s).contains(at))
            .collect();
        day_jobs.sort_unstable();
        out.extend(day_jobs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_workday_follows_lets_wait_awhile() {
        // 2022-06-01 was a Wednesday. Times in UTC, local = UTC (offset 0).
        let wed = 1_654_041_600;
        let h = 3600;
        // Ends 14:00 Wednesday: inside working hours, no slack.
        assert_eq!(next_workday_deadline(wed + 14 * h, 0), wed + 14 * h);
        // Ends 20:00 Wednesday: Thursday 09:00.
        assert_eq!(next_workday_deadline(wed + 20 * h, 0), wed + 33 * h);
        // Ends 07:00 Wednesday: the same day 09:00.
        assert_eq!(next_workday_deadline(wed + 7 * h, 0), wed + 9 * h);
        // Ends Friday 18:00 or on Saturday: Monday 09:00.
        assert_eq!(next_workday_deadline(wed + 2 * 24 * h + 18 * h, 0), wed + 5 * 24 * h + 9 * h);
        assert_eq!(next_workday_deadline(wed + 3 * 24 * h + 12 * h, 0), wed + 5 * 24 * h + 9 * h);
        // California (UTC−8): 02:00 UTC Thursday is 18:00 Wednesday there → 09:00
        // Thursday local = 17:00 UTC Thursday.
        assert_eq!(next_workday_deadline(wed + 26 * h, -8 * h), wed + 24 * h + 17 * h);
    }
}
