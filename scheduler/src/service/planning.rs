//! The planning loop: every interval (and soon after significant events) turn the
//! queue, the nodes' telemetry history and the carbon forecast into a plan with
//! the same planner the simulator uses, dispatch what starts now, record the plan.

use super::lifecycle::Event;
use super::{Inner, State, is_queued, now, ts};
use crate::store::Write;
use greenfill_core::cluster::{Pool, PowerModel};
use greenfill_planner::{
    Built, Objective, Placement, Plan, PoolInput, Problem, ProblemBuilder, QueuedJob, RunningJob, SlotClock, WaitReason,
};
use greenfill_proto::v1 as pb;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Plan every interval (or soon after events) until the service stops. A round
/// in progress is dropped at shutdown: its changes are applied under the lock
/// and queued before any await, so what it did is committed and what it had not
/// done yet is redone by the next start.
pub async fn run(st: Arc<State>) {
    let cfg = st.config.planning.clone();
    let stop = st.shutdown.clone();
    loop {
        tokio::select! {
            () = greenfill_runtime::clock::sleep(cfg.interval) => {}
            () = st.replan.notified() => {}
            () = stop.cancelled() => break,
        }
        tokio::select! {
            r = plan_once(&st) => match r {
                Ok(s) => tracing::debug!(?s, "planned"),
                Err(e) => tracing::error!(error = %e, "planning failed"),
            },
            () = stop.cancelled() => break,
        }
        tokio::select! {
            () = greenfill_runtime::clock::sleep(cfg.min_gap) => {}
            () = stop.cancelled() => break,
        }
    }
    tracing::debug!("planning loop stopped");
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    pub nodes: usize,
    pub queued: usize,
    pub dispatched: usize,
    pub requeued: usize,
    pub power_transitions: usize,
    pub solve_ms: f64,
    pub total_ms: f64,
}

/// Inputs gathered under the lock, solved outside it.
struct Gathered {
    builder: ProblemBuilder,
    /// Per planner pool, node names in planner order.
    pool_nodes: Vec<Vec<String>>,
    /// Per problem job: its id.
    job_ids: Vec<String>,
    /// Jobs left out of the problem (no live node of their pool).
    no_pool: Vec<String>,
}

#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "slot arithmetic on small, checked values"
)]
fn slots_ceil(secs: f64, slot_s: i64) -> usize {
    (secs / slot_s as f64).ceil().max(0.0) as usize
}

/// The planner's clock for a round at `t`, from the config.
fn clock(cfg: &super::config::Planning, t: i64) -> SlotClock {
    let slot_s = i64::try_from(cfg.slot.as_secs().max(1)).unwrap_or(300);
    let slots = usize::try_from(cfg.horizon.as_secs() / cfg.slot.as_secs().max(1)).unwrap_or(288).max(1);
    SlotClock { start: t, slot_s, slots }
}

/// Nodes the plan may use, by pool: live ones (connected, heard from within
/// `stale_after`) that take work or are draining, and the sleeping nodes of
/// sleepable pools (capacity from their ready time). Failed nodes are left out.
fn live_pools(inner: &Inner, t: i64, stale: i64) -> BTreeMap<String, Vec<(&String, &super::Node)>> {
    use greenfill_planner::power::PowerState as P;
    let mut pools: BTreeMap<String, Vec<(&String, &super::Node)>> = BTreeMap::new();
    for (name, n) in &inner.nodes {
        let live = n.session.is_some() && n.last_seen >= t - stale;
        let usable = match super::power::state_of(inner, name) {
            P::On | P::Draining => live,
            P::Off | P::Suspending | P::Resuming => true,
            P::Failed => false,
        };
        if usable {
            pools.entry(n.register.pool.clone()).or_default().push((name, n));
        }
    }
    pools
}

/// One pool's input: its nodes' online upper bounds per slot (the forecast, or
/// the whole node when there is none yet), padded to the pool's largest node.
fn pool_input(
    st: &State,
    name: &str,
    nodes: &[(&String, &super::Node)],
    clock: SlotClock,
    forecasts: &HashMap<String, super::CachedForecast>,
) -> PoolInput {
    let bucket_s = i64::try_from(st.config.planning.telemetry_bucket.as_secs().max(1)).unwrap_or(300);
    let season = usize::try_from(86_400 / bucket_s).unwrap_or(288).max(2);
    let slots = clock.slots;
    let sleeps = st.power.settings(name).is_some();
    let decl = st.config.pools.iter().find(|p| p.name == name);
    #[allow(clippy::cast_precision_loss, reason = "slot arithmetic")]
    let horizon_buckets = slots_ceil(slots as f64 * clock.slot_s as f64, bucket_s).max(1);
    let max_cores = nodes.iter().map(|(_, n)| n.register.cpu_cores).fold(0.0, f64::max);
    #[allow(clippy::cast_precision_loss, reason = "bytes")]
    let max_mem = nodes.iter().map(|(_, n)| n.register.memory_bytes as f64).fold(0.0, f64::max);
    let mut cpu = Vec::with_capacity(nodes.len() * slots);
    let mut mem = Vec::with_capacity(nodes.len() * slots);
    for (node, n) in nodes {
        let mut mem_max = n.history.iter().rev().take(season).map(|h| h.2).fold(0.0, f64::max);
        if let Some((_, _, m, k)) = n.bucket {
            mem_max = mem_max.max(m / f64::from(k));
        }
        // Forecast step 0 is the bucket filling now (see `refresh_forecasts`);
        // no forecast yet (no telemetry) = nothing for batch, except on a
        // sleepable pool's nodes, which run no online services.
        let unknown = if sleeps { 0.0 } else { n.register.cpu_cores };
        let upper = forecasts
            .get(node.as_str())
            .map(|(_, u)| u.clone())
            .filter(|u| u.len() >= horizon_buckets)
            .unwrap_or_else(|| vec![unknown; horizon_buckets]);
        let pad_cpu = max_cores - n.register.cpu_cores;
        #[allow(clippy::cast_precision_loss, reason = "bytes")]
        let pad_mem = max_mem - n.register.memory_bytes as f64;
        for i in 0..slots {
            #[allow(clippy::cast_precision_loss, reason = "slot arithmetic")]
            let offset = i as f64 * clock.slot_s as f64;
            let b = slots_ceil(offset + 1.0, bucket_s).saturating_sub(1).min(upper.len() - 1);
            cpu.push((upper[b].max(0.0) + pad_cpu).min(max_cores));
            mem.push(((mem_max + pad_mem) / GIB).min(max_mem / GIB));
        }
    }
    PoolInput {
        pool: Pool {
            // The fewest any node has: a plan never gives a node more GPUs than it reports.
            gpus: nodes.iter().map(|(_, n)| n.register.gpus).min().unwrap_or(0),
            name: name.to_owned(),
            nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
            cores: max_cores,
            memory_gib: max_mem / GIB,
            power: PowerModel::Linear { idle_w: st.config.power.idle_w, max_w: st.config.power.max_w },
            pue: st.config.power.pue,
            always_on: !sleeps,
            embodied_g_per_hour: decl.map_or(0.0, |p| p.embodied_g_per_hour),
            wake_wh: st.power.pools.get(name).map_or(0.0, |(p, _)| p.wake_wh),
            zone: None,
            gpu_idle_w: decl.and_then(|p| p.gpu_idle_w).unwrap_or(st.config.power.gpu_idle_w),
            gpu_busy_w: decl.and_then(|p| p.gpu_busy_w).unwrap_or(st.config.power.gpu_busy_w),
            gpu_model: common_gpu_model(nodes),
        },
        online_cpu: cpu,
        online_mem: mem,
        carbon: st.carbon.slots(name, clock.start, clock.slot_s, slots),
        // A pool in a zone with its own bidding-zone price pays that.
        gpus_used: Vec::new(),
        price: st
            .price
            .as_ref()
            .and_then(|m| m.own(st.carbon.zone_name_of(name)))
            .and_then(|f| f.slots(clock.start, clock.slot_s, slots))
            .unwrap_or_default(),
        powered: Vec::new(),
    }
}

/// The GPU model every node of a pool reports (NVML's name of its first GPU);
/// empty when they differ or report none, so no job asking for a model goes there.
fn common_gpu_model(nodes: &[(&String, &super::Node)]) -> String {
    let mut models = nodes.iter().map(|(_, n)| n.register.gpu_devices.first().map_or("", |g| g.model.as_str()));
    let first = models.next().unwrap_or("");
    if models.all(|m| m == first) { first.to_owned() } else { String::new() }
}

/// A node that evicted batch for memory within `planning.eviction_cooldown`
/// has no memory for new batch until the cool-down ends: the next attempt goes
/// elsewhere or waits (issue 15's loop: 11 evictions in 50 s on one node).
fn cool_down(inner: &Inner, st: &State, t: i64, where_is: &HashMap<&str, (usize, usize)>, b: &mut ProblemBuilder) {
    let cooldown = i64::try_from(st.config.planning.eviction_cooldown.as_secs()).unwrap_or(i64::MAX / 4);
    for (name, n) in &inner.nodes {
        let (Some(at), Some(&(pool, k))) = (n.evicted_at, where_is.get(name.as_str())) else { continue };
        if at + cooldown > t {
            // Indices come from the pools just built.
            let _ = b.no_new_memory_until(pool, k, at + cooldown);
        }
    }
}

/// Batch already running on a live node, as load until its expected end.
fn running_jobs(inner: &Inner, t: i64, where_is: &HashMap<&str, (usize, usize)>) -> Vec<RunningJob> {
    inner
        .jobs
        .values()
        .filter(|e| !e.job.node.is_empty() && !is_queued(e.job.state) && !super::is_terminal(e.job.state))
        .filter_map(|e| {
            let &(pool, node) = where_is.get(e.job.node.as_str())?;
            let s = e.job.spec.as_ref();
            let dur = s.and_then(|s| s.expected_duration.as_ref()).map_or(0.0, super::duration_secs);
            let since = e.job.started_at.or(e.job.updated_at).map_or(t, |x| x.seconds);
            #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss, reason = "seconds")]
            let ends_at = since + dur.ceil() as i64;
            #[allow(clippy::cast_precision_loss, reason = "bytes")]
            Some(RunningJob {
                gpus: s.map_or(0, |s| s.gpus),
                pool,
                node,
                cores: s.map_or(0.0, |s| s.cpu_cores),
                mem_gib: s.map_or(0.0, |s| s.memory_bytes as f64) / GIB,
                ends_at,
            })
        })
        .collect()
}

/// Seconds an image job's planned run time includes for a pull: the image's
/// pull time unless every live node it may run on holds the image (the
/// placement does not prefer warm nodes, so the plan never counts on one).
fn pull_allowance(
    inner: &Inner,
    cfg: &super::config::Planning,
    s: &pb::JobSpec,
    pools: &BTreeMap<String, Vec<(&String, &super::Node)>>,
) -> f64 {
    let Some(image) = s.image.as_ref().map(|i| i.reference.as_str()) else { return 0.0 };
    let mut eligible = pools.iter().filter(|(p, _)| s.pool.is_empty() || **p == s.pool).flat_map(|(_, n)| n.iter());
    if eligible.all(|(_, n)| n.has_image(image)) { 0.0 } else { inner.pull_seconds(image, cfg.image_pull_estimate) }
}

/// A queued job for the builder (`None` when it names a pool with no live node).
fn queued_job(
    id: &str,
    job: &pb::Job,
    s: &pb::JobSpec,
    pool_index: &BTreeMap<String, usize>,
    pull_s: f64,
) -> Option<QueuedJob> {
    let pool = if s.pool.is_empty() { None } else { Some(*pool_index.get(&s.pool)?) };
    #[allow(clippy::cast_precision_loss, reason = "bytes")]
    Some(QueuedJob {
        gpus: s.gpus,
        id: id.to_owned(),
        cores: s.cpu_cores,
        mem_gib: s.memory_bytes as f64 / GIB,
        // An evicted job backs off before it runs again.
        not_before: s.not_before.map(|t| t.seconds).max(job.retry_after.map(|t| t.seconds)),
        deadline: s.deadline.map(|t| t.seconds),
        duration_s: s.expected_duration.as_ref().map_or(1.0, super::duration_secs) + pull_s,
        pausable: false,
        pool,
        priority: s.priority,
        gpu_model: (!s.gpu_model.is_empty()).then(|| s.gpu_model.clone()),
    })
}

fn gather(inner: &Inner, st: &State, t: i64, forecasts: &HashMap<String, super::CachedForecast>) -> Gathered {
    let cfg = &st.config.planning;
    let clock = clock(cfg, t);
    let stale = i64::try_from(cfg.stale_after.as_secs()).unwrap_or(900);
    let pools = live_pools(inner, t, stale);
    let mut pool_inputs = Vec::new();
    let mut pool_nodes = Vec::new();
    let mut pool_index = BTreeMap::new();
    let mut where_is = HashMap::new();
    for (pname, nodes) in &pools {
        for (k, (name, _)) in nodes.iter().enumerate() {
            where_is.insert(name.as_str(), (pool_inputs.len(), k));
        }
        pool_index.insert(pname.clone(), pool_inputs.len());
        pool_nodes.push(nodes.iter().map(|(name, _)| (*name).clone()).collect());
        pool_inputs.push(pool_input(st, pname, nodes, clock, forecasts));
    }
    let carbon = st.carbon.default_slots(clock.start, clock.slot_s, clock.slots);
    let mut options = cfg.plan_options();
    // A wake costs the idle power of its latency and of the idle time before
    // the node may suspend again (the longest of the pools that sleep).
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let cycle = pools.keys().filter_map(|p| st.power.settings(p)).map(|s| (s.wake_s + s.suspend_after_s) as f64);
    options.wake_overhead_s = cycle.fold(0.0, f64::max);
    let price = st.price.as_ref().and_then(|m| m.default.slots(clock.start, clock.slot_s, clock.slots));
    options.objective = st.config.objective.objective();
    if options.objective != Objective::Carbon && price.is_none() {
        tracing::warn!(mode = %st.config.objective.mode, "no day-ahead price yet: this round weighs carbon alone");
        options.objective = Objective::Carbon;
    }
    let mut builder =
        ProblemBuilder::new(clock, pool_inputs, carbon, options, cfg.guard_slack).price(price.unwrap_or_default());
    for (pname, nodes) in &pools {
        let Some(settings) = st.power.settings(pname) else { continue };
        for (name, _) in nodes {
            let Some(p) = inner.power.get(name.as_str()) else { continue };
            let (pool, k) = where_is[name.as_str()];
            let ready = p.ready_at(settings, t);
            // Indices come from the pools just built.
            if ready != Some(t) {
                let _ = builder.unavailable_until(pool, k, ready);
            }
            if let Some(until) = p.powered_until(settings, t).filter(|_| !p.pinned) {
                let _ = builder.powered_until(pool, k, until);
            }
        }
    }
    cool_down(inner, st, t, &where_is, &mut builder);
    for job in running_jobs(inner, t, &where_is) {
        // Indices come from the pools just built.
        let _ = builder.running(&job);
    }
    let mut job_ids = Vec::new();
    let mut no_pool = Vec::new();
    for id in inner.order.values() {
        let e = &inner.jobs[id];
        let Some(spec) = e.job.spec.as_ref().filter(|_| is_queued(e.job.state)) else { continue };
        let pull_s = pull_allowance(inner, cfg, spec, &pools);
        match queued_job(id, &e.job, spec, &pool_index, pull_s).filter(|_| !pools.is_empty()) {
            Some(job) => {
                builder.queue(job);
                job_ids.push(id.clone());
            }
            None => no_pool.push(id.clone()),
        }
    }
    Gathered { builder, pool_nodes, job_ids, no_pool }
}

/// Forecast each live node's online use whose history gained a bucket since
/// its last forecast. Histories are copied under the state lock; the models run
/// outside it, on a blocking thread, so submissions and telemetry are not held up.
async fn refresh_forecasts(st: &Arc<State>, t: i64) -> anyhow::Result<()> {
    let cfg = &st.config.planning;
    let stale = i64::try_from(cfg.stale_after.as_secs()).unwrap_or(900);
    let bucket_s = i64::try_from(cfg.telemetry_bucket.as_secs().max(1)).unwrap_or(300);
    let season = usize::try_from(86_400 / bucket_s).unwrap_or(288).max(2);
    #[allow(clippy::cast_precision_loss, reason = "slot arithmetic")]
    let horizon = slots_ceil(cfg.horizon.as_secs_f64(), bucket_s).max(1);
    let todo: Vec<(String, (usize, i64), Vec<f64>)> = {
        let cache = st.forecasts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let inner = st.lock();
        inner
            .nodes
            .iter()
            .filter(|(_, n)| n.session.is_some() && n.last_seen >= t - stale)
            .filter_map(|(name, n)| {
                let key = match n.history.back() {
                    Some(h) => (n.history.len(), h.0),
                    // Only the filling bucket so far: its mean, re-forecast every round.
                    None => (0, n.bucket.map_or(i64::MIN, |b| b.0)),
                };
                if n.history.is_empty() || cache.get(name).is_none_or(|(k, _)| *k != key) {
                    let hist: Vec<f64> = if n.history.is_empty() {
                        n.bucket.map(|(_, c, _, k)| vec![c / f64::from(k)]).unwrap_or_default()
                    } else {
                        n.history.iter().map(|h| h.1).collect()
                    };
                    (!hist.is_empty()).then(|| (name.clone(), key, hist))
                } else {
                    None
                }
            })
            .collect()
    };
    if todo.is_empty() {
        return Ok(());
    }
    let (model, q) = (cfg.forecast.clone(), cfg.quantile);
    let done = tokio::task::spawn_blocking(move || {
        let f = greenfill_forecast::by_name(&model).expect("validated");
        todo.into_iter()
            .filter_map(|(name, key, hist)| Some((name, key, f.forecast(&hist, season, horizon, q).ok()?.upper)))
            .collect::<Vec<_>>()
    })
    .await?;
    let mut cache = st.forecasts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for (name, key, upper) in done {
        cache.insert(name, (key, upper));
    }
    Ok(())
}

fn wait_reason(r: WaitReason) -> pb::WaitReason {
    match r {
        WaitReason::NotReleased => pb::WaitReason::NotReleased,
        WaitReason::Capacity => pb::WaitReason::Capacity,
        WaitReason::CarbonWindow => pb::WaitReason::CarbonWindow,
        WaitReason::DeadlineImpossible => pb::WaitReason::DeadlineImpossible,
        WaitReason::LargerThanAnyNode => pb::WaitReason::LargerThanAnyNode,
    }
}

/// One planning round: requeue the jobs of silent nodes, forecast, gather the
/// problem under the lock, solve it outside, apply the plan under the lock.
pub async fn plan_once(st: &Arc<State>) -> anyhow::Result<Round> {
    let started = Instant::now();
    let t = now();
    let mut round = Round { requeued: requeue_lost(st, t).await?, ..Round::default() };
    round.power_transitions = super::power::round(st, t).await?.len();
    refresh_forecasts(st, t).await?;
    let g = {
        let forecasts = st.forecasts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let inner = st.lock();
        gather(&inner, st, t, &forecasts)
    };
    round.nodes = g.pool_nodes.iter().map(Vec::len).sum();
    round.queued = g.job_ids.len() + g.no_pool.len();
    let Gathered { builder, pool_nodes, job_ids, no_pool } = g;
    let solved = tokio::task::spawn_blocking(move || solve(builder)).await?;
    round.solve_ms = solved.as_ref().map_or(0.0, |(_, plan)| plan.solve_ms);
    metrics::histogram!("greenfill_plan_solve_seconds").record(round.solve_ms / 1e3);
    let ctx = Applied { t, pool_nodes: &pool_nodes, job_ids: &job_ids, no_pool: &no_pool };
    round.dispatched = apply(st, &ctx, solved.as_ref()).await?;
    round.total_ms = started.elapsed().as_secs_f64() * 1e3;
    metrics::histogram!("greenfill_plan_round_seconds").record(round.total_ms / 1e3);
    record_job_gauges(&st.lock());
    Ok(round)
}

/// Requeue the jobs of nodes that went silent past `stale_after`; the node stops
/// the old attempt first if it comes back. Returns how many were requeued.
async fn requeue_lost(st: &Arc<State>, t: i64) -> anyhow::Result<usize> {
    let stale = i64::try_from(st.config.planning.stale_after.as_secs()).unwrap_or(900);
    let (pending, n) = {
        let mut inner = st.lock();
        // A cancelling job on a silent node stays cancelling: its stop is
        // resent when the node registers again.
        let cancelling = pb::JobState::Cancelling as i32;
        let mut lost: Vec<Lost> = inner
            .jobs
            .values()
            .filter(|e| !e.job.node.is_empty() && !is_queued(e.job.state) && !super::is_terminal(e.job.state))
            .filter(|e| e.job.state != cancelling)
            .filter(|e| inner.nodes.get(&e.job.node).is_none_or(|n| n.last_seen < t - stale))
            .map(|e| Lost {
                job: e.job.id.clone(),
                node: e.job.node.clone(),
                attempt: e.attempt_id.clone(),
                why: format!("node {} silent for more than {stale} s; requeued", e.job.node),
                event: Event::Requeued,
            })
            .collect();
        lost.extend(unreported(&mut inner, t));
        let mut writes = Vec::new();
        let mut events = Vec::new();
        for l in &lost {
            let requeue = l.event == Event::Requeued;
            if let Some((w, e)) = inner.change(&l.job, l.event, &l.why, |e| {
                if requeue {
                    e.job.node.clear();
                    e.job.planned_start = None;
                } else {
                    e.job.finished_at = Some(super::ts(t));
                }
            }) {
                writes.extend(w);
                events.push(e);
            }
            if requeue {
                let stop = pb::StopJob {
                    job_id: l.job.clone(),
                    attempt_id: l.attempt.clone(),
                    grace: None,
                    reason: l.why.clone(),
                };
                writes.extend(inner.command(&l.node, pb::scheduler_message::Body::Stop(stop)));
            }
        }
        (st.queue(writes, events), lost.len())
    };
    st.finish(pending).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(n)
}

/// An attempt whose process is gone or unreachable, and what it means for its
/// job: requeued, or (a cancelling job) cancelled.
struct Lost {
    job: String,
    node: String,
    attempt: String,
    why: String,
    event: Event,
}

/// Attempts an agent did not report at its Register (see `agents::reconcile`)
/// and that got no event within the grace: lost, to be requeued; a cancelling
/// one is done (its process is gone).
fn unreported(inner: &mut Inner, t: i64) -> Vec<Lost> {
    let mut due: Vec<(String, String, String)> = Vec::new();
    for (name, n) in &mut inner.nodes {
        n.unreported.retain(|attempt, (job, at)| {
            if *at <= t {
                due.push((name.clone(), attempt.clone(), job.clone()));
            }
            *at > t
        });
    }
    due.into_iter()
        .filter_map(|(node, attempt, job)| {
            let e = inner.jobs.get(&job)?;
            let current = e.attempt_id == attempt
                && e.job.node == node
                && !is_queued(e.job.state)
                && !super::is_terminal(e.job.state);
            let (event, why) = if e.job.state == pb::JobState::Cancelling as i32 {
                let asked =
                    e.job.state_reason.strip_suffix(&format!("; stopping on {node}")).unwrap_or(&e.job.state_reason);
                (Event::StopConfirmed, format!("{asked}; the agent on {node} no longer runs it"))
            } else {
                let why = format!(
                    "the agent on {node} registered without attempt {attempt} (its state was lost or the process is \
                     gone); requeued"
                );
                (Event::Requeued, why)
            };
            current.then(|| Lost { job: e.job.id.clone(), node, attempt, why, event })
        })
        .collect()
}

/// Validate and plan (on a blocking thread). Nothing to plan is `None`; so is a
/// problem the planner refuses, logged: the config was checked at start, so that
/// is a bug, and the jobs keep their last state until the next round.
fn solve(builder: ProblemBuilder) -> Option<(Built, Plan)> {
    if builder.jobs().is_empty() {
        return None;
    }
    match builder.build() {
        Ok(built) if built.problem.pools.is_empty() => None,
        Ok(built) => {
            let plan = built.plan();
            Some((built, plan))
        }
        Err(e) => {
            tracing::error!(error = %e, "internal error: the planner refused the problem built from live state");
            None
        }
    }
}

/// What a round's plan is applied to.
struct Applied<'a> {
    t: i64,
    pool_nodes: &'a [Vec<String>],
    job_ids: &'a [String],
    no_pool: &'a [String],
}

/// Apply a plan under the lock: explanations, state changes, dispatches, and the
/// plan record; then wait for the commit. Returns how many jobs were dispatched.
async fn apply(st: &Arc<State>, ctx: &Applied<'_>, solved: Option<&(Built, Plan)>) -> anyhow::Result<usize> {
    let mut dispatched = 0;
    let pending = {
        let mut inner = st.lock();
        let mut out = Changes::default();
        explain_no_pool(&mut inner, st, ctx.no_pool);
        if let Some((built, plan)) = solved {
            let problem: &Problem = &built.problem;
            let mut planned_jobs = Vec::new();
            for (i, place) in plan.placements.iter().enumerate() {
                let id = &ctx.job_ids[i];
                // The job may have been cancelled while the planner ran.
                if !inner.jobs.get(id).is_some_and(|e| is_queued(e.job.state)) {
                    continue;
                }
                let job = Decided { id, index: i, problem, t: ctx.t };
                let row = match place {
                    Placement::Run { pool, node, slots, late, .. } => {
                        let node_name = &ctx.pool_nodes[*pool][*node as usize];
                        let run = Run {
                            place,
                            pool: *pool,
                            node: node_name,
                            start: slots.first().copied().unwrap_or(0) as usize,
                            late: *late,
                        };
                        let (row, sent) = apply_run(&mut inner, st, &job, &run, &mut out);
                        dispatched += usize::from(sent);
                        row
                    }
                    Placement::Wait { reason } => apply_wait(&mut inner, &job, *reason, &mut out),
                };
                planned_jobs.push(row);
            }
            record_plan(&mut inner, st, ctx.t, problem, plan, planned_jobs, &mut out);
        }
        st.queue(out.writes, out.events)
    };
    st.finish(pending).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(dispatched)
}

/// Writes and events a round queues.
#[derive(Default)]
struct Changes {
    writes: Vec<Write>,
    events: Vec<pb::JobEvent>,
}

impl Changes {
    fn add(&mut self, change: Option<(Vec<Write>, pb::JobEvent)>) -> bool {
        let Some((w, e)) = change else { return false };
        self.writes.extend(w);
        self.events.push(e);
        true
    }
}

/// A job the plan decided on.
struct Decided<'a> {
    id: &'a str,
    index: usize,
    problem: &'a Problem,
    t: i64,
}

impl Decided<'_> {
    /// Mean forecast intensity of a run of this job in `pool` starting at `start`.
    fn run_carbon(&self, pool: usize, start: usize) -> f64 {
        let p = self.problem;
        let n = p.jobs[self.index].duration.max(1);
        let own = &p.pools[pool].carbon;
        let carbon = if own.is_empty() { &p.carbon } else { own };
        #[allow(clippy::cast_precision_loss, reason = "slot counts")]
        let mean = (start..start + n).map(|s| carbon[s.min(p.slots - 1)]).sum::<f64>() / n as f64;
        mean
    }
}

/// Where and when the plan runs a job.
struct Run<'a> {
    place: &'a Placement,
    pool: usize,
    node: &'a str,
    start: usize,
    late: bool,
}

fn explain_no_pool(inner: &mut Inner, st: &State, no_pool: &[String]) {
    let stale = st.config.planning.stale_after.as_secs();
    for id in no_pool {
        if let Some(e) = inner.jobs.get_mut(id) {
            let pool = e.job.spec.as_ref().map(|s| s.pool.clone()).unwrap_or_default();
            e.explanation = Some(pb::JobExplanation {
                pool: pool.clone(),
                wait_reason: pb::WaitReason::NoMatchingPool as i32,
                detail: format!("no live node in pool {pool:?} (none registered, or telemetry older than {stale} s)"),
                ..Default::default()
            });
        }
    }
}

/// Why and where a placed job runs, with its energy and carbon estimates.
fn run_explanation(st: &State, job: &Decided<'_>, run: &Run<'_>) -> pb::JobExplanation {
    let Placement::Run { delayed_by, .. } = run.place else { return pb::JobExplanation::default() };
    let problem = job.problem;
    let planned = &problem.jobs[job.index];
    let p = &problem.pools[run.pool].pool;
    #[allow(clippy::cast_precision_loss, reason = "slot counts")]
    let energy = (st.config.power.max_w - st.config.power.idle_w)
        * (planned.cores / p.cores.max(1e-9))
        * planned.duration as f64
        * (problem.slot_s as f64 / 3600.0)
        * p.pue
        / 1000.0;
    let intensity = job.run_carbon(run.pool, run.start);
    let minutes = i64::try_from(run.start).unwrap_or(0) * problem.slot_s / 60;
    let node = run.node;
    pb::JobExplanation {
        pool: p.name.clone(),
        node: node.to_owned(),
        planned_start: Some(ts(job.t + i64::try_from(run.start).unwrap_or(0) * problem.slot_s)),
        wait_reason: delayed_by.map_or(0, |r| wait_reason(r) as i32),
        detail: match (run.start, delayed_by) {
            (0, _) => format!("starts now on {node}"),
            (_, Some(WaitReason::CarbonWindow)) if problem.options.objective != Objective::Carbon => {
                let price = |t: usize| problem.price.get(t % problem.slots.max(1)).copied().unwrap_or_default();
                let currency = st.price.as_ref().and_then(|m| m.default.at(job.t)).map(|(_, c)| c).unwrap_or_default();
                format!(
                    "waits {minutes} min for a cheaper window (objective {}): {:.2} {currency}/MWh and \
                     {intensity:.0} g/kWh then vs {:.2} {currency}/MWh and {:.0} g/kWh now",
                    st.config.objective.mode,
                    price(run.start),
                    price(planned.release),
                    job.run_carbon(run.pool, planned.release)
                )
            }
            (_, Some(WaitReason::CarbonWindow)) => format!(
                "waits {minutes} min for a cleaner window: {intensity:.0} g/kWh then vs {:.0} g/kWh now",
                job.run_carbon(run.pool, planned.release)
            ),
            (_, r) => format!("starts in {minutes} min on {node} ({r:?})"),
        },
        energy_kwh_estimate: energy,
        carbon_kg_estimate: energy * intensity / 1000.0,
        intensity_g_per_kwh: intensity,
        carbon_kg_if_started_now: energy * job.run_carbon(run.pool, planned.release) / 1000.0,
        ..Default::default()
    }
}

/// The image of job `id` if `node` does not hold it (its first run there).
fn pull_needed(inner: &Inner, id: &str, node: &str) -> Option<String> {
    let image = inner.jobs.get(id)?.job.spec.as_ref()?.image.as_ref()?.reference.clone();
    let has = inner.nodes.get(node).is_some_and(|n| n.has_image(&image));
    (!has).then_some(image)
}

/// A placed job: dispatch it if it starts now on a connected node, else mark it
/// planned (or late). Returns its plan row and whether it was dispatched.
fn apply_run(
    inner: &mut Inner,
    st: &State,
    job: &Decided<'_>,
    run: &Run<'_>,
    out: &mut Changes,
) -> (pb::PlannedJob, bool) {
    let mut explanation = run_explanation(st, job, run);
    let power = super::power::state_of(inner, run.node);
    if !power.takes_work()
        && let Some(at) = explanation.planned_start
    {
        let ready =
            inner.power.get(run.node).zip(st.power.settings(&explanation.pool)).and_then(|(p, s)| p.ready_at(s, job.t));
        let ready = chrono::DateTime::from_timestamp(ready.unwrap_or(at.seconds), 0)
            .map(|d| d.to_rfc3339())
            .unwrap_or_default();
        explanation.detail = format!("waits for node {} to wake ({}; ready at {ready})", run.node, power.name());
    }
    let cooldown = i64::try_from(st.config.planning.eviction_cooldown.as_secs()).unwrap_or(i64::MAX / 4);
    if let Some(until) = inner.nodes.get(run.node).and_then(|n| n.evicted_at).map(|at| at + cooldown)
        && run.start > 0
        && until > job.t
        && explanation.planned_start.is_some_and(|s| s.seconds >= until)
    {
        let until = chrono::DateTime::from_timestamp(until, 0).map(|d| d.to_rfc3339()).unwrap_or_default();
        explanation.detail =
            format!("waits for node {} to cool down after a memory eviction (new batch memory from {until})", run.node);
    }
    let pull = pull_needed(inner, job.id, run.node).map(|image| {
        let secs = inner.pull_seconds(&image, st.config.planning.image_pull_estimate);
        format!("node {} pulls image {image} first (about {secs:.0} s, in its planned run time)", run.node)
    });
    if let Some(p) = &pull {
        explanation.detail = format!("{}; {p}", explanation.detail);
    }
    let row = pb::PlannedJob {
        job_id: job.id.to_owned(),
        pool: explanation.pool.clone(),
        node: run.node.to_owned(),
        start_slot: u32::try_from(run.start).unwrap_or(u32::MAX),
        planned_start: explanation.planned_start,
        wait_reason: explanation.wait_reason,
        carbon_kg: explanation.carbon_kg_estimate,
    };
    let when = explanation.planned_start;
    let connected = inner.nodes.get(run.node).is_some_and(|n| n.session.is_some());
    if run.start == 0 && connected {
        // A draining node the plan gives new work takes work again.
        if let Some(p) = inner.power.get_mut(run.node)
            && let Some(c) = p.undrain(0, job.t)
            && let Ok(body) = serde_json::to_string(&*p)
        {
            tracing::info!(node = run.node, from = c.from.name(), to = c.to.name(), reason = %c.reason, "power transition");
            out.writes.push(Write::NodePower { name: run.node.to_owned(), body });
        }
    }
    let awake = super::power::state_of(inner, run.node).takes_work();
    if run.start == 0 && connected && awake {
        let node = run.node.to_owned();
        let reason = pull.map_or_else(|| format!("dispatched to {node}"), |p| format!("dispatched to {node}; {p}"));
        let change = inner.change(job.id, Event::Dispatched, &reason, |e| {
            e.job.attempts += 1;
            e.attempt_id = format!("{}-{}", e.job.id, e.job.attempts);
            e.job.node = node.clone();
            e.job.planned_start = when;
            e.explanation = Some(explanation);
        });
        if !out.add(change) {
            return (row, false);
        }
        let e = &inner.jobs[job.id];
        let cmd = pb::RunJob { job_id: job.id.to_owned(), attempt_id: e.attempt_id.clone(), spec: e.job.spec.clone() };
        out.writes.extend(inner.command(run.node, pb::scheduler_message::Body::Run(cmd)));
        return (row, true);
    }
    let (target, event) =
        if run.late { (pb::JobState::Late, Event::PlannedLate) } else { (pb::JobState::Planned, Event::Planned) };
    let e = inner.jobs.get_mut(job.id).expect("checked by the caller");
    e.explanation = Some(explanation);
    e.job.planned_start = when;
    if e.job.state != target as i32 {
        let why = if run.late { "cannot meet its deadline; runs late" } else { "planned" };
        out.add(inner.change(job.id, event, why, |_| {}));
    }
    (row, false)
}

/// A job the plan leaves waiting: explain why, and mark it queued.
fn apply_wait(inner: &mut Inner, job: &Decided<'_>, reason: WaitReason, out: &mut Changes) -> pb::PlannedJob {
    let r = wait_reason(reason);
    let e = inner.jobs.get_mut(job.id).expect("checked by the caller");
    e.explanation = Some(pb::JobExplanation {
        wait_reason: r as i32,
        detail: format!("waits: {}", r.as_str_name().trim_start_matches("WAIT_REASON_").to_lowercase()),
        ..Default::default()
    });
    let (target, event) = if reason == WaitReason::DeadlineImpossible {
        (pb::JobState::Late, Event::WaitsLate)
    } else {
        (pb::JobState::Queued, Event::Waits)
    };
    // An evicted job stays `evicted` while it waits (the table refuses the change).
    if e.job.state != target as i32 && e.job.state != pb::JobState::Evicted as i32 {
        out.add(inner.change(job.id, event, r.as_str_name(), |e| e.job.planned_start = None));
    }
    pb::PlannedJob { job_id: job.id.to_owned(), wait_reason: r as i32, ..Default::default() }
}

/// Keep the plan in memory and queue it (and the pruning of old rows) to the store.
fn record_plan(
    inner: &mut Inner,
    st: &State,
    t: i64,
    problem: &Problem,
    plan: &Plan,
    jobs: Vec<pb::PlannedJob>,
    out: &mut Changes,
) {
    let revision = inner.plan.as_ref().map_or(0, |p| p.revision) + 1;
    let record = pb::Plan {
        revision,
        created_at: Some(ts(t)),
        horizon_start: Some(ts(t)),
        slot: Some(prost_types::Duration { seconds: problem.slot_s, nanos: 0 }),
        slots: u32::try_from(problem.slots).unwrap_or(u32::MAX),
        jobs,
        pools: problem
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let powered = inner
                    .nodes
                    .iter()
                    .filter(|(name, n)| n.register.pool == p.pool.name && super::power::state_of(inner, name).powered())
                    .count();
                pb::PoolPlan {
                    powered_now: u32::try_from(powered).unwrap_or(u32::MAX),
                    zone: st.carbon.zone_name_of(&p.pool.name).to_owned(),
                    ..pool_plan(problem, plan, i, p)
                }
            })
            .collect(),
        carbon_intensity: problem.carbon.clone(),
        carbon_signals: st.carbon.signals(t),
        energy_kwh: plan.energy.energy_kwh,
        idle_energy_kwh: plan.energy.idle_kwh,
        dynamic_energy_kwh: plan.energy.dynamic_kwh,
        carbon_kg: plan.energy.carbon_kg,
        objective: match problem.options.objective {
            Objective::Carbon => "carbon",
            Objective::Cost => "cost",
            Objective::Both { .. } => "both",
        }
        .into(),
        price_per_mwh: problem.price.clone(),
        cost: plan.energy.cost,
        currency: st.price.as_ref().and_then(|m| m.default.at(t)).map(|(_, c)| c).unwrap_or_default(),
        jobs_planned: u32::try_from(plan.jobs_planned()).unwrap_or(u32::MAX),
        jobs_waiting: u32::try_from(plan.placements.len() - plan.jobs_planned()).unwrap_or(u32::MAX),
        solve_ms: plan.solve_ms,
    };
    out.writes.push(Write::Plan { revision, created_at: t, body: record.encode_to_vec() });
    let keep = i64::try_from(st.config.planning.telemetry_retention.as_secs()).unwrap_or(i64::MAX);
    out.writes.push(Write::Prune { telemetry_before: t.saturating_sub(keep), keep_plans: 100 });
    inner.plan = Some(record);
}

fn record_job_gauges(inner: &Inner) {
    for s in [
        pb::JobState::Queued,
        pb::JobState::Planned,
        pb::JobState::Dispatched,
        pb::JobState::Running,
        pb::JobState::Late,
        pb::JobState::Evicted,
    ] {
        #[allow(clippy::cast_precision_loss, reason = "a count")]
        let n = inner.jobs.values().filter(|e| e.job.state == s as i32).count() as f64;
        metrics::gauge!("greenfill_jobs", "state" => s.as_str_name().trim_start_matches("JOB_STATE_").to_lowercase())
            .set(n);
    }
}

fn pool_plan(problem: &Problem, plan: &Plan, i: usize, p: &PoolInput) -> pb::PoolPlan {
    let n = p.pool.nodes as usize;
    let slots = problem.slots;
    let online: Vec<f64> = (0..slots).map(|t| (0..n).map(|k| p.online_cpu_at(slots, k, t)).sum()).collect();
    let mut planned = vec![0.0; slots];
    for (j, place) in plan.placements.iter().enumerate() {
        if let Placement::Run { pool, slots: run, .. } = place
            && *pool == i
        {
            for s in run {
                if let Some(x) = planned.get_mut(*s as usize) {
                    *x += problem.jobs[j].cores;
                }
            }
        }
    }
    #[allow(clippy::cast_precision_loss, reason = "node counts")]
    let total = p.pool.cores * n as f64;
    pb::PoolPlan {
        pool: p.pool.name.clone(),
        nodes: p.pool.nodes,
        powered_nodes: plan.powered.get(i).map(|v| v[..slots.min(v.len())].to_vec()).unwrap_or_default(),
        batch_cpu_capacity: online.iter().map(|o| (total * (1.0 - problem.options.cpu_margin) - o).max(0.0)).collect(),
        online_cpu_upper: online,
        batch_cpu_planned: planned,
        powered_now: p.pool.nodes,
        zone: String::new(),
        carbon_intensity: if p.carbon.is_empty() { problem.carbon.clone() } else { p.carbon.clone() },
    }
}
