//! `greenfill data …`

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use greenfill_core::data::{
    CarbonOptions, JobFormat, JobTrace, UsageFormat, UsageMetric, UsageOptions, load_carbon, load_jobs, load_usage,
};
use greenfill_core::time::{format_timestamp, parse_step};
use greenfill_core::{Series, SeriesStats};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Subcommand)]
pub(crate) enum DataCommand {
    /// Summarise a file: rows, series, start, end, step, filled gaps, min/mean/max.
    ///
    /// The kind is guessed from the header when not given. Statistics are over the
    /// observed (non-empty) rows; gaps are filled by linear interpolation and counted.
    Inspect(InspectArgs),
    /// Fetch usage from somewhere else into a file greenfill reads.
    #[command(subcommand)]
    Import(ImportCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ImportCommand {
    /// A Prometheus range query (`/api/v1/query_range`) into a long CSV (time,
    /// series, value): one series per value of `--label`, gaps kept as gaps,
    /// long ranges in chunks under the server's 11,000-point limit, retries on
    /// connection errors, 429 and 5xx. Use `--preset node-cpu` for
    /// node_exporter's busy CPU per instance, or any `--query`. Errors exit 2
    /// and write nothing.
    Prometheus(crate::prometheus::ImportArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Kind {
    /// Carbon intensity (gCO2/kWh) over time.
    Carbon,
    /// Machine or cluster utilisation over time.
    Usage,
    /// Batch job arrivals.
    Jobs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Metric {
    Cpu,
    Mem,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The file to read.
    file: PathBuf,
    /// What the file holds (guessed from its header when omitted).
    #[arg(long, value_enum)]
    kind: Option<Kind>,
    /// Carbon: the time column (default: timestamp, time, datetime, …).
    #[arg(long)]
    time_column: Option<String>,
    /// Carbon or usage: the value column (default: avg_CI / Carbon Intensity; cpu or mem by --metric).
    #[arg(long)]
    value_column: Option<String>,
    /// Step of the regular series, e.g. 5m, 1h (default: inferred from the file).
    #[arg(long, value_parser = step_arg)]
    step: Option<i64>,
    /// Usage: which quantity to read.
    #[arg(long, value_enum, default_value = "cpu")]
    metric: Metric,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

fn step_arg(s: &str) -> Result<i64, String> {
    parse_step(s).ok_or_else(|| format!("`{s}` is not a step: a whole number of seconds or e.g. 30s, 5m, 1h"))
}

pub(crate) fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Inspect(args) => inspect(&args),
        DataCommand::Import(ImportCommand::Prometheus(args)) => crate::prometheus::import(&args),
    }
}

#[derive(Debug, Serialize)]
struct SeriesSummary {
    id: String,
    start: String,
    end: String,
    step_s: i64,
    points: usize,
    filled: usize,
}

#[derive(Debug, Serialize)]
struct Summary {
    file: String,
    kind: &'static str,
    format: String,
    rows: usize,
    unit: String,
    start: String,
    end: String,
    step_s: i64,
    filled: usize,
    value: SeriesStats,
    series: Vec<SeriesSummary>,
}

#[derive(Debug, Serialize)]
struct JobSummary {
    file: String,
    kind: &'static str,
    format: String,
    rows: usize,
    jobs: usize,
    skipped: Vec<Skipped>,
    first_arrival: i64,
    last_arrival: i64,
    with_deadline: usize,
    pausable: usize,
    duration_s: Option<SeriesStats>,
    cpus: Option<SeriesStats>,
    core_hours: f64,
}

#[derive(Debug, Serialize)]
struct Skipped {
    reason: &'static str,
    rows: usize,
}

fn guess_kind(path: &Path) -> Result<Kind> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut first = String::new();
    std::io::BufReader::new(file).read_line(&mut first).with_context(|| format!("{}: cannot read", path.display()))?;
    let h = first.to_ascii_lowercase();
    Ok(if h.contains("avg_ci") || h.contains("carbon intensity") {
        Kind::Carbon
    } else if h.contains("arrival") || h.contains("task_create_time") {
        Kind::Jobs
    } else {
        Kind::Usage
    })
}

fn series_summaries(series: &[Series]) -> Vec<SeriesSummary> {
    series
        .iter()
        .map(|s| SeriesSummary {
            id: s.id.clone(),
            start: format_timestamp(s.start),
            end: format_timestamp(s.end()),
            step_s: s.step,
            points: s.values.len(),
            filled: s.filled,
        })
        .collect()
}

fn inspect(args: &InspectArgs) -> Result<()> {
    let kind = match args.kind {
        Some(k) => k,
        None => guess_kind(&args.file)?,
    };
    let file = args.file.display().to_string();
    match kind {
        Kind::Carbon => {
            let opts = CarbonOptions {
                time_column: args.time_column.clone(),
                value_column: args.value_column.clone(),
                step: args.step,
            };
            let t = load_carbon(&args.file, &opts)?;
            let s = &t.series;
            print_series(
                args.json,
                &Summary {
                    file,
                    kind: "carbon",
                    format: "csv".into(),
                    rows: t.rows,
                    unit: "gCO2/kWh".into(),
                    start: format_timestamp(s.start),
                    end: format_timestamp(s.end()),
                    step_s: s.step,
                    filled: s.filled,
                    value: t.stats,
                    series: series_summaries(std::slice::from_ref(s)),
                },
            )
        }
        Kind::Usage => {
            let opts = UsageOptions {
                format: UsageFormat::Auto,
                metric: match args.metric {
                    Metric::Cpu => UsageMetric::Cpu,
                    Metric::Mem => UsageMetric::Mem,
                },
                step: args.step,
                value_column: args.value_column.clone(),
                keep_gaps: false,
            };
            let t = load_usage(&args.file, &opts)?;
            let start = t.series.iter().map(|s| s.start).min().unwrap_or_default();
            let end = t.series.iter().map(Series::end).max().unwrap_or_default();
            print_series(
                args.json,
                &Summary {
                    file,
                    kind: "usage",
                    format: format!("{:?}", t.format),
                    rows: t.rows,
                    unit: t.unit.clone(),
                    start: format_timestamp(start),
                    end: format_timestamp(end),
                    step_s: t.series.first().map_or(0, |s| s.step),
                    filled: t.series.iter().map(|s| s.filled).sum(),
                    value: t.stats,
                    series: series_summaries(&t.series),
                },
            )
        }
        Kind::Jobs => {
            let t = load_jobs(&args.file, JobFormat::Auto)?;
            print_jobs(args.json, &job_summary(file, &t))
        }
    }
}

fn job_summary(file: String, t: &JobTrace) -> JobSummary {
    #[allow(clippy::cast_precision_loss, reason = "durations and instance counts fit an f64")]
    let core_hours = t.jobs.iter().map(|j| j.cpus * j.duration as f64 * f64::from(j.instances) / 3600.0).sum();
    #[allow(clippy::cast_precision_loss, reason = "durations fit an f64")]
    JobSummary {
        file,
        kind: "jobs",
        format: format!("{:?}", t.format),
        rows: t.rows,
        jobs: t.jobs.len(),
        skipped: t.skipped.iter().map(|(reason, rows)| Skipped { reason, rows: *rows }).collect(),
        first_arrival: t.jobs.iter().map(|j| j.arrival).min().unwrap_or_default(),
        last_arrival: t.jobs.iter().map(|j| j.arrival).max().unwrap_or_default(),
        with_deadline: t.jobs.iter().filter(|j| j.deadline.is_some()).count(),
        pausable: t.jobs.iter().filter(|j| j.pausable).count(),
        duration_s: SeriesStats::of(t.jobs.iter().map(|j| j.duration as f64)),
        cpus: SeriesStats::of(t.jobs.iter().map(|j| j.cpus)),
        core_hours,
    }
}

fn print_series(json: bool, s: &Summary) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("{} ({}, {})", s.file, s.kind, s.format);
    println!("  rows      {}", s.rows);
    println!("  span      {} .. {}  step {} s", s.start, s.end, s.step_s);
    println!("  filled    {} gaps", s.filled);
    println!(
        "  value     min {:.4}  mean {:.4}  max {:.4}  {}  (over {} observed)",
        s.value.min, s.value.mean, s.value.max, s.unit, s.value.count
    );
    println!("  series    {}", s.series.len());
    for x in s.series.iter().take(20) {
        println!("    {:<40} {:>7} points  {:>5} filled", x.id, x.points, x.filled);
    }
    if s.series.len() > 20 {
        println!("    … {} more (use --json)", s.series.len() - 20);
    }
    Ok(())
}

fn print_jobs(json: bool, s: &JobSummary) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    println!("{} ({}, {})", s.file, s.kind, s.format);
    println!("  rows      {}  jobs {}", s.rows, s.jobs);
    for k in &s.skipped {
        println!("  skipped   {} ({})", k.rows, k.reason);
    }
    println!("  arrivals  {} s .. {} s", s.first_arrival, s.last_arrival);
    if let (Some(d), Some(c)) = (s.duration_s, s.cpus) {
        println!("  duration  min {:.0} s  mean {:.0} s  max {:.0} s", d.min, d.mean, d.max);
        println!("  cpus      min {:.2}  mean {:.2}  max {:.2}", c.min, c.mean, c.max);
    }
    println!("  work      {:.1} core-hours; {} with deadline, {} pausable", s.core_hours, s.with_deadline, s.pausable);
    Ok(())
}
