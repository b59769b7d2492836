//! `greenfill price fetch`: what a day-ahead price source gives (or why it
//! does not), for people setting one up, as `carbon fetch` is for carbon.

use anyhow::{Context, Result, anyhow};
use clap::{Args, Subcommand};
use greenfill_carbon::price::{ConstantPrice, EnergyChartsPrice, EntsoePrice, FilePrice, PriceSource};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(crate) enum PriceCommand {
    /// Ask one source for its day-ahead prices and print them per hour, in
    /// currency per MWh (or the provider's error, exit 1). Negative prices
    /// are real and shown as they are.
    Fetch(PriceFetchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct PriceFetchArgs {
    /// energy-charts (keyless), entsoe (a security token), file, constant.
    #[arg(long)]
    source: String,
    /// The bidding zone: Energy-Charts DE-LU, FR, NL, AT, …; ENTSO-E the same
    /// names or an EIC code (10Y1001A1001A82H); file a path (CSV time,price);
    /// constant a price per MWh.
    #[arg(long)]
    zone: String,
    /// ENTSO-E: the security token, read from this file (else from
    /// GREENFILL_ENTSOE_TOKEN).
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// From this time (RFC 3339) [default: today, 00:00 UTC].
    #[arg(long)]
    from: Option<String>,
    /// Hours from --from [default 48: today and tomorrow's auction].
    #[arg(long, default_value_t = 48)]
    hours: u32,
    /// The currency of a file's or a constant's prices.
    #[arg(long, default_value = "EUR")]
    currency: String,
    /// The provider's API root (e.g. a local test server).
    #[arg(long)]
    base_url: Option<String>,
    /// Per request.
    #[arg(long, default_value = "10s")]
    timeout: String,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: PriceCommand) -> Result<()> {
    match cmd {
        PriceCommand::Fetch(args) => fetch(&args),
    }
}

fn token(a: &PriceFetchArgs) -> Result<String> {
    let t = match &a.token_file {
        Some(f) => std::fs::read_to_string(f).with_context(|| format!("--token-file {}: cannot read", f.display()))?,
        None => std::env::var("GREENFILL_ENTSOE_TOKEN")
            .map_err(|_| anyhow!("--source entsoe: needs --token-file or GREENFILL_ENTSOE_TOKEN"))?,
    };
    Ok(t.trim().to_owned())
}

fn source(a: &PriceFetchArgs, timeout: Duration) -> Result<Box<dyn PriceSource>> {
    let e = |e: greenfill_carbon::SourceError| anyhow!("{e}");
    Ok(match a.source.as_str() {
        "energy-charts" => Box::new(
            EnergyChartsPrice::new(a.base_url.as_deref().unwrap_or("https://api.energy-charts.info"), &a.zone, timeout)
                .map_err(e)?,
        ),
        "entsoe" => Box::new(
            EntsoePrice::new(
                a.base_url.as_deref().unwrap_or("https://web-api.tp.entsoe.eu/api"),
                &a.zone,
                &token(a)?,
                timeout,
            )
            .map_err(e)?,
        ),
        "file" => Box::new(FilePrice::load(std::path::Path::new(&a.zone), &a.currency).map_err(e)?),
        "constant" => Box::new(ConstantPrice {
            per_mwh: a
                .zone
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| anyhow!("--zone {:?}: a constant price is a number per MWh", a.zone))?,
            currency: a.currency.clone(),
        }),
        other => anyhow::bail!("--source {other:?}: unknown; known: energy-charts, entsoe, file, constant"),
    })
}

fn fetch(a: &PriceFetchArgs) -> Result<()> {
    let timeout = greenfill_core::time::parse_duration(&a.timeout)
        .filter(|s| *s > 0.0)
        .ok_or_else(|| anyhow!("--timeout {:?}: not a duration (e.g. 10s)", a.timeout))?;
    let from = match &a.from {
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| anyhow!("--from {s:?}: not an RFC 3339 time ({e})"))?
            .timestamp(),
        None => {
            let now = chrono::Utc::now().timestamp();
            now - now.rem_euclid(86_400)
        }
    };
    anyhow::ensure!(a.hours > 0, "--hours 0: give at least one hour");
    let to = from + i64::from(a.hours) * 3600;
    let src = source(a, Duration::from_secs_f64(timeout))?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let p = rt.block_on(src.fetch(from, to)).map_err(|e| anyhow!("{e}"))?;
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0).map(|d| d.format("%Y-%m-%dT%H:%MZ").to_string()).unwrap_or_default()
    };
    let hourly: Vec<(i64, f64)> =
        (0..i64::from(a.hours)).map(|h| from + 3600 * h).map(|t| (t, p.slot_means(t, 3600, 1)[0])).collect();
    if a.json {
        let v = serde_json::json!({
            "source": src.name(),
            "currency": p.currency,
            "unit": format!("{} / MWh", p.currency),
            "step_s": p.step_s,
            "points": p.points.len(),
            "from": time(p.points[0].at),
            "to": time(p.points.last().map_or(from, |x| x.at + p.step_s)),
            "hourly": hourly.iter().map(|(t, v)| serde_json::json!({"hour": time(*t), "per_mwh": v})).collect::<Vec<_>>(),
            "prices": p.points,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let last = p.points.last().map_or(from, |x| x.at + p.step_s);
    println!(
        "{}: {} prices every {} s from {} to {}, {} / MWh",
        src.name(),
        p.points.len(),
        p.step_s,
        time(p.points[0].at),
        time(last),
        p.currency
    );
    for (t, v) in hourly.into_iter().filter(|(t, _)| *t < last) {
        println!("  {}  {v:>9.2}", time(t));
    }
    Ok(())
}
