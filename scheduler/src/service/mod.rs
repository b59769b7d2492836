//! The scheduler service: gRPC edges (jobs, plans, agents), durable state, the
//! planning loop.
//!
//! Invariants:
//! - Every change is queued to the store's writer *while the state lock is held*,
//!   so the database sees changes in the order memory did; the caller answers only
//!   after the commit (a submission is acknowledged only once durable).
//! - A job has at most one live attempt: a new attempt (after a requeue) gets a new
//!   `attempt_id`, and events of older attempts are ignored.
//! - If a commit fails, memory and disk disagree: the service refuses every later
//!   commit, cancels its shutdown token and `main` exits with
//!   [`greenfill_runtime::EXIT_FATAL`], to restart from disk rather than answer
//!   from a state that is not durable.
//! - One shutdown path: the token in [`State::shutdown`] (SIGTERM, SIGINT, a
//!   fatal error, or a test) stops the gRPC server, the agent sessions and
//!   watches, and the planning loop; then the store writer commits what is
//!   queued and stops ([`Running::stopped`]).

pub mod agents;
pub mod auth;
pub mod carbon;
pub mod clock;
pub mod config;
pub mod follower;
pub mod jobs;
pub mod kube;
pub mod leader;
pub mod ledger;
pub mod lifecycle;
pub mod planning;
pub mod power;
pub mod price;
pub mod redfish;

use crate::store::{Snapshot, Write, Writer};
use greenfill_proto::v1 as pb;
use greenfill_runtime::{CancellationToken, TaskTracker};
use prost::Message;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{Notify, broadcast, mpsc};

pub use config::Config;

/// Unix seconds now, by the process's one clock (the wall clock, or the
/// replay's virtual one: [`greenfill_runtime::clock`]).
pub fn now() -> i64 {
    greenfill_runtime::clock::now()
}

pub fn ts(t: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t, nanos: 0 }
}

pub fn duration_secs(d: &prost_types::Duration) -> f64 {
    #[allow(clippy::cast_precision_loss, reason = "durations are far below 2^52 s")]
    let s = d.seconds as f64;
    s + f64::from(d.nanos) / 1e9
}

pub fn state_name(s: i32) -> &'static str {
    pb::JobState::try_from(s).map_or("UNKNOWN", |s| s.as_str_name()).trim_start_matches("JOB_STATE_")
}

pub fn is_terminal(s: i32) -> bool {
    use pb::JobState as S;
    [S::Succeeded as i32, S::Failed as i32, S::Cancelled as i32].contains(&s)
}

/// Waiting for a plan: queued, planned (not yet started), evicted or late.
pub fn is_queued(s: i32) -> bool {
    use pb::JobState as S;
    [S::Queued as i32, S::Planned as i32, S::Evicted as i32, S::Late as i32].contains(&s)
}

#[derive(Debug, Clone)]
pub struct JobEntry {
    pub seq: u64,
    pub request_id: String,
    pub job: pb::Job,
    /// Current attempt, `<id>-<attempts>`, empty before the first dispatch.
    pub attempt_id: String,
    /// From the latest plan; not persisted (recomputed every plan).
    pub explanation: Option<pb::JobExplanation>,
    /// The state before the latest change: a watcher's compacted replay carries it.
    pub previous_state: i32,
}

#[derive(Debug)]
pub struct Node {
    pub register: pb::Register,
    pub last_seen: i64,
    /// The open session's outbound queue, and its id (a newer session replaces it).
    pub session: Option<(u64, mpsc::Sender<Result<pb::SchedulerMessage, tonic::Status>>)>,
    /// Last command seq handed out.
    pub command_seq: u64,
    /// Highest command seq the agent applied.
    pub command_acked: u64,
    /// Highest job-event seq stored from this agent.
    pub event_seq: u64,
    /// Commands not yet acknowledged, in seq order.
    pub pending: VecDeque<pb::SchedulerMessage>,
    /// Highest command seq known durable: only those are sent (a command that
    /// never reaches the store, say a deposed leader's, never reaches the agent).
    pub durable_seq: u64,
    /// The telemetry bucket being filled: (bucket start, Σ cpu, Σ memory, n).
    pub bucket: Option<(i64, f64, f64, u32)>,
    /// Closed buckets: (bucket start, mean online cpu cores, mean online memory bytes).
    pub history: VecDeque<(i64, f64, f64)>,
    pub last_sample: Option<pb::TelemetrySample>,
    /// When the open session began.
    pub registered_at: i64,
    /// Where the agent holding the session connects from (its instance id is
    /// `register.instance_id`).
    pub peer: String,
    /// Attempts the scheduler runs here that the agent did not report at its
    /// last Register: attempt id → (job id, when it is requeued as lost),
    /// unless an event for it arrives first (the agent replays unacknowledged
    /// events).
    pub unreported: HashMap<String, (String, i64)>,
    /// When it last evicted batch for memory (in memory only: a restarted
    /// scheduler forgets, and the job's own backoff still holds).
    pub evicted_at: Option<i64>,
}

impl Node {
    fn new(register: pb::Register, last_seen: i64) -> Node {
        Node {
            register,
            last_seen,
            session: None,
            command_seq: 0,
            command_acked: 0,
            event_seq: 0,
            pending: VecDeque::new(),
            durable_seq: 0,
            bucket: None,
            history: VecDeque::new(),
            last_sample: None,
            registered_at: last_seen,
            peer: String::new(),
            unreported: HashMap::new(),
            evicted_at: None,
        }
    }

    pub fn row(&self, name: &str) -> Write {
        Write::Node {
            name: name.to_owned(),
            register: self.register.encode_to_vec(),
            last_command_seq: self.command_acked,
            last_event_seq: self.event_seq,
            last_seen: self.last_seen,
        }
    }
}

#[derive(Debug, Default)]
pub struct Inner {
    pub jobs: HashMap<String, JobEntry>,
    /// seq → id, submission order.
    pub order: BTreeMap<u64, String>,
    pub by_request: HashMap<String, String>,
    pub next_seq: u64,
    pub revision: u64,
    pub nodes: BTreeMap<String, Node>,
    pub plan: Option<pb::Plan>,
    pub next_session: u64,
    /// Power states of the nodes of sleepable pools (`[pools.power]`).
    pub power: BTreeMap<String, greenfill_planner::power::NodePower>,
    /// When the last power round ran (for powered node-seconds).
    pub power_round_at: Option<i64>,
    /// The last measured pull of each image (seconds), from agents' STARTED
    /// events; in memory only (a restart falls back to the estimate).
    pub image_pulls: HashMap<String, f64>,
    /// The newest [`crate::store::AUDIT_KEPT`] audit entries, oldest first (all
    /// of them are in the store).
    pub audit: std::collections::VecDeque<crate::store::AuditEntry>,
}

impl Inner {
    /// Keep `entry` in the audit log: in memory, and the write that stores it.
    pub fn audit(&mut self, entry: crate::store::AuditEntry) -> Write {
        if self.audit.len() >= crate::store::AUDIT_KEPT {
            self.audit.pop_front();
        }
        self.audit.push_back(entry.clone());
        Write::Audit(entry)
    }

    /// Seconds a node that lacks `image` is expected to spend pulling it.
    pub fn pull_seconds(&self, image: &str, estimate: std::time::Duration) -> f64 {
        self.image_pulls.get(image).copied().unwrap_or(estimate.as_secs_f64())
    }
}

impl Node {
    /// Whether this node's agent holds `image` (reported at Register, or pulled since).
    pub fn has_image(&self, image: &str) -> bool {
        self.register.images.iter().any(|i| i == image)
    }
}

impl Inner {
    fn restore(snap: Snapshot, bucket_s: i64) -> anyhow::Result<Inner> {
        let mut inner = Inner { revision: snap.revision, ..Inner::default() };
        for j in snap.jobs {
            let job = pb::Job::decode(j.body.as_slice())?;
            let attempt_id = if job.attempts > 0 { format!("{}-{}", job.id, job.attempts) } else { String::new() };
            inner.next_seq = inner.next_seq.max(j.seq + 1);
            inner.order.insert(j.seq, job.id.clone());
            inner.by_request.insert(j.request_id.clone(), job.id.clone());
            inner.revision = inner.revision.max(job.revision);
            inner.jobs.insert(
                job.id.clone(),
                JobEntry {
                    seq: j.seq,
                    request_id: j.request_id,
                    job,
                    attempt_id,
                    explanation: None,
                    previous_state: j.previous_state,
                },
            );
        }
        for n in snap.nodes {
            let mut node = Node::new(pb::Register::decode(n.register.as_slice())?, n.last_seen);
            node.command_acked = n.last_command_seq;
            node.command_seq = n.last_command_seq;
            node.durable_seq = n.last_command_seq;
            node.event_seq = n.last_event_seq;
            inner.nodes.insert(n.name, node);
        }
        for (name, seq, body) in snap.commands {
            if let Some(node) = inner.nodes.get_mut(&name) {
                node.command_seq = node.command_seq.max(seq);
                node.durable_seq = node.command_seq;
                if seq > node.command_acked {
                    node.pending.push_back(pb::SchedulerMessage::decode(body.as_slice())?);
                }
            }
        }
        for h in snap.telemetry {
            if let Some(node) = inner.nodes.get_mut(&h.node) {
                node.history.extend(
                    h.buckets.iter().map(|b| (b.at - b.at.rem_euclid(bucket_s), b.online_cpu, b.online_memory)),
                );
            }
        }
        for (name, body) in snap.power {
            inner.power.insert(name, serde_json::from_str(&body)?);
        }
        inner.audit = snap.audit.into();
        if let Some((_, body)) = snap.plan {
            inner.plan = Some(pb::Plan::decode(body.as_slice())?);
        }
        Ok(inner)
    }

    /// Apply a lifecycle event to a job (its new state from
    /// [`lifecycle::TRANSITIONS`], and whatever `edit` does), bump its revision
    /// and return the writes and the event to publish. `None` when the job does
    /// not exist or the table does not allow the event in its state (logged).
    pub fn change(
        &mut self,
        id: &str,
        event: lifecycle::Event,
        reason: &str,
        edit: impl FnOnce(&mut JobEntry),
    ) -> Option<(Vec<Write>, pb::JobEvent)> {
        let e = self.jobs.get_mut(id)?;
        let previous_state = e.job.state;
        let from = pb::JobState::try_from(previous_state).unwrap_or(pb::JobState::Unspecified);
        let Some(state) = lifecycle::next(from, event) else {
            tracing::warn!(job = id, state = ?from, ?event, reason, "refused: the lifecycle does not allow this change");
            return None;
        };
        self.revision += 1;
        let revision = self.revision;
        e.job.state = state as i32;
        e.job.state_reason = reason.to_owned();
        e.job.revision = revision;
        let t = now();
        e.job.updated_at = Some(ts(t));
        e.previous_state = previous_state;
        edit(e);
        let writes = vec![
            Write::Job {
                seq: e.seq,
                id: e.job.id.clone(),
                request_id: e.request_id.clone(),
                state: e.job.state,
                revision,
                body: e.job.encode_to_vec(),
            },
            Write::Event {
                revision,
                job_id: e.job.id.clone(),
                previous_state,
                state: e.job.state,
                time: t,
                reason: reason.to_owned(),
            },
        ];
        Some((writes, pb::JobEvent { revision, job: Some(e.job.clone()), previous_state }))
    }

    /// Queue a command for `node`: numbered and kept until acknowledged. It is
    /// sent once the returned write is durable ([`State::finish`]), so an agent
    /// never applies a command the store does not hold.
    pub fn command(&mut self, node: &str, body: pb::scheduler_message::Body) -> Option<Write> {
        let n = self.nodes.get_mut(node)?;
        n.command_seq += 1;
        let msg = pb::SchedulerMessage { seq: n.command_seq, ack: 0, epoch: 0, body: Some(body) };
        let write = Write::Command { node: node.to_owned(), seq: msg.seq, body: msg.encode_to_vec() };
        n.pending.push_back(msg);
        Some(write)
    }

    /// Commands up to `seq` are durable: send those not sent yet, in order, if
    /// the node is connected. A full or closed queue is fine: they stay pending
    /// and are resent on the next Register.
    fn durable(&mut self, node: &str, seq: u64, epoch: u64) {
        let Some(n) = self.nodes.get_mut(node) else { return };
        if seq <= n.durable_seq {
            return;
        }
        let from = n.durable_seq;
        n.durable_seq = seq;
        if let Some((_, tx)) = &n.session {
            for m in n.pending.iter().filter(|m| m.seq > from && m.seq <= seq) {
                let _ = tx.try_send(Ok(pb::SchedulerMessage { epoch, ..m.clone() }));
            }
        }
    }
}

/// Every series the scheduler exports through the `metrics` facade (the
/// ledger's counters are rendered by [`ledger::render`]). A test checks the
/// list against the source.
pub const METRICS: &[greenfill_runtime::metrics::Described] = {
    use greenfill_runtime::metrics::{
        Described as D,
        Kind::{Counter as C, Gauge as G, Histogram as H},
    };
    &[
        D {
            name: "greenfill_submissions_total",
            kind: C,
            help: "Job submissions by result (accepted, duplicate, invalid).",
        },
        D {
            name: "greenfill_agent_registrations_refused_total",
            kind: C,
            help: "Agent registrations refused, by reason.",
        },
        D {
            name: "greenfill_rate_limited_total",
            kind: C,
            help: "Calls refused by the per-client rate limit, by kind of caller.",
        },
        D {
            name: "greenfill_power_transitions_total",
            kind: C,
            help: "Power driver calls by target state and result.",
        },
        D {
            name: "greenfill_powered_node_seconds_total",
            kind: C,
            help: "Seconds nodes of each sleepable pool were powered.",
        },
        D {
            name: "greenfill_carbon_fetch_errors_total",
            kind: C,
            help: "Failed requests to carbon signal providers, by zone, source and kind.",
        },
        D { name: "greenfill_agents_connected", kind: G, help: "Agent sessions open now." },
        D { name: "greenfill_jobs", kind: G, help: "Jobs by state (not finished)." },
        D { name: "greenfill_nodes", kind: G, help: "Nodes of each sleepable pool by power state." },
        D {
            name: "greenfill_carbon_intensity_grams_per_kwh",
            kind: G,
            help: "The grid intensity in force per zone, g CO2e/kWh.",
        },
        D {
            name: "greenfill_carbon_signal_age_seconds",
            kind: G,
            help: "Seconds since the zone's signal in force was fetched.",
        },
        D {
            name: "greenfill_carbon_source",
            kind: G,
            help: "1 for the source (and fallback level: live, kept, constant) each zone plans with.",
        },
        D {
            name: "greenfill_dispatch_latency_seconds",
            kind: H,
            help: "From a job's dispatch to its start on the node.",
        },
        D { name: "greenfill_plan_solve_seconds", kind: H, help: "Planner solve time per round." },
        D { name: "greenfill_plan_round_seconds", kind: H, help: "Whole planning round (gather, solve, apply)." },
        D { name: "greenfill_store_commit_seconds", kind: H, help: "One group commit to the store." },
        D { name: "greenfill_store_commit_batch", kind: H, help: "Writes per group commit." },
    ]
};

/// A node's forecast: its key (closed buckets, last bucket start) and upper bounds.
pub type CachedForecast = ((usize, i64), Vec<f64>);

/// Shared by every handler and the planning loop.
#[derive(Debug)]
pub struct State {
    inner: Mutex<Inner>,
    writer: Writer,
    pub events: broadcast::Sender<pb::JobEvent>,
    /// Something happened that a new plan should see (debounced by `min_gap`).
    pub replan: Notify,
    pub config: Config,
    /// Each grid zone's carbon signal.
    pub carbon: carbon::Carbon,
    /// The day-ahead price, when `[price]` is set.
    pub price: Option<price::Market>,
    /// Per node: the online upper bound forecast from its closed telemetry
    /// buckets, keyed by (buckets, last bucket start); recomputed only when a
    /// bucket closes, and outside the state lock.
    pub forecasts: Mutex<HashMap<String, CachedForecast>>,
    /// The sleepable pools' power policies and drivers.
    pub power: power::PowerCtl,
    /// Unix seconds this service started (for the reconnect grace after a restart).
    pub started_at: i64,
    /// Cancelled to stop the service; every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// The service's long-lived tasks (server, planning loop, sessions, watches).
    pub tasks: TaskTracker,
    /// The lease epoch this replica leads with (0: SQLite, one replica),
    /// stamped on every message to agents.
    pub epoch: u64,
    /// Why the service must stop and restart from disk, once something failed
    /// that it cannot answer for (a commit).
    fatal: Mutex<Option<String>>,
}

/// A queued commit: await it, then publish.
#[must_use]
#[derive(Debug)]
pub struct Pending {
    rx: Option<tokio::sync::oneshot::Receiver<Result<(), String>>>,
    events: Vec<pb::JobEvent>,
    /// The highest command seq per node in this batch: sent once it is durable.
    commands: BTreeMap<String, u64>,
}

impl State {
    pub fn new(
        config: Config,
        mut snap: Snapshot,
        writer: Writer,
        epoch: u64,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<State>> {
        let bucket_s = i64::try_from(config.planning.telemetry_bucket.as_secs().max(1))?;
        let carbon = carbon::Carbon::new(&config, now())?;
        carbon.restore(std::mem::take(&mut snap.carbon), now());
        let inner = Inner::restore(snap, bucket_s)?;
        let (events, _) = broadcast::channel(4096);
        let power = power::PowerCtl::new(config.pool_power())?;
        let price = config.price.as_ref().map(price::Market::new).transpose()?;
        Ok(Arc::new(State {
            price,
            power,
            started_at: now(),
            inner: Mutex::new(inner),
            writer,
            events,
            replan: Notify::new(),
            config,
            carbon,
            forecasts: Mutex::new(HashMap::new()),
            shutdown,
            tasks: TaskTracker::new(),
            epoch,
            fatal: Mutex::new(None),
        }))
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock is a bug; the state may be half-changed,
        // so nothing more is committed and the service stops.
        self.inner.lock().unwrap_or_else(|poisoned| {
            self.fail("the state lock was poisoned by a panic".into());
            poisoned.into_inner()
        })
    }

    /// Something failed that the service cannot answer for: refuse every later
    /// commit and stop; `main` exits non-zero and the supervisor restarts it.
    fn fail(&self, why: String) {
        let mut fatal = self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if fatal.is_none() {
            tracing::error!(reason = %why, "stopping so that state is rebuilt from disk");
            *fatal = Some(why);
        }
        self.shutdown.cancel();
    }

    /// Why the service stopped itself, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Queue `writes` (call with the lock held, see the module's invariants).
    pub fn queue(&self, writes: Vec<Write>, events: Vec<pb::JobEvent>) -> Pending {
        // After a failed commit nothing more reaches the disk: memory is ahead of it.
        let mut commands = BTreeMap::new();
        for w in &writes {
            if let Write::Command { node, seq, .. } = w {
                let top = commands.entry(node.clone()).or_insert(0);
                *top = (*top).max(*seq);
            }
        }
        let rx = if writes.is_empty() || self.fatal().is_some() { None } else { Some(self.writer.queue(writes)) };
        Pending { rx, events, commands }
    }

    /// Wait for durability, then publish the events.
    pub async fn finish(&self, p: Pending) -> Result<(), tonic::Status> {
        if let Some(rx) = p.rx {
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.fail(format!("commit failed: {e}"));
                    return Err(tonic::Status::unavailable("commit failed; the scheduler is restarting"));
                }
                Err(_) => return Err(tonic::Status::unavailable("store writer stopped")),
            }
        }
        if self.fatal().is_some() {
            return Err(tonic::Status::unavailable("the scheduler is restarting after a failed commit"));
        }
        if !p.commands.is_empty() {
            let mut inner = self.lock();
            for (node, seq) in &p.commands {
                inner.durable(node, *seq, self.epoch);
            }
        }
        for e in p.events {
            let _ = self.events.send(e);
        }
        Ok(())
    }
}

/// A started service: its address and state (tests drive it directly).
#[derive(Debug)]
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub state: Arc<State>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    /// The lease this replica leads with (PostgreSQL), resigned once drained.
    lease: Option<(Arc<leader::Lease>, i64)>,
}

/// How long the gRPC server gets to finish in-flight calls once stopping.
const SERVER_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Running {
    /// Stop, as SIGTERM does, and wait until everything is drained.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.state.shutdown.cancel();
        self.stopped().await
    }

    /// Wait until the service stops (its token is cancelled), then drain: the
    /// server finishes in-flight calls (at most [`SERVER_GRACE`]), the planning
    /// loop, sessions and watches end, and the writer commits what is queued.
    /// An error says why the service stopped itself (a failed commit).
    pub async fn stopped(self) -> anyhow::Result<()> {
        let Running { state, mut server, lease, .. } = self;
        // `biased`: when both are ready (the token was cancelled and the server
        // ended because of it) this is a stop, not a failure. The handle is
        // polled again only if it has not completed.
        let ended = tokio::select! {
            biased;
            () = state.shutdown.cancelled() => false,
            r = &mut server => {
                if !state.shutdown.is_cancelled() {
                    state.fail(format!("the gRPC server stopped: {}", describe(r)));
                }
                true
            }
        };
        let close = |state: &Arc<State>| {
            let writer = state.clone();
            tokio::task::spawn_blocking(move || writer.writer.close())
        };
        // A replica hands over at once: what is queued commits (fenced) first,
        // then the lease ends. Calls still open find the writer closed and
        // answer UNAVAILABLE; their clients go to the next leader.
        if let Some((lease, epoch)) = lease {
            close(&state).await?;
            if let Err(e) = lease.resign(epoch).await {
                tracing::warn!(error = %e, "could not resign the lease; it ends by itself");
            }
        }
        if !ended && tokio::time::timeout(SERVER_GRACE, &mut server).await.is_err() {
            tracing::warn!(grace_s = SERVER_GRACE.as_secs(), "gRPC calls still open after the grace period; closing");
            server.abort();
        }
        greenfill_runtime::drain(&state.tasks, SERVER_GRACE).await;
        close(&state).await?;
        tracing::info!("scheduler stopped; every acknowledged change is on disk");
        match state.fatal() {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }
}

fn describe(r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>) -> String {
    match r {
        Ok(Ok(())) => "ended".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// The Kubernetes token verifier: keys fetched now (an error is logged, and
/// agents are refused until a fetch succeeds) and again every
/// [`kube::REFRESH`] (every 10 s while none has succeeded), until shutdown.
async fn start_kube(cfg: config::KubernetesAuth, state: &Arc<State>) -> Arc<kube::Verifier> {
    let v = kube::Verifier::new(cfg);
    let (me, stop) = (v.clone(), state.shutdown.clone());
    let first = v.refresh().await;
    state.tasks.spawn(async move {
        let mut ok = first.is_ok();
        match first {
            Ok(n) => tracing::info!(keys = n, "Kubernetes signing keys fetched"),
            Err(e) => tracing::error!(error = %e, "cannot fetch the Kubernetes signing keys; agents with service-account tokens are refused until it works"),
        }
        loop {
            let wait = if ok { kube::REFRESH } else { std::time::Duration::from_secs(10) };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
            match me.refresh().await {
                Ok(_) => ok = true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot refresh the Kubernetes signing keys; keeping the last ones");
                    ok = false;
                }
            }
        }
    });
    v
}

/// Open the store, restore state, bind, and serve gRPC (jobs, plans, agents,
/// health, reflection) and the planning loop until [`State::shutdown`] is
/// cancelled; [`Running::stopped`] waits for the drain.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, CancellationToken::new()).await
}

/// [`start`], stopped by `stop` (SIGTERM) — also while still a follower, when it
/// returns an error saying so. With a PostgreSQL store this waits, serving as a
/// follower, until this replica takes the lease.
pub async fn start_with(config: Config, stop: CancellationToken) -> anyhow::Result<Running> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("listen {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let (writer, snap, listener, lease) = match config.store.clone() {
        None => {
            std::fs::create_dir_all(&config.data_dir)
                .map_err(|e| anyhow::anyhow!("data_dir {}: {e}", config.data_dir.display()))?;
            let mut db = crate::store::Sqlite::open(&config.data_dir.join("greenfill.db"))?;
            let snap = crate::store::Store::load(&mut db)?;
            (Writer::spawn(Box::new(db)), snap, listener, None)
        }
        Some(url) => {
            let (writer, snap, listener, lease) = lead(&config, &url, addr, listener, &stop).await?;
            (writer, snap, listener, Some(lease))
        }
    };
    tracing::info!(jobs = snap.jobs.len(), nodes = snap.nodes.len(), "state restored");
    let epoch = lease.as_ref().map_or(0, |(_, e)| u64::try_from(*e).unwrap_or(0));
    let state = State::new(config, snap, writer, epoch, stop.child_token())?;
    if let Some((lease, e)) = &lease {
        let (lease, e, st) = (lease.clone(), *e, state.clone());
        state.tasks.spawn(async move {
            if let Some(why) = lease.keep(e, &st.shutdown).await {
                st.fail(why);
            }
        });
    }
    serve(state, addr, listener, lease).await
}

/// Connect to PostgreSQL (an unreachable one fails the start), serve as a
/// follower until this replica takes the lease, then open the store fenced by
/// the new epoch and load it. Returns the listener to serve on as leader.
async fn lead(
    config: &Config,
    url: &str,
    addr: std::net::SocketAddr,
    listener: tokio::net::TcpListener,
    stop: &CancellationToken,
) -> anyhow::Result<(Writer, Snapshot, tokio::net::TcpListener, (Arc<leader::Lease>, i64))> {
    let r = &config.replication;
    let open = {
        let (u, timeout, idle) = (url.to_owned(), r.connect_timeout, r.retry);
        move || crate::store::Postgres::open(&u, timeout, idle)
    };
    // Connect and migrate first: a bad URL or a newer schema is an error now.
    let check = open.clone();
    // (Dropped on the blocking thread: the store owns a runtime.)
    tokio::task::spawn_blocking(move || check().map(drop)).await??;
    let advertise = r.advertise.clone().unwrap_or_else(|| addr.to_string());
    let lease = leader::Lease::new(url, advertise, r.clone());
    lease.read().await?;
    let follower = follower::Serving::start(config, listener, lease.clone()).await?;
    let Some(epoch) = lease.acquire(stop).await else {
        follower.stop().await;
        anyhow::bail!("stopped while following");
    };
    tracing::info!(epoch, me = %lease.me, "took the lease: leading");
    let listener = follower.stop().await;
    let listener = match listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("listen {addr}: {e}"))?,
    };
    // A session of its own, made now (one made at start may have outlived
    // the database's restart).
    let (db, snap) = tokio::task::spawn_blocking(move || {
        let mut db = open()?.fence(epoch);
        let snap = crate::store::Store::load(&mut db);
        snap.map(|s| (db, s))
    })
    .await??;
    Ok((Writer::spawn(Box::new(db)), snap, listener, (lease, epoch)))
}

/// The gRPC server builder, with the config's TLS.
fn server_builder(cfg: &Config) -> anyhow::Result<tonic::transport::Server> {
    let mut builder = tonic::transport::Server::builder().timeout(std::time::Duration::from_secs(60));
    if let Some(tls) = &cfg.tls {
        let cert = std::fs::read(&tls.cert).map_err(|e| anyhow::anyhow!("tls.cert {}: {e}", tls.cert.display()))?;
        let key = std::fs::read(&tls.key).map_err(|e| anyhow::anyhow!("tls.key {}: {e}", tls.key.display()))?;
        builder = builder.tls_config(
            tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key)),
        )?;
    }
    Ok(builder)
}

/// Server reflection in both versions: `v1`, and `v1alpha` for the clients
/// that speak only it (Python's grpcio-reflection, Postman, older grpcurl).
fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection>,
    tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>,
)> {
    let build = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(greenfill_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    Ok((build().build_v1()?, build().build_v1alpha()?))
}

/// Serve as the leader (or the only replica) on `listener`.
async fn serve(
    state: Arc<State>,
    addr: std::net::SocketAddr,
    listener: tokio::net::TcpListener,
    lease: Option<(Arc<leader::Lease>, i64)>,
) -> anyhow::Result<Running> {
    use greenfill_proto::v1::agent_service_server::AgentServiceServer;
    use greenfill_proto::v1::job_service_server::JobServiceServer;
    use greenfill_proto::v1::plan_service_server::PlanServiceServer;

    // A zone unknown to its provider refuses the start; an outage does not.
    let first = state.carbon.probe(now()).await?;
    let cfg = &state.config;

    let users = (!cfg.insecure_local).then_some(cfg.user_tokens.as_slice());
    let agents = (!cfg.insecure_local).then_some(cfg.agent_tokens.as_slice());
    let l = &cfg.limits;
    let user_guard = auth::Guard::new(users, l.requests_per_second, l.burst, "user").with_users(&cfg.users);
    let plan_guard = user_guard.clone();
    let clock_guard = user_guard.clone();
    // Agents send telemetry every second each: their limit is per node.
    let kube = match &cfg.kubernetes {
        Some(k) => Some(start_kube(k.clone(), &state).await),
        None => None,
    };
    let agent_guard = auth::Guard::new(agents, 100, 1000, "agent")
        .with_node_tokens(&cfg.node_tokens)
        .with_kubernetes(kube)
        .per_connection();
    let max = l.max_message_bytes;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<JobServiceServer<jobs::Jobs>>().await;
    health.set_serving::<PlanServiceServer<jobs::Plans>>().await;
    health.set_serving::<AgentServiceServer<agents::Agents>>().await;
    let (reflection_v1, reflection_v1alpha) = reflection()?;

    let router = server_builder(cfg)?
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(tonic::service::interceptor::InterceptedService::new(
            JobServiceServer::new(jobs::Jobs(state.clone())).max_decoding_message_size(max),
            move |r| user_guard.check(r),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            PlanServiceServer::new(jobs::Plans(state.clone())).max_decoding_message_size(max),
            move |r| plan_guard.check(r),
        ))
        .add_service(tonic::service::interceptor::InterceptedService::new(
            AgentServiceServer::new(agents::Agents(state.clone())).max_decoding_message_size(max),
            move |r| agent_guard.check(r),
        ));
    // On the virtual clock (`greenfill sim replay`) rounds run inside Advance.
    let virtual_clock = greenfill_runtime::clock::is_virtual();
    let router = router.add_optional_service(virtual_clock.then(|| {
        tonic::service::interceptor::InterceptedService::new(
            pb::clock_service_server::ClockServiceServer::new(clock::Clock::new(state.clone())),
            move |r| clock_guard.check(r),
        )
    }));
    // TCP_NODELAY, as tonic's own `serve` sets it: without it a small answer (an
    // Advance, a command to an agent) waits out Nagle against a delayed ACK, ~40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = tokio::spawn(router.serve_with_incoming_shutdown(incoming, state.shutdown.clone().cancelled_owned()));
    if let Some(p) = &state.price {
        p.refresh(now()).await;
    }
    if virtual_clock {
        carbon::commit_first(&state, first).await;
    } else {
        state.tasks.spawn(price::run(state.clone()));
        state.tasks.spawn(carbon::run(state.clone(), first));
        state.tasks.spawn(planning::run(state.clone()));
    }
    tracing::info!(%addr, virtual_clock, epoch = state.epoch, insecure_local = state.config.insecure_local, "scheduler serving");
    Ok(Running { addr, state, server, lease })
}
