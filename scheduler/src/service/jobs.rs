//! JobService and PlanService: the users' API. Validation happens here, at the
//! edge: every refused field is named with its value.

use super::auth::Caller;
use super::{JobEntry, State, is_queued, is_terminal, now, state_name, ts};
use crate::store::{AuditEntry, Write};
use greenfill_core::time::format_timestamp as rfc3339;
use greenfill_proto::v1 as pb;
use pb::job_service_server::JobService;
use pb::plan_service_server::PlanService;
use prost::Message;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone)]
pub struct Jobs(pub Arc<State>);

fn invalid(field: &str, value: impl std::fmt::Display, why: &str) -> Status {
    let mut v = value.to_string();
    if v.chars().count() > 80 {
        v = v.chars().take(77).chain("...".chars()).collect();
    }
    Status::invalid_argument(format!("{field} = {v}: {why}"))
}

/// The most any one node of a pool has.
#[derive(Debug, Clone, Copy, Default)]
struct Largest {
    cores: f64,
    memory_bytes: f64,
    gpus: u32,
}

impl Largest {
    fn add(&mut self, cores: f64, memory_bytes: f64, gpus: u32) {
        self.cores = self.cores.max(cores);
        self.memory_bytes = self.memory_bytes.max(memory_bytes);
        self.gpus = self.gpus.max(gpus);
    }
}

/// The largest node the scheduler knows of (registered or declared), per
/// pool. One pass, no allocation per node: it runs under the state lock on
/// every submission (with 10,000 nodes, copying each node's pool name and
/// sizes into a list was most of a submission's time under `perf`).
fn known_pools(state: &State) -> BTreeMap<String, Largest> {
    let mut pools: BTreeMap<String, Largest> = BTreeMap::new();
    for p in &state.config.pools {
        pools.entry(p.name.clone()).or_default().add(p.cores, p.memory_gib * GIB, p.gpus);
    }
    for n in state.lock().nodes.values() {
        let r = &n.register;
        #[allow(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
        let (cores, mem) = (r.cpu_cores, r.memory_bytes as f64);
        match pools.get_mut(r.pool.as_str()) {
            Some(l) => l.add(cores, mem, r.gpus),
            None => pools.entry(r.pool.clone()).or_default().add(cores, mem, r.gpus),
        }
    }
    pools
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// An OCI reference: `[registry/]name[:tag][@sha256:hex]`, lower-case name.
fn validate_image(image: &pb::ImageSpec) -> Result<(), Status> {
    let r = &image.reference;
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:".contains(c))
            })
    };
    let (rest, digest) = match r.split_once('@') {
        Some((rest, d)) => (rest, Some(d)),
        None => (r.as_str(), None),
    };
    let digest_ok = digest.is_none_or(|d| {
        d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()))
    });
    if r.len() > 255 || !name_ok(rest) || !digest_ok {
        return Err(invalid(
            "spec.image.reference",
            format!("{r:?}"),
            "not an OCI reference (registry/name:tag or registry/name@sha256:<64 hex>, lower case)",
        ));
    }
    if pb::PullPolicy::try_from(image.pull_policy).is_err() {
        return Err(invalid("spec.image.pull_policy", image.pull_policy, "unknown pull policy"));
    }
    if image.credential.len() > 253 || image.credential.contains(['/', '\0']) || image.credential.starts_with('.') {
        return Err(invalid("spec.image.credential", format!("{:?}", image.credential), "a name, not a path"));
    }
    Ok(())
}

/// Check a submission; the error names the field and the value.
pub fn validate(state: &State, req: &pb::SubmitJobRequest, now: i64) -> Result<(), Status> {
    let limits = &state.config.limits;
    if req.request_id.is_empty() || req.request_id.len() > 128 {
        return Err(invalid("request_id", format!("{:?}", req.request_id), "need 1 to 128 characters"));
    }
    let Some(s) = &req.spec else { return Err(invalid("spec", "unset", "a job needs a spec")) };
    if s.name.len() > 253 {
        return Err(invalid("spec.name", &s.name, "at most 253 characters"));
    }
    match &s.image {
        Some(image) => validate_image(image)?,
        None if s.command.is_empty() || s.command[0].is_empty() => {
            return Err(invalid("spec.command", format!("{:?}", s.command), "need a program to run (or an image)"));
        }
        None => {}
    }
    if s.command.first().is_some_and(String::is_empty) {
        return Err(invalid("spec.command", format!("{:?}", s.command), "the program is empty"));
    }
    let command_bytes: usize = s.command.iter().map(|a| a.len() + 1).sum();
    if command_bytes > limits.max_command_bytes {
        return Err(invalid("spec.command", format!("{command_bytes} bytes"), "larger than limits.max_command_bytes"));
    }
    if let Some(a) = s.command.iter().find(|a| a.contains('\0')) {
        return Err(invalid("spec.command", format!("{a:?}"), "contains a NUL byte"));
    }
    let env_bytes: usize = s.env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if env_bytes > limits.max_env_bytes {
        return Err(invalid("spec.env", format!("{env_bytes} bytes"), "larger than limits.max_env_bytes"));
    }
    if let Some(k) = s.env.keys().find(|k| k.is_empty() || k.contains(['=', '\0'])) {
        return Err(invalid("spec.env", format!("{k:?}"), "a name must be non-empty, without '=' or NUL"));
    }
    if !s.working_dir.is_empty() && !s.working_dir.starts_with('/') {
        return Err(invalid("spec.working_dir", &s.working_dir, "must be an absolute path"));
    }
    if !(s.cpu_cores.is_finite() && s.cpu_cores > 0.0) {
        return Err(invalid("spec.cpu_cores", s.cpu_cores, "must be > 0"));
    }
    if s.memory_bytes == 0 {
        return Err(invalid("spec.memory_bytes", 0, "must be > 0"));
    }
    let Some(d) = &s.expected_duration else {
        return Err(invalid("spec.expected_duration", "unset", "planning needs the run time"));
    };
    let duration = super::duration_secs(d);
    if duration.is_nan() || duration <= 0.0 || d.nanos < 0 {
        return Err(invalid("spec.expected_duration", format!("{duration}s"), "must be > 0"));
    }
    if duration > 30.0 * 86_400.0 {
        return Err(invalid("spec.expected_duration", format!("{duration}s"), "at most 30 days"));
    }
    let release = s.not_before.as_ref().map_or(now, |t| t.seconds.max(now));
    if let Some(dl) = &s.deadline {
        if dl.seconds <= now {
            return Err(invalid("spec.deadline", rfc3339(dl.seconds), &format!("is not after now ({})", rfc3339(now))));
        }
        #[allow(clippy::cast_precision_loss, reason = "unix seconds fit an f64")]
        if (dl.seconds as f64) < release as f64 + duration {
            return Err(invalid(
                "spec.deadline",
                rfc3339(dl.seconds),
                &format!("before earliest start {} + expected_duration {duration}s", rfc3339(release)),
            ));
        }
    }
    if s.labels.len() > 64 || s.labels.iter().any(|(k, v)| k.is_empty() || k.len() > 63 || v.len() > 253) {
        return Err(invalid(
            "spec.labels",
            format!("{} labels", s.labels.len()),
            "at most 64, keys 1-63 and values ≤ 253 characters",
        ));
    }
    if s.run_as_uid == Some(0) && !limits.allow_root_jobs {
        return Err(invalid("spec.run_as_uid", 0, "root jobs are off (limits.allow_root_jobs)"));
    }
    if s.run_as_gid == Some(0) && !limits.allow_root_jobs {
        return Err(invalid("spec.run_as_gid", 0, "root jobs are off (limits.allow_root_jobs)"));
    }
    let pools = known_pools(state);
    let fits: Vec<&Largest> =
        pools.iter().filter(|(name, _)| s.pool.is_empty() || **name == s.pool).map(|p| p.1).collect();
    if !s.pool.is_empty() && fits.is_empty() {
        let names: Vec<&str> = pools.keys().map(String::as_str).collect();
        return Err(invalid("spec.pool", &s.pool, &format!("unknown pool; known: {names:?}")));
    }
    if !fits.is_empty() {
        let max_cores = fits.iter().map(|p| p.cores).fold(0.0, f64::max);
        if s.cpu_cores > max_cores {
            return Err(invalid("spec.cpu_cores", s.cpu_cores, &format!("larger than any node ({max_cores} cores)")));
        }
        let max_mem = fits.iter().map(|p| p.memory_bytes).fold(0.0, f64::max);
        #[allow(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
        if s.memory_bytes as f64 > max_mem {
            return Err(invalid(
                "spec.memory_bytes",
                s.memory_bytes,
                &format!("larger than any node ({max_mem} bytes)"),
            ));
        }
        let max_gpus = fits.iter().map(|p| p.gpus).max().unwrap_or(0);
        if s.gpus > max_gpus {
            let largest =
                largest_gpu_node(state, &s.pool).map_or_else(String::new, |n| format!(": the largest is {n}"));
            return Err(invalid("spec.gpus", s.gpus, &format!("more than any node has ({max_gpus}{largest})")));
        }
    }
    validate_gpus(state, s)
}

/// The registered node with the most GPUs (in `pool`, if given), named with its count.
fn largest_gpu_node(state: &State, pool: &str) -> Option<String> {
    let inner = state.lock();
    let n =
        inner.nodes.values().filter(|n| pool.is_empty() || n.register.pool == pool).max_by_key(|n| n.register.gpus)?;
    Some(format!("node {} with {}", n.register.node_name, n.register.gpus))
}

/// GPU model, memory and power limit, against what registered nodes report.
/// A model no node reports is refused; memory and a power limit are checked
/// where nodes of that model are registered (else the agent checks at start).
fn validate_gpus(state: &State, s: &pb::JobSpec) -> Result<(), Status> {
    let needs_gpus = |field: &str, v: String| invalid(field, v, "needs spec.gpus > 0");
    if s.gpus == 0 {
        if !s.gpu_model.is_empty() {
            return Err(needs_gpus("spec.gpu_model", format!("{:?}", s.gpu_model)));
        }
        if s.gpu_memory_bytes > 0 {
            return Err(needs_gpus("spec.gpu_memory_bytes", s.gpu_memory_bytes.to_string()));
        }
        if let Some(w) = s.gpu_power_limit_w {
            return Err(needs_gpus("spec.gpu_power_limit_w", w.to_string()));
        }
        if s.gpu_power_auto {
            return Err(needs_gpus("spec.gpu_power_auto", "true".into()));
        }
        return Ok(());
    }
    if let Some(w) = s.gpu_power_limit_w {
        if !(w.is_finite() && w > 0.0) {
            return Err(invalid("spec.gpu_power_limit_w", w, "must be > 0 watts"));
        }
        if s.gpu_power_auto {
            return Err(invalid("spec.gpu_power_auto", true, "not with spec.gpu_power_limit_w"));
        }
    }
    let inner = state.lock();
    let seen: Vec<&pb::GpuInfo> = inner
        .nodes
        .values()
        .filter(|n| s.pool.is_empty() || n.register.pool == s.pool)
        .flat_map(|n| n.register.gpu_devices.iter())
        .collect();
    let matching: Vec<&pb::GpuInfo> = seen.iter().copied().filter(|g| g.model.contains(&s.gpu_model)).collect();
    if !s.gpu_model.is_empty() && matching.is_empty() {
        let mut models: Vec<&str> = seen.iter().map(|g| g.model.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        return Err(invalid(
            "spec.gpu_model",
            format!("{:?}", s.gpu_model),
            &format!("no node has a GPU of this model; models: {models:?}"),
        ));
    }
    if let Some(most) = matching.iter().map(|g| g.memory_bytes).max()
        && s.gpu_memory_bytes > most
    {
        return Err(invalid(
            "spec.gpu_memory_bytes",
            s.gpu_memory_bytes,
            &format!("more than any matching GPU has ({most} bytes)"),
        ));
    }
    if let Some(w) = s.gpu_power_limit_w
        && !matching.is_empty()
        && !matching.iter().any(|g| (g.power_limit_min_w..=g.power_limit_max_w).contains(&w))
    {
        let mut ranges: Vec<String> = matching
            .iter()
            .map(|g| format!("{}: {}–{} W", g.model, g.power_limit_min_w, g.power_limit_max_w))
            .collect();
        ranges.sort_unstable();
        ranges.dedup();
        return Err(invalid(
            "spec.gpu_power_limit_w",
            w,
            &format!("outside every matching GPU's range ({})", ranges.join(", ")),
        ));
    }
    Ok(())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

/// The job `id` if the caller may see it. Another user's job is NOT_FOUND, as
/// one that does not exist: its existence is not shown either.
fn visible<'a>(inner: &'a super::Inner, caller: &Caller, id: &str) -> Result<&'a JobEntry, Status> {
    inner.jobs.get(id).filter(|e| caller.may_see(&e.job)).ok_or_else(|| Status::not_found(format!("job {id}")))
}

#[tonic::async_trait]
impl JobService for Jobs {
    async fn submit_job(&self, req: Request<pb::SubmitJobRequest>) -> Result<Response<pb::SubmitJobResponse>, Status> {
        let caller = Caller::of(&req)?;
        let req = req.into_inner();
        let st = &self.0;
        let t = now();
        validate(st, &req, t)
            .inspect_err(|_| metrics::counter!("greenfill_submissions_total", "result" => "invalid").increment(1))?;
        let spec = req.spec.expect("validated");
        caller.may_run_as(spec.run_as_uid, spec.run_as_gid)?;
        let (job, duplicate, pending) = {
            let mut inner = st.lock();
            if let Some(id) = inner.by_request.get(&req.request_id) {
                // Idempotent: the first job. It may still be committing: an empty
                // barrier batch after it commits after it.
                let job = inner.jobs[id].job.clone();
                if !caller.may_see(&job) {
                    return Err(Status::already_exists(format!(
                        "request_id {:?} names another user's job; choose a new one",
                        req.request_id
                    )));
                }
                (job, true, st.queue(vec![], vec![]))
            } else {
                let id = uuid::Uuid::now_v7().to_string();
                let seq = inner.next_seq;
                inner.next_seq += 1;
                inner.revision += 1;
                let job = pb::Job {
                    id: id.clone(),
                    spec: Some(spec),
                    state: pb::JobState::Queued as i32,
                    state_reason: "submitted".into(),
                    submitted_at: Some(ts(t)),
                    updated_at: Some(ts(t)),
                    revision: inner.revision,
                    owner: caller.name.clone(),
                    ..pb::Job::default()
                };
                let writes = vec![
                    Write::Job {
                        seq,
                        id: id.clone(),
                        request_id: req.request_id.clone(),
                        state: job.state,
                        revision: job.revision,
                        body: job.encode_to_vec(),
                    },
                    Write::Event {
                        revision: job.revision,
                        job_id: id.clone(),
                        previous_state: 0,
                        state: job.state,
                        time: t,
                        reason: "submitted".into(),
                    },
                ];
                inner.order.insert(seq, id.clone());
                inner.by_request.insert(req.request_id.clone(), id.clone());
                let entry = JobEntry {
                    seq,
                    request_id: req.request_id,
                    job: job.clone(),
                    attempt_id: String::new(),
                    explanation: None,
                    previous_state: 0,
                };
                inner.jobs.insert(id, entry);
                let event = pb::JobEvent { revision: job.revision, job: Some(job.clone()), previous_state: 0 };
                (job, false, st.queue(writes, vec![event]))
            }
        };
        st.finish(pending).await?;
        metrics::counter!("greenfill_submissions_total", "result" => if duplicate { "duplicate" } else { "accepted" })
            .increment(1);
        if !duplicate {
            st.replan.notify_one();
        }
        Ok(Response::new(pb::SubmitJobResponse { job: Some(job), duplicate }))
    }

    async fn get_job(&self, req: Request<pb::GetJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&req)?;
        let id = req.into_inner().id;
        let inner = self.0.lock();
        visible(&inner, &caller, &id).map(|e| Response::new(e.job.clone()))
    }

    async fn list_jobs(&self, req: Request<pb::ListJobsRequest>) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = Caller::of(&req)?;
        let req = req.into_inner();
        let size = match req.page_size {
            0 => 100,
            n @ 1..=1000 => n as usize,
            n => return Err(invalid("page_size", n, "at most 1000")),
        };
        let after: u64 = if req.page_token.is_empty() {
            0
        } else {
            req.page_token.parse().map_err(|_| invalid("page_token", &req.page_token, "not a token from ListJobs"))?
        };
        let inner = self.0.lock();
        let mut jobs = Vec::new();
        let mut next = String::new();
        for (seq, id) in inner.order.range(after..) {
            let j = &inner.jobs[id].job;
            if !caller.may_see(j)
                || (!req.states.is_empty() && !req.states.contains(&j.state))
                || !req.labels.iter().all(|(k, v)| j.spec.as_ref().and_then(|s| s.labels.get(k)) == Some(v))
            {
                continue;
            }
            if jobs.len() == size {
                next = seq.to_string();
                break;
            }
            jobs.push(j.clone());
        }
        Ok(Response::new(pb::ListJobsResponse { jobs, next_page_token: next }))
    }

    async fn cancel_job(&self, req: Request<pb::CancelJobRequest>) -> Result<Response<pb::Job>, Status> {
        let caller = Caller::of(&req)?;
        let address = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
        let req = req.into_inner();
        let st = &self.0;
        let (job, pending) = {
            let mut inner = st.lock();
            let e = visible(&inner, &caller, &req.id)?;
            // Asked again while the stop is on its way: the same answer.
            if e.job.state == pb::JobState::Cancelling as i32 {
                return Ok(Response::new(e.job.clone()));
            }
            if is_terminal(e.job.state) {
                return Err(Status::failed_precondition(format!(
                    "job {} is already {}",
                    req.id,
                    state_name(e.job.state)
                )));
            }
            let (node, attempt) = (e.job.node.clone(), e.attempt_id.clone());
            let running = !is_queued(e.job.state) && !node.is_empty();
            let reason = if req.reason.is_empty() { "cancelled by user".to_owned() } else { req.reason.clone() };
            // On a node it is `cancelling` until the agent reports the process
            // gone; waiting, it is `cancelled` at once.
            let shown = if running { format!("{reason}; stopping on {node}") } else { reason.clone() };
            let (mut writes, event) = inner
                .change(&req.id, super::lifecycle::Event::Cancelled, &shown, |e| {
                    e.job.cancelled_by = caller.name.clone();
                    if !running {
                        e.job.finished_at = Some(ts(now()));
                    }
                })
                .ok_or_else(|| Status::failed_precondition(format!("job {} cannot be cancelled now", req.id)))?;
            if running {
                let stop = pb::StopJob {
                    job_id: req.id.clone(),
                    attempt_id: attempt,
                    grace: Some(prost_types::Duration { seconds: 10, nanos: 0 }),
                    reason,
                };
                writes.extend(inner.command(&node, pb::scheduler_message::Body::Stop(stop)));
            }
            let owner = event.job.as_ref().map_or("", |j| j.owner.as_str());
            let entry = AuditEntry {
                time: now(),
                kind: "cancel".into(),
                subject: req.id.clone(),
                actor: caller.name.clone(),
                address,
                accepted: true,
                reason: format!("{shown} (the job of {owner})"),
            };
            writes.push(inner.audit(entry));
            (event.job.clone().expect("set"), st.queue(writes, vec![event]))
        };
        st.finish(pending).await?;
        st.replan.notify_one();
        Ok(Response::new(job))
    }

    type WatchJobsStream = EventStream;

    async fn watch_jobs(&self, req: Request<pb::WatchJobsRequest>) -> Result<Response<EventStream>, Status> {
        let caller = Caller::of(&req)?;
        let req = req.into_inner();
        let mut rx = self.0.events.subscribe();
        let keep = move |j: &pb::Job| {
            caller.may_see(j)
                && (req.states.is_empty() || req.states.contains(&j.state))
                && (req.ids.is_empty() || req.ids.contains(&j.id))
        };
        // Replay is compacted: each matching job's latest state after since_revision.
        let mut replay: Vec<pb::JobEvent> = if req.since_revision > 0 {
            let inner = self.0.lock();
            inner
                .jobs
                .values()
                .filter(|e| e.job.revision > req.since_revision && keep(&e.job))
                .map(|e| pb::JobEvent {
                    revision: e.job.revision,
                    job: Some(e.job.clone()),
                    previous_state: e.previous_state,
                })
                .collect()
        } else {
            Vec::new()
        };
        replay.sort_by_key(|e| e.revision);
        let mut seen = replay.last().map_or(req.since_revision, |e| e.revision);
        let (tx, out) = tokio::sync::mpsc::channel(256);
        let stop = self.0.shutdown.clone();
        self.0.tasks.spawn(async move {
            for e in replay {
                if tx.send(Ok(e)).await.is_err() {
                    return;
                }
            }
            loop {
                let next = tokio::select! {
                    r = rx.recv() => r,
                    () = stop.cancelled() => return,
                };
                match next {
                    Ok(e) if e.revision > seen && e.job.as_ref().is_some_and(&keep) => {
                        seen = e.revision;
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let _ = tx
                            .send(Err(Status::data_loss(format!(
                                "watcher fell {n} events behind; resume with since_revision = {seen}"
                            ))))
                            .await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn explain_job(&self, req: Request<pb::ExplainJobRequest>) -> Result<Response<pb::JobExplanation>, Status> {
        let caller = Caller::of(&req)?;
        let id = req.into_inner().id;
        let inner = self.0.lock();
        let e = visible(&inner, &caller, &id)?;
        let mut x = e.explanation.clone().unwrap_or_default();
        x.id = id;
        x.state = e.job.state;
        x.node = e.job.node.clone();
        // Past planning, the state's own reason says more than the last plan did.
        if !is_queued(e.job.state) || x.detail.is_empty() {
            x.detail = match pb::JobState::try_from(e.job.state) {
                Ok(pb::JobState::Queued) if x.detail.is_empty() => "waiting for the next plan".into(),
                _ => e.job.state_reason.clone(),
            };
        }
        Ok(Response::new(x))
    }
}

#[derive(Debug, Clone)]
pub struct Plans(pub Arc<State>);

#[tonic::async_trait]
impl PlanService for Plans {
    async fn get_plan(&self, req: Request<pb::GetPlanRequest>) -> Result<Response<pb::Plan>, Status> {
        Caller::of(&req)?.may_read_plans()?;
        let include = req.into_inner().include_jobs;
        let inner = self.0.lock();
        let Some(plan) = &inner.plan else { return Err(Status::not_found("no plan yet")) };
        let mut plan = plan.clone();
        if !include {
            plan.jobs.clear();
        }
        Ok(Response::new(plan))
    }

    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        Caller::of(&req)?.may_read_plans()?;
        let inner = self.0.lock();
        let stale = i64::try_from(self.0.config.planning.stale_after.as_secs()).unwrap_or(900);
        let t = now();
        let mut running: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
        for e in inner.jobs.values() {
            if !e.job.node.is_empty() && !is_queued(e.job.state) && !is_terminal(e.job.state) {
                *running.entry(e.job.node.as_str()).or_default() += 1;
            }
        }
        let nodes = inner
            .nodes
            .iter()
            .map(|(name, n)| {
                let s = n.last_sample.as_ref();
                pb::NodeInfo {
                    name: name.clone(),
                    pool: n.register.pool.clone(),
                    zone: n.register.zone.clone(),
                    cpu_cores: n.register.cpu_cores,
                    memory_bytes: n.register.memory_bytes,
                    connected: n.session.is_some(),
                    last_seen: Some(ts(n.last_seen)),
                    stale: n.last_seen < t - stale,
                    online_cpu_cores: s.and_then(|s| s.online_cpu_cores),
                    batch_cpu_cores: s.and_then(|s| s.batch_cpu_cores),
                    running_jobs: running.get(name.as_str()).copied().unwrap_or(0),
                    power: s.map(|s| s.power.clone()).unwrap_or_default(),
                    agent_version: n.register.agent_version.clone(),
                    history_buckets: u32::try_from(n.history.len()).unwrap_or(u32::MAX),
                    power_state: super::power::state_of(&inner, name).name().to_owned(),
                    power_since: inner.power.get(name).map(|p| ts(p.since)),
                    power_reason: inner.power.get(name).map(|p| p.reason.clone()).unwrap_or_default(),
                    agent_instance: n.register.instance_id.clone(),
                    agent_address: n.peer.clone(),
                }
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    async fn get_ledger(&self, req: Request<pb::GetLedgerRequest>) -> Result<Response<pb::LedgerTotals>, Status> {
        Caller::of(&req)?.may_read_plans()?;
        let since = req.into_inner().since.map_or(i64::MIN, |t| t.seconds);
        let rows = super::ledger::totals(&self.0.lock(), since);
        Ok(Response::new(pb::LedgerTotals { rows }))
    }

    async fn list_audit(&self, req: Request<pb::ListAuditRequest>) -> Result<Response<pb::ListAuditResponse>, Status> {
        Caller::of(&req)?.may_read_plans()?;
        let req = req.into_inner();
        let since = req.since.map_or(i64::MIN, |t| t.seconds);
        let limit = if req.limit == 0 { 1_000 } else { req.limit as usize };
        let inner = self.0.lock();
        let mut entries: Vec<pb::AuditEntry> = inner
            .audit
            .iter()
            .rev()
            .filter(|a| a.time >= since && (req.subject.is_empty() || a.subject == req.subject))
            .take(limit)
            .map(|a| pb::AuditEntry {
                time: Some(ts(a.time)),
                kind: a.kind.clone(),
                subject: a.subject.clone(),
                actor: a.actor.clone(),
                address: a.address.clone(),
                accepted: a.accepted,
                reason: a.reason.clone(),
            })
            .collect();
        entries.reverse();
        Ok(Response::new(pb::ListAuditResponse { entries }))
    }
}
