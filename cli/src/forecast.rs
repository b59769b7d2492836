//! `greenfill forecast …`

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use greenfill_core::data::{UsageMetric, UsageOptions, load_usage};
use greenfill_core::time::parse_step;
use greenfill_forecast::{BacktestOptions, backtest, by_name, models};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(crate) enum ForecastCommand {
    /// Rolling-origin backtest of the forecasters on a usage trace.
    ///
    /// Models: the baselines `seasonal_naive` and `koordinator_p95`;
    /// `daily_profile`; the learned point models `holt_winters`, `lag_ridge` and
    /// `lag_forest` with split-conformal bounds; `profile_holt_winters` (the mean
    /// of the profile's and Holt-Winters' bounds); and `greenfill`, the default
    /// (the profile and the two baselines, weighted by a backtest inside each
    /// history).
    ///
    /// Every model gets the same origins and histories. Reports, per model, the
    /// pinball loss of the upper bound at the quantile, its coverage (share of
    /// actuals at or below it), its mean excess over the actual, and the point
    /// forecast's MAE, averaged over series (units of the series).
    Backtest(BacktestArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BacktestArgs {
    /// Usage trace (any format `greenfill data inspect` reads as usage).
    #[arg(long)]
    input: PathBuf,
    /// Only these series (repeatable); default all.
    #[arg(long = "series")]
    series: Vec<String>,
    /// Quantity to forecast.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "mem"])]
    metric: String,
    /// Resample to this step.
    #[arg(long, default_value = "5m", value_parser = step_arg)]
    step: i64,
    #[arg(long, default_value = "24h", value_parser = step_arg)]
    horizon: i64,
    /// Quantile of the upper bound.
    #[arg(long, default_value_t = 0.95)]
    quantile: f64,
    /// Each model sees at most this many days before an origin. The default is
    /// the scheduler's default telemetry retention, so the backtest sees what the
    /// scheduler's forecaster sees.
    #[arg(long, default_value_t = 14)]
    train_days: usize,
    /// The first origin comes after this many days.
    #[arg(long, default_value_t = 2)]
    min_train_days: usize,
    /// Time between origins.
    #[arg(long, default_value = "6h", value_parser = step_arg)]
    origin_every: i64,
    /// Only these models (repeatable; see above for the names); default all.
    #[arg(long = "model")]
    model: Vec<String>,
    #[arg(long)]
    json: bool,
}

fn step_arg(s: &str) -> Result<i64, String> {
    parse_step(s).ok_or_else(|| format!("`{s}` is not a duration: e.g. 300, 5m, 24h"))
}

pub(crate) fn run(cmd: ForecastCommand) -> Result<()> {
    match cmd {
        ForecastCommand::Backtest(a) => run_backtest(&a),
    }
}

fn steps(d: i64, step: i64, what: &str) -> Result<usize> {
    if d % step != 0 {
        bail!("{what} = {d} s is not a whole number of --step ({step} s)");
    }
    Ok(usize::try_from(d / step)?)
}

fn run_backtest(a: &BacktestArgs) -> Result<()> {
    if !(a.quantile > 0.0 && a.quantile < 1.0) {
        bail!("--quantile {}: must be between 0 and 1", a.quantile);
    }
    let metric = if a.metric == "mem" { UsageMetric::Mem } else { UsageMetric::Cpu };
    let trace =
        load_usage(&a.input, &UsageOptions { metric, step: Some(a.step), keep_gaps: true, ..UsageOptions::default() })?;
    let mut series: Vec<(String, Vec<f64>)> = trace.series.into_iter().map(|s| (s.id, s.values)).collect();
    if !a.series.is_empty() {
        for want in &a.series {
            if !series.iter().any(|(id, _)| id == want) {
                bail!(
                    "--series {want}: no such series in {} (found: {})",
                    a.input.display(),
                    series.iter().map(|s| s.0.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        series.retain(|(id, _)| a.series.contains(id));
    }
    let chosen = if a.model.is_empty() {
        models()
    } else {
        a.model
            .iter()
            .map(|m| {
                by_name(m).ok_or_else(|| {
                    let known: Vec<&str> = models().iter().map(|m| m.name()).collect();
                    anyhow::anyhow!("--model {m}: unknown (known: {})", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let season = steps(86_400, a.step, "a day")?;
    let opts = BacktestOptions {
        season,
        horizon: steps(a.horizon, a.step, "--horizon")?,
        quantile: a.quantile,
        min_train: a.min_train_days * season,
        max_train: a.train_days * season,
        origin_every: steps(a.origin_every, a.step, "--origin-every")?,
    };
    let result = backtest(&series, &chosen, &opts);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!(
        "{}: {} series, horizon {} steps, q = {}",
        a.input.display(),
        series.len() - result.skipped.len(),
        opts.horizon,
        a.quantile
    );
    for (id, n) in &result.skipped {
        println!("  skipped {id}: {n} steps is too short for one origin");
    }
    let w = result.models.iter().map(|m| m.name.len()).max().unwrap_or(0).max(5);
    println!("  {:<w$} {:>12} {:>9} {:>12} {:>10}", "model", "pinball", "coverage", "mean excess", "mae");
    for m in &result.models {
        println!(
            "  {:<w$} {:>12.4} {:>9.3} {:>12.4} {:>10.4}",
            m.name, m.pinball_loss, m.coverage, m.mean_excess, m.mae
        );
    }
    Ok(())
}
