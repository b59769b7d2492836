//! PostgreSQL: the store of replicated schedulers. The same tables as SQLite's,
//! its own numbered migrations (in `greenfill_schema`), and the leader lease
//! (`greenfill_lease`, see `service::leader`).
//!
//! Invariant (fencing): a store opened for a leader ([`Postgres::fence`]) reads
//! the lease row `FOR SHARE` first in every commit and aborts unless the epoch
//! is its own. A candidate takes the lease by incrementing the epoch in an
//! `UPDATE`, which waits for those shares: once a new epoch is committed, no
//! commit of an older one can follow. Sessions time out when idle inside a
//! transaction, so a frozen leader's share is released.
//!
//! A group commit is one transaction whose statements are pipelined (sent
//! without waiting for each answer, executed in order).

use super::{Bucket, Snapshot, StoreError, StoredJob, StoredNode, Write};
use std::time::Duration;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

/// Versioned migrations; `greenfill_schema.version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema (SQLite's 1).
    "CREATE TABLE jobs (
        seq BIGINT PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        request_id TEXT NOT NULL UNIQUE,
        state INTEGER NOT NULL,
        revision BIGINT NOT NULL,
        body BYTEA NOT NULL
    );
    CREATE TABLE job_events (
        revision BIGINT PRIMARY KEY,
        job_id TEXT NOT NULL,
        previous_state INTEGER NOT NULL,
        state INTEGER NOT NULL,
        time BIGINT NOT NULL,
        reason TEXT NOT NULL
    );
    CREATE INDEX job_events_by_job ON job_events (job_id, revision);
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        register BYTEA NOT NULL,
        last_command_seq BIGINT NOT NULL,
        last_event_seq BIGINT NOT NULL,
        last_seen BIGINT NOT NULL
    );
    CREATE TABLE commands (
        node TEXT NOT NULL,
        seq BIGINT NOT NULL,
        body BYTEA NOT NULL,
        PRIMARY KEY (node, seq)
    );
    CREATE TABLE telemetry (
        node TEXT NOT NULL,
        bucket BIGINT NOT NULL,
        online_cpu DOUBLE PRECISION NOT NULL,
        online_memory DOUBLE PRECISION NOT NULL,
        samples BIGINT NOT NULL,
        PRIMARY KEY (node, bucket)
    );
    CREATE TABLE plans (
        revision BIGINT PRIMARY KEY,
        created_at BIGINT NOT NULL,
        body BYTEA NOT NULL
    );",
    // 2: node power states (SQLite's 2).
    "CREATE TABLE node_power (name TEXT PRIMARY KEY, body TEXT NOT NULL);",
    // 3: carbon zones (SQLite's 3).
    "CREATE TABLE carbon_zones (zone TEXT PRIMARY KEY, body TEXT NOT NULL);",
    // 4: the leader lease: one row; the epoch is the fencing token.
    "CREATE TABLE greenfill_lease (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        epoch BIGINT NOT NULL,
        holder TEXT NOT NULL,
        address TEXT NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    INSERT INTO greenfill_lease VALUES (1, 0, '', '', '-infinity');",
    // 5: the audit log (SQLite's 4).
    "CREATE TABLE audit (
        id BIGSERIAL PRIMARY KEY,
        time BIGINT NOT NULL,
        kind TEXT NOT NULL,
        subject TEXT NOT NULL,
        actor TEXT NOT NULL,
        address TEXT NOT NULL,
        accepted BOOLEAN NOT NULL,
        reason TEXT NOT NULL
    );",
];

/// Serialises migrations of replicas starting at once (only for that).
const MIGRATION_LOCK: i64 = 0x6772_6565_6e66;

/// `url` with its password (if any) replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Connect with the URL's TLS mode (`sslmode=disable` plain; otherwise TLS
/// when the server offers it, verified against the web PKI roots), within
/// `timeout`. `options` are session settings (`-c name=value …`). The
/// connection runs on the current runtime; the `JoinHandle` ends with it.
pub async fn connect(url: &str, timeout: Duration, options: &str) -> Result<Client, StoreError> {
    let target = redact(url);
    let mut cfg: tokio_postgres::Config =
        url.parse().map_err(|e| StoreError::Postgres { target: target.clone(), source: e })?;
    cfg.connect_timeout(timeout).keepalives_idle(Duration::from_secs(5)).application_name("greenfill-scheduler");
    if !options.is_empty() {
        cfg.options(options);
    }
    let connected = if cfg.get_ssl_mode() == tokio_postgres::config::SslMode::Disable {
        tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls)).await.map(|r| {
            r.map(|(client, conn)| {
                tokio::spawn(conn);
                client
            })
        })
    } else {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config());
        tokio::time::timeout(timeout, cfg.connect(tls)).await.map(|r| {
            r.map(|(client, conn)| {
                tokio::spawn(conn);
                client
            })
        })
    };
    match connected {
        Err(_) => Err(StoreError::Unreachable { target, after: timeout }),
        Ok(r) => r.map_err(|source| StoreError::Postgres { target, source }),
    }
}

/// TLS to the database: the web PKI roots, rustls with ring.
pub fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Run the migrations this database lacks; refuse one newer than we know.
pub async fn migrate(client: &mut Client, target: &str) -> Result<i64, StoreError> {
    let e = |source| StoreError::Postgres { target: target.to_owned(), source };
    let tx = client.transaction().await.map_err(e)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(e)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS greenfill_schema (version BIGINT NOT NULL)").await.map_err(e)?;
    let version: i64 = match tx.query_opt("SELECT version FROM greenfill_schema", &[]).await.map_err(e)? {
        Some(row) => row.get(0),
        None => {
            tx.execute("INSERT INTO greenfill_schema VALUES (0)", &[]).await.map_err(e)?;
            0
        }
    };
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::TooNew { path: target.to_owned(), found: version, known });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(usize::try_from(version).unwrap_or(0)) {
        tx.batch_execute(sql).await.map_err(e)?;
        let v = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.execute("UPDATE greenfill_schema SET version = $1", &[&v]).await.map_err(e)?;
    }
    tx.commit().await.map_err(e)?;
    Ok(known)
}

/// One statement per kind of write, prepared once.
struct Statements {
    job: Statement,
    event: Statement,
    node: Statement,
    command: Statement,
    acked: Statement,
    telemetry: Statement,
    plan: Statement,
    power: Statement,
    carbon: Statement,
    prune_telemetry: Statement,
    prune_plans: Statement,
    audit: Statement,
    /// Fails (division by zero) unless the lease's epoch is `$1`, which aborts
    /// the transaction it runs in; a missing lease row fails too.
    fence: Statement,
}

impl Statements {
    async fn prepare(c: &Client) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            job: c
                .prepare(
                    "INSERT INTO jobs (seq, id, request_id, state, revision, body) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (seq) DO UPDATE SET state = $4, revision = $5, body = $6",
                )
                .await?,
            event: c
                .prepare(
                    "INSERT INTO job_events VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (revision) DO UPDATE
                     SET job_id = $2, previous_state = $3, state = $4, time = $5, reason = $6",
                )
                .await?,
            node: c
                .prepare(
                    "INSERT INTO nodes VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE
                     SET register = $2, last_command_seq = $3, last_event_seq = $4, last_seen = $5",
                )
                .await?,
            command: c
                .prepare("INSERT INTO commands VALUES ($1, $2, $3) ON CONFLICT (node, seq) DO UPDATE SET body = $3")
                .await?,
            acked: c.prepare("DELETE FROM commands WHERE node = $1 AND seq <= $2").await?,
            telemetry: c
                .prepare(
                    "INSERT INTO telemetry VALUES ($1, $2, $3, $4, $5) ON CONFLICT (node, bucket) DO UPDATE
                     SET online_cpu = $3, online_memory = $4, samples = $5",
                )
                .await?,
            plan: c
                .prepare(
                    "INSERT INTO plans VALUES ($1, $2, $3) ON CONFLICT (revision) DO UPDATE
                     SET created_at = $2, body = $3",
                )
                .await?,
            power: c
                .prepare("INSERT INTO node_power VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET body = $2")
                .await?,
            carbon: c
                .prepare("INSERT INTO carbon_zones VALUES ($1, $2) ON CONFLICT (zone) DO UPDATE SET body = $2")
                .await?,
            prune_telemetry: c.prepare("DELETE FROM telemetry WHERE bucket < $1").await?,
            audit: c
                .prepare(
                    "INSERT INTO audit (time, kind, subject, actor, address, accepted, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .await?,
            fence: c
                .prepare(
                    "SELECT 1 / COALESCE((SELECT CASE WHEN epoch = $1 THEN 1 ELSE 0 END
                                          FROM greenfill_lease WHERE id = 1 FOR SHARE), 0)",
                )
                .await?,
            prune_plans: c
                .prepare("DELETE FROM plans WHERE revision <= (SELECT COALESCE(MAX(revision), 0) FROM plans) - $1")
                .await?,
        })
    }
}

/// The PostgreSQL store. Its methods block (the writer thread runs them); the
/// connection itself runs on a runtime of its own.
pub struct Postgres {
    rt: std::sync::Arc<tokio::runtime::Runtime>,
    client: Client,
    statements: Statements,
    target: String,
    /// The leader's epoch: every commit is fenced by it (`None`: not fenced,
    /// for tools and tests).
    epoch: Option<i64>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres").field("target", &self.target).field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

impl Postgres {
    /// Connect (within `timeout`) and migrate. `idle_timeout` ends a session
    /// left idle inside a transaction (a frozen process), releasing its locks.
    /// Call from outside a runtime (it has its own).
    pub fn open(url: &str, timeout: Duration, idle_timeout: Duration) -> Result<Postgres, StoreError> {
        let target = redact(url);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("store-postgres")
            .build()
            .map_err(|e| StoreError::Commit(format!("a runtime for the store: {e}")))?;
        let ms = idle_timeout.as_millis().max(100);
        let options = format!("-c idle_in_transaction_session_timeout={ms} -c lock_timeout={ms}");
        let (client, statements) = rt.block_on(async {
            // The connection task must live on this runtime; spawn it there.
            let mut client = connect(url, timeout, &options).await?;
            migrate(&mut client, &target).await?;
            let statements = Statements::prepare(&client)
                .await
                .map_err(|source| StoreError::Postgres { target: target.clone(), source })?;
            Ok::<_, StoreError>((client, statements))
        })?;
        Ok(Postgres { rt: std::sync::Arc::new(rt), client, statements, target, epoch: None })
    }

    /// Fence every later commit with the lease epoch `epoch`.
    #[must_use]
    pub fn fence(mut self, epoch: i64) -> Postgres {
        self.epoch = Some(epoch);
        self
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> StoreError + '_ {
        |source| StoreError::Postgres { target: self.target.clone(), source }
    }

    /// The schema version of the database.
    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        let row =
            self.rt.block_on(self.client.query_one("SELECT version FROM greenfill_schema", &[])).map_err(self.err())?;
        row.try_get(0).map_err(self.err())
    }

    async fn snapshot(&self) -> Result<Snapshot, tokio_postgres::Error> {
        let c = &self.client;
        let mut snap = Snapshot::default();
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        for r in c.query(super::LOAD_JOBS, &[]).await? {
            snap.jobs.push(StoredJob {
                seq: u(r.try_get(0)?),
                request_id: r.try_get(1)?,
                body: r.try_get(2)?,
                previous_state: r.try_get(3)?,
            });
        }
        let r = c
            .query_one(
                "SELECT GREATEST((SELECT COALESCE(MAX(revision), 0) FROM jobs),
                                 (SELECT COALESCE(MAX(revision), 0) FROM job_events))",
                &[],
            )
            .await?;
        snap.revision = u(r.try_get(0)?);
        for r in c
            .query("SELECT name, register, last_command_seq, last_event_seq, last_seen FROM nodes ORDER BY name", &[])
            .await?
        {
            snap.nodes.push(StoredNode {
                name: r.try_get(0)?,
                register: r.try_get(1)?,
                last_command_seq: u(r.try_get(2)?),
                last_event_seq: u(r.try_get(3)?),
                last_seen: r.try_get(4)?,
            });
        }
        for r in c.query("SELECT node, seq, body FROM commands ORDER BY node, seq", &[]).await? {
            snap.commands.push((r.try_get(0)?, u(r.try_get(1)?), r.try_get(2)?));
        }
        // Streamed: `query` would hold every row (40 M at 10,000 nodes × 14
        // days, ~6 GB) before the first is read.
        let rows = c
            .query_raw(
                "SELECT node, bucket, online_cpu, online_memory FROM telemetry ORDER BY node, bucket",
                std::iter::empty::<&(dyn tokio_postgres::types::ToSql + Sync)>(),
            )
            .await?;
        futures_util::pin_mut!(rows);
        while let Some(r) = futures_util::TryStreamExt::try_next(&mut rows).await? {
            let node: &str = r.try_get(0)?;
            let bucket = Bucket { at: r.try_get(1)?, online_cpu: r.try_get(2)?, online_memory: r.try_get(3)? };
            snap.push_telemetry(node, bucket);
        }
        if let Some(r) = c.query_opt("SELECT revision, body FROM plans ORDER BY revision DESC LIMIT 1", &[]).await? {
            snap.plan = Some((u(r.try_get(0)?), r.try_get(1)?));
        }
        for r in c.query("SELECT name, body FROM node_power ORDER BY name", &[]).await? {
            snap.power.push((r.try_get(0)?, r.try_get(1)?));
        }
        for r in c.query("SELECT zone, body FROM carbon_zones ORDER BY zone", &[]).await? {
            snap.carbon.push((r.try_get(0)?, r.try_get(1)?));
        }
        for r in c.query(super::LOAD_AUDIT, &[]).await? {
            snap.audit.push(super::AuditEntry {
                time: r.try_get(0)?,
                kind: r.try_get(1)?,
                subject: r.try_get(2)?,
                actor: r.try_get(3)?,
                address: r.try_get(4)?,
                accepted: r.try_get(5)?,
                reason: r.try_get(6)?,
            });
        }
        Ok(snap)
    }

    /// One transaction in one round trip: BEGIN, the fence, every statement
    /// and COMMIT are sent before the first answer is read, and run in order.
    /// An error in any of them aborts the transaction, and the COMMIT that
    /// follows it in the same pipeline then rolls it back, so nothing is
    /// written and the session is out of the transaction either way.
    async fn apply(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        let target = self.target.clone();
        let e = |source| StoreError::Postgres { target: target.clone(), source };
        let (c, s) = (&self.client, &self.statements);
        let ints: Vec<[i64; 2]> = batch.iter().map(ints).collect();
        let calls: Vec<Call<'_>> = batch.iter().zip(&ints).flat_map(|(w, n)| bind(w, n, s)).collect();
        let ours = self.epoch;
        let fence: Vec<Param<'_>> = ours.as_ref().map(|epoch| epoch as Param<'_>).into_iter().collect();
        let mut steps: Vec<Step<'_>> = vec![Box::pin(async { c.batch_execute("BEGIN").await.map(|()| 0) })];
        if ours.is_some() {
            steps.push(Box::pin(c.execute(&s.fence, &fence)));
        }
        steps.extend(calls.iter().map(|(stmt, params)| -> Step<'_> { Box::pin(c.execute(*stmt, params)) }));
        steps.push(Box::pin(async { c.batch_execute("COMMIT").await.map(|()| 0) }));
        // join_all polls every future once, in order, before any answer: that
        // first poll is what sends each request (tokio-postgres pipelines them).
        let answers = futures_util::future::join_all(steps).await;
        let Some((step, err)) = answers.into_iter().enumerate().find_map(|(i, r)| r.err().map(|err| (i, err))) else {
            return Ok(());
        };
        let deposed = step == 1 && err.code() == Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO);
        match ours {
            Some(ours) if deposed => {
                let row = c.query_opt("SELECT epoch FROM greenfill_lease WHERE id = 1", &[]).await.map_err(e)?;
                let now = row.map(|r| r.try_get(0)).transpose().map_err(e)?.unwrap_or(-1);
                Err(StoreError::Deposed { ours, now })
            }
            _ => Err(e(err)),
        }
    }
}

/// One request of a commit's pipeline, answering the rows it touched.
type Step<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a>>;

type Param<'a> = &'a (dyn ToSql + Sync);
type Call<'a> = (&'a Statement, Vec<Param<'a>>);

/// A write's unsigned numbers as PostgreSQL's `BIGINT`s (referenced by [`bind`]).
#[allow(clippy::cast_possible_wrap, reason = "seqs and revisions stay far below 2^63")]
fn ints(w: &Write) -> [i64; 2] {
    match w {
        Write::Job { seq, revision, .. } => [*seq as i64, *revision as i64],
        Write::Event { revision, .. } | Write::Plan { revision, .. } => [*revision as i64, 0],
        Write::Node { last_command_seq, last_event_seq, .. } => [*last_command_seq as i64, *last_event_seq as i64],
        Write::Command { seq, .. } => [*seq as i64, 0],
        Write::CommandsAcked { upto, .. } => [*upto as i64, 0],
        Write::Telemetry { samples, .. } => [i64::from(*samples), 0],
        Write::Prune { keep_plans, .. } => [i64::from(*keep_plans), 0],
        Write::NodePower { .. } | Write::CarbonZone { .. } | Write::Audit(_) => [0, 0],
    }
}

/// The statements of one write with their parameters.
fn bind<'a>(w: &'a Write, n: &'a [i64; 2], s: &'a Statements) -> Vec<Call<'a>> {
    match w {
        Write::Job { id, request_id, state, body, .. } => {
            vec![(&s.job, vec![&n[0], id, request_id, state, &n[1], body])]
        }
        Write::Event { job_id, previous_state, state, time, reason, .. } => {
            vec![(&s.event, vec![&n[0], job_id, previous_state, state, time, reason])]
        }
        Write::Node { name, register, last_seen, .. } => {
            vec![(&s.node, vec![name, register, &n[0], &n[1], last_seen])]
        }
        Write::Command { node, body, .. } => vec![(&s.command, vec![node, &n[0], body])],
        Write::CommandsAcked { node, .. } => vec![(&s.acked, vec![node, &n[0]])],
        Write::Telemetry { node, bucket, online_cpu, online_memory, .. } => {
            vec![(&s.telemetry, vec![node, bucket, online_cpu, online_memory, &n[0]])]
        }
        Write::Plan { created_at, body, .. } => vec![(&s.plan, vec![&n[0], created_at, body])],
        Write::NodePower { name, body } => vec![(&s.power, vec![name, body])],
        Write::CarbonZone { zone, body } => vec![(&s.carbon, vec![zone, body])],
        Write::Audit(a) => {
            vec![(&s.audit, vec![&a.time, &a.kind, &a.subject, &a.actor, &a.address, &a.accepted, &a.reason])]
        }
        Write::Prune { telemetry_before, .. } => {
            vec![(&s.prune_telemetry, vec![telemetry_before]), (&s.prune_plans, vec![&n[0]])]
        }
    }
}

impl super::Store for Postgres {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.rt.block_on(self.snapshot()).map_err(self.err())
    }

    fn commit(&mut self, batch: &[Write]) -> Result<(), StoreError> {
        let rt = self.rt.clone();
        rt.block_on(self.apply(batch))
    }
}
