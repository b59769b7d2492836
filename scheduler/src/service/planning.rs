//! The planning loop: every interval (and soon after significant events) turn the
//! queue, the nodes' telemetry history and the carbon forecast into a plan with
//! the same planner the simulator uses, dispatch what starts now, record the plan.

use super::{Inner, State, is_queued, now, ts};
use crate::planner::{Placement, PlanJob, PlanOptions, PoolInput, Problem, WaitReason};
use crate::store::Write;
use greenfill_core::cluster::{Pool, PowerModel};
use greenfill_proto::v1 as pb;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Run until the process ends.
pub async fn run(st: Arc<State>) {
    let cfg = st.config.planning.clone();
    loop {
        tokio::select! {
            () = tokio::time::sleep(cfg.interval) => {}
            () = st.replan.notified() => {}
        }
        match plan_once(&st).await {
            Ok(s) => tracing::debug!(?s, "planned"),
            Err(e) => tracing::error!(error = %e, "planning failed"),
        }
        tokio::time::sleep(cfg.min_gap).await;
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Round {
    pub nodes: usize,
    pub queued: usize,
    pub dispatched: usize,
    pub requeued: usize,
    pub solve_ms: f64,
    pub total_ms: f64,
}

/// Inputs gathered under the lock, solved outside it.
struct Gathered {
    problem: Problem,
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

fn gather(inner: &Inner, st: &State, t: i64, forecasts: &HashMap<String, super::CachedForecast>) -> Gathered {
    let cfg = &st.config.planning;
    let slot_s = i64::try_from(cfg.slot.as_secs().max(1)).unwrap_or(300);
    let slots = usize::try_from(cfg.horizon.as_secs() / cfg.slot.as_secs().max(1)).unwrap_or(288).max(1);
    let stale = i64::try_from(cfg.stale_after.as_secs()).unwrap_or(900);
    let bucket_s = i64::try_from(cfg.telemetry_bucket.as_secs().max(1)).unwrap_or(300);
    // Live nodes by pool.
    let mut pools: BTreeMap<String, Vec<(&String, &super::Node)>> = BTreeMap::new();
    for (name, n) in &inner.nodes {
        if n.session.is_some() && n.last_seen >= t - stale {
            pools.entry(n.register.pool.clone()).or_default().push((name, n));
        }
    }
    // Batch already running, per node: (cores, memory bytes, seconds left).
    let mut running: BTreeMap<&str, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for e in inner.jobs.values() {
        if !e.job.node.is_empty() && !is_queued(e.job.state) && !super::is_terminal(e.job.state) {
            let s = e.job.spec.as_ref();
            let dur = s.and_then(|s| s.expected_duration.as_ref()).map_or(0.0, super::duration_secs);
            let since = e.job.started_at.or(e.job.updated_at).map_or(t, |x| x.seconds);
            #[allow(clippy::cast_precision_loss, reason = "seconds")]
            let left = (dur - (t - since) as f64).max(slot_s as f64);
            #[allow(clippy::cast_precision_loss, reason = "bytes")]
            running.entry(e.job.node.as_str()).or_default().push((
                s.map_or(0.0, |s| s.cpu_cores),
                s.map_or(0.0, |s| s.memory_bytes as f64),
                left,
            ));
        }
    }
    let season = usize::try_from(86_400 / bucket_s).unwrap_or(288).max(2);
    let horizon_buckets = slots_ceil(slots as f64 * slot_s as f64, bucket_s).max(1);
    let mut pool_inputs = Vec::new();
    let mut pool_nodes = Vec::new();
    let mut pool_index = BTreeMap::new();
    for (pname, nodes) in &pools {
        let max_cores = nodes.iter().map(|(_, n)| n.register.cpu_cores).fold(0.0, f64::max);
        #[allow(clippy::cast_precision_loss, reason = "bytes")]
        let max_mem = nodes.iter().map(|(_, n)| n.register.memory_bytes as f64).fold(0.0, f64::max);
        let mut cpu = Vec::with_capacity(nodes.len() * slots);
        let mut mem = Vec::with_capacity(nodes.len() * slots);
        for (name, n) in nodes {
            let mut mem_max = n.history.iter().rev().take(season).map(|h| h.2).fold(0.0, f64::max);
            if let Some((_, _, m, k)) = n.bucket {
                mem_max = mem_max.max(m / f64::from(k));
            }
            // Forecast step 0 is the bucket filling now (see `refresh_forecasts`);
            // no forecast yet (no telemetry) = nothing for batch.
            let upper = forecasts
                .get(name.as_str())
                .map(|(_, u)| u.clone())
                .filter(|u| u.len() >= horizon_buckets)
                .unwrap_or_else(|| vec![n.register.cpu_cores; horizon_buckets]);
            #[allow(clippy::cast_precision_loss, reason = "bytes")]
            let pad_cpu = max_cores - n.register.cpu_cores;
            #[allow(clippy::cast_precision_loss, reason = "bytes")]
            let pad_mem = max_mem - n.register.memory_bytes as f64;
            let jobs_here = running.get(name.as_str()).map_or(&[][..], Vec::as_slice);
            for i in 0..slots {
                let offset = i as f64 * slot_s as f64;
                let b = slots_ceil(offset + 1.0, bucket_s).saturating_sub(1).min(upper.len() - 1);
                let batch_cpu: f64 = jobs_here.iter().filter(|j| j.2 > offset).map(|j| j.0).sum();
                let batch_mem: f64 = jobs_here.iter().filter(|j| j.2 > offset).map(|j| j.1).sum();
                cpu.push((upper[b].max(0.0) + batch_cpu + pad_cpu).min(max_cores));
                mem.push(((mem_max + batch_mem + pad_mem) / GIB).min(max_mem / GIB));
            }
        }
        pool_index.insert(pname.clone(), pool_inputs.len());
        pool_nodes.push(nodes.iter().map(|(name, _)| (*name).clone()).collect());
        pool_inputs.push(PoolInput {
            pool: Pool {
                name: pname.clone(),
                nodes: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
                cores: max_cores,
                memory_gib: max_mem / GIB,
                power: PowerModel::Linear { idle_w: st.config.power.idle_w, max_w: st.config.power.max_w },
                pue: st.config.power.pue,
                always_on: true,
                embodied_g_per_hour: 0.0,
            },
            online_cpu: cpu,
            online_mem: mem,
        });
    }
    let carbon = carbon_forecast(st, t, slot_s, slots);
    let mut jobs = Vec::new();
    let mut job_ids = Vec::new();
    let mut no_pool = Vec::new();
    for id in inner.order.values() {
        let e = &inner.jobs[id];
        if !is_queued(e.job.state) {
            continue;
        }
        let Some(s) = &e.job.spec else { continue };
        let pool = if s.pool.is_empty() {
            None
        } else if let Some(&p) = pool_index.get(&s.pool) {
            Some(p)
        } else {
            no_pool.push(id.clone());
            continue;
        };
        if pool_inputs.is_empty() {
            no_pool.push(id.clone());
            continue;
        }
        let dur = s.expected_duration.as_ref().map_or(1.0, super::duration_secs);
        #[allow(clippy::cast_precision_loss, reason = "seconds")]
        let release = s.not_before.map_or(0, |nb| slots_ceil((nb.seconds - t) as f64, slot_s));
        #[allow(clippy::cast_precision_loss, reason = "seconds")]
        let deadline = s.deadline.map(|d| {
            let left = (d.seconds - t) as f64 / slot_s as f64;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "clamped to >= 0")]
            let slots = left.floor().max(0.0) as usize;
            slots
        });
        #[allow(clippy::cast_precision_loss, reason = "bytes")]
        jobs.push(
            PlanJob {
                id: id.clone(),
                cores: s.cpu_cores,
                mem_gib: s.memory_bytes as f64 / GIB,
                release,
                deadline,
                duration: slots_ceil(dur, slot_s).max(1),
                pausable: false,
                pool,
                priority: s.priority,
            }
            .aim_early(cfg.guard_slack),
        );
        job_ids.push(id.clone());
    }
    let problem = Problem {
        start: t,
        slot_s,
        slots,
        pools: pool_inputs,
        carbon,
        jobs,
        options: PlanOptions {
            cpu_margin: cfg.cpu_margin,
            delay_cost: cfg.delay_cost,
            mem_margin: cfg.mem_margin,
            time_limit: cfg.solve_limit,
            ..PlanOptions::default()
        },
    };
    Gathered { problem, pool_nodes, job_ids, no_pool }
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

/// Forecast intensity per slot: the carbon file replayed by position in its own
/// span (a file of last year is this year's forecast), or the constant.
fn carbon_forecast(st: &State, t: i64, slot_s: i64, slots: usize) -> Vec<f64> {
    match &st.carbon {
        Some(series) if !series.values.is_empty() => {
            let span = series.step * i64::try_from(series.values.len()).unwrap_or(1);
            let offset = (t - series.start).rem_euclid(span.max(1));
            let values = crate::input::slot_values(series, series.start + offset, slot_s, slots);
            values
                .into_iter()
                .map(|v| if v.is_finite() && v >= 0.0 { v } else { st.config.planning.carbon_constant })
                .collect()
        }
        _ => vec![st.config.planning.carbon_constant; slots],
    }
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

/// One planning round.
pub async fn plan_once(st: &Arc<State>) -> anyhow::Result<Round> {
    let started = Instant::now();
    let t = now();
    let stale = i64::try_from(st.config.planning.stale_after.as_secs()).unwrap_or(900);

    // Requeue jobs on nodes that went silent, before planning.
    let mut round = Round::default();
    let requeue = {
        let mut inner = st.lock();
        let lost: Vec<(String, String, String)> = inner
            .jobs
            .values()
            .filter(|e| !e.job.node.is_empty() && !is_queued(e.job.state) && !super::is_terminal(e.job.state))
            .filter(|e| inner.nodes.get(&e.job.node).is_none_or(|n| n.last_seen < t - stale))
            .map(|e| (e.job.id.clone(), e.job.node.clone(), e.attempt_id.clone()))
            .collect();
        let mut writes = Vec::new();
        let mut events = Vec::new();
        for (id, node, attempt) in &lost {
            let why = format!("node {node} silent for more than {stale} s; requeued");
            if let Some((w, e)) = inner.change(id, pb::JobState::Queued, &why, |e| {
                e.job.node.clear();
                e.job.planned_start = None;
            }) {
                writes.extend(w);
                events.push(e);
            }
            // If the node comes back, it stops the old attempt first.
            let stop = pb::StopJob { job_id: id.clone(), attempt_id: attempt.clone(), grace: None, reason: why };
            writes.extend(inner.command(node, pb::scheduler_message::Body::Stop(stop)));
        }
        round.requeued = lost.len();
        st.queue(writes, events)
    };
    st.finish(requeue).await.map_err(|e| anyhow::anyhow!("{e}"))?;

    refresh_forecasts(st, t).await?;
    let g = {
        let forecasts = st.forecasts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let inner = st.lock();
        gather(&inner, st, t, &forecasts)
    };
    round.nodes = g.pool_nodes.iter().map(Vec::len).sum();
    round.queued = g.job_ids.len() + g.no_pool.len();
    let Gathered { problem, pool_nodes, job_ids, no_pool } = g;
    let (problem, plan) = tokio::task::spawn_blocking(move || {
        let plan = if problem.jobs.is_empty() || problem.pools.is_empty() || problem.validate().is_err() {
            None
        } else {
            Some(problem.plan())
        };
        (problem, plan)
    })
    .await?;
    if let Err(e) = problem.validate()
        && !problem.jobs.is_empty()
        && !problem.pools.is_empty()
    {
        tracing::error!(error = %e, "planning problem refused");
    }
    round.solve_ms = plan.as_ref().map_or(0.0, |p| p.solve_ms);
    metrics::histogram!("greenfill_plan_solve_seconds").record(round.solve_ms / 1e3);

    let pending = {
        let mut inner = st.lock();
        let mut writes = Vec::new();
        let mut events = Vec::new();
        let revision = inner.plan.as_ref().map_or(0, |p| p.revision) + 1;
        let mut planned_jobs = Vec::new();
        let slot_h = problem.slot_s as f64 / 3600.0;
        for id in &no_pool {
            if let Some(e) = inner.jobs.get_mut(id) {
                let pool = e.job.spec.as_ref().map(|s| s.pool.clone()).unwrap_or_default();
                e.explanation = Some(pb::JobExplanation {
                    pool: pool.clone(),
                    wait_reason: pb::WaitReason::NoMatchingPool as i32,
                    detail: format!(
                        "no live node in pool {pool:?} (none registered, or telemetry older than {stale} s)"
                    ),
                    ..Default::default()
                });
            }
        }
        if let Some(plan) = &plan {
            for (i, place) in plan.placements.iter().enumerate() {
                let id = &job_ids[i];
                let job = &problem.jobs[i];
                let Some(e) = inner.jobs.get(id) else { continue };
                // The job may have been cancelled while the planner ran.
                if !is_queued(e.job.state) {
                    continue;
                }
                let run_carbon = |start: usize| {
                    let n = job.duration.max(1);
                    (start..start + n).map(|s| problem.carbon[s.min(problem.slots - 1)]).sum::<f64>() / n as f64
                };
                let pool_of = |p: usize| problem.pools[p].pool.clone();
                let kwh = |p: &Pool| {
                    (st.config.power.max_w - st.config.power.idle_w)
                        * (job.cores / p.cores.max(1e-9))
                        * job.duration as f64
                        * slot_h
                        * p.pue
                        / 1000.0
                };
                match place {
                    Placement::Run { pool, node, slots, late, delayed_by } => {
                        let start = slots.first().copied().unwrap_or(0) as usize;
                        let p = pool_of(*pool);
                        let node_name = pool_nodes[*pool][*node as usize].clone();
                        let energy = kwh(&p);
                        let intensity = run_carbon(start);
                        let when = t + i64::try_from(start).unwrap_or(0) * problem.slot_s;
                        let explanation = pb::JobExplanation {
                            pool: p.name.clone(),
                            node: node_name.clone(),
                            planned_start: Some(ts(when)),
                            wait_reason: delayed_by.map_or(0, |r| wait_reason(r) as i32),
                            detail: match (start, delayed_by) {
                                (0, _) => format!("starts now on {node_name}"),
                                (_, Some(WaitReason::CarbonWindow)) => format!(
                                    "waits {} min for a cleaner window: {:.0} g/kWh then vs {:.0} g/kWh now",
                                    start as i64 * problem.slot_s / 60,
                                    intensity,
                                    run_carbon(job.release)
                                ),
                                (_, r) => format!(
                                    "starts in {} min on {node_name} ({r:?})",
                                    start as i64 * problem.slot_s / 60
                                ),
                            },
                            energy_kwh_estimate: energy,
                            carbon_kg_estimate: energy * intensity / 1000.0,
                            intensity_g_per_kwh: intensity,
                            carbon_kg_if_started_now: energy * run_carbon(job.release) / 1000.0,
                            ..Default::default()
                        };
                        planned_jobs.push(pb::PlannedJob {
                            job_id: id.clone(),
                            pool: p.name.clone(),
                            node: node_name.clone(),
                            start_slot: u32::try_from(start).unwrap_or(u32::MAX),
                            planned_start: Some(ts(when)),
                            wait_reason: explanation.wait_reason,
                            carbon_kg: explanation.carbon_kg_estimate,
                        });
                        let connected = inner.nodes.get(&node_name).is_some_and(|n| n.session.is_some());
                        if start == 0 && connected {
                            let Some((w, ev)) = inner.change(
                                id,
                                pb::JobState::Dispatched,
                                &format!("dispatched to {node_name}"),
                                |e| {
                                    e.job.attempts += 1;
                                    e.attempt_id = format!("{}-{}", e.job.id, e.job.attempts);
                                    e.job.node = node_name.clone();
                                    e.job.planned_start = Some(ts(when));
                                    e.explanation = Some(explanation);
                                },
                            ) else {
                                continue;
                            };
                            writes.extend(w);
                            events.push(ev);
                            let e = &inner.jobs[id];
                            let run = pb::RunJob {
                                job_id: id.clone(),
                                attempt_id: e.attempt_id.clone(),
                                spec: e.job.spec.clone(),
                            };
                            writes.extend(inner.command(&node_name, pb::scheduler_message::Body::Run(run)));
                            round.dispatched += 1;
                        } else {
                            let target = if *late { pb::JobState::Late } else { pb::JobState::Planned };
                            let e = inner.jobs.get_mut(id).expect("checked");
                            e.explanation = Some(explanation);
                            e.job.planned_start = Some(ts(when));
                            if e.job.state != target as i32 {
                                let why = if *late { "cannot meet its deadline; runs late" } else { "planned" };
                                if let Some((w, ev)) = inner.change(id, target, why, |_| {}) {
                                    writes.extend(w);
                                    events.push(ev);
                                }
                            }
                        }
                    }
                    Placement::Wait { reason } => {
                        let r = wait_reason(*reason);
                        planned_jobs.push(pb::PlannedJob {
                            job_id: id.clone(),
                            wait_reason: r as i32,
                            ..Default::default()
                        });
                        let e = inner.jobs.get_mut(id).expect("checked");
                        e.explanation = Some(pb::JobExplanation {
                            wait_reason: r as i32,
                            detail: format!(
                                "waits: {}",
                                r.as_str_name().trim_start_matches("WAIT_REASON_").to_lowercase()
                            ),
                            ..Default::default()
                        });
                        let target = if *reason == WaitReason::DeadlineImpossible {
                            pb::JobState::Late
                        } else {
                            pb::JobState::Queued
                        };
                        if e.job.state != target as i32 && e.job.state != pb::JobState::Evicted as i32 {
                            if let Some((w, ev)) =
                                inner.change(id, target, r.as_str_name(), |e| e.job.planned_start = None)
                            {
                                writes.extend(w);
                                events.push(ev);
                            }
                        }
                    }
                }
            }
        }
        let record = plan.as_ref().map(|plan| pb::Plan {
            revision,
            created_at: Some(ts(t)),
            horizon_start: Some(ts(t)),
            slot: Some(prost_types::Duration { seconds: problem.slot_s, nanos: 0 }),
            slots: u32::try_from(problem.slots).unwrap_or(u32::MAX),
            jobs: planned_jobs,
            pools: problem.pools.iter().enumerate().map(|(i, p)| pool_plan(&problem, plan, i, p)).collect(),
            carbon_intensity: problem.carbon.clone(),
            energy_kwh: plan.energy.energy_kwh,
            idle_energy_kwh: plan.energy.idle_kwh,
            dynamic_energy_kwh: plan.energy.dynamic_kwh,
            carbon_kg: plan.energy.carbon_kg,
            jobs_planned: u32::try_from(plan.jobs_planned()).unwrap_or(u32::MAX),
            jobs_waiting: u32::try_from(plan.placements.len() - plan.jobs_planned()).unwrap_or(u32::MAX),
            solve_ms: plan.solve_ms,
        });
        if let Some(r) = record {
            writes.push(Write::Plan { revision, created_at: t, body: r.encode_to_vec() });
            let keep = i64::try_from(st.config.planning.telemetry_retention.as_secs()).unwrap_or(i64::MAX);
            writes.push(Write::Prune { telemetry_before: t.saturating_sub(keep), keep_plans: 100 });
            inner.plan = Some(r);
        }
        st.queue(writes, events)
    };
    st.finish(pending).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    round.total_ms = started.elapsed().as_secs_f64() * 1e3;
    metrics::histogram!("greenfill_plan_round_seconds").record(round.total_ms / 1e3);
    let inner = st.lock();
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
    Ok(round)
}

fn pool_plan(problem: &Problem, plan: &crate::planner::Plan, i: usize, p: &PoolInput) -> pb::PoolPlan {
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
    }
}
