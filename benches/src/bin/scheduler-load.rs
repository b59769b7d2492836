//! Load on the real scheduler service, which runs in a child process so that its
//! CPU is measured apart from the load generator's:
//!
//! - `submit`: durable submissions per second from N concurrent clients;
//! - `agents`: N simulated agents streaming 1 Hz telemetry, the scheduler's CPU;
//! - `plan`: plan-loop latency with N agents connected and M queued jobs.
//!
//! Prints one JSON object with the figures (see BENCHMARKS.md).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use greenfill_proto::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use pb::job_service_client::JobServiceClient;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Durable submissions/s.
    Submit {
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Requests each client keeps in flight (1 = one at a time).
        #[arg(long, default_value_t = 1)]
        in_flight: usize,
        #[arg(long, default_value_t = 20_000)]
        jobs: usize,
        /// Which stores, in one run: sqlite, postgres, or both (ratio printed).
        #[arg(long, default_value = "both")]
        store: Stores,
    },
    /// Scheduler CPU with N agents at 1 Hz.
    Agents {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        #[arg(long, default_value = "sqlite")]
        store: Stores,
    },
    /// Plan-loop latency with N agents and M queued jobs.
    Plan {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 10_000)]
        jobs: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Days of 5-min telemetry history per node, written to the store before
        /// the service starts (so forecasts run on real-length histories).
        #[arg(long, default_value_t = 14)]
        history_days: u32,
        /// The scheduler's store: sqlite or postgres (a server the run starts).
        #[arg(long, default_value = "sqlite")]
        store: Stores,
    },
    /// (internal) Run the service in this process.
    Serve {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        metrics: std::net::SocketAddr,
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "60s")]
        interval: String,
        /// A postgres:// URL (default: SQLite in --data-dir).
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Stores {
    Sqlite,
    Postgres,
    Both,
}

impl Stores {
    /// Per run, in order: whether it is on PostgreSQL (else SQLite).
    fn each(self) -> Vec<bool> {
        match self {
            Stores::Sqlite => vec![false],
            Stores::Postgres => vec![true],
            Stores::Both => vec![false, true],
        }
    }
}

struct Server {
    child: Child,
    port: u16,
    metrics: u16,
    _dir: tempfile::TempDir,
    /// The PostgreSQL server behind it, if any (stopped after the child).
    _pg: Option<greenfill_benches::pg::PgServer>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL the scheduler, then count the jobs its store holds: every
    /// acknowledged submission must be there.
    fn kill_and_count(&mut self) -> Result<usize> {
        self.child.kill()?;
        self.child.wait()?;
        let (db, pg) =
            (self._dir.path().join("greenfill.db"), self._pg.as_ref().map(greenfill_benches::pg::PgServer::url));
        // The PostgreSQL store runs its own runtime: open it off this one.
        let stored = std::thread::spawn(move || -> Result<usize> {
            use greenfill_scheduler::store::{Postgres, Sqlite, Store};
            let snap = match pg {
                Some(url) => Postgres::open(&url, Duration::from_secs(10), Duration::from_secs(10))?.load()?,
                None => Sqlite::open(&db)?.load()?,
            };
            Ok(snap.jobs.len())
        });
        stored.join().map_err(|_| anyhow::anyhow!("the store reader panicked"))?
    }
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0)).unwrap_or(0)
}

fn spawn_server(interval: &str, postgres: bool) -> Result<Server> {
    let pg = if postgres { Some(greenfill_benches::pg::PgServer::start()?) } else { None };
    let mut srv =
        spawn_server_in(interval, tempfile::tempdir()?, pg.as_ref().map(greenfill_benches::pg::PgServer::url))?;
    srv._pg = pg;
    Ok(srv)
}

/// Nodes `sim-0000…` with `days` of 5-min online-CPU history (a daily wave plus a
/// per-node level), written straight into the store: SQLite in `dir`, or the
/// PostgreSQL server at `pg` (its telemetry generated by the server itself).
fn seed_history(dir: &std::path::Path, pg: Option<&str>, nodes: usize, days: u32) -> Result<()> {
    use greenfill_scheduler::store::{Postgres, Sqlite, Store, Write};
    let now = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs())?;
    let end = now - now.rem_euclid(300);
    let buckets = i64::from(days) * 288;
    let Some(url) = pg else {
        let mut db = Sqlite::open(&dir.join("greenfill.db"))?;
        for a in 0..nodes {
            let mut batch = vec![node_write(a, now)];
            for b in 0..buckets {
                let t = end - (buckets - b) * 300;
                batch.push(Write::Telemetry {
                    node: node_name(a),
                    bucket: t,
                    online_cpu: seeded_online(a, b, t),
                    online_memory: 16e9,
                    samples: 300,
                });
            }
            db.commit(&batch)?;
        }
        return Ok(());
    };
    let url = url.to_owned();
    // The store and the client below run their own runtimes: off this one.
    std::thread::spawn(move || -> Result<()> {
        let mut db = Postgres::open(&url, Duration::from_secs(10), Duration::from_secs(600))?;
        for chunk in (0..nodes).collect::<Vec<_>>().chunks(1000) {
            db.commit(&chunk.iter().map(|&a| node_write(a, now)).collect::<Vec<_>>())?;
        }
        drop(db);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            // `seeded_online`, in SQL, one statement per 1,000 nodes.
            let sql = "INSERT INTO telemetry (node, bucket, online_cpu, online_memory, samples)
                SELECT 'sim-' || CASE WHEN a < 1000 THEN lpad(a::text, 4, '0') ELSE a::text END,
                       $1::bigint - ($2::bigint - b) * 300,
                       4.0 + (a % 7) + 3.0 * (1.0 - cos(((($1::bigint - ($2::bigint - b) * 300) % 86400)::float8
                           / 86400.0) * 2.0 * pi())) + ((b * 7919 + a * 104729) % 100)::float8 / 100.0,
                       16e9, 300
                FROM generate_series($3::bigint, $4::bigint) a, generate_series(0::bigint, $2::bigint - 1) b";
            let n = i64::try_from(nodes)?;
            for lo in (0..n).step_by(1000) {
                client.execute(sql, &[&end, &buckets, &lo, &(lo + 999).min(n - 1)]).await?;
            }
            client.execute("ANALYZE telemetry", &[]).await?;
            Ok::<_, anyhow::Error>(())
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the PostgreSQL seeder panicked"))?
}

fn node_name(a: usize) -> String {
    format!("sim-{a:04}")
}

fn node_write(a: usize, now: i64) -> greenfill_scheduler::store::Write {
    use prost::Message;
    let reg = pb::Register {
        node_name: node_name(a),
        pool: "web".into(),
        cpu_cores: 32.0,
        memory_bytes: 128 << 30,
        ..Default::default()
    };
    greenfill_scheduler::store::Write::Node {
        name: node_name(a),
        register: reg.encode_to_vec(),
        last_command_seq: 0,
        last_event_seq: 0,
        last_seen: now,
    }
}

/// Node `a`'s online cores in bucket `b` (starting at `t`): 4–10 cores of
/// level, a daily wave of up to 6 and a deterministic jitter under 1.
#[allow(clippy::cast_precision_loss, reason = "small numbers")]
fn seeded_online(a: usize, b: i64, t: i64) -> f64 {
    let day = (t.rem_euclid(86_400) as f64 / 86_400.0) * std::f64::consts::TAU;
    4.0 + (a % 7) as f64 + 3.0 * (1.0 - day.cos()) + ((b * 7919 + a as i64 * 104_729) % 100) as f64 / 100.0
}

fn spawn_server_in(interval: &str, dir: tempfile::TempDir, store: Option<String>) -> Result<Server> {
    let (p, m) = (port(), port());
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--metrics",
        &format!("127.0.0.1:{m}"),
        "--interval",
        interval,
    ])
    .arg("--data-dir")
    .arg(dir.path());
    if let Some(url) = store {
        cmd.args(["--store", &url]);
    }
    let child = cmd.env("RUST_LOG", "warn").stdout(Stdio::null()).spawn()?;
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", p)).is_err() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(Server { child, port: p, metrics: m, _dir: dir, _pg: None })
}

/// CPU seconds (user + system) of `pid` so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>()? + f[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn channel(port: u16) -> Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await?)
}

fn spec(i: usize, not_before: Option<i64>) -> pb::JobSpec {
    pb::JobSpec {
        name: format!("load-{i}"),
        command: vec!["true".into()],
        cpu_cores: 1.0,
        memory_bytes: 1 << 30,
        expected_duration: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
        not_before: not_before.map(|t| prost_types::Timestamp { seconds: t, nanos: 0 }),
        deadline: not_before.map(|t| prost_types::Timestamp { seconds: t + 12 * 3600, nanos: 0 }),
        ..Default::default()
    }
}

async fn submit(
    port: u16,
    clients: usize,
    in_flight: usize,
    jobs: usize,
    not_before: Option<i64>,
) -> Result<(f64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        // One connection per client.
        let ch = channel(port).await?;
        for _ in 0..in_flight {
            let (mut c, done, next) = (JobServiceClient::new(ch.clone()), done.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = usize::try_from(next.fetch_add(1, Ordering::Relaxed)).unwrap_or(usize::MAX);
                    if i >= jobs {
                        return Ok::<_, tonic::Status>(());
                    }
                    let req = pb::SubmitJobRequest { request_id: format!("load-{i}"), spec: Some(spec(i, not_before)) };
                    c.submit_job(req).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((secs, done.load(Ordering::Relaxed)))
}

/// Simulated agents: register, then telemetry at 1 Hz; commands are acknowledged.
async fn agents(
    port: u16,
    n: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut out = Vec::new();
    let channels: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..n.div_ceil(100) {
            v.push(channel(port).await?);
        }
        v
    };
    for a in 0..n {
        let ch = channels[a / 100].clone();
        let stop = stop.clone();
        out.push(tokio::spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let reg = pb::Register {
                node_name: format!("sim-{a:04}"),
                pool: "web".into(),
                cpu_cores: 32.0,
                memory_bytes: 128 << 30,
                ..Default::default()
            };
            let _ =
                tx.send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Register(reg)) }).await;
            let resp = match AgentServiceClient::new(ch).session(tokio_stream::wrappers::ReceiverStream::new(rx)).await
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("agent sim-{a:04}: session refused: {}", e.message());
                    return;
                }
            };
            let mut inbound = resp.into_inner();
            let acker = tx.clone();
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    if m.seq > 0 {
                        let _ = acker.send(pb::AgentMessage { seq: 0, ack: m.seq, body: None }).await;
                    }
                }
            });
            // Spread the agents over the second.
            tokio::time::sleep(Duration::from_micros((a as u64 * 997) % 1_000_000)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            #[allow(clippy::cast_precision_loss, reason = "a small index")]
            let online = 4.0 + (a % 7) as f64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let s = pb::TelemetrySample {
                    time: Some(prost_types::Timestamp { seconds: i64::try_from(t.as_secs()).unwrap_or(0), nanos: 0 }),
                    node_cpu_cores: Some(online + 1.0),
                    online_cpu_cores: Some(online),
                    online_memory_bytes: Some(16 << 30),
                    batch_cpu_cores: Some(1.0),
                    ..Default::default()
                };
                if tx
                    .send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Telemetry(s)) })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    Ok(out)
}

/// The Prometheus text at `port`.
fn scrape(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The value of the unlabelled series `name` in `text`.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A gauge's value at `port`.
fn gauge(port: u16, name: &str) -> Option<f64> {
    value(&scrape(port)?, name)
}

/// `(sum, count)` of a summary/histogram at `port`, from one scrape.
fn prom(port: u16, name: &str) -> Option<(f64, f64)> {
    let text = scrape(port)?;
    Some((value(&text, &format!("{name}_sum"))?, value(&text, &format!("{name}_count"))?))
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.mode {
        Mode::Serve { listen, metrics, data_dir, interval, store } => rt.block_on(async move {
            metrics_exporter_prometheus::PrometheusBuilder::new().with_http_listener(metrics).install()?;
            let mut c =
                greenfill_scheduler::service::Config { listen, data_dir, insecure_local: true, store, ..Default::default() };
            c.limits.requests_per_second = 1_000_000;
            c.limits.burst = 1_000_000;
            c.planning.interval = Duration::from_secs_f64(greenfill_core::time::parse_duration(&interval).unwrap_or(60.0));
            c.planning.min_gap = c.planning.interval;
            let r = greenfill_scheduler::service::start(c).await?;
            r.stopped().await?;
            Ok(())
        }),
        Mode::Submit { clients, in_flight, jobs, store } => rt.block_on(async move {
            let mut runs = Vec::new();
            for postgres in store.each() {
                let srv = spawn_server("1h", postgres)?;
                let cpu0 = cpu_seconds(srv.child.id())?;
                let (secs, n) = submit(srv.port, clients, in_flight, jobs, None).await?;
                let cpu = cpu_seconds(srv.child.id())? - cpu0;
                let commits = prom(srv.metrics, "greenfill_store_commit_batch");
                let rss = rss_mib(srv.child.id());
                let mut srv = srv;
                let stored = srv.kill_and_count()?;
                let lost = usize::try_from(n).unwrap_or(usize::MAX).saturating_sub(stored);
                anyhow::ensure!(lost == 0, "{lost} of {n} acknowledged submissions are not in the store");
                #[allow(clippy::cast_precision_loss, reason = "counts")]
                runs.push(serde_json::json!({
                    "mode": "submit", "store": if postgres { "postgres" } else { "sqlite" },
                    "clients": clients, "in_flight_per_client": in_flight, "jobs": n,
                    "stored_after_sigkill": stored, "lost": lost,
                    "seconds": secs, "per_second": n as f64 / secs, "scheduler_cpu_s": cpu,
                    "mean_commit_batch": commits.map(|(s, c)| s / c.max(1.0)),
                    "scheduler_rss_mib": rss,
                }));
            }
            let rate = |i: usize| runs.get(i).and_then(|r| r["per_second"].as_f64());
            let out = match (rate(0), rate(1)) {
                (Some(a), Some(b)) => serde_json::json!({"runs": runs, "postgres_over_sqlite": b / a}),
                _ => serde_json::json!({"runs": runs}),
            };
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }),
        Mode::Agents { agents: n, seconds, store } => rt.block_on(async move {
            let srv = spawn_server("60s", store == Stores::Postgres)?;
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let tasks = agents(srv.port, n, stop.clone()).await?;
            // Warm up: every agent registered and ticking; the figure is only
            // worth anything once the scheduler counts them all.
            let t0 = Instant::now();
            let mut connected = 0.0;
            #[allow(clippy::cast_precision_loss, reason = "a count")]
            while connected < n as f64 && t0.elapsed() < Duration::from_secs(120) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                connected = gauge(srv.metrics, "greenfill_agents_connected").unwrap_or(0.0);
            }
            #[allow(clippy::cast_precision_loss, reason = "a count")]
            if connected < n as f64 {
                anyhow::bail!("only {connected} of {n} agent sessions are connected (greenfill_agents_connected)");
            }
            eprintln!("{connected} agents connected after {:.1} s", t0.elapsed().as_secs_f64());
            tokio::time::sleep(Duration::from_secs(3)).await;
            let cpu0 = cpu_seconds(srv.child.id())?;
            let t0 = Instant::now();
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            let cpu = cpu_seconds(srv.child.id())? - cpu0;
            let wall = t0.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            let out = serde_json::json!({
                "mode": "agents", "agents": n, "connected": connected, "store": format!("{store:?}").to_lowercase(),
                "seconds": wall, "scheduler_cpu_s": cpu,
                "share_of_one_core": cpu / wall, "scheduler_rss_mib": rss_mib(srv.child.id()),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            for t in tasks {
                t.abort();
            }
            Ok(())
        }),
        Mode::Plan { agents: n, jobs, rounds, history_days, store } => rt.block_on(async move {
            anyhow::ensure!(store != Stores::Both, "plan runs on one store: --store sqlite or --store postgres");
            let dir = tempfile::tempdir()?;
            let pg = if store == Stores::Postgres { Some(greenfill_benches::pg::PgServer::start()?) } else { None };
            let url = pg.as_ref().map(greenfill_benches::pg::PgServer::url);
            let seeded = Instant::now();
            seed_history(dir.path(), url.as_deref(), n, history_days)?;
            let seed_s = seeded.elapsed().as_secs_f64();
            eprintln!("seeded {n} nodes × {history_days} d of history in {seed_s:.1} s");
            let mut srv = spawn_server_in("5s", dir, url)?;
            srv._pg = pg;
            // Restoring the history takes a moment.
            let t0 = Instant::now();
            while channel(srv.port).await.is_err() && t0.elapsed() < Duration::from_secs(900) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let tasks = agents(srv.port, n, stop.clone()).await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let later = i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs())? + 3600;
            submit(srv.port, 8, 4, jobs, Some(later)).await?;
            let start = prom(srv.metrics, "greenfill_plan_round_seconds").unwrap_or((0.0, 0.0));
            let deadline = Instant::now() + Duration::from_secs(600);
            let mut now = start;
            while now.1 < start.1 + rounds as f64 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_secs(1)).await;
                now = prom(srv.metrics, "greenfill_plan_round_seconds").unwrap_or(now);
            }
            let solve = prom(srv.metrics, "greenfill_plan_solve_seconds");
            let mut plans = pb::plan_service_client::PlanServiceClient::new(channel(srv.port).await?);
            let plan = plans.get_plan(pb::GetPlanRequest { include_jobs: false }).await?.into_inner();
            let k = (now.1 - start.1).max(1.0);
            let out = serde_json::json!({
                "mode": "plan", "store": format!("{store:?}").to_lowercase(), "agents": n,
                "history_days": history_days, "queued_jobs": jobs, "rounds": now.1 - start.1,
                "seed_s": seed_s,
                "mean_round_s": (now.0 - start.0) / k,
                "mean_solve_s_all_rounds": solve.map(|(s, c)| s / c.max(1.0)),
                "nodes_planned_on": plan.pools.iter().map(|p| p.nodes).sum::<u32>(),
                "last_plan": {"jobs_planned": plan.jobs_planned, "jobs_waiting": plan.jobs_waiting, "solve_ms": plan.solve_ms, "slots": plan.slots},
                "scheduler_rss_mib": rss_mib(srv.child.id()),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            stop.store(true, Ordering::Relaxed);
            for t in tasks {
                t.abort();
            }
            Ok(())
        }),
    }
}
