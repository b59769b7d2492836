//! Faults on replicated schedulers: a real PostgreSQL, three `greenfill-scheduler`
//! replicas (restarted when they exit, as Kubernetes would), clients submitting
//! with request ids, simulated agents; then SIGKILL, SIGSTOP past the lease and
//! SIGTERM on the leader in turn, one PostgreSQL restart, and a quiet period.
//!
//! Prints JSON: failover time (fault to the next acknowledged submission) per
//! kind, p50 / p99 / max; and the checks: acknowledged submissions lost, jobs
//! duplicated, jobs dispatched twice, messages from a stale epoch, failovers
//! without a fault. Exits non-zero if a check fails.

use anyhow::{Context, Result, bail};
use clap::Parser;
use greenfill_benches::pg::PgServer;
use greenfill_proto::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Faults on the leader, taken in turn: SIGKILL, SIGSTOP (past the lease), SIGTERM.
    #[arg(long, default_value_t = 30)]
    faults: usize,
    /// The replicas' lease, seconds (renew deadline 2/3 of it, retry 1/6).
    #[arg(long, default_value_t = 3.0)]
    lease: f64,
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Submissions per second per client.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    #[arg(long, default_value_t = 3)]
    agents: usize,
    /// Seconds without faults at the end, counting lease changes (there should be none).
    #[arg(long, default_value_t = 300)]
    quiet: u64,
}

/// The replicas, each restarted when it exits (unless stopped by us for good).
struct Replicas {
    exe: std::path::PathBuf,
    url: String,
    config: std::path::PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    logs: std::path::PathBuf,
    /// Replicas that exited (deposed, PostgreSQL gone, killed) and were restarted.
    restarts: usize,
}

impl Replicas {
    fn spawn(&mut self, i: usize) -> Result<()> {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.logs.join(format!("replica-{i}.log")))?;
        let child = Command::new(&self.exe)
            .args(["--insecure-local", "--config"])
            .arg(&self.config)
            .args(["--listen", &format!("127.0.0.1:{}", self.ports[i])])
            .env("GREENFILL_STORE", &self.url)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| self.exe.display().to_string())?;
        self.children[i] = Some(child);
        Ok(())
    }

    /// Restart replicas that exited; how many did.
    fn supervise(&mut self) -> Result<usize> {
        let mut n = 0;
        for i in 0..self.children.len() {
            let exited = self.children[i].as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
            if exited {
                self.spawn(i)?;
                n += 1;
                self.restarts += 1;
            }
        }
        Ok(n)
    }

    fn pid(&self, i: usize) -> Option<i32> {
        self.children[i].as_ref().and_then(|c| i32::try_from(c.id()).ok())
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn scheduler_exe() -> Result<std::path::PathBuf> {
    let me = std::env::current_exe()?;
    for dir in me.ancestors().skip(1).take(3) {
        let p = dir.join("greenfill-scheduler");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!("greenfill-scheduler not found beside {} (cargo build --workspace)", me.display())
}

fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// What the clients and agents saw.
#[derive(Default)]
struct Seen {
    /// request id → job id, acknowledged.
    acked: BTreeMap<String, String>,
    /// When the last acknowledgement arrived.
    last_ack: Option<Instant>,
    /// job id → attempts an agent applied a RunJob for.
    dispatched: BTreeMap<String, BTreeSet<String>>,
    stale_messages: u64,
}

type Shared = Arc<Mutex<Seen>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The index of a replica named by a follower's refusal, or the next one.
fn retarget(status: &tonic::Status, ports: &[u16], current: usize) -> usize {
    let hint = status.metadata().get("greenfill-leader").and_then(|v| v.to_str().ok());
    hint.and_then(|h| ports.iter().position(|p| h.ends_with(&format!(":{p}")))).unwrap_or((current + 1) % ports.len())
}

fn channels(ports: &[u16]) -> Result<Vec<tonic::transport::Channel>> {
    ports
        .iter()
        .map(|p| {
            Ok(tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{p}"))?
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(1))
                .connect_lazy())
        })
        .collect()
}

async fn client(c: usize, ports: Vec<u16>, rate: f64, seen: Shared, stop: Arc<AtomicBool>) -> Result<()> {
    let chans = channels(&ports)?;
    let mut at = c % ports.len();
    let mut n = 0u64;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let request_id = format!("c{c}-{n}");
        // The same request id until acknowledged: a retry of a committed one
        // answers with its job.
        loop {
            let spec = pb::JobSpec {
                name: request_id.clone(),
                command: vec!["true".into()],
                cpu_cores: 0.1,
                memory_bytes: 1 << 20,
                expected_duration: Some(prost_types::Duration { seconds: 3600, nanos: 0 }),
                ..Default::default()
            };
            let req = pb::SubmitJobRequest { request_id: request_id.clone(), spec: Some(spec) };
            match pb::job_service_client::JobServiceClient::new(chans[at].clone()).submit_job(req).await {
                Ok(r) => {
                    let mut s = lock(&seen);
                    s.acked.insert(request_id.clone(), r.into_inner().job.map(|j| j.id).unwrap_or_default());
                    s.last_ack = Some(Instant::now());
                    break;
                }
                Err(e) => {
                    at = retarget(&e, &ports, at);
                    if stop.load(Ordering::Relaxed) {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        n += 1;
    }
    Ok(())
}

/// A simulated agent: applies each command once (by seq), reports what it runs
/// at Register, refuses a lower epoch than it has seen.
async fn agent(a: usize, ports: Vec<u16>, seen: Shared, stop: Arc<AtomicBool>) -> Result<()> {
    use pb::scheduler_message::Body as Cmd;
    let chans = channels(&ports)?;
    let (mut at, mut applied, mut epoch) = (a % ports.len(), 0u64, 0u64);
    let mut running: BTreeMap<String, String> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let reg = pb::Register {
            node_name: format!("node-{a}"),
            pool: "web".into(),
            cpu_cores: 64.0,
            memory_bytes: 256 << 30,
            last_command_seq: applied,
            instance_id: format!("instance-{a}"),
            running_jobs: running
                .iter()
                .map(|(attempt, job)| pb::RunningJob { job_id: job.clone(), attempt_id: attempt.clone(), pid: 1 })
                .collect(),
            ..Default::default()
        };
        tx.send(pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Register(reg)) }).await?;
        let ticker = tx.clone();
        let telemetry = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let s = pb::TelemetrySample {
                    time: Some(prost_types::Timestamp { seconds: i64::try_from(t.as_secs()).unwrap_or(0), nanos: 0 }),
                    node_cpu_cores: Some(4.0),
                    online_cpu_cores: Some(4.0),
                    online_memory_bytes: Some(8 << 30),
                    batch_cpu_cores: Some(0.0),
                    ..Default::default()
                };
                let m = pb::AgentMessage { seq: 0, ack: 0, body: Some(pb::agent_message::Body::Telemetry(s)) };
                if ticker.send(m).await.is_err() {
                    return;
                }
            }
        });
        let mut client = pb::agent_service_client::AgentServiceClient::new(chans[at].clone());
        match client.session(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Err(e) => at = retarget(&e, &ports, at),
            Ok(r) => {
                let mut inbound = r.into_inner();
                loop {
                    let m = match tokio::time::timeout(Duration::from_millis(500), inbound.message()).await {
                        Err(_) if stop.load(Ordering::Relaxed) => break,
                        Err(_) => continue,
                        Ok(Ok(Some(m))) => m,
                        Ok(Ok(None)) => break,
                        Ok(Err(e)) => {
                            at = retarget(&e, &ports, at);
                            break;
                        }
                    };
                    if m.epoch < epoch {
                        lock(&seen).stale_messages += 1;
                        break;
                    }
                    epoch = m.epoch;
                    if m.seq == 0 || m.seq <= applied {
                        if m.seq > 0 {
                            let _ = tx.send(pb::AgentMessage { seq: 0, ack: applied, body: None }).await;
                        }
                        continue;
                    }
                    match m.body {
                        Some(Cmd::Run(r)) => {
                            lock(&seen).dispatched.entry(r.job_id.clone()).or_default().insert(r.attempt_id.clone());
                            running.insert(r.attempt_id, r.job_id);
                        }
                        Some(Cmd::Stop(s)) => {
                            running.remove(&s.attempt_id);
                        }
                        _ => {}
                    }
                    applied = m.seq;
                    let _ = tx.send(pb::AgentMessage { seq: 0, ack: applied, body: None }).await;
                }
            }
        }
        telemetry.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
enum Fault {
    Kill,
    Stop,
    Term,
}

/// The replica whose health is SERVING.
async fn leader(ports: &[u16]) -> Option<usize> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    for (i, ch) in channels(ports).ok()?.into_iter().enumerate() {
        let r = HealthClient::new(ch).check(HealthCheckRequest { service: String::new() }).await;
        if r.is_ok_and(|r| r.get_ref().status == 1) {
            return Some(i);
        }
    }
    None
}

/// Wait until an acknowledgement arrives after `t0`; its delay.
async fn next_ack(seen: &Shared, t0: Instant, replicas: &Mutex<Replicas>, limit: Duration) -> Result<Duration> {
    loop {
        if let Some(t) = lock(seen).last_ack.filter(|t| *t > t0) {
            return Ok(t - t0);
        }
        if t0.elapsed() > limit {
            bail!("no submission acknowledged within {limit:?} of a fault");
        }
        replicas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).supervise()?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn quantiles(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let q = |p: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss,
            reason = "an index"
        )]
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v.get(i).copied()
    };
    serde_json::json!({"n": v.len(), "p50_s": q(0.5), "p99_s": q(0.99), "max_s": v.last()})
}

async fn lease_epoch(url: &str) -> Result<i64> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(c.query_one("SELECT epoch FROM greenfill_lease", &[]).await?.get(0))
}

#[allow(clippy::too_many_lines, reason = "one experiment, read top to bottom")]
async fn run(args: Args) -> Result<serde_json::Value> {
    let pg = PgServer::start()?;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("scheduler.toml");
    let ms = |f: f64| format!("{}ms", (args.lease * f * 1000.0).round());
    std::fs::write(
        &config,
        format!(
            "[replication]\nlease = \"{}\"\nrenew_deadline = \"{}\"\nretry = \"{}\"\n\n[planning]\ninterval = \"2s\"\n",
            ms(1.0),
            ms(2.0 / 3.0),
            ms(1.0 / 6.0)
        ),
    )?;
    let ports: Vec<u16> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| Ok(l.local_addr()?.port())))
        .collect::<std::io::Result<_>>()?;
    let mut r = Replicas {
        exe: scheduler_exe()?,
        url: pg.url(),
        config,
        ports: ports.clone(),
        children: (0..3).map(|_| None).collect(),
        logs: dir.path().to_owned(),
        restarts: 0,
    };
    for i in 0..3 {
        r.spawn(i)?;
    }
    let replicas = Mutex::new(r);
    let seen: Shared = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        tasks.push(tokio::spawn(client(c, ports.clone(), args.rate, seen.clone(), stop.clone())));
    }
    for a in 0..args.agents {
        tasks.push(tokio::spawn(agent(a, ports.clone(), seen.clone(), stop.clone())));
    }
    next_ack(&seen, Instant::now(), &replicas, Duration::from_secs(60)).await.context("the first leader")?;
    let lease = Duration::from_secs_f64(args.lease);
    let mut times: BTreeMap<Fault, Vec<f64>> = BTreeMap::new();
    let kinds = [Fault::Kill, Fault::Stop, Fault::Term];
    let mut pg_restart = None;
    for f in 0..args.faults {
        // Steady: a leader serves and acknowledges.
        tokio::time::sleep(Duration::from_millis(700)).await;
        next_ack(&seen, Instant::now(), &replicas, Duration::from_secs(30)).await?;
        let Some(l) = leader(&ports).await else { bail!("no leader before fault {f}") };
        let pid = replicas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pid(l).context("leader pid")?;
        let kind = kinds[f % kinds.len()];
        let t0 = Instant::now();
        match kind {
            Fault::Kill => signal(pid, nix::sys::signal::Signal::SIGKILL),
            Fault::Term => signal(pid, nix::sys::signal::Signal::SIGTERM),
            Fault::Stop => signal(pid, nix::sys::signal::Signal::SIGSTOP),
        }
        let took = next_ack(&seen, t0, &replicas, Duration::from_secs(30)).await?;
        times.entry(kind).or_default().push(took.as_secs_f64());
        if kind == Fault::Stop {
            // Frozen past its lease, then woken: it must find itself deposed and exit.
            // (Clients' calls to it hang until their 1 s timeout, as a real client's would.)
            tokio::time::sleep((lease + Duration::from_secs(1)).saturating_sub(t0.elapsed())).await;
            signal(pid, nix::sys::signal::Signal::SIGCONT);
        }
        if f == args.faults / 2 {
            tokio::time::sleep(Duration::from_millis(700)).await;
            let t0 = Instant::now();
            pg.restart()?;
            // From the database being back to the next acknowledgement.
            let back = Instant::now();
            let after = next_ack(&seen, back, &replicas, Duration::from_secs(60)).await?;
            pg_restart = Some(
                serde_json::json!({"restart_s": (back - t0).as_secs_f64(), "then_next_ack_s": after.as_secs_f64()}),
            );
        }
        eprintln!(
            "fault {}/{}: {kind:?} on replica {l}: next ack after {:.3} s",
            f + 1,
            args.faults,
            took.as_secs_f64()
        );
    }
    // Quiet: no faults, no lease changes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    next_ack(&seen, Instant::now(), &replicas, Duration::from_secs(30)).await?;
    let before = lease_epoch(&pg.url()).await?;
    let quiet_end = Instant::now() + Duration::from_secs(args.quiet);
    while Instant::now() < quiet_end {
        replicas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).supervise()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let spurious = lease_epoch(&pg.url()).await? - before;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    // What the database holds against what was acknowledged.
    let (c, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let mut stored: BTreeMap<String, String> = BTreeMap::new();
    let mut names: BTreeMap<String, u32> = BTreeMap::new();
    for row in c.query("SELECT request_id, id, body FROM jobs", &[]).await? {
        stored.insert(row.get(0), row.get(1));
        let job = <pb::Job as prost::Message>::decode(row.get::<_, &[u8]>(2))?;
        *names.entry(job.spec.map(|s| s.name).unwrap_or_default()).or_default() += 1;
    }
    let s = lock(&seen);
    let lost: Vec<&String> = s.acked.iter().filter(|(rid, id)| stored.get(*rid) != Some(id)).map(|(r, _)| r).collect();
    let duplicated = names.values().filter(|n| **n > 1).count();
    let twice: Vec<&String> = s.dispatched.iter().filter(|(_, a)| a.len() > 1).map(|(j, _)| j).collect();
    let restarts = replicas.lock().unwrap_or_else(std::sync::PoisonError::into_inner).restarts;
    Ok(serde_json::json!({
        "lease_s": args.lease, "faults": args.faults, "clients": args.clients, "agents": args.agents,
        "failover": times.into_iter().map(|(k, v)| (format!("{k:?}").to_lowercase(), quantiles(v))).collect::<serde_json::Map<_, _>>(),
        "postgres_restart": pg_restart,
        "acknowledged": s.acked.len(), "stored": stored.len(), "lost": lost.len(), "lost_examples": lost.iter().take(5).collect::<Vec<_>>(),
        "duplicated_jobs": duplicated,
        "jobs_dispatched": s.dispatched.len(), "dispatched_twice": twice.len(), "dispatched_twice_examples": twice.iter().take(5).collect::<Vec<_>>(),
        "stale_epoch_messages": s.stale_messages,
        "quiet_s": args.quiet, "spurious_failovers": spurious,
        "replica_restarts": restarts,
    }))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let out = rt.block_on(run(args))?;
    println!("{}", serde_json::to_string_pretty(&out)?);
    let bad = out["lost"] != 0
        || out["duplicated_jobs"] != 0
        || out["dispatched_twice"] != 0
        || out["stale_epoch_messages"] != 0
        || out["spurious_failovers"] != 0;
    if bad {
        bail!("a check failed (see the JSON above)");
    }
    Ok(())
}
