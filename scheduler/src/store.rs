//! Durable state: jobs and their history, nodes, undelivered commands, downsampled
//! telemetry and plans.
//!
//! The service keeps its working state in memory and writes every change through
//! a [`Store`] before it answers (a submission is acknowledged only once its batch
//! is committed). One writer thread owns the store and commits whatever has queued
//! up in a single transaction (group commit), so many concurrent submissions share
//! one fsync. [`Sqlite`] is the default (WAL, `synchronous = FULL`); the trait is
//! small so that a server database can back several replicas later.

pub mod postgres;

pub use postgres::Postgres;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path}: schema version {found} is newer than this scheduler knows ({known}); upgrade it")]
    TooNew { path: String, found: i64, known: i64 },
    #[error("database {target}: {source}")]
    Postgres {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("database {target}: no connection within {after:?} (is the server up, and is this its address?)")]
    Unreachable { target: String, after: std::time::Duration },
    #[error("not the leader any more: the lease's epoch is {now}, this replica's was {ours}")]
    Deposed { ours: i64, now: i64 },
    #[error("commit failed: {0}")]
    Commit(String),
    #[error("the store's writer has stopped")]
    WriterGone,
}

/// One change, applied in order within a batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Insert or replace a job (`body` = encoded `greenfill.v1.Job`).
    Job {
        seq: u64,
        id: String,
        request_id: String,
        state: i32,
        revision: u64,
        body: Vec<u8>,
    },
    /// One state change, kept as the job's history.
    Event {
        revision: u64,
        job_id: String,
        previous_state: i32,
        state: i32,
        time: i64,
        reason: String,
    },
    /// Insert or replace a node (`register` = encoded `greenfill.v1.Register`).
    Node {
        name: String,
        register: Vec<u8>,
        last_command_seq: u64,
        last_event_seq: u64,
        last_seen: i64,
    },
    /// A command for a node, kept until the node acknowledges it.
    Command {
        node: String,
        seq: u64,
        body: Vec<u8>,
    },
    /// The node applied every command up to `upto`.
    CommandsAcked {
        node: String,
        upto: u64,
    },
    /// Mean online use of a node over one telemetry bucket.
    Telemetry {
        node: String,
        bucket: i64,
        online_cpu: f64,
        online_memory: f64,
        samples: u32,
    },
    Plan {
        revision: u64,
        created_at: i64,
        body: Vec<u8>,
    },
    /// A node's power state (`body` = JSON of `greenfill_planner::power::NodePower`).
    NodePower {
        name: String,
        body: String,
    },
    /// A zone's last good carbon forecast (`body` = JSON of `greenfill_carbon::Persisted`).
    CarbonZone {
        zone: String,
        body: String,
    },
    /// An entry of the audit log: an agent registration (accepted or refused)
    /// or a cancel.
    Audit(AuditEntry),
    /// Retention: drop telemetry buckets before `telemetry_before` and plans
    /// older than the newest `keep_plans`.
    Prune {
        telemetry_before: i64,
        keep_plans: u32,
    },
}

/// Who did what to which node or job, when, from where, and whether it was let.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub time: i64,
    /// `register` or `cancel`.
    pub kind: String,
    /// The node or the job.
    pub subject: String,
    /// The user, or the agent's credential and instance.
    pub actor: String,
    /// The caller's address.
    pub address: String,
    pub accepted: bool,
    pub reason: String,
}

/// How many of the newest audit entries a start loads (and the service keeps).
pub const AUDIT_KEPT: usize = 10_000;

/// The newest [`AUDIT_KEPT`] audit entries, oldest first; the same text serves
/// SQLite and PostgreSQL.
pub(crate) const LOAD_AUDIT: &str = "SELECT time, kind, subject, actor, address, accepted, reason FROM
    (SELECT * FROM audit ORDER BY id DESC LIMIT 10000) AS newest ORDER BY id";

#[derive(Debug, Clone, PartialEq)]
pub struct StoredJob {
    pub seq: u64,
    pub request_id: String,
    pub body: Vec<u8>,
    /// The state before the job's latest change (from `job_events`; 0 when none).
    pub previous_state: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub name: String,
    pub register: Vec<u8>,
    pub last_command_seq: u64,
    pub last_event_seq: u64,
    pub last_seen: i64,
}

/// One node's stored telemetry.
#[derive(Debug, Default, PartialEq)]
pub struct NodeHistory {
    pub node: String,
    pub buckets: Vec<Bucket>,
}

/// Mean online use over one telemetry bucket starting at `at`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub at: i64,
    pub online_cpu: f64,
    pub online_memory: f64,
}

impl Snapshot {
    /// Add a bucket of `node`'s; rows come ordered by node, then time.
    pub fn push_telemetry(&mut self, node: &str, bucket: Bucket) {
        match self.telemetry.last_mut() {
            Some(h) if h.node == node => h.buckets.push(bucket),
            _ => self.telemetry.push(NodeHistory { node: node.to_owned(), buckets: vec![bucket] }),
        }
    }
}

/// Everything the service needs to start again where it stopped.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// In submission order.
    pub jobs: Vec<StoredJob>,
    pub revision: u64,
    pub nodes: Vec<StoredNode>,
    /// `(node, seq, body)`, unacknowledged, in seq order per node.
    pub commands: Vec<(String, u64, Vec<u8>)>,
    /// Each node's telemetry buckets, in time order (a node's whole history
    /// in one list: 14 days at 10,000 nodes is 40 M buckets).
    pub telemetry: Vec<NodeHistory>,
    pub plan: Option<(u64, Vec<u8>)>,
    /// `(node, power state JSON)`.
    pub power: Vec<(String, String)>,
    /// `(zone, JSON of greenfill_carbon::Persisted)`.
    pub carbon: Vec<(String, String)>,
    /// The newest audit entries, oldest first.
    pub audit: Vec<AuditEntry>,
}

pub trait Store: Send + 'static {
    fn load(&mut self) -> Result<Snapshot, StoreError>;
    /// Apply `batch` atomically and durably: all of it or none.
    fn commit(&mut self, batch: &[Write]) -> Result<(), StoreError>;
}

/// Every job in submission order with the state before its latest change, for a
/// watcher's compacted replay after a restart. The same text serves SQLite and PostgreSQL.
pub(crate) const LOAD_JOBS: &str = "SELECT seq, request_id, body,
    COALESCE((SELECT e.previous_state FROM job_events e WHERE e.job_id = jobs.id
              ORDER BY e.revision DESC LIMIT 1), 0)
    FROM jobs ORDER BY seq";

/// Versioned migrations; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        request_id TEXT NOT NULL UNIQUE,
        state INTEGER NOT NULL,
        revision INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE TABLE job_events (
        revision INTEGER PRIMARY KEY,
        job_id TEXT NOT NULL,
        previous_state INTEGER NOT NULL,
        state INTEGER NOT NULL,
        time INTEGER NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX job_events_by_job ON job_events (job_id, revision);
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        register BLOB NOT NULL,
        last_command_seq INTEGER NOT NULL,
        last_event_seq INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE commands (
        node TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        PRIMARY KEY (node, seq)
    );
    CREATE TABLE telemetry (
        node TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        online_cpu REAL NOT NULL,
        online_memory REAL NOT NULL,
        samples INTEGER NOT NULL,
        PRIMARY KEY (node, bucket)
    );
    CREATE TABLE plans (
        revision INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        body BLOB NOT NULL
    );",
    // 2: node power states (#14).
    "CREATE TABLE node_power (
        name TEXT PRIMARY KEY,
        body TEXT NOT NULL
    );",
    // 3: each grid zone's last good carbon forecast and its history (#16).
    "CREATE TABLE carbon_zones (
        zone TEXT PRIMARY KEY,
        body TEXT NOT NULL
    );",
    // 4: the audit log: registrations and cancels (#30).
    "CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time INTEGER NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        actor TEXT NOT NULL,
        address TEXT NOT NULL,
        accepted BOOLEAN NOT NULL,
        reason TEXT NOT NULL
    );",
];

/// SQLite in WAL mode, one file.
#[derive(Debug)]
pub struct Sqlite {
    path: PathBuf,
    conn: Connection,
}

#[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss, reason = "seqs and revisions stay far below 2^63")]
impl Sqlite {
    pub fn open(path: &Path) -> Result<Sqlite, StoreError> {
        let err = |source| StoreError::Sqlite { path: path.display().to_string(), source };
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(err)?;
        let mut db = Sqlite { path: path.to_owned(), conn };
        db.migrate()?;
        Ok(db)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sqlite { path: self.path.display().to_string(), source }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(self.err())?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::TooNew { path: self.path.display().to_string(), found: version, known });
        }
        let path = self.path.display().to_string();
        let err = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", i as i64 + 1).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    /// The schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(self.err())
    }
}

#[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss, reason = "seqs and revisions stay far below 2^63")]
impl Store for Sqlite {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        let e = self.err();
        let c = &self.conn;
        let mut snap = Snapshot::default();
        let mut q = c.prepare(LOAD_JOBS).map_err(&e)?;
        snap.jobs = q
            .query_map([], |r| {
                Ok(StoredJob {
                    seq: r.get::<_, i64>(0)? as u64,
                    request_id: r.get(1)?,
                    body: r.get(2)?,
                    previous_state: r.get(3)?,
                })
            })
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        let jobs_max: i64 = c.query_row("SELECT COALESCE(MAX(revision), 0) FROM jobs", [], |r| r.get(0)).map_err(&e)?;
        let events_max: i64 =
            c.query_row("SELECT COALESCE(MAX(revision), 0) FROM job_events", [], |r| r.get(0)).map_err(&e)?;
        snap.revision = jobs_max.max(events_max) as u64;
        let mut q = c
            .prepare("SELECT name, register, last_command_seq, last_event_seq, last_seen FROM nodes ORDER BY name")
            .map_err(&e)?;
        snap.nodes = q
            .query_map([], |r| {
                Ok(StoredNode {
                    name: r.get(0)?,
                    register: r.get(1)?,
                    last_command_seq: r.get::<_, i64>(2)? as u64,
                    last_event_seq: r.get::<_, i64>(3)? as u64,
                    last_seen: r.get(4)?,
                })
            })
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        let mut q = c.prepare("SELECT node, seq, body FROM commands ORDER BY node, seq").map_err(&e)?;
        snap.commands = q
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)))
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        let mut q = c
            .prepare("SELECT node, bucket, online_cpu, online_memory FROM telemetry ORDER BY node, bucket")
            .map_err(&e)?;
        let mut rows = q.query([]).map_err(&e)?;
        while let Some(r) = rows.next().map_err(&e)? {
            let node: String = r.get(0).map_err(&e)?;
            let bucket = Bucket {
                at: r.get(1).map_err(&e)?,
                online_cpu: r.get(2).map_err(&e)?,
                online_memory: r.get(3).map_err(&e)?,
            };
            snap.push_telemetry(&node, bucket);
        }
        snap.plan = c
            .query_row("SELECT revision, body FROM plans ORDER BY revision DESC LIMIT 1", [], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get(1)?))
            })
            .optional()
            .map_err(&e)?;
        let mut q = c.prepare("SELECT name, body FROM node_power ORDER BY name").map_err(&e)?;
        snap.power =
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(&e)?.collect::<Result<_, _>>().map_err(&e)?;
        let mut q = c.prepare("SELECT zone, body FROM carbon_zones ORDER BY zone").map_err(&e)?;
        snap.carbon =
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(&e)?.collect::<Result<_, _>>().map_err(&e)?;
        let mut q = c.prepare(LOAD_AUDIT).map_err(&e)?;
        snap.audit = q
            .query_map([], |r| {
                Ok(AuditEntry {
                    time: r.get(0)?,
                    kind: r.get(1)?,
                    subject: r.get(2)?,
                    actor: r.get(3)?,
                    address: r.get(4)?,
                    accepted: r.get(5)?,
                    reason: r.get(6)?,
                })
            })
            .map_err(&e)?
            .collect::<Result<_, _>>()
            .map_err(&e)?;
        Ok(snap)
    }

    fn commit(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        let path = self.path.display().to_string();
        let e = |source| StoreError::Sqlite { path: path.clone(), source };
        let tx = self.conn.transaction().map_err(e)?;
        for w in batch {
            match w {
                Write::Job { seq, id, request_id, state, revision, body } => tx
                    .prepare_cached(
                        "INSERT INTO jobs (seq, id, request_id, state, revision, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (seq) DO UPDATE SET state = ?4, revision = ?5, body = ?6",
                    )
                    .and_then(|mut s| s.execute(params![*seq as i64, id, request_id, state, *revision as i64, body])),
                Write::Event { revision, job_id, previous_state, state, time, reason } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO job_events (revision, job_id, previous_state, state, time, reason)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .and_then(|mut s| s.execute(params![*revision as i64, job_id, previous_state, state, time, reason]))
                }
                Write::Node { name, register, last_command_seq, last_event_seq, last_seen } => {
                    tx.prepare_cached("INSERT OR REPLACE INTO nodes VALUES (?1, ?2, ?3, ?4, ?5)").and_then(|mut s| {
                        s.execute(params![name, register, *last_command_seq as i64, *last_event_seq as i64, last_seen])
                    })
                }
                Write::Command { node, seq, body } => tx
                    .prepare_cached("INSERT OR REPLACE INTO commands VALUES (?1, ?2, ?3)")
                    .and_then(|mut s| s.execute(params![node, *seq as i64, body])),
                Write::CommandsAcked { node, upto } => tx
                    .prepare_cached("DELETE FROM commands WHERE node = ?1 AND seq <= ?2")
                    .and_then(|mut s| s.execute(params![node, *upto as i64])),
                Write::Telemetry { node, bucket, online_cpu, online_memory, samples } => tx
                    .prepare_cached("INSERT OR REPLACE INTO telemetry VALUES (?1, ?2, ?3, ?4, ?5)")
                    .and_then(|mut s| s.execute(params![node, bucket, online_cpu, online_memory, samples])),
                Write::Plan { revision, created_at, body } => tx
                    .prepare_cached("INSERT OR REPLACE INTO plans VALUES (?1, ?2, ?3)")
                    .and_then(|mut s| s.execute(params![*revision as i64, created_at, body])),
                Write::NodePower { name, body } => tx
                    .prepare_cached("INSERT OR REPLACE INTO node_power VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![name, body])),
                Write::CarbonZone { zone, body } => tx
                    .prepare_cached("INSERT OR REPLACE INTO carbon_zones VALUES (?1, ?2)")
                    .and_then(|mut s| s.execute(params![zone, body])),
                Write::Audit(a) => tx
                    .prepare_cached(
                        "INSERT INTO audit (time, kind, subject, actor, address, accepted, reason)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .and_then(|mut s| {
                        s.execute(params![a.time, a.kind, a.subject, a.actor, a.address, a.accepted, a.reason])
                    }),
                Write::Prune { telemetry_before, keep_plans } => {
                    tx.execute("DELETE FROM telemetry WHERE bucket < ?1", params![telemetry_before]).and_then(|_| {
                        tx.execute(
                            "DELETE FROM plans WHERE revision <= (SELECT COALESCE(MAX(revision), 0) FROM plans) - ?1",
                            params![keep_plans],
                        )
                    })
                }
            }
            .map_err(e)?;
        }
        tx.commit().map_err(e)
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The single writer: batches queued writes into one transaction each.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Queued>,
    thread: std::sync::Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// What the writer thread is handed, in order.
enum Queued {
    Batch(Vec<Write>, Reply),
    /// Commit everything queued before this, then stop.
    Close,
}

impl Writer {
    /// Start the writer thread; it runs until [`Writer::close`] or until the
    /// `Writer` is dropped.
    pub fn spawn(mut store: Box<dyn Store>) -> Writer {
        let (tx, rx) = mpsc::channel::<Queued>();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let mut closing = false;
                while !closing {
                    let Ok(Queued::Batch(mut batch, first)) = rx.recv() else { break };
                    let mut replies = vec![first];
                    // Group commit: take whatever else is already queued.
                    while replies.len() < 4096 {
                        match rx.try_recv() {
                            Ok(Queued::Batch(w, r)) => {
                                batch.extend(w);
                                replies.push(r);
                            }
                            Ok(Queued::Close) => {
                                closing = true;
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let started = std::time::Instant::now();
                    let result = store.commit(&batch).map_err(|e| e.to_string());
                    metrics::histogram!("greenfill_store_commit_seconds").record(started.elapsed().as_secs_f64());
                    #[allow(clippy::cast_precision_loss, reason = "a count")]
                    metrics::histogram!("greenfill_store_commit_batch").record(replies.len() as f64);
                    if let Err(e) = &result {
                        tracing::error!(error = %e, writes = batch.len(), "commit failed");
                    }
                    for r in replies {
                        let _ = r.send(result.clone());
                    }
                }
            })
            .expect("spawning the store writer thread");
        Writer { tx, thread: std::sync::Arc::new(std::sync::Mutex::new(Some(thread))) }
    }

    /// Commit everything queued so far, then stop the thread and wait for it.
    /// Batches queued later are refused (their receivers report the writer gone).
    pub fn close(&self) {
        let _ = self.tx.send(Queued::Close);
        let thread = self.thread.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Queue `batch`; the receiver answers once it is durable (or failed).
    /// Batches commit in the order they are queued.
    pub fn queue(&self, batch: Vec<Write>) -> tokio::sync::oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        // If the writer is gone, `tx` is dropped with the message and the receiver
        // reports it.
        let _ = self.tx.send(Queued::Batch(batch, tx));
        rx
    }

    /// Queue `batch` and wait until it is durable.
    pub async fn commit(&self, batch: Vec<Write>) -> Result<(), StoreError> {
        match self.queue(batch).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Commit(e)),
            Err(_) => Err(StoreError::WriterGone),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_versioned_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let db = Sqlite::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        drop(db);
        // Opening again runs nothing new and keeps the data.
        let mut db = Sqlite::open(&path).unwrap();
        db.commit(&[Write::Plan { revision: 1, created_at: 0, body: vec![1, 2] }]).unwrap();
        drop(db);
        let mut db = Sqlite::open(&path).unwrap();
        assert_eq!(db.load().unwrap().plan, Some((1, vec![1, 2])));
        db.conn.pragma_update(None, "user_version", 99).unwrap();
        drop(db);
        match Sqlite::open(&path) {
            Err(StoreError::TooNew { found: 99, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn telemetry_loads_grouped_by_node_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&dir.path().join("g.db")).unwrap();
        let t = |node: &str, bucket, cpu| Write::Telemetry {
            node: node.into(),
            bucket,
            online_cpu: cpu,
            online_memory: 1.0,
            samples: 1,
        };
        db.commit(&[t("n", 600, 2.0), t("m", 300, 0.5), t("n", 300, 1.0)]).unwrap();
        let b = |at, online_cpu| Bucket { at, online_cpu, online_memory: 1.0 };
        assert_eq!(
            db.load().unwrap().telemetry,
            vec![
                NodeHistory { node: "m".into(), buckets: vec![b(300, 0.5)] },
                NodeHistory { node: "n".into(), buckets: vec![b(300, 1.0), b(600, 2.0)] },
            ]
        );
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Sqlite::open(&dir.path().join("g.db")).unwrap();
        let job = |seq, id: &str, rid: &str| Write::Job {
            seq,
            id: id.into(),
            request_id: rid.into(),
            state: 1,
            revision: seq,
            body: vec![],
        };
        db.commit(&[job(1, "a", "ra")]).unwrap();
        // The second write reuses request id "ra" (UNIQUE): the whole batch fails.
        assert!(db.commit(&[job(2, "b", "rb"), job(3, "c", "ra")]).is_err());
        let snap = db.load().unwrap();
        assert_eq!(snap.jobs.len(), 1, "the batch's first write must not survive");
    }
}
