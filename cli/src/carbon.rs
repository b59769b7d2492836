//! `greenfill carbon fetch`: what a carbon source gives (or why it does not),
//! for people setting one up. The same sources and checks as the scheduler's
//! `[carbon.zones]`.

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use greenfill_carbon::SourceConfig;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub(crate) enum CarbonCommand {
    /// Ask one source for its forecast and print it: provenance, coverage, gaps,
    /// and the intensity per hour (or the provider's error, exit 1).
    Fetch(FetchArgs),
}

#[derive(Debug, Args)]
pub(crate) struct FetchArgs {
    /// neso, energy-charts, electricity-maps, watttime, file, constant.
    #[arg(long)]
    source: String,
    /// The provider's zone: NESO a region id 1–17 (omit: Great Britain);
    /// Energy-Charts a country (de); Electricity Maps a zone (DE); WattTime a
    /// region (CAISO_NORTH); file a path; constant a value in g/kWh.
    #[arg(long)]
    zone: Option<String>,
    /// Electricity Maps: the API token, read from this file.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// WattTime: the account's user name.
    #[arg(long)]
    username: Option<String>,
    /// WattTime: the account's password, read from this file.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The provider's API root (e.g. a local test server).
    #[arg(long)]
    base_url: Option<String>,
    /// Per request [default 10s].
    #[arg(long, default_value = "10s")]
    timeout: String,
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: CarbonCommand) -> Result<()> {
    match cmd {
        CarbonCommand::Fetch(args) => fetch(&args),
    }
}

fn config(a: &FetchArgs) -> Result<SourceConfig> {
    let zone = a.zone.clone();
    let need = |what: &str| anyhow!("--source {}: needs --{what}", a.source);
    Ok(match a.source.as_str() {
        "neso" => SourceConfig::Neso {
            region: match zone.as_deref() {
                None | Some("GB" | "gb") => None,
                Some(r) => {
                    Some(r.parse().map_err(|_| anyhow!("--zone {r:?}: NESO regions are 1 to 17 (omit for GB)"))?)
                }
            },
            base_url: a.base_url.clone(),
        },
        "energy-charts" => {
            SourceConfig::EnergyCharts { country: zone.ok_or_else(|| need("zone"))?, base_url: a.base_url.clone() }
        }
        "electricity-maps" => SourceConfig::ElectricityMaps {
            zone: Some(zone.ok_or_else(|| need("zone"))?),
            lat: None,
            lon: None,
            token_file: Some(a.token_file.clone().ok_or_else(|| need("token-file"))?),
            token_env: None,
            forecast: None,
            base_url: a.base_url.clone(),
        },
        "watttime" => SourceConfig::Watttime {
            region: zone.ok_or_else(|| need("zone"))?,
            username: a.username.clone().ok_or_else(|| need("username"))?,
            password_file: Some(a.password_file.clone().ok_or_else(|| need("password-file"))?),
            password_env: None,
            base_url: a.base_url.clone(),
        },
        "file" => {
            SourceConfig::File { path: zone.ok_or_else(|| need("zone (the file's path)"))?.into(), horizon: None }
        }
        "constant" => SourceConfig::Constant {
            value: zone.ok_or_else(|| need("zone (the value)"))?.parse().map_err(|e| anyhow!("--zone: {e}"))?,
        },
        other => anyhow::bail!(
            "--source {other:?}: unknown; known: neso, energy-charts, electricity-maps, watttime, file, constant"
        ),
    })
}

fn fetch(a: &FetchArgs) -> Result<()> {
    let timeout = greenfill_core::time::parse_duration(&a.timeout)
        .filter(|s| *s > 0.0)
        .ok_or_else(|| anyhow!("--timeout {:?}: not a duration (e.g. 10s)", a.timeout))?;
    let source = config(a)?.build("--source", Duration::from_secs_f64(timeout)).map_err(|e| anyhow!("{e}"))?;
    let now = chrono::Utc::now().timestamp();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let f = rt.block_on(source.fetch(now)).map_err(|e| anyhow!("{e}"))?;
    let hours: Vec<(i64, f64)> = (0..48)
        .map(|h| now - now.rem_euclid(3600) + 3600 * h)
        .take_while(|t| *t < f.covers_until())
        .map(|t| (t, f.mean(t, t + 3600)))
        .collect();
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0).map(|d| d.format("%Y-%m-%dT%H:%MZ").to_string()).unwrap_or_default()
    };
    if a.json {
        let v = serde_json::json!({
            "source": source.name(),
            "provenance": f.provenance,
            "step_s": f.step_s,
            "points": f.points.len(),
            "gaps": f.gaps(),
            "from": time(f.points[0].at),
            "covers_until": time(f.covers_until()),
            "now_g_per_kwh": f.at(now),
            "hourly": hours.iter().map(|(t, v)| serde_json::json!({"hour": time(*t), "g_per_kwh": v})).collect::<Vec<_>>(),
            "forecast": f.points,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{}: {} points every {} s from {} to {} ({} missing), {} signal, made {}",
        source.name(),
        f.points.len(),
        f.step_s,
        time(f.points[0].at),
        time(f.covers_until()),
        f.gaps(),
        f.provenance.signal.as_str(),
        time(f.provenance.generated_at)
    );
    println!("now: {:.1} g CO2e/kWh", f.at(now));
    for (t, v) in hours {
        println!("  {}  {:>7.1} g/kWh", time(t), v);
    }
    Ok(())
}
