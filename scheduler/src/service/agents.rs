//! AgentService: one bidirectional stream per node (protocol in `agent.proto`).
//!
//! Commands are numbered per node and kept until the agent acknowledges them; a
//! Register carries the last command the agent applied and every later one is
//! resent. Job events are numbered by the agent; each is applied and its seq
//! stored in the same commit, then acknowledged, so a replay after a reconnect is
//! recognised and dropped.

use super::{Node, State, now, ts};
use crate::store::{AuditEntry, Write};
use greenfill_proto::v1 as pb;
use pb::agent_message::Body as In;
use pb::agent_service_server::AgentService;
use pb::scheduler_message::Body as Out;
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, Clone)]
pub struct Agents(pub Arc<State>);

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Agents {
    type SessionStream = OutStream;

    async fn session(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<OutStream>, Status> {
        let peer = req.remote_addr().map_or_else(|| "an unknown address".to_owned(), |a| a.to_string());
        let identity = req.extensions().get::<super::auth::AgentIdentity>().cloned();
        let mut input = req.into_inner();
        let first = match input.next().await {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Err(e),
            None => return Err(Status::invalid_argument("session closed before Register")),
        };
        let Some(In::Register(reg)) = first.body else {
            return Err(Status::invalid_argument("the first message of a session must be Register"));
        };
        if reg.node_name.is_empty() || reg.node_name.len() > 253 {
            return Err(Status::invalid_argument(format!(
                "register.node_name = {:?}: need 1 to 253 characters",
                reg.node_name
            )));
        }
        let entry = |accepted: bool, reason: &str| AuditEntry {
            time: now(),
            kind: "register".into(),
            subject: reg.node_name.clone(),
            actor: actor(identity.as_ref(), &reg),
            address: peer.clone(),
            accepted,
            reason: reason.to_owned(),
        };
        // A node-bound credential registers only as its own nodes.
        if let Some(Err(refused)) = identity.as_ref().map(|id| id.check(&reg.node_name)) {
            let pending = {
                let mut inner = self.0.lock();
                let w = inner.audit(entry(false, refused.message()));
                self.0.queue(vec![w], vec![])
            };
            self.0.finish(pending).await?;
            return Err(refused);
        }
        if !(reg.cpu_cores.is_finite() && reg.cpu_cores > 0.0) {
            return Err(Status::invalid_argument(format!("register.cpu_cores = {}: must be > 0", reg.cpu_cores)));
        }
        let st = self.0.clone();
        let name = reg.node_name.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let admitted = {
            let mut inner = st.lock();
            inner.next_session += 1;
            let session = inner.next_session;
            let t = now();
            let node = inner.nodes.entry(name.clone()).or_insert_with(|| Node::new(reg.clone(), t));
            if let Err(refused) = admit(node, &name, &reg, &peer, t) {
                let w = inner.audit(entry(false, refused.message()));
                Err((refused, st.queue(vec![w], vec![])))
            } else {
                node.peer = peer.clone();
                node.register = pb::Register { running_jobs: Vec::new(), ..reg.clone() };
                node.last_seen = t;
                node.registered_at = t;
                // The agent applied everything up to last_command_seq.
                let mut writes = Vec::new();
                if reg.last_command_seq > node.command_acked {
                    node.command_acked = reg.last_command_seq.min(node.command_seq);
                    node.pending.retain(|m| m.seq > reg.last_command_seq);
                    writes.push(Write::CommandsAcked { node: name.clone(), upto: node.command_acked });
                }
                let epoch = st.epoch;
                let ack = pb::SchedulerMessage {
                    seq: 0,
                    ack: node.event_seq,
                    epoch,
                    body: Some(Out::RegisterAck(pb::RegisterAck {
                        last_event_seq: node.event_seq,
                        telemetry_interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
                    })),
                };
                let _ = tx.try_send(Ok(ack));
                // Only durable commands: later ones go out when their commit is.
                for m in node.pending.iter().filter(|m| m.seq > reg.last_command_seq && m.seq <= node.durable_seq) {
                    let _ = tx.try_send(Ok(pb::SchedulerMessage { epoch, ..m.clone() }));
                }
                node.session = Some((session, tx.clone()));
                writes.push(node.row(&name));
                let grace = i64::try_from(st.config.planning.reconcile_grace.as_secs()).unwrap_or(15);
                writes.extend(reconcile(&mut inner, &name, &reg, grace, t));
                writes.push(inner.audit(entry(true, "registered")));
                Ok((session, st.queue(writes, vec![])))
            }
        };
        let session = match admitted {
            Ok((session, pending)) => {
                st.finish(pending).await?;
                session
            }
            Err((refused, pending)) => {
                st.finish(pending).await?;
                return Err(refused);
            }
        };
        tracing::info!(node = %name, session, running = reg.running_jobs.len(), last_command_seq = reg.last_command_seq, "agent registered");
        metrics::gauge!("greenfill_agents_connected").increment(1.0);
        st.replan.notify_one();
        let stop = st.shutdown.clone();
        st.tasks.clone().spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = input.next() => m,
                    () = stop.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the scheduler is shutting down"))).await;
                        break;
                    }
                };
                let Some(msg) = msg else { break };
                let current = st.lock().nodes.get(&name).and_then(|n| n.session.as_ref().map(|(s, _)| *s));
                if current != Some(session) {
                    // Replaced: what this stream says is no longer the node's word.
                    tracing::info!(node = %name, session, "message on a replaced session dropped; closing it");
                    break;
                }
                match msg {
                    Ok(m) => {
                        if let Err(e) = handle(&st, &name, &tx, m).await {
                            let _ = tx.send(Err(e)).await;
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::info!(node = %name, error = %e, "agent stream ended");
                        break;
                    }
                }
            }
            metrics::gauge!("greenfill_agents_connected").decrement(1.0);
            let mut inner = st.lock();
            if let Some(n) = inner.nodes.get_mut(&name)
                && n.session.as_ref().is_some_and(|(s, _)| *s == session)
            {
                n.session = None;
            }
            drop(inner);
            // A node that went silent may be one that was asked to suspend.
            st.replan.notify_one();
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Who registers, for the audit log: the agent instance and its credential.
fn actor(identity: Option<&super::auth::AgentIdentity>, reg: &pb::Register) -> String {
    let instance = if reg.instance_id.is_empty() { "(no instance id)" } else { reg.instance_id.as_str() };
    match identity.and_then(|i| i.nodes.as_ref()) {
        Some(t) => format!("agent instance {instance}, a credential for {:?}", t.nodes),
        None => format!("agent instance {instance}, a fleet agent token"),
    }
}

/// How recently a session must have been heard from to count as live: while
/// it is, a second agent instance claiming the node is refused.
const SESSION_LIVE_S: i64 = 30;

/// One live agent per node. A different instance claiming a node whose session
/// is live is refused (ALREADY_EXISTS, naming both). Otherwise an old session
/// (the same instance reconnecting, or one gone quiet) is closed with the reason,
/// so that side knows. A new instance (a fresh state dir) numbers its events
/// from 1 again: the node's event sequence restarts with it, or its first
/// events would be taken for ones already stored and dropped. Agents without an
/// instance id (older) are not compared.
fn admit(node: &mut Node, name: &str, reg: &pb::Register, peer: &str, t: i64) -> Result<(), Status> {
    let live = node.session.is_some() && node.last_seen >= t - SESSION_LIVE_S;
    let before = &node.register.instance_id;
    let other = !before.is_empty() && !reg.instance_id.is_empty() && *before != reg.instance_id;
    if live && other {
        metrics::counter!("greenfill_agent_registrations_refused_total", "reason" => "duplicate_node").increment(1);
        return Err(Status::already_exists(format!(
            "node {name} is already served by agent instance {} at {} (session live, last heard {} s ago); this agent \
             (instance {} at {peer}) claims the same name: give it its own --node-name, or stop the other",
            before,
            node.peer,
            t - node.last_seen,
            reg.instance_id
        )));
    }
    if let Some((old, tx)) = node.session.take() {
        tracing::info!(node = %name, old, from = %node.peer, to = %peer, "a new session replaces the old one");
        let _ = tx.try_send(Err(Status::aborted(format!(
            "replaced by a newer session of node {name} (agent instance {} at {peer})",
            reg.instance_id
        ))));
    }
    if other {
        tracing::warn!(node = %name, old = %before, new = %reg.instance_id, "a new agent instance: its events are numbered afresh");
        node.event_seq = 0;
    }
    Ok(())
}

/// What the agent reported at Register, against what the scheduler runs there.
/// - An attempt the agent runs that is not its job's current attempt on this
///   node (the job finished, was cancelled or requeued elsewhere, or is unknown),
///   or whose job is being cancelled, is stopped (again).
/// - An attempt the scheduler runs here whose RunJob the agent applied but did
///   not report waits `grace` seconds for an event (unacknowledged events are
///   replayed after Register), then is requeued as lost (`requeue_lost`).
fn reconcile(inner: &mut super::Inner, name: &str, reg: &pb::Register, grace: i64, t: i64) -> Vec<Write> {
    let reported: std::collections::HashSet<&str> = reg.running_jobs.iter().map(|r| r.attempt_id.as_str()).collect();
    let stray: Vec<(pb::RunningJob, String)> = reg
        .running_jobs
        .iter()
        .filter_map(|r| {
            let why = match inner.jobs.get(&r.job_id) {
                None => "the scheduler has no such job".to_owned(),
                Some(e) if super::is_terminal(e.job.state) => format!("the job is {}", super::state_name(e.job.state)),
                Some(e) if e.attempt_id != r.attempt_id => format!("the job's current attempt is {}", e.attempt_id),
                Some(e) if e.job.node != name => format!("the job runs on {}", e.job.node),
                Some(e) if e.job.state == pb::JobState::Cancelling as i32 => "the job is being cancelled".to_owned(),
                Some(_) => return None,
            };
            Some((r.clone(), why))
        })
        .collect();
    let unapplied = |n: &Node, attempt: &str| {
        n.pending.iter().any(|m| matches!(&m.body, Some(Out::Run(r)) if r.attempt_id == attempt))
    };
    let missing: Vec<(String, String)> = inner.nodes.get(name).map_or_else(Vec::new, |n| {
        inner
            .jobs
            .values()
            .filter(|e| e.job.node == name && !super::is_queued(e.job.state) && !super::is_terminal(e.job.state))
            .filter(|e| !reported.contains(e.attempt_id.as_str()) && !unapplied(n, &e.attempt_id))
            .map(|e| (e.attempt_id.clone(), e.job.id.clone()))
            .collect()
    });
    let mut writes = Vec::new();
    for (r, why) in stray {
        tracing::warn!(node = name, job = %r.job_id, attempt = %r.attempt_id, pid = r.pid, "{why}: stopping what the agent runs");
        let reason = format!("the scheduler does not run this attempt on {name}: {why}");
        let stop = pb::StopJob { job_id: r.job_id, attempt_id: r.attempt_id, grace: None, reason };
        writes.extend(inner.command(name, Out::Stop(stop)));
    }
    if let Some(n) = inner.nodes.get_mut(name) {
        n.unreported = missing.into_iter().map(|(attempt, job)| (attempt, (job, t + grace))).collect();
    }
    writes
}

async fn handle(
    st: &State,
    name: &str,
    tx: &tokio::sync::mpsc::Sender<Result<pb::SchedulerMessage, Status>>,
    m: pb::AgentMessage,
) -> Result<(), Status> {
    let bucket_s = i64::try_from(st.config.planning.telemetry_bucket.as_secs().max(1)).unwrap_or(300);
    let (pending, ack, replan) = {
        let mut inner = st.lock();
        let t = now();
        let mut writes = Vec::new();
        let mut events = Vec::new();
        let Some(node) = inner.nodes.get_mut(name) else { return Err(Status::not_found("node vanished")) };
        node.last_seen = t;
        if m.ack > node.command_acked {
            node.command_acked = m.ack.min(node.command_seq);
            node.pending.retain(|c| c.seq > m.ack);
            writes.push(Write::CommandsAcked { node: name.to_owned(), upto: node.command_acked });
        }
        let mut ack = None;
        let mut replan = false;
        match m.body {
            Some(In::Telemetry(s)) => {
                // A node's first sample gives it capacity: plan soon, not at the next interval.
                replan = node.last_sample.is_none();
                let b = s.time.as_ref().map_or(t, |x| x.seconds);
                let b = b - b.rem_euclid(bucket_s);
                if let Some(cpu) = s.online_cpu_cores {
                    #[allow(clippy::cast_precision_loss, reason = "memory sizes fit an f64")]
                    let mem = s.online_memory_bytes.unwrap_or(0) as f64;
                    let closed = match &mut node.bucket {
                        Some((start, c, m, n)) if *start == b => {
                            *c += cpu;
                            *m += mem;
                            *n += 1;
                            None
                        }
                        slot => slot.replace((b, cpu, mem, 1)),
                    };
                    if let Some((start, c, m, n)) = closed {
                        let (c, m) = (c / f64::from(n), m / f64::from(n));
                        node.history.push_back((start, c, m));
                        writes.push(Write::Telemetry {
                            node: name.to_owned(),
                            bucket: start,
                            online_cpu: c,
                            online_memory: m,
                            samples: n,
                        });
                        writes.push(node.row(name));
                        let keep = i64::try_from(st.config.planning.telemetry_retention.as_secs()).unwrap_or(i64::MAX);
                        while node.history.front().is_some_and(|h| h.0 < t - keep) {
                            node.history.pop_front();
                        }
                    }
                }
                node.last_sample = Some(s);
            }
            Some(In::JobStatus(s)) => {
                if m.seq == 0 || m.seq > node.event_seq {
                    if m.seq > 0 {
                        node.event_seq = m.seq;
                    }
                    writes.push(node.row(name));
                    let (w, e) = apply_status(&mut inner, st, name, &s);
                    writes.extend(w);
                    events.extend(e);
                }
                ack = Some(m.seq);
            }
            Some(In::Register(_)) => return Err(Status::invalid_argument("Register is only the first message")),
            None => {}
        }
        (st.queue(writes, events), ack, replan)
    };
    st.finish(pending).await?;
    if let Some(seq) = ack {
        let _ = tx.send(Ok(pb::SchedulerMessage { seq: 0, ack: seq, epoch: st.epoch, body: None })).await;
    }
    if ack.is_some() || replan {
        st.replan.notify_one();
    }
    Ok(())
}

/// What a job event means for the job. Events of an attempt that is not the
/// job's current one are stale (the job was requeued) and change nothing.
/// An eviction: back off before the job may run again (doubling each time), or
/// fail it at `planning.max_evictions`, so a node that keeps running short of
/// memory does not get the same job back every round.
/// The `n`th retry's wait (the eviction backoff, doubled per retry, 32× at
/// most) and the unix second it ends, from the scheduler's own clock (the
/// agent's event time has whole seconds), rounded up.
fn backoff(planning: &super::config::Planning, n: u32) -> (std::time::Duration, i64) {
    let wait = planning.eviction_backoff.mul_f64(f64::from(1u32 << n.saturating_sub(1).min(5)));
    let now_ms = greenfill_runtime::clock::now_ms();
    let wait_ms = i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 4);
    (wait, (now_ms + wait_ms + 999).div_euclid(1000))
}

/// A start that failed for a cause that may pass: requeued after the backoff,
/// failed at `planning.max_start_attempts`.
fn start_retry(
    inner: &mut super::Inner,
    planning: &super::config::Planning,
    node: &str,
    s: &pb::JobStatus,
    when: prost_types::Timestamp,
) -> Option<(Vec<Write>, pb::JobEvent)> {
    use super::lifecycle::Event;
    let n = inner.jobs.get(&s.job_id).map_or(1, |e| e.job.attempts);
    let max = planning.max_start_attempts;
    if n >= max {
        let why =
            format!("failed to start {n} times (planning.max_start_attempts = {max}); last on {node}: {}", s.message);
        return inner.change(&s.job_id, Event::Failed, &why, |e| e.job.finished_at = Some(when));
    }
    let (wait, after) = backoff(planning, n);
    let why = format!(
        "failed to start on {node} (attempt {n} of {max}): {}; may start again in {} s",
        s.message,
        wait.as_secs()
    );
    tracing::warn!(job = %s.job_id, node, reason = %why, "start failed for a cause that may pass: requeued");
    inner.change(&s.job_id, Event::Requeued, &why, |e| {
        e.job.retry_after = Some(prost_types::Timestamp { seconds: after, nanos: 0 });
        e.job.node.clear();
        e.job.planned_start = None;
    })
}

fn evicted(
    inner: &mut super::Inner,
    planning: &super::config::Planning,
    node: &str,
    s: &pb::JobStatus,
    when: prost_types::Timestamp,
) -> Option<(Vec<Write>, pb::JobEvent)> {
    use super::lifecycle::Event;
    if let Some(n) = inner.nodes.get_mut(node) {
        n.evicted_at = Some(now());
    }
    let n = inner.jobs.get(&s.job_id).map_or(0, |e| e.job.evictions) + 1;
    if n >= planning.max_evictions {
        let why = format!(
            "evicted {n} times (planning.max_evictions = {}); last on {node}: {}",
            planning.max_evictions, s.message
        );
        return inner.change(&s.job_id, Event::Failed, &why, |e| {
            e.job.evictions = n;
            e.job.finished_at = Some(when);
        });
    }
    let (wait, after) = backoff(planning, n);
    let why = format!(
        "evicted on {node} ({n} of {}): {}; may run again in {} s",
        planning.max_evictions,
        s.message,
        wait.as_secs()
    );
    inner.change(&s.job_id, Event::Evicted, &why, |e| {
        e.job.evictions = n;
        e.job.retry_after = Some(prost_types::Timestamp { seconds: after, nanos: 0 });
        e.job.node.clear();
        e.job.planned_start = None;
    })
}

/// An event of a cancelling job's attempt: once its process is gone (it
/// exited, failed to start, was evicted or stopped) the cancel is done.
fn stop_confirmed(
    inner: &mut super::Inner,
    node: &str,
    s: &pb::JobStatus,
    when: prost_types::Timestamp,
    ledger: Option<pb::JobLedger>,
) -> (Vec<Write>, Vec<pb::JobEvent>) {
    use pb::JobPhase as P;
    let gone = match P::try_from(s.phase).unwrap_or(P::Unspecified) {
        P::Exited => match (s.exit_code, s.signal) {
            (Some(c), _) => format!("exited {c}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "ended".to_owned(),
        },
        P::FailedToStart => "never started".to_owned(),
        P::Evicted => "evicted".to_owned(),
        P::Stopped => "stopped".to_owned(),
        _ => return (vec![], vec![]),
    };
    // The reason reads "<why it was cancelled>; stopping on <node>" (`cancel_job`).
    let reason = inner.jobs.get(&s.job_id).map(|e| e.job.state_reason.clone()).unwrap_or_default();
    let asked = reason.strip_suffix(&format!("; stopping on {node}")).unwrap_or(&reason);
    let why = format!("{asked}; stopped on {node} ({gone})");
    match inner.change(&s.job_id, super::lifecycle::Event::StopConfirmed, &why, |e| {
        e.job.finished_at = Some(when);
        e.job.exit_code = s.exit_code;
        e.job.ledger = ledger;
    }) {
        Some((w, ev)) => (w, vec![ev]),
        None => (vec![], vec![]),
    }
}

/// An image job started on `node`: the node holds its image now, and a pull
/// it took is the image's measured pull time for the plan.
fn note_image(inner: &mut super::Inner, node: &str, job: &str, pulled: Option<f64>) {
    let image = inner.jobs.get(job).and_then(|e| e.job.spec.as_ref()?.image.as_ref()).map(|i| i.reference.clone());
    let Some(image) = image else { return };
    if let Some(secs) = pulled.filter(|s| s.is_finite() && *s >= 0.0) {
        inner.image_pulls.insert(image.clone(), secs);
    }
    if let Some(n) = inner.nodes.get_mut(node)
        && !n.has_image(&image)
    {
        n.register.images.push(image);
    }
}

fn apply_status(
    inner: &mut super::Inner,
    st: &State,
    node: &str,
    s: &pb::JobStatus,
) -> (Vec<Write>, Vec<pb::JobEvent>) {
    use super::lifecycle::Event;
    use pb::JobPhase as P;
    let planning = &st.config.planning;
    if let Some(n) = inner.nodes.get_mut(node) {
        n.unreported.remove(&s.attempt_id);
    }
    let Some(e) = inner.jobs.get(&s.job_id) else { return (vec![], vec![]) };
    if e.attempt_id != s.attempt_id || e.job.node != node || super::is_terminal(e.job.state) {
        tracing::debug!(job = %s.job_id, attempt = %s.attempt_id, "stale job event ignored");
        return (vec![], vec![]);
    }
    let when = s.time.unwrap_or_else(|| ts(now()));
    let ledger = (s.phase == P::Exited as i32).then(|| {
        let (pool, cores) =
            inner.nodes.get(node).map_or((String::new(), 1.0), |n| (n.register.pool.clone(), n.register.cpu_cores));
        let l = super::ledger::make(st, &e.job, &pool, cores, s, when.seconds);
        super::ledger::count(&e.job, &pool, &l);
        l
    });
    if e.job.state == pb::JobState::Cancelling as i32 {
        return stop_confirmed(inner, node, s, when, ledger);
    }
    let change = match P::try_from(s.phase).unwrap_or(P::Unspecified) {
        P::Started => {
            note_image(inner, node, &s.job_id, s.image_pull_seconds);
            let Some(e) = inner.jobs.get(&s.job_id) else { return (vec![], vec![]) };
            if let Some(d) = e.job.updated_at.as_ref() {
                #[allow(clippy::cast_precision_loss, reason = "seconds")]
                metrics::histogram!("greenfill_dispatch_latency_seconds")
                    .record((when.seconds - d.seconds).max(0) as f64);
            }
            inner.change(&s.job_id, Event::Started, "started", |e| e.job.started_at = Some(when))
        }
        P::Exited => {
            let (state, reason) = match (s.exit_code, s.signal, s.oom_killed) {
                (_, _, true) => (Event::Failed, "OOM-killed (over its memory limit)".to_owned()),
                (Some(0), _, _) => (Event::Succeeded, "exited 0".to_owned()),
                (Some(c), _, _) => (Event::Failed, format!("exited {c}")),
                (None, Some(sig), _) => (Event::Failed, format!("killed by signal {sig}")),
                (None, None, _) => (Event::Failed, format!("ended, status unknown: {}", s.message)),
            };
            inner.change(&s.job_id, state, &reason, |e| {
                e.job.finished_at = Some(when);
                e.job.exit_code = s.exit_code;
                e.job.ledger = ledger;
            })
        }
        P::FailedToStart if s.retryable => start_retry(inner, planning, node, s, when),
        P::FailedToStart => inner.change(&s.job_id, Event::Failed, &format!("failed to start: {}", s.message), |e| {
            e.job.finished_at = Some(when);
        }),
        P::Evicted => evicted(inner, planning, node, s, when),
        // Stopped without a cancel (the agent restarted and could not keep it):
        // run it again.
        P::Stopped => {
            inner.change(&s.job_id, Event::Requeued, &format!("stopped on {node}: {}; requeued", s.message), |e| {
                e.job.node.clear();
                e.job.planned_start = None;
            })
        }
        P::Unspecified => None,
    };
    change.map_or((vec![], vec![]), |(w, e)| (w, vec![e]))
}
