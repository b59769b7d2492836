//! Talking to the scheduler: submit, jobs, job, cancel, watch, explain, nodes, and
//! the live plan. `--server` and `--token` come from flags, the environment
//! (`GREENFILL_SERVER`, `GREENFILL_TOKEN`) or `~/.config/greenfill/client.toml`.

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use greenfill_core::time::{format_timestamp, parse_duration, parse_timestamp};
use greenfill_proto::v1 as pb;
use pb::job_service_client::JobServiceClient;
use pb::plan_service_client::PlanServiceClient;
use serde::Deserialize;
use std::path::PathBuf;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, Args, Clone)]
pub(crate) struct Conn {
    /// Scheduler address; replicas comma-separated (the leader is found by
    /// asking each one's health) [env: GREENFILL_SERVER; default http://127.0.0.1:7070].
    #[arg(long, global = true, help_heading = "Scheduler")]
    server: Option<String>,
    /// User bearer token [env: GREENFILL_TOKEN].
    #[arg(long, global = true, hide_env_values = true, help_heading = "Scheduler")]
    token: Option<String>,
    /// Client config with `server`, `token` and `ca_cert` [default ~/.config/greenfill/client.toml].
    #[arg(long, global = true, help_heading = "Scheduler")]
    client_config: Option<PathBuf>,
    /// PEM CA certificate to trust for an `https://` server [env: GREENFILL_CA_CERT].
    #[arg(long, global = true, help_heading = "Scheduler")]
    ca_cert: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    server: Option<String>,
    token: Option<String>,
    ca_cert: Option<PathBuf>,
}

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

pub(crate) struct Client {
    pub(crate) jobs: JobServiceClient<InterceptedService<Channel, Auth>>,
    pub(crate) plans: PlanServiceClient<InterceptedService<Channel, Auth>>,
}

impl Conn {
    pub(crate) async fn connect(&self) -> Result<Client> {
        let path = self
            .client_config
            .clone()
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/greenfill/client.toml")));
        let file: ClientFile = match &path {
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p).with_context(|| p.display().to_string())?;
                toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?
            }
            Some(p) if self.client_config.is_some() => bail!("--client-config {}: no such file", p.display()),
            _ => ClientFile::default(),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let server = self
            .server
            .clone()
            .or_else(|| env("GREENFILL_SERVER"))
            .or(file.server)
            .unwrap_or_else(|| "http://127.0.0.1:7070".into());
        let token = self.token.clone().or_else(|| env("GREENFILL_TOKEN")).or(file.token);
        let ca = self.ca_cert.clone().or_else(|| env("GREENFILL_CA_CERT").map(PathBuf::from)).or(file.ca_cert);
        let servers: Vec<&str> = server.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        let channel = match servers.as_slice() {
            [one] => channel(one, ca.as_deref()).await?,
            _ => leader(&servers, ca.as_deref()).await?,
        };
        let header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = match &token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| anyhow!("--token: not a valid header value"))?),
            None => None,
        };
        let auth = move || -> Auth {
            let header = header.clone();
            Box::new(move |mut r: tonic::Request<()>| {
                if let Some(h) = &header {
                    r.metadata_mut().insert("authorization", h.clone());
                }
                Ok(r)
            })
        };
        Ok(Client {
            jobs: JobServiceClient::with_interceptor(channel.clone(), auth()),
            plans: PlanServiceClient::with_interceptor(channel, auth()),
        })
    }
}

/// A connection to `server`.
async fn channel(server: &str, ca: Option<&std::path::Path>) -> Result<Channel> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(server.to_owned())
        .map_err(|e| anyhow!("--server {server}: {e}"))?
        .connect_timeout(std::time::Duration::from_secs(5));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("--ca-cert {}", ca.display()))?;
        let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
        endpoint = endpoint.tls_config(tls).map_err(|e| anyhow!("--ca-cert {}: {e}", ca.display()))?;
    }
    endpoint.connect().await.map_err(|e| {
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            let text = c.to_string();
            if !why.contains(&text) {
                why = format!("{why}: {text}");
            }
            cause = c.source();
        }
        anyhow!(
            "cannot reach the scheduler at {server} ({why}); start one with `greenfill-scheduler --config FILE`, or \
             name another with --server or GREENFILL_SERVER"
        )
    })
}

/// How long to look for a leader among replicas (a failover takes seconds).
const FIND_LEADER: std::time::Duration = std::time::Duration::from_secs(20);

/// The replica whose health is SERVING (only the leader's is), asking each in
/// turn until one is or [`FIND_LEADER`] has passed.
async fn leader(servers: &[&str], ca: Option<&std::path::Path>) -> Result<Channel> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let started = std::time::Instant::now();
    let mut answers = vec![String::new(); servers.len()];
    loop {
        for (i, s) in servers.iter().enumerate() {
            let ch = match channel(s, ca).await {
                Ok(ch) => ch,
                Err(e) => {
                    answers[i] = e.to_string();
                    continue;
                }
            };
            match HealthClient::new(ch.clone()).check(HealthCheckRequest { service: String::new() }).await {
                Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(ch),
                Ok(r) => answers[i] = format!("{s}: {:?}", r.get_ref().status()),
                Err(e) => answers[i] = format!("{s}: {}", e.message()),
            }
        }
        if started.elapsed() > FIND_LEADER {
            bail!("no scheduler replica leads after {FIND_LEADER:?}: {}", answers.join("; "));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A job spec in a file (TOML or JSON), or from flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    name: Option<String>,
    command: Vec<String>,
    #[serde(default)]
    shell: bool,
    #[serde(default)]
    env: std::collections::HashMap<String, String>,
    working_dir: Option<String>,
    cpu_cores: Option<f64>,
    memory: Option<String>,
    gpus: Option<u32>,
    gpu_model: Option<String>,
    gpu_memory: Option<String>,
    gpu_power: Option<String>,
    duration: Option<String>,
    deadline: Option<String>,
    not_before: Option<String>,
    priority: Option<i32>,
    #[serde(default)]
    labels: std::collections::HashMap<String, String>,
    pool: Option<String>,
    zone: Option<String>,
    run_as_uid: Option<u32>,
    run_as_gid: Option<u32>,
    image: Option<String>,
    pull: Option<String>,
    registry_credential: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct SubmitArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// A spec file (TOML, or JSON by extension) with the same keys as the flags;
    /// flags override it.
    #[arg(long)]
    file: Option<PathBuf>,
    #[arg(long)]
    name: Option<String>,
    /// Cores (fractional allowed) [default 1].
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory limit [default 1Gi]: bytes, or K/M/G/T, every unit binary
    /// (2G = 2Gi = 2GiB = 2 × 2^30 bytes, as Slurm and Docker read them).
    #[arg(long)]
    memory: Option<String>,
    /// Whole GPUs on one node [default 0]. The job sees only its own (by UUID in
    /// CUDA_VISIBLE_DEVICES and NVIDIA_VISIBLE_DEVICES) and never one an online
    /// process uses.
    #[arg(long)]
    gpus: Option<u32>,
    /// Only GPUs whose model contains this, e.g. A100 (refused if no node has one).
    #[arg(long)]
    gpu_model: Option<String>,
    /// Only GPUs with at least this much memory each, e.g. 40Gi.
    #[arg(long)]
    gpu_memory: Option<String>,
    /// The job's GPUs' power limit: watts (within the cards' range), or `auto`:
    /// the limit that uses the least energy and still meets the deadline, from
    /// the agents' per-model curves (`greenfill-agent run --gpu-curves`).
    #[arg(long)]
    gpu_power: Option<String>,
    /// Expected run time: seconds, or a number with ms/s/m/h/d/w, e.g. 90s, 10m,
    /// 1.5h [default 10m].
    #[arg(long)]
    duration: Option<String>,
    /// Latest completion: a timestamp (2026-11-24T18:00:00Z) or `+6h` from now.
    #[arg(long)]
    deadline: Option<String>,
    /// Earliest start: a timestamp or `+1h`.
    #[arg(long)]
    not_before: Option<String>,
    #[arg(long)]
    priority: Option<i32>,
    #[arg(long)]
    pool: Option<String>,
    /// k=v, repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// K=V, repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Run the command through /bin/sh -c.
    #[arg(long)]
    shell: bool,
    /// Run inside this OCI image (e.g. registry.example/etl:1.4) through the
    /// node's containerd; the command (or, with none, the image's own) runs in it.
    #[arg(long)]
    image: Option<String>,
    /// When the node pulls the image: if-not-present (default), always, never.
    #[arg(long, requires = "image")]
    pull: Option<String>,
    /// The name of a registry credential the agents hold (a file in their
    /// --registry-credentials directory); the secret itself never leaves the node.
    #[arg(long, requires = "image")]
    registry_credential: Option<String>,
    /// Retries with the same id never submit twice [default: a new UUID].
    #[arg(long)]
    request_id: Option<String>,
    #[arg(long)]
    json: bool,
    /// The command and its arguments (after `--`).
    #[arg(last = true)]
    command: Vec<String>,
}

/// `--gpu-power`: watts, or `auto`.
#[derive(Debug, Clone, Copy)]
struct GpuPower {
    watts: Option<f64>,
    auto: bool,
}

fn parse_gpu_power(s: &str) -> Result<GpuPower> {
    if s == "auto" {
        return Ok(GpuPower { watts: None, auto: true });
    }
    let w: f64 = s
        .trim_end_matches('W')
        .parse()
        .ok()
        .filter(|w: &f64| w.is_finite() && *w > 0.0)
        .ok_or_else(|| anyhow!("--gpu-power {s:?}: watts (e.g. 250) or `auto`"))?;
    Ok(GpuPower { watts: Some(w), auto: false })
}

fn parse_bytes(s: &str) -> Result<u64> {
    greenfill_core::units::parse_bytes(s)
        .ok_or_else(|| anyhow!("memory {s:?}: not a size: {}", greenfill_core::units::BYTES_HELP))
}

fn parse_time(field: &str, s: &str) -> Result<prost_types::Timestamp> {
    let now = chrono::Utc::now().timestamp();
    let t = if let Some(rel) = s.strip_prefix('+') {
        let d = parse_duration(rel).ok_or_else(|| anyhow!("{field} {s:?}: not a duration after `+` (e.g. +6h)"))?;
        #[allow(clippy::cast_possible_truncation, reason = "durations are small")]
        let d = d as i64;
        now + d
    } else {
        parse_timestamp(s)
            .ok_or_else(|| anyhow!("{field} {s:?}: not a timestamp (e.g. 2026-11-24T18:00:00Z) or +duration"))?
    };
    Ok(prost_types::Timestamp { seconds: t, nanos: 0 })
}

fn spec_from(args: &SubmitArgs) -> Result<pb::JobSpec> {
    let mut f = match &args.file {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("--file {}", p.display()))?;
            if p.extension().is_some_and(|e| e == "json") {
                serde_json::from_str::<SpecFile>(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?
            } else {
                toml::from_str::<SpecFile>(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?
            }
        }
        None => SpecFile::default(),
    };
    if !args.command.is_empty() {
        f.command.clone_from(&args.command);
    }
    let image = image_from(args, &mut f)?;
    if f.command.is_empty() && image.is_none() {
        bail!("no command: give one after `--` (e.g. greenfill submit -- ./etl.sh) or in --file");
    }
    let kv = |items: &[String], what: &str| -> Result<Vec<(String, String)>> {
        items
            .iter()
            .map(|s| {
                s.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .ok_or_else(|| anyhow!("--{what} {s:?}: need KEY=VALUE"))
            })
            .collect()
    };
    f.labels.extend(kv(&args.labels, "label")?);
    f.env.extend(kv(&args.env, "env")?);
    let memory = parse_bytes(args.memory.as_deref().or(f.memory.as_deref()).unwrap_or("1Gi"))?;
    let dur_s = args.duration.as_deref().or(f.duration.as_deref()).unwrap_or("10m");
    let secs =
        parse_duration(dur_s).ok_or_else(|| anyhow!("duration {dur_s:?}: not a duration (e.g. 90s, 10m, 2h)"))?;
    #[allow(clippy::cast_possible_truncation, reason = "durations are small")]
    let duration = prost_types::Duration { seconds: secs.trunc() as i64, nanos: (secs.fract() * 1e9) as i32 };
    let deadline = args.deadline.as_deref().or(f.deadline.as_deref()).map(|s| parse_time("deadline", s)).transpose()?;
    let not_before =
        args.not_before.as_deref().or(f.not_before.as_deref()).map(|s| parse_time("not_before", s)).transpose()?;
    let gpu_power = args.gpu_power.as_deref().or(f.gpu_power.as_deref()).map(parse_gpu_power).transpose()?;
    Ok(pb::JobSpec {
        name: args.name.clone().or(f.name).unwrap_or_else(|| match (&image, f.command.first()) {
            (_, Some(c)) => c.clone(),
            (Some(i), None) => i.reference.clone(),
            (None, None) => String::new(),
        }),
        command: f.command,
        shell: args.shell || f.shell,
        env: f.env,
        working_dir: f.working_dir.unwrap_or_default(),
        cpu_cores: args.cpu.or(f.cpu_cores).unwrap_or(1.0),
        memory_bytes: memory,
        gpus: args.gpus.or(f.gpus).unwrap_or(0),
        gpu_model: args.gpu_model.clone().or(f.gpu_model).unwrap_or_default(),
        gpu_memory_bytes: args
            .gpu_memory
            .as_deref()
            .or(f.gpu_memory.as_deref())
            .map(parse_bytes)
            .transpose()?
            .unwrap_or(0),
        gpu_power_limit_w: gpu_power.and_then(|p| p.watts),
        gpu_power_auto: gpu_power.is_some_and(|p| p.auto),
        expected_duration: Some(duration),
        deadline,
        not_before,
        priority: args.priority.or(f.priority).unwrap_or(0),
        pausable: false,
        labels: f.labels,
        pool: args.pool.clone().or(f.pool).unwrap_or_default(),
        zone: f.zone.unwrap_or_default(),
        run_as_uid: f.run_as_uid,
        run_as_gid: f.run_as_gid,
        image,
    })
}

fn image_from(args: &SubmitArgs, f: &mut SpecFile) -> Result<Option<pb::ImageSpec>> {
    let Some(reference) = args.image.clone().or(f.image.take()) else {
        if let Some(p) = f.pull.as_ref().or(f.registry_credential.as_ref()) {
            bail!("{p:?}: `pull` and `registry_credential` need an `image`");
        }
        return Ok(None);
    };
    let pull = args.pull.as_deref().or(f.pull.as_deref()).unwrap_or("if-not-present");
    let pull_policy = match pull {
        "if-not-present" | "IfNotPresent" => pb::PullPolicy::IfNotPresent,
        "always" | "Always" => pb::PullPolicy::Always,
        "never" | "Never" => pb::PullPolicy::Never,
        other => bail!("pull {other:?}: one of if-not-present, always, never"),
    };
    Ok(Some(pb::ImageSpec {
        reference,
        pull_policy: pull_policy as i32,
        credential: args.registry_credential.clone().or(f.registry_credential.take()).unwrap_or_default(),
    }))
}

fn status_err(e: tonic::Status) -> anyhow::Error {
    anyhow!("{}: {}", grpc_name(e.code()), e.message())
}

/// A status code as gRPC spells it (`INVALID_ARGUMENT`), from tonic's variant name.
fn grpc_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

fn rt() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub(crate) fn submit(conn: &Conn, args: &SubmitArgs) -> Result<()> {
    let spec = spec_from(args)?;
    let request_id = args.request_id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let r = c
            .jobs
            .submit_job(pb::SubmitJobRequest { request_id, spec: Some(spec) })
            .await
            .map_err(status_err)?
            .into_inner();
        let job = r.job.ok_or_else(|| anyhow!("the scheduler answered without a job"))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&job_json(&job))?);
        } else {
            println!("{}", job.id);
            if r.duplicate {
                eprintln!("(request id seen before: this is the first submission's job)");
            }
        }
        Ok(())
    })
}

fn t(ts: Option<&prost_types::Timestamp>) -> String {
    ts.map(|t| format_timestamp(t.seconds)).unwrap_or_default()
}

fn state(s: i32) -> String {
    pb::JobState::try_from(s).map_or("UNKNOWN", |s| s.as_str_name()).trim_start_matches("JOB_STATE_").to_lowercase()
}

pub(crate) fn job_json(j: &pb::Job) -> serde_json::Value {
    let s = j.spec.clone().unwrap_or_default();
    serde_json::json!({
        "id": j.id,
        "name": s.name,
        "state": state(j.state),
        "reason": j.state_reason,
        "owner": j.owner,
        "cancelled_by": j.cancelled_by,
        "node": j.node,
        "command": s.command,
        "cpu_cores": s.cpu_cores,
        "memory_bytes": s.memory_bytes,
        "expected_duration_s": s.expected_duration.map(|d| d.seconds),
        "deadline": t(s.deadline.as_ref()),
        "submitted_at": t(j.submitted_at.as_ref()),
        "planned_start": t(j.planned_start.as_ref()),
        "started_at": t(j.started_at.as_ref()),
        "finished_at": t(j.finished_at.as_ref()),
        "exit_code": j.exit_code,
        "attempts": j.attempts,
        "revision": j.revision,
        "labels": s.labels,
        "ledger": j.ledger.as_ref().map(ledger_json),
    })
}

/// A finished job's energy and carbon (`null` before it ends).
fn ledger_json(l: &pb::JobLedger) -> serde_json::Value {
    serde_json::json!({
        "energy_kwh": l.energy_kwh,
        "energy_source": l.energy_source,
        "cpu_seconds": l.cpu_seconds,
        "run_seconds": l.run_seconds,
        "zone": l.zone,
        "intensity_g_per_kwh": l.intensity_g_per_kwh,
        "carbon_g": l.carbon_g,
        "counterfactual_intensity_g_per_kwh": l.counterfactual_intensity_g_per_kwh,
        "counterfactual_carbon_g": l.counterfactual_carbon_g,
        "saved_g": l.saved_g,
        "embodied_g": l.embodied_g,
        "sci_g_per_job": l.sci_g,
        "signal_source": l.signal_source,
        "signal_kind": l.signal_kind,
        "price_per_mwh": l.price_per_mwh,
        "cost": l.cost,
        "counterfactual_cost": l.counterfactual_cost,
        "saved_cost": l.saved_cost,
        "currency": l.currency,
    })
}

/// The ledger in one paragraph, for people.
fn ledger_text(l: &pb::JobLedger) -> String {
    let verdict = if l.saved_g >= 0.0 { "saved" } else { "cost" };
    format!(
        "{:.6} kWh ({}, {:.1} CPU s over {:.0} s), {:.3} g CO2e at {:.1} g/kWh in zone {}; started at submission: \
         {:.3} g at {:.1} g/kWh, so waiting {verdict} {:.3} g. SCI {:.3} g/job (embodied {:.3} g). Decided on {} ({}).",
        l.energy_kwh,
        l.energy_source,
        l.cpu_seconds,
        l.run_seconds,
        l.carbon_g,
        l.intensity_g_per_kwh,
        l.zone,
        l.counterfactual_carbon_g,
        l.counterfactual_intensity_g_per_kwh,
        l.saved_g.abs(),
        l.sci_g,
        l.embodied_g,
        l.signal_source,
        l.signal_kind
    ) + &bill_text(l)
}

/// The bill's sentence, when the scheduler has a day-ahead price.
fn bill_text(l: &pb::JobLedger) -> String {
    if l.currency.is_empty() {
        return String::new();
    }
    let verdict = if l.saved_cost >= 0.0 { "saved" } else { "cost" };
    format!(
        " Energy bill {:.6} {c} at {:.2} {c}/MWh; from submission {:.6} {c}, so waiting {verdict} {:.6} {c}.",
        l.cost,
        l.price_per_mwh,
        l.counterfactual_cost,
        l.saved_cost.abs(),
        c = l.currency
    )
}

#[derive(Debug, Args)]
pub(crate) struct JobsArgs {
    #[command(flatten)]
    pub(crate) conn: Conn,
    /// Only these states (queued, planned, dispatched, running, succeeded, failed,
    /// cancelled, evicted, late); repeatable.
    #[arg(long = "state")]
    states: Vec<String>,
    /// k=v, repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// At most this many jobs (all pages are fetched up to it).
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    pub(crate) command: Option<JobsCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum JobsCommand {
    /// The jobs that succeeded, as a trace `sim run` replays (greenfill job CSV:
    /// arrival = submission, duration = the run's own, cpus, memory, deadline,
    /// id, owner), so a team can replay last month through other settings.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    /// Only jobs submitted at or after this time (RFC 3339 or unix seconds).
    #[arg(long)]
    since: Option<String>,
    /// `trace`: the simulator's job CSV (the only format yet).
    #[arg(long, default_value = "trace", value_parser = ["trace"])]
    format: String,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Every page of jobs in `states` with `labels`, up to `limit`.
async fn list(
    c: &mut Client,
    states: &[i32],
    labels: &std::collections::HashMap<String, String>,
    limit: usize,
) -> Result<Vec<pb::Job>> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let page = u32::try_from((limit - out.len()).min(1000)).unwrap_or(1000);
        let r = c
            .jobs
            .list_jobs(pb::ListJobsRequest {
                states: states.to_vec(),
                labels: labels.clone(),
                page_size: page,
                page_token: token,
            })
            .await
            .map_err(status_err)?
            .into_inner();
        out.extend(r.jobs);
        token = r.next_page_token;
        if token.is_empty() || out.len() >= limit {
            return Ok(out);
        }
    }
}

pub(crate) fn export(conn: &Conn, args: &ExportArgs) -> Result<()> {
    let since = match &args.since {
        Some(s) => {
            Some(parse_timestamp(s).ok_or_else(|| anyhow!("--since {s:?}: not a time (RFC 3339 or unix seconds)"))?)
        }
        None => None,
    };
    let jobs = rt()?.block_on(async {
        let mut c = conn.connect().await?;
        list(&mut c, &[pb::JobState::Succeeded as i32], &std::collections::HashMap::new(), usize::MAX).await
    })?;
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(["arrival", "duration", "cpus", "memory", "deadline", "id", "owner"])?;
    let mut rows = 0;
    for j in &jobs {
        let (Some(sub), Some(start), Some(end)) = (&j.submitted_at, &j.started_at, &j.finished_at) else { continue };
        if since.is_some_and(|s| sub.seconds < s) {
            continue;
        }
        let spec = j.spec.clone().unwrap_or_default();
        let duration = (end.seconds - start.seconds).max(1);
        // A deadline the run met by waiting less than its length is kept at
        // least arrival + duration, which the trace reader requires.
        let deadline =
            spec.deadline.map(|d| format_timestamp(d.seconds.max(sub.seconds + duration))).unwrap_or_default();
        w.write_record([
            format_timestamp(sub.seconds),
            duration.to_string(),
            spec.cpu_cores.to_string(),
            spec.memory_bytes.to_string(),
            deadline,
            j.id.clone(),
            j.owner.clone(),
        ])?;
        rows += 1;
    }
    let bytes = w.into_inner().map_err(|e| anyhow!("{e}"))?;
    match &args.out {
        Some(path) => {
            std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}: {rows} succeeded jobs", path.display());
        }
        None => std::io::Write::write_all(&mut std::io::stdout(), &bytes)?,
    }
    Ok(())
}

pub(crate) fn jobs(conn: &Conn, args: &JobsArgs) -> Result<()> {
    let states = args
        .states
        .iter()
        .map(|s| {
            pb::JobState::from_str_name(&format!("JOB_STATE_{}", s.to_uppercase()))
                .map(|x| x as i32)
                .ok_or_else(|| anyhow!("--state {s}: unknown; known: queued, planned, dispatched, running, succeeded, failed, cancelled, evicted, late"))
        })
        .collect::<Result<Vec<_>>>()?;
    let labels: std::collections::HashMap<String, String> = args
        .labels
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow!("--label {s:?}: need k=v"))
        })
        .collect::<Result<_>>()?;
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let out = list(&mut c, &states, &labels, args.limit).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out.iter().map(job_json).collect::<Vec<_>>())?);
        } else {
            println!("{:<36}  {:<10}  {:<12}  {:>4}  {:<20}  NAME", "ID", "STATE", "NODE", "EXIT", "SUBMITTED");
            for j in &out {
                println!(
                    "{:<36}  {:<10}  {:<12}  {:>4}  {:<20}  {}",
                    j.id,
                    state(j.state),
                    j.node,
                    j.exit_code.map_or_else(|| "-".into(), |c| c.to_string()),
                    t(j.submitted_at.as_ref()),
                    j.spec.as_ref().map_or("", |s| s.name.as_str())
                );
            }
        }
        Ok(())
    })
}

pub(crate) fn job(conn: &Conn, id: &str, json: bool) -> Result<()> {
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let j = c.jobs.get_job(pb::GetJobRequest { id: id.to_owned() }).await.map_err(status_err)?.into_inner();
        let v = job_json(&j);
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else if let serde_json::Value::Object(m) = v {
            for (k, v) in m.into_iter().filter(|(k, _)| k != "ledger") {
                println!("{k:>20}: {v}");
            }
            if let Some(l) = &j.ledger {
                println!("{:>20}: {}", "carbon", ledger_text(l));
            }
        }
        Ok(())
    })
}

pub(crate) fn cancel(conn: &Conn, id: &str, reason: &str) -> Result<()> {
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let j = c
            .jobs
            .cancel_job(pb::CancelJobRequest { id: id.to_owned(), reason: reason.to_owned() })
            .await
            .map_err(status_err)?
            .into_inner();
        println!("{} {}", j.id, state(j.state));
        Ok(())
    })
}

pub(crate) fn watch(conn: &Conn, ids: Vec<String>, since: u64, json: bool) -> Result<()> {
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let mut s = c
            .jobs
            .watch_jobs(pb::WatchJobsRequest { states: vec![], ids, since_revision: since })
            .await
            .map_err(status_err)?
            .into_inner();
        while let Some(e) = s.message().await.map_err(status_err)? {
            let j = e.job.unwrap_or_default();
            if json {
                println!("{}", serde_json::json!({"revision": e.revision, "previous_state": state(e.previous_state), "job": job_json(&j)}));
            } else {
                println!("{:>8}  {:<36}  {:<10} {}  {}", e.revision, j.id, state(j.state), j.node, j.state_reason);
            }
        }
        Ok(())
    })
}

pub(crate) fn explain(conn: &Conn, id: &str, json: bool) -> Result<()> {
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let x = c.jobs.explain_job(pb::ExplainJobRequest { id: id.to_owned() }).await.map_err(status_err)?.into_inner();
        let reason = pb::WaitReason::try_from(x.wait_reason)
            .map_or("", |r| r.as_str_name())
            .trim_start_matches("WAIT_REASON_")
            .to_lowercase();
        let v = serde_json::json!({
            "id": x.id, "state": state(x.state), "node": x.node, "pool": x.pool,
            "planned_start": t(x.planned_start.as_ref()), "wait_reason": reason, "detail": x.detail,
            "energy_kwh_estimate": x.energy_kwh_estimate, "carbon_kg_estimate": x.carbon_kg_estimate,
            "intensity_g_per_kwh": x.intensity_g_per_kwh, "carbon_kg_if_started_now": x.carbon_kg_if_started_now,
        });
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{} is {}: {}", x.id, state(x.state), x.detail);
            if x.energy_kwh_estimate > 0.0 {
                println!(
                    "  ~{:.3} kWh, {:.3} kg CO2 at {:.0} g/kWh (starting at its earliest: {:.3} kg)",
                    x.energy_kwh_estimate, x.carbon_kg_estimate, x.intensity_g_per_kwh, x.carbon_kg_if_started_now
                );
            }
        }
        Ok(())
    })
}

#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only entries about this node (registrations).
    #[arg(long, conflicts_with = "job")]
    node: Option<String>,
    /// Only entries about this job (cancels).
    #[arg(long)]
    job: Option<String>,
    /// Only entries at or after this time (RFC 3339, or e.g. `now-24h`).
    #[arg(long)]
    since: Option<String>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) conn: Conn,
}

pub(crate) fn audit(conn: &Conn, args: &AuditArgs) -> Result<()> {
    let since = since_arg(args.since.as_deref())?;
    let subject = args.node.clone().or_else(|| args.job.clone()).unwrap_or_default();
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let req = pb::ListAuditRequest { subject, since, limit: args.limit };
        let r = c.plans.list_audit(req).await.map_err(status_err)?.into_inner();
        if args.json {
            let rows: Vec<serde_json::Value> = r
                .entries
                .iter()
                .map(|a| {
                    serde_json::json!({"time": t(a.time.as_ref()), "kind": a.kind, "subject": a.subject,
                        "actor": a.actor, "address": a.address, "accepted": a.accepted, "reason": a.reason})
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(());
        }
        println!("{:<20}  {:<8}  {:<36}  {:<8}  WHO, FROM: WHY", "TIME", "KIND", "SUBJECT", "OUTCOME");
        for a in &r.entries {
            let outcome = if a.accepted { "accepted" } else { "refused" };
            println!(
                "{:<20}  {:<8}  {:<36}  {:<8}  {}, {}: {}",
                t(a.time.as_ref()),
                a.kind,
                a.subject,
                outcome,
                a.actor,
                a.address,
                a.reason
            );
        }
        Ok(())
    })
}

/// What `greenfill ledger` sums by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum LedgerKey {
    Pool,
    User,
    Zone,
    Day,
}

#[derive(Debug, Args)]
pub(crate) struct LedgerArgs {
    /// Sum by these, comma-separated (default: all four).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pool,user,zone,day")]
    by: Vec<LedgerKey>,
    /// Only jobs that finished at or after this time (RFC 3339, or e.g. `now-7d`).
    #[arg(long)]
    since: Option<String>,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    pub(crate) conn: Conn,
}

/// `--since` for the log commands: RFC 3339, unix seconds or `now-DURATION`.
fn since_arg(s: Option<&str>) -> Result<Option<prost_types::Timestamp>> {
    match s {
        Some(s) if s.starts_with("now-") => {
            let d = parse_duration(&s[4..]).ok_or_else(|| anyhow!("--since {s:?}: not a time nor now-DURATION"))?;
            #[allow(clippy::cast_possible_truncation, reason = "durations are small")]
            Ok(Some(prost_types::Timestamp { seconds: chrono::Utc::now().timestamp() - d as i64, nanos: 0 }))
        }
        Some(s) => Ok(Some(parse_time("--since", s)?)),
        None => Ok(None),
    }
}

pub(crate) fn ledger(conn: &Conn, args: &LedgerArgs) -> Result<()> {
    let since = since_arg(args.since.as_deref())?;
    let mut by = args.by.clone();
    by.sort_unstable();
    by.dedup();
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let r = c.plans.get_ledger(pb::GetLedgerRequest { since }).await.map_err(status_err)?.into_inner();
        let mut sums: std::collections::BTreeMap<Vec<String>, pb::LedgerRow> = std::collections::BTreeMap::new();
        for row in r.rows {
            let key: Vec<String> = by
                .iter()
                .map(|k| match k {
                    LedgerKey::Pool => row.pool.clone(),
                    LedgerKey::User => row.user.clone(),
                    LedgerKey::Zone => row.zone.clone(),
                    LedgerKey::Day => row.day.clone(),
                })
                .collect();
            sums.entry(key).or_default().add(&row);
        }
        let names: Vec<&str> = by
            .iter()
            .map(|k| match k {
                LedgerKey::Pool => "pool",
                LedgerKey::User => "user",
                LedgerKey::Zone => "zone",
                LedgerKey::Day => "day",
            })
            .collect();
        if args.json {
            let rows: Vec<serde_json::Value> = sums
                .iter()
                .map(|(key, s)| {
                    let mut v = serde_json::json!({"jobs": s.jobs, "energy_kwh": s.energy_kwh, "carbon_g": s.carbon_g,
                        "counterfactual_carbon_g": s.counterfactual_carbon_g, "saved_g": s.saved_g,
                        "embodied_g": s.embodied_g, "cost": s.cost, "saved_cost": s.saved_cost,
                        "currency": s.currency});
                    for (name, value) in names.iter().zip(key) {
                        v[*name] = value.clone().into();
                    }
                    v
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rows)?);
            return Ok(());
        }
        let head: Vec<String> = names.iter().map(|n| format!("{:<14}", n.to_uppercase())).collect();
        // With a day-ahead price, the bill and what waiting saved of it.
        let currency = sums.values().find(|s| !s.currency.is_empty()).map(|s| s.currency.clone());
        let bill_head =
            currency.as_ref().map(|c| format!(" {:>12} {:>12}", c, format!("SAVED {c}"))).unwrap_or_default();
        println!("{}{:>7} {:>12} {:>12} {:>12}{bill_head}", head.concat(), "JOBS", "KWH", "KG CO2", "SAVED KG");
        for (key, s) in &sums {
            let cells: Vec<String> =
                key.iter().map(|k| format!("{:<14}", if k.is_empty() { "-" } else { k })).collect();
            let bill =
                currency.as_ref().map(|_| format!(" {:>12.4} {:>12.4}", s.cost, s.saved_cost)).unwrap_or_default();
            println!(
                "{}{:>7} {:>12.3} {:>12.4} {:>12.4}{bill}",
                cells.concat(),
                s.jobs,
                s.energy_kwh,
                s.carbon_g / 1000.0,
                s.saved_g / 1000.0
            );
        }
        Ok(())
    })
}

pub(crate) fn nodes(conn: &Conn, json: bool) -> Result<()> {
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let r = c.plans.list_nodes(pb::ListNodesRequest {}).await.map_err(status_err)?.into_inner();
        let rows: Vec<serde_json::Value> = r
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name, "pool": n.pool, "cpu_cores": n.cpu_cores, "memory_bytes": n.memory_bytes,
                    "connected": n.connected, "stale": n.stale, "last_seen": t(n.last_seen.as_ref()),
                    "online_cpu_cores": n.online_cpu_cores, "batch_cpu_cores": n.batch_cpu_cores,
                    "running_jobs": n.running_jobs, "history_buckets": n.history_buckets,
                    "power_w": n.power.iter().find(|p| p.component == "node").map(|p| p.watts),
                    "power_state": n.power_state, "power_since": t(n.power_since.as_ref()),
                    "power_reason": n.power_reason,
                    "agent_instance": n.agent_instance, "agent_address": n.agent_address,
                })
            })
            .collect();
        if json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            println!(
                "{:<20} {:<10} {:>6} {:>9} {:>8} {:>8} {:>5}  {:<10} {:<20}  LAST SEEN",
                "NAME", "POOL", "CORES", "CONNECTED", "ONLINE", "BATCH", "JOBS", "POWER", "SINCE"
            );
            for n in &r.nodes {
                let f = |x: Option<f64>| x.map_or_else(|| "-".into(), |v| format!("{v:.2}"));
                println!(
                    "{:<20} {:<10} {:>6} {:>9} {:>8} {:>8} {:>5}  {:<10} {:<20}  {}{}",
                    n.name,
                    n.pool,
                    n.cpu_cores,
                    n.connected,
                    f(n.online_cpu_cores),
                    f(n.batch_cpu_cores),
                    n.running_jobs,
                    n.power_state,
                    n.power_since.as_ref().map_or_else(|| "-".to_owned(), |x| t(Some(x))),
                    t(n.last_seen.as_ref()),
                    if n.stale { " (stale)" } else { "" }
                );
            }
        }
        Ok(())
    })
}

pub(crate) fn live_plan(conn: &Conn, include_jobs: bool, json: bool) -> Result<()> {
    rt()?.block_on(async {
        let mut c = conn.connect().await?;
        let p = c.plans.get_plan(pb::GetPlanRequest { include_jobs }).await.map_err(status_err)?.into_inner();
        let v = serde_json::json!({
            "revision": p.revision, "created_at": t(p.created_at.as_ref()), "slots": p.slots,
            "slot_s": p.slot.map(|d| d.seconds), "energy_kwh": p.energy_kwh, "carbon_kg": p.carbon_kg,
            "jobs_planned": p.jobs_planned, "jobs_waiting": p.jobs_waiting, "solve_ms": p.solve_ms,
            "objective": p.objective, "cost": p.cost, "currency": p.currency, "price_per_mwh": p.price_per_mwh,
            "pools": p.pools.iter().map(|x| serde_json::json!({"pool": x.pool, "nodes": x.nodes,
                "batch_cpu_planned": x.batch_cpu_planned, "batch_cpu_capacity": x.batch_cpu_capacity,
                "online_cpu_upper": x.online_cpu_upper, "powered_nodes_planned": x.powered_nodes,
                "powered_nodes_now": x.powered_now})).collect::<Vec<_>>(),
            "jobs": p.jobs.iter().map(|j| serde_json::json!({"job_id": j.job_id, "pool": j.pool, "node": j.node,
                "planned_start": t(j.planned_start.as_ref()), "carbon_kg": j.carbon_kg})).collect::<Vec<_>>(),
        });
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "plan {} at {}: {} jobs planned, {} waiting; {:.2} kWh, {:.3} kg CO2 over {} slots; solved in {:.1} ms",
                p.revision,
                t(p.created_at.as_ref()),
                p.jobs_planned,
                p.jobs_waiting,
                p.energy_kwh,
                p.carbon_kg,
                p.slots,
                p.solve_ms
            );
            if !p.currency.is_empty() {
                let now = p.price_per_mwh.first().copied().unwrap_or_default();
                println!(
                    "  objective {}: the plan's energy bill {:.2} {}; {:.2} {} / MWh in its first slot",
                    p.objective, p.cost, p.currency, now, p.currency
                );
            }
            for x in &p.pools {
                println!(
                    "  pool {}: {} nodes, {} powered now, plan powers {} in its first slot",
                    x.pool,
                    x.nodes,
                    x.powered_now,
                    x.powered_nodes.first().copied().unwrap_or(0)
                );
            }
        }
        Ok(())
    })
}
