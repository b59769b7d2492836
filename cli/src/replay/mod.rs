//! `greenfill sim replay`: the scenario through the real scheduler on a virtual
//! clock, one simulated agent per node, and the service's outcome against the
//! simulator's greenfill run on the same machines and accounting.

mod nodes;
mod service;

use anyhow::{Context, Result};
use clap::Args;
use greenfill_proto::v1 as pb;
use greenfill_sim::{Fleet, Inputs, PolicyResult, Resolved, Scenario, load};
use indicatif::{ProgressBar, ProgressStyle};
use nodes::{AgentClient, Machine, Node};
use serde::Serialize;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Scenario TOML (see examples/*.toml). Needs `power.model = "states"` and
    /// one linear power model and PUE for every pool (the service has one).
    #[arg(long)]
    scenario: PathBuf,
    /// Output folder for replay.json and the scheduler's log (default:
    /// out/<scenario file name>-replay).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The greenfill-scheduler binary (default: beside this one, else on PATH).
    #[arg(long)]
    scheduler: Option<PathBuf>,
    /// The policy to replay; the service runs greenfill only.
    #[arg(long, default_value = "greenfill")]
    policy: String,
    /// Print replay.json to stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// The service plans only on its interval, as the simulator does, not
    /// also soon after exits and registrations as deployed: shows how much of
    /// a difference those event rounds make.
    #[arg(long)]
    interval_rounds: bool,
}

/// One run's figures, as replay.json gives them.
#[derive(Debug, Clone, Serialize)]
struct Figures {
    energy_kwh: f64,
    carbon_kg: f64,
    jobs_done: usize,
    jobs_late: usize,
    jobs_unfinished: usize,
    batch_core_hours: f64,
    powered_node_hours: f64,
    suspends: usize,
    resumes: usize,
    guard_throttled_core_hours: f64,
}

impl Figures {
    fn of(r: &PolicyResult) -> Figures {
        Figures {
            energy_kwh: r.energy_kwh,
            carbon_kg: r.carbon_kg,
            jobs_done: r.jobs_completed,
            jobs_late: r.jobs_late,
            jobs_unfinished: r.jobs_unfinished,
            batch_core_hours: r.batch_core_hours,
            powered_node_hours: r.node_hours,
            suspends: r.suspends,
            resumes: r.resumes,
            guard_throttled_core_hours: r.guard_throttled_core_hours,
        }
    }
}

/// Service − simulator, in % of the simulator's figure.
#[derive(Debug, Clone, Serialize)]
struct DiffPct {
    energy: f64,
    carbon: f64,
    core_hours: f64,
    powered_node_hours: f64,
}

fn pct(service: f64, sim: f64) -> f64 {
    if sim.abs() < 1e-12 { 0.0 } else { (service - sim) / sim * 100.0 }
}

/// Where one job ran in each run: node name and start time (RFC 3339).
#[derive(Debug, Clone, Serialize)]
struct Where {
    node: Option<String>,
    start: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct DifferentJob {
    id: String,
    simulator: Where,
    service: Where,
    /// The service's word on the job at its first planning round (ExplainJob:
    /// planned start, wait reason, detail).
    explain: String,
    /// Whether the service's round that started it was one of the planning
    /// interval's or one an event asked for (an exit, a registration): the
    /// simulator plans on the interval only.
    started_by: &'static str,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    scenario: String,
    forecast: String,
    simulator: Figures,
    service: Figures,
    diff_pct: DiffPct,
    /// Jobs whose node or start differ, and the first of them in detail.
    jobs_differing: usize,
    jobs_same: usize,
    differing: Vec<DifferentJob>,
    planning_rounds: usize,
    /// Rounds only on the planning interval (`--interval-rounds`).
    interval_rounds: bool,
    wall_s: f64,
    notes: Vec<String>,
}

/// How many differing jobs replay.json explains.
const EXPLAINED: usize = 25;

pub(crate) fn replay(a: &ReplayArgs) -> Result<()> {
    if a.policy != "greenfill" {
        anyhow::bail!(
            "--policy {:?}: the service runs greenfill only; compare other policies with `greenfill sim run`",
            a.policy
        );
    }
    let mut r = Scenario::load(&a.scenario)?;
    let inputs = load(&r)?;
    let bad = service::unexpressible(&r, &inputs);
    if !bad.is_empty() {
        anyhow::bail!("{}: the service cannot run this scenario:\n  {}", r.path, bad.join("\n  "));
    }
    let mut notes = Vec::new();
    if r.scenario.forecast != service::service_forecast(&r) {
        notes.push(format!(
            "forecast = {:?} is the simulator's only: both runs use {:?}, the service's",
            r.scenario.forecast,
            service::service_forecast(&r)
        ));
        r.scenario.forecast = service::service_forecast(&r).to_owned();
    }
    r.scenario.policies = vec!["greenfill".to_owned()];
    let started = std::time::Instant::now();
    let sim = greenfill_sim::run(&r, &inputs, |_, _| {})?.remove(0).1;
    let out = a.out.clone().unwrap_or_else(|| crate::sim::default_out(&a.scenario, "-replay"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin = a.scheduler.clone().unwrap_or_else(scheduler_bin);
    let rt = tokio::runtime::Runtime::new()?;
    let run = rt.block_on(async {
        tokio::select! {
            r = drive(&r, &inputs, &bin, &out, a.interval_rounds) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted; the replay's scheduler and store are removed")),
        }
    })?;
    let report = compare(&r, &inputs, &sim, run, notes, started.elapsed().as_secs_f64());
    let path = out.join("replay.json");
    let text = serde_json::to_string_pretty(&report)?;
    std::fs::write(&path, &text).with_context(|| format!("writing {}", path.display()))?;
    if a.json {
        println!("{text}");
    } else {
        print_table(&report);
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn scheduler_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("greenfill-scheduler")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("greenfill-scheduler"))
}

/// What the service's run left: its accounting and where each job ran.
struct ServiceRun {
    result: PolicyResult,
    rounds: usize,
    explained: Vec<String>,
    started_by: Vec<&'static str>,
    interval_only: bool,
}

fn time_of(inp: &Inputs, step: usize) -> String {
    greenfill_core::time::format_timestamp(inp.start + i64::try_from(step).unwrap_or(0) * inp.step_s)
}

fn compare(r: &Resolved, inp: &Inputs, sim: &PolicyResult, run: ServiceRun, notes: Vec<String>, wall_s: f64) -> Report {
    let svc = &run.result;
    let at = |res: &PolicyResult, j: usize| {
        let s = res.starts.get(j).copied().flatten();
        Where { node: s.map(|s| service::node_name(inp, s.node)), start: s.map(|s| time_of(inp, s.step)) }
    };
    let mut differing = Vec::new();
    let mut count = 0;
    for j in 0..inp.jobs.len() {
        if sim.starts.get(j) == svc.starts.get(j) {
            continue;
        }
        count += 1;
        if differing.len() < EXPLAINED {
            differing.push(DifferentJob {
                id: inp.jobs[j].id.clone(),
                simulator: at(sim, j),
                service: at(svc, j),
                explain: run.explained[j].clone(),
                started_by: run.started_by[j],
            });
        }
    }
    Report {
        scenario: r.path.clone(),
        forecast: r.scenario.forecast.clone(),
        simulator: Figures::of(sim),
        service: Figures::of(svc),
        diff_pct: DiffPct {
            energy: pct(svc.energy_kwh, sim.energy_kwh),
            carbon: pct(svc.carbon_kg, sim.carbon_kg),
            core_hours: pct(svc.batch_core_hours, sim.batch_core_hours),
            powered_node_hours: pct(svc.node_hours, sim.node_hours),
        },
        jobs_differing: count,
        jobs_same: inp.jobs.len() - count,
        differing,
        planning_rounds: run.rounds,
        interval_rounds: run.interval_only,
        wall_s,
        notes,
    }
}

fn print_table(r: &Report) {
    let (a, b, d) = (&r.simulator, &r.service, &r.diff_pct);
    println!("{:<22} {:>12} {:>12} {:>8}", "", "simulator", "service", "diff");
    println!("{:<22} {:>12.1} {:>12.1} {:>+7.2}%", "energy kWh", a.energy_kwh, b.energy_kwh, d.energy);
    println!("{:<22} {:>12.1} {:>12.1} {:>+7.2}%", "carbon kg", a.carbon_kg, b.carbon_kg, d.carbon);
    println!(
        "{:<22} {:>12.1} {:>12.1} {:>+7.2}%",
        "batch core-hours", a.batch_core_hours, b.batch_core_hours, d.core_hours
    );
    println!(
        "{:<22} {:>12.1} {:>12.1} {:>+7.2}%",
        "powered node-hours", a.powered_node_hours, b.powered_node_hours, d.powered_node_hours
    );
    println!(
        "{:<22} {:>12} {:>12}",
        "jobs done / late",
        format!("{} / {}", a.jobs_done, a.jobs_late),
        format!("{} / {}", b.jobs_done, b.jobs_late)
    );
    println!("{:<22} {:>12} {:>12}", "unfinished", a.jobs_unfinished, b.jobs_unfinished);
    println!(
        "jobs placed alike: {} of {}; {} planning rounds; {:.1} s",
        r.jobs_same,
        r.jobs_same + r.jobs_differing,
        r.planning_rounds,
        r.wall_s
    );
    for n in &r.notes {
        println!("note: {n}");
    }
}

/// The replay's world: the scheduler, its clients, the agents, the machines.
struct World<'a> {
    inp: &'a Inputs,
    suspend_s: i64,
    wake_s: i64,
    fleet: Fleet<'a>,
    nodes: Vec<Node>,
    agents: AgentClient,
    jobs: pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    clock: pb::clock_service_client::ClockServiceClient<tonic::transport::Channel>,
    wol: std::net::UdpSocket,
    by_mac: HashMap<[u8; 6], usize>,
    /// Per job: the service's id and the attempt running now.
    ids: Vec<String>,
    index: HashMap<String, usize>,
    attempts: HashMap<usize, String>,
    /// Per job: the service's word at its first round, and which kind of
    /// round started it.
    explained: Vec<String>,
    started_by: Vec<&'static str>,
    next_arrival: usize,
    /// Jobs up to here have been explained.
    next_explained: usize,
    plan_every_s: i64,
    interval_only: bool,
    rounds: usize,
    suspends: usize,
    resumes: usize,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn drive(r: &Resolved, inp: &Inputs, bin: &Path, out: &Path, interval_only: bool) -> Result<ServiceRun> {
    let port = free_port()?;
    let wol = std::net::UdpSocket::bind("127.0.0.1:0").context("a UDP socket for Wake-on-LAN")?;
    wol.set_nonblocking(true)?;
    let dir = out.join(".scheduler");
    let config = service::config(r, inp, &dir, port, wol.local_addr()?.port())
        .inspect_err(|_| drop(std::fs::remove_dir_all(&dir)))?;
    let sched = service::Scheduler::start(bin, &dir, &config, port, inp.start)?;
    let run = world(r, inp, port, wol, interval_only).await;
    let run = match run {
        Ok(mut w) => w.run().await.map(|()| w),
        Err(e) => Err(e),
    };
    let result = match run {
        Ok(w) => Ok(w.finish()),
        Err(e) => Err(e.context(format!("the replay's scheduler log ends:\n{}", sched.log_tail()))),
    };
    sched.stop(&out.join("scheduler.log"));
    result
}

async fn world<'a>(
    r: &'a Resolved,
    inp: &'a Inputs,
    port: u16,
    wol: std::net::UdpSocket,
    interval_only: bool,
) -> Result<World<'a>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect()
        .await
        .context("connecting to the replay's scheduler")?;
    let model = r.power.context("power.model")?;
    let nodes: Vec<Node> =
        (0..inp.nodes()).map(|i| Node::new(service::node_name(inp, i), &inp.pools[inp.node_pool[i]])).collect();
    Ok(World {
        inp,
        suspend_s: model.suspend_s,
        wake_s: model.settings.wake_s,
        fleet: Fleet::new(inp, r),
        nodes,
        agents: AgentClient::new(channel.clone()),
        jobs: pb::job_service_client::JobServiceClient::new(channel.clone()),
        clock: pb::clock_service_client::ClockServiceClient::new(channel),
        wol,
        by_mac: (0..inp.nodes()).map(|i| (service::mac(i), i)).collect(),
        ids: vec![String::new(); inp.jobs.len()],
        index: HashMap::new(),
        attempts: HashMap::new(),
        explained: vec![String::new(); inp.jobs.len()],
        started_by: vec![""; inp.jobs.len()],
        next_arrival: 0,
        next_explained: 0,
        plan_every_s: r.plan_every_s,
        interval_only,
        rounds: 0,
        suspends: 0,
        resumes: 0,
    })
}

impl World<'_> {
    fn at(&self, t: usize) -> i64 {
        self.inp.start + i64::try_from(t).unwrap_or(0) * self.inp.step_s
    }

    async fn run(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.register(&mut self.agents).await?;
        }
        self.seed_history().await?;
        let bar = if std::io::stderr().is_terminal() {
            let b = ProgressBar::new(self.inp.steps as u64);
            b.set_style(ProgressStyle::with_template("{spinner} replay [{bar:40}] {percent:>3}% {elapsed}")?);
            b
        } else {
            ProgressBar::hidden()
        };
        for t in 0..self.inp.steps {
            self.step(t).await.with_context(|| format!("step {t} ({})", time_of(self.inp, t)))?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// `online.history` steps of telemetry before the start, as the
    /// simulator's forecaster sees them.
    async fn seed_history(&mut self) -> Result<()> {
        let inp = self.inp;
        for k in 0..inp.history {
            let at = inp.start - i64::try_from(inp.history - k).unwrap_or(0) * inp.step_s;
            for (i, node) in self.nodes.iter_mut().enumerate() {
                let p = &inp.pools[inp.node_pool[i]];
                let share = inp.online_series[inp.node_series[i]][k];
                let cpu = if p.always_on { (share * inp.node_factor[i]).clamp(0.0, 1.0) * p.cores } else { 0.0 };
                node.telemetry(at, cpu, inp.online_mem(i), 0.0).await?;
            }
        }
        Ok(())
    }

    async fn advance(&mut self, now: i64, hold: bool) -> Result<pb::AdvanceResponse> {
        let ts = Some(prost_types::Timestamp { seconds: now, nanos: 0 });
        let telemetry_at = if hold { None } else { ts };
        let req = pb::AdvanceRequest { to: ts, telemetry_at, hold, interval_only: self.interval_only };
        Ok(self.clock.advance(req).await.context("ClockService.Advance")?.into_inner())
    }

    /// One step, in the simulator's order: ends, machines, arrivals, telemetry,
    /// the plan (inside Advance), what it started, wakes, accounting.
    async fn step(&mut self, t: usize) -> Result<()> {
        let now = self.at(t);
        self.advance(now, true).await?;
        self.exits(t, now).await?;
        self.machines(now).await?;
        self.arrivals(t, now).await?;
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if node.connected() {
                let inp = self.inp;
                node.telemetry(now, inp.online_cpu(i, t), inp.online_mem(i), self.fleet.batch_cpu(i)).await?;
            }
        }
        let res = self.advance(now, false).await?;
        self.rounds += usize::from(res.planned);
        let on_interval = (now - self.inp.start).rem_euclid(self.plan_every_s.max(1)) == 0;
        let by = if !res.planned {
            ""
        } else if on_interval {
            "interval"
        } else {
            "event"
        };
        self.dispatched(t, now, by, &res.last_command_seq).await?;
        if res.planned {
            self.explain_new().await;
        }
        let woke = self.wakes(now);
        let powered: Vec<bool> = self.nodes.iter().map(|n| n.machine.powered()).collect();
        self.fleet.account(t, &powered, &woke);
        Ok(())
    }

    async fn exits(&mut self, t: usize, now: i64) -> Result<()> {
        for e in self.fleet.end_step(t) {
            let j = &self.inp.jobs[e.job];
            #[allow(clippy::cast_precision_loss, reason = "seconds")]
            let cpu_seconds = j.cores * (j.duration as f64) * self.inp.step_s as f64;
            let s = pb::JobStatus {
                job_id: self.ids[e.job].clone(),
                attempt_id: self.attempts.remove(&e.job).unwrap_or_default(),
                phase: pb::JobPhase::Exited as i32,
                exit_code: Some(0),
                cpu_seconds,
                ..pb::JobStatus::default()
            };
            self.nodes[e.node].status(s, now).await?;
        }
        Ok(())
    }

    /// Suspends that finished and wakes that booted.
    async fn machines(&mut self, now: i64) -> Result<()> {
        for node in &mut self.nodes {
            match node.machine {
                Machine::Suspending { off_at } if off_at <= now => node.machine = Machine::Off,
                Machine::Waking { up_at } if up_at <= now => node.register(&mut self.agents).await?,
                _ => {}
            }
        }
        Ok(())
    }

    async fn arrivals(&mut self, t: usize, now: i64) -> Result<()> {
        while let Some(j) = self.inp.jobs.get(self.next_arrival).filter(|j| j.arrival <= t) {
            let i = self.next_arrival;
            self.next_arrival += 1;
            let step = self.inp.step_s;
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "memory sizes")]
            let memory_bytes = (j.mem_gib * 1024.0 * 1024.0 * 1024.0) as u64;
            let spec = pb::JobSpec {
                name: j.id.clone(),
                command: vec!["true".into()],
                cpu_cores: j.cores,
                memory_bytes,
                expected_duration: Some(prost_types::Duration {
                    seconds: i64::try_from(j.duration).unwrap_or(0) * step,
                    nanos: 0,
                }),
                deadline: j.deadline.map(|d| prost_types::Timestamp { seconds: self.at(d), nanos: 0 }),
                pool: j.pool.map(|p| self.inp.pools[p].name.clone()).unwrap_or_default(),
                ..pb::JobSpec::default()
            };
            let req = pb::SubmitJobRequest { request_id: format!("replay-{i}"), spec: Some(spec) };
            let job = self.jobs.submit_job(req).await.with_context(|| format!("submitting job {} at {now}", j.id))?;
            let id = job.into_inner().job.context("SubmitJob answered no job")?.id;
            self.index.insert(id.clone(), i);
            self.ids[i] = id;
        }
        Ok(())
    }

    /// Every command the advance sent: runs start now, a PowerDown suspends.
    async fn dispatched(&mut self, t: usize, now: i64, by: &'static str, upto: &HashMap<String, u64>) -> Result<()> {
        for i in 0..self.nodes.len() {
            if !self.nodes[i].connected() {
                continue;
            }
            let want = upto.get(&self.nodes[i].name).copied().unwrap_or(0);
            let c = self.nodes[i].commands(want).await?;
            for (job_id, attempt) in c.run {
                let job = *self.index.get(&job_id).with_context(|| format!("RunJob for an unknown job {job_id}"))?;
                self.fleet.start(job, i, t);
                self.attempts.insert(job, attempt.clone());
                self.started_by[job] = by;
                let s = pb::JobStatus {
                    job_id,
                    attempt_id: attempt,
                    phase: pb::JobPhase::Started as i32,
                    ..pb::JobStatus::default()
                };
                self.nodes[i].status(s, now).await?;
            }
            if c.stops > 0 {
                anyhow::bail!("{}: the service stopped {} job(s) the replay cannot stop", self.nodes[i].name, c.stops);
            }
            if c.power_down {
                anyhow::ensure!(
                    self.fleet.running_on(i).is_empty(),
                    "{}: PowerDown with jobs running",
                    self.nodes[i].name
                );
                self.nodes[i].suspend(now + self.suspend_s).await?;
                self.suspends += 1;
            }
        }
        Ok(())
    }

    /// Magic packets the advance sent: those machines boot from now.
    fn wakes(&mut self, now: i64) -> Vec<usize> {
        let mut woke = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = self.wol.recv(&mut buf) {
            let Some(&i) = nodes::woken_mac(&buf[..n]).and_then(|m| self.by_mac.get(&m)) else { continue };
            if matches!(self.nodes[i].machine, Machine::Off | Machine::Suspending { .. }) {
                self.nodes[i].machine = Machine::Waking { up_at: now + self.wake_s };
                self.resumes += 1;
                woke.push(i);
            }
        }
        woke
    }

    /// What the service says of the jobs that arrived since its last round.
    async fn explain_new(&mut self) {
        while self.next_explained < self.next_arrival {
            let j = self.next_explained;
            self.next_explained += 1;
            let e = self.jobs.explain_job(pb::ExplainJobRequest { id: self.ids[j].clone() }).await;
            self.explained[j] = match e {
                Ok(e) => {
                    let e = e.into_inner();
                    let start = e
                        .planned_start
                        .map_or_else(|| "none".to_owned(), |t| greenfill_core::time::format_timestamp(t.seconds));
                    let why = pb::WaitReason::try_from(e.wait_reason).map_or("", |w| w.as_str_name());
                    format!("planned start {start} {why}: {}", e.detail).trim_end_matches(": ").to_owned()
                }
                Err(e) => format!("ExplainJob: {}", e.message()),
            };
        }
    }

    /// The run's accounting.
    fn finish(self) -> ServiceRun {
        let result = self.fleet.finish(self.suspends, self.resumes);
        ServiceRun {
            result,
            rounds: self.rounds,
            explained: self.explained,
            started_by: self.started_by,
            interval_only: self.interval_only,
        }
    }
}
