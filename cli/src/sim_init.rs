//! `greenfill sim init`: a scenario from a user's own files — an online fleet
//! from a usage file (one node per series), batch machines sized to the job
//! trace, a grid zone's carbon — written with a comment on every key a user may
//! want to change, so that `sim run` on it works at once.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Datelike, Utc};
use clap::Args;
use greenfill_core::data::{CarbonOptions, JobFormat, UsageOptions, load_carbon, load_jobs, load_usage};
use greenfill_core::time::format_timestamp;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Online usage: any usage file `data inspect` reads (a long CSV from
    /// `data import prometheus`, one series per machine, is the usual one).
    #[arg(long)]
    usage: PathBuf,
    /// Batch jobs: any job trace `data inspect` reads.
    #[arg(long)]
    jobs: PathBuf,
    /// Grid zone of the bundled hourly carbon (data/carbon/<ZONE>_2022_hourly_ci.csv:
    /// AZPS, BPAT, CISO, ERCO, MISO, NYIS, PJM, SOCO).
    #[arg(long, conflicts_with = "carbon")]
    zone: Option<String>,
    /// A carbon-intensity file instead of --zone.
    #[arg(long)]
    carbon: Option<PathBuf>,
    /// Cores per machine (the usage gives shares, not machine sizes).
    #[arg(long, default_value_t = 48.0)]
    cores: f64,
    /// Memory per machine, GiB.
    #[arg(long, default_value_t = 384.0)]
    memory_gib: f64,
    /// Dedicated batch machines (default: the jobs' mean demand × 1.5, in machines).
    #[arg(long)]
    batch_nodes: Option<u32>,
    /// Where to write the scenario.
    #[arg(long, default_value = "scenario.toml")]
    out: PathBuf,
}

pub(crate) fn init(a: &InitArgs) -> Result<()> {
    if !(a.cores.is_finite() && a.cores > 0.0) {
        bail!("--cores {}: must be a positive number of cores", a.cores);
    }
    let usage = load_usage(&a.usage, &UsageOptions::default())?;
    let series = usage.series.len();
    let first = usage.series.iter().map(|s| s.start).min().context("the usage file has no series")?;
    let span = usage.series.iter().map(|s| s.end() + s.step - s.start).max().unwrap_or(0);
    let trace = load_jobs(&a.jobs, JobFormat::Auto)?;
    let demand = mean_cores(&trace.jobs);
    // The scenario keeps 10 % of each machine free (safety_margin below).
    if let Some(big) = trace.jobs.iter().max_by(|x, y| x.cpus.total_cmp(&y.cpus))
        && big.cpus > a.cores * 0.9
    {
        bail!(
            "--cores {}: job `{}` needs {} cores, more than the 90 % of a machine batch may use; give --cores {} or more",
            a.cores,
            big.id,
            big.cpus,
            (big.cpus / 0.9).ceil()
        );
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "a machine count")]
    let batch_nodes = a.batch_nodes.unwrap_or_else(|| ((demand * 1.5 / a.cores).ceil() as u32).max(1));
    let carbon = match (&a.zone, &a.carbon) {
        (Some(z), _) => bundled_zone(z)?,
        (None, Some(c)) => c.clone(),
        (None, None) => bail!("--zone or --carbon: which grid's carbon intensity to replay"),
    };
    let c = load_carbon(&carbon, &CarbonOptions::default())?.series;
    let start = into_span(first, c.start, c.end());
    // Whole hours of usage, at least one; the online trace repeats past its end.
    let length_h = (span / 3600).max(1);
    let out_dir = a.out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let path = |p: &Path| -> Result<String> {
        let abs = std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?;
        Ok(relative_to(&abs, &std::fs::canonicalize(out_dir)?).display().to_string())
    };
    let text = scenario(&Scenario {
        name: format!(
            "{} + {}",
            a.usage.file_stem().unwrap_or_default().to_string_lossy(),
            a.jobs.file_stem().unwrap_or_default().to_string_lossy()
        ),
        start: format_timestamp(start),
        length_h,
        online_nodes: series,
        batch_nodes,
        cores: a.cores,
        memory_gib: a.memory_gib,
        usage: path(&a.usage)?,
        jobs: path(&a.jobs)?,
        carbon: path(&carbon)?,
        demand,
        jobs_count: trace.jobs.len(),
        usage_unit: usage.unit.clone(),
    });
    std::fs::write(&a.out, text).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {}: {series} online machines (one per series), {batch_nodes} batch machines for {:.0} cores of jobs on \
         average, {length_h} h from {}; run it with `greenfill sim run --scenario {}`",
        a.out.display(),
        demand,
        format_timestamp(start),
        a.out.display()
    );
    Ok(())
}

/// Mean cores the jobs keep busy between the first arrival and the last end.
fn mean_cores(jobs: &[greenfill_core::data::JobRecord]) -> f64 {
    let (Some(first), Some(last)) =
        (jobs.iter().map(|j| j.arrival).min(), jobs.iter().map(|j| j.arrival + j.duration).max())
    else {
        return 0.0;
    };
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let core_s: f64 = jobs.iter().map(|j| j.cpus * f64::from(j.instances) * j.duration as f64).sum();
    #[allow(clippy::cast_precision_loss, reason = "seconds")]
    let span = (last - first).max(1) as f64;
    core_s / span
}

fn bundled_zone(zone: &str) -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/carbon");
    let dir = if dir.exists() { dir } else { PathBuf::from("data/carbon") };
    let file = dir.join(format!("{}_2022_hourly_ci.csv", zone.to_ascii_uppercase()));
    if file.exists() {
        return Ok(file);
    }
    let known: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().strip_suffix("_2022_hourly_ci.csv").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    bail!("--zone {zone}: no bundled carbon for it (bundled: {}); give a file with --carbon", known.join(", "))
}

/// `t` moved by whole years into `[lo, hi]` (same day and time of year), or `lo`.
fn into_span(t: i64, lo: i64, hi: i64) -> i64 {
    if (lo..=hi).contains(&t) {
        return t;
    }
    let Some(at) = DateTime::<Utc>::from_timestamp(t, 0) else { return lo };
    let Some(year) = DateTime::<Utc>::from_timestamp(lo, 0).map(|d| d.year()) else { return lo };
    (year..=year + 1)
        .filter_map(|y| at.with_year(y))
        .map(|d| d.timestamp())
        .find(|x| (lo..=hi).contains(x))
        .unwrap_or(lo)
}

/// `path` from `base` (both absolute), with `..` where they part.
fn relative_to(path: &Path, base: &Path) -> PathBuf {
    let (p, b): (Vec<_>, Vec<_>) = (path.components().collect(), base.components().collect());
    let common = p.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut out: PathBuf = std::iter::repeat_n("..", b.len() - common).collect();
    out.extend(&p[common..]);
    out
}

struct Scenario {
    name: String,
    start: String,
    length_h: i64,
    online_nodes: usize,
    batch_nodes: u32,
    cores: f64,
    memory_gib: f64,
    usage: String,
    jobs: String,
    carbon: String,
    demand: f64,
    jobs_count: usize,
    usage_unit: String,
}

fn scenario(s: &Scenario) -> String {
    let mut t = String::new();
    let _ = write!(
        t,
        r#"# Written by `greenfill sim init`; every key below may be changed.
name = "{name}"
# When the replay starts: the usage's first time, moved to the carbon file's year.
start = "{start}"
# Arrivals for this long (the usage's span), then `drain` with none.
length = "{length}h"
drain = "2d"
step = "5m"
# How often greenfill re-plans, how far ahead, in slots of what length.
plan_every = "15m"
horizon = "24h"
slot = "15m"
seed = 1
# Share of each machine kept free of batch (the guard's threshold is 1 − this).
safety_margin = 0.1
# The online forecaster (`greenfill forecast backtest` compares them).
forecast = "greenfill"

# Your online machines, one per series of the usage file. Set cores, memory and
# the power curve to your hardware ({{ kind = "table", watts = [11 values] }} for
# a SPECpower curve); pue to your site's.
[[cluster.pools]]
name = "online"
nodes = {online}
cores = {cores}
memory_gib = {mem}
pue = 1.3
always_on = true
power = {{ kind = "linear", idle_w = 170, max_w = 440 }}

# The machines your batch runs on today: what co-location frees. {jobs_count}
# jobs need {demand:.0} cores on average; here that × 1.5.
[[cluster.pools]]
name = "batch"
nodes = {batch}
cores = {cores}
memory_gib = {mem}
pue = 1.3
power = {{ kind = "linear", idle_w = 170, max_w = 440 }}

[online]
file = "{usage}"
# One online machine per series (values in {unit}).
per_node = true
# Memory online services hold, as a share of each machine's.
memory_share = 0.3
# Telemetry the forecaster has from before `start` ("0": a fresh install).
history = "0"

[batch]
file = "{jobs}"
# Memory per core where the trace has none; the time each job may wait.
memory_gib_per_core = 2.0
deadline_slack = "24h"

[carbon]
file = "{carbon}"
# Error of the planner's carbon forecast (a share of the actual).
forecast_error = 0.05
"#,
        name = s.name,
        start = s.start,
        length = s.length_h,
        online = s.online_nodes,
        batch = s.batch_nodes,
        cores = s.cores,
        mem = s.memory_gib,
        usage = s.usage,
        jobs = s.jobs,
        carbon = s.carbon,
        demand = s.demand,
        jobs_count = s.jobs_count,
        unit = s.usage_unit,
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_move_into_the_carbon_year_and_paths_are_relative() {
        // 2026-06-01 into a 2022 file: 2022-06-01.
        let (lo, hi) = (1_640_995_200, 1_672_531_199);
        assert_eq!(into_span(1_780_272_000, lo, hi), 1_654_041_600);
        assert_eq!(into_span(1_654_041_600, lo, hi), 1_654_041_600);
        assert_eq!(
            relative_to(Path::new("/work/main/data/x.csv"), Path::new("/work/main/examples")),
            PathBuf::from("../data/x.csv")
        );
        assert_eq!(relative_to(Path::new("/a/b.csv"), Path::new("/a")), PathBuf::from("b.csv"));
    }
}
