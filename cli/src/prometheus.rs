//! `greenfill data import prometheus`: a range query against Prometheus's HTTP
//! API (`/api/v1/query_range`) into a long-format usage file (`time`, the
//! series label, the value), which `sim` and `data inspect` read as any usage
//! trace. Ranges longer than the server's points limit are asked in chunks that
//! meet without overlap; a chunk that fails on the way (connection, 5xx, 429) is
//! asked again up to three times. The file is written only when every chunk came.

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use greenfill_core::time::{format_timestamp, parse_step, parse_timestamp};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An import that could not be done: bad input or an answer that is not data.
/// `main` exits with code 2 for it, and nothing was written.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ImportError(pub(crate) String);

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Preset {
    /// node_exporter: busy CPU share per instance,
    /// `1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[R]))`.
    NodeCpu,
    /// cAdvisor: the CPU share of each machine that its online containers use
    /// (those matching `--online-selector`; batch ones left out), from
    /// `container_cpu_usage_seconds_total` over `machine_cpu_cores`, by instance.
    ContainerCpu,
}

/// The query a preset stands for; `range` in seconds.
fn preset_query(preset: Preset, range: i64, online: &str) -> String {
    match preset {
        Preset::NodeCpu => format!("1 - avg by (instance) (rate(node_cpu_seconds_total{{mode=\"idle\"}}[{range}s]))"),
        Preset::ContainerCpu => {
            let sel = if online.trim().is_empty() { String::new() } else { format!(",{online}") };
            format!(
                "sum by (instance) (rate(container_cpu_usage_seconds_total{{container!=\"\"{sel}}}[{range}s])) / on \
                 (instance) max by (instance) (machine_cpu_cores)"
            )
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// Prometheus's base URL, e.g. http://prometheus:9090 (a path prefix is kept).
    #[arg(long)]
    url: String,
    /// A PromQL expression; each series it returns becomes one series of the
    /// file, named by `--label`. Counters need `rate()` in the query.
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    query: Option<String>,
    /// A ready query instead of `--query` (its value column is `cpu_fraction`).
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// With `--preset container-cpu`: the label matchers of online containers,
    /// e.g. `namespace!~"batch|ml"` (default: every container).
    #[arg(long, default_value = "")]
    online_selector: String,
    /// First time: RFC 3339, unix seconds, or `now-7d`. Moved back to the step
    /// grid (a multiple of `--step` since the epoch), so every point is on it.
    #[arg(long)]
    start: String,
    /// Last time, as `--start` (default: now).
    #[arg(long, default_value = "now")]
    end: String,
    /// Resolution, e.g. 30s, 5m.
    #[arg(long, default_value = "5m", value_parser = step_arg)]
    step: i64,
    /// The label whose value names each series.
    #[arg(long, default_value = "instance")]
    label: String,
    /// The value column's name, which gives its unit to readers: `…fraction` or
    /// `…percent` for a utilisation (default: `cpu_fraction` for a preset, else
    /// `value`).
    #[arg(long)]
    value_name: Option<String>,
    /// Output file (long CSV: time, <label>, <value name>).
    #[arg(long)]
    out: PathBuf,
    /// Bearer token from this file (or the GREENFILL_PROMETHEUS_TOKEN variable).
    #[arg(long)]
    bearer_token_file: Option<PathBuf>,
    /// Basic-auth user; the password from GREENFILL_PROMETHEUS_PASSWORD.
    #[arg(long)]
    basic_auth_user: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Points per series per request (Prometheus refuses more than 11,000).
    #[arg(long, default_value_t = 11_000, value_parser = clap::value_parser!(u32).range(2..=11_000))]
    max_points: u32,
    /// Seconds before one request gives up.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
}

fn step_arg(s: &str) -> Result<i64, String> {
    parse_step(s).filter(|x| *x > 0).ok_or_else(|| format!("`{s}` is not a step: e.g. 30s, 5m, 1h"))
}

/// `now`, `now-1h`, or an absolute time.
fn time_arg(field: &str, s: &str, now: i64) -> Result<i64, ImportError> {
    let bad = || ImportError(format!("--{field} {s:?}: not a time (RFC 3339, unix seconds, `now` or e.g. `now-7d`)"));
    match s.trim().strip_prefix("now") {
        Some("") => Ok(now),
        Some(rest) => rest.strip_prefix('-').and_then(parse_step).map(|d| now - d).ok_or_else(bad),
        None => parse_timestamp(s).ok_or_else(bad),
    }
}

#[derive(Debug, Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Matrix>,
}

#[derive(Debug, Deserialize)]
struct Matrix {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Series name → time → value (`None`: Prometheus said NaN).
type Points = BTreeMap<String, BTreeMap<i64, Option<f64>>>;

pub(crate) fn import(a: &ImportArgs) -> Result<()> {
    let now = chrono::Utc::now().timestamp();
    let start = time_arg("start", &a.start, now)?.div_euclid(a.step) * a.step;
    let end = time_arg("end", &a.end, now)?;
    if end < start {
        return Err(ImportError(format!("--end {} is before --start {}", a.end, a.start)).into());
    }
    let query = match (a.preset, &a.query) {
        (Some(p), _) => preset_query(p, (2 * a.step).max(60), &a.online_selector),
        (None, Some(q)) => q.clone(),
        (None, None) => unreachable!("clap requires --query or --preset"),
    };
    let value_name =
        a.value_name.clone().unwrap_or_else(|| if a.preset.is_some() { "cpu_fraction" } else { "value" }.into());
    let client = client(a)?;
    let token = token(a)?;
    let chunks = chunks(start, end, a.step, i64::from(a.max_points));
    let bar =
        if std::io::stderr().is_terminal() { ProgressBar::new(chunks.len() as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{spinner} query_range [{bar:40}] {pos}/{len} chunks {elapsed}")?);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let mut points = Points::new();
    for &(from, to) in &chunks {
        let answer = rt.block_on(ask(&client, a, token.as_deref(), &query, from, to))?;
        add(&mut points, answer, &a.label, &query)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    if points.is_empty() {
        return Err(ImportError(format!(
            "query `{query}` matched no series between {} and {} at {}",
            format_timestamp(start),
            format_timestamp(end),
            a.url
        ))
        .into());
    }
    let rows = write(&a.out, &a.label, &value_name, &points)?;
    println!(
        "wrote {}: {} series, {rows} points at {} s from {} to {}",
        a.out.display(),
        points.len(),
        a.step,
        format_timestamp(start),
        format_timestamp(end)
    );
    Ok(())
}

/// `[from, to]` windows of at most `max` points each, the next starting a step
/// after the last one's end, so no point is asked twice or left out.
fn chunks(start: i64, end: i64, step: i64, max: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut from = start;
    while from <= end {
        let to = (from + (max - 1) * step).min(end);
        out.push((from, to));
        from = to + step;
    }
    out
}

fn client(a: &ImportArgs) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(a.timeout_s))
        .user_agent(concat!("greenfill/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &a.ca_file {
        let pem = std::fs::read(ca).map_err(|e| ImportError(format!("--ca-file {}: {e}", ca.display())))?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ImportError(format!("--ca-file {}: not a PEM certificate: {e}", ca.display())))?;
        b = b.add_root_certificate(cert);
    }
    b.build().context("HTTP client")
}

fn token(a: &ImportArgs) -> Result<Option<String>, ImportError> {
    if let Some(f) = &a.bearer_token_file {
        let t =
            std::fs::read_to_string(f).map_err(|e| ImportError(format!("--bearer-token-file {}: {e}", f.display())))?;
        return Ok(Some(t.trim().to_owned()));
    }
    Ok(std::env::var("GREENFILL_PROMETHEUS_TOKEN").ok().filter(|t| !t.is_empty()))
}

/// One chunk, asked again after 0.5, 1 and 2 s when the failure may pass.
async fn ask(
    client: &reqwest::Client,
    a: &ImportArgs,
    token: Option<&str>,
    query: &str,
    from: i64,
    to: i64,
) -> Result<Answer> {
    let url = format!("{}/api/v1/query_range", a.url.trim_end_matches('/'));
    let form = [
        ("query", query.to_owned()),
        ("start", from.to_string()),
        ("end", to.to_string()),
        ("step", a.step.to_string()),
    ];
    let mut wait = Duration::from_millis(500);
    let mut attempt = 1;
    loop {
        let mut req = client.post(&url).form(&form);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(user) = &a.basic_auth_user {
            req = req.basic_auth(user, std::env::var("GREENFILL_PROMETHEUS_PASSWORD").ok());
        }
        let failure = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.bytes().await.unwrap_or_default();
                match answer(status, &body, &url, query)? {
                    Ok(x) => return Ok(x),
                    Err(may_pass) => may_pass,
                }
            }
            Err(e) => {
                let mut detail = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    detail = format!("{detail}: {s}");
                    source = s.source();
                }
                detail
            }
        };
        if attempt > 3 {
            return Err(ImportError(format!("{url}: query `{query}`: {failure} (after {attempt} attempts)")).into());
        }
        tokio::time::sleep(wait).await;
        wait *= 2;
        attempt += 1;
    }
}

/// What an HTTP answer means: the data, `Ok(Err(why))` for a failure that may
/// pass (429, 5xx), `Err` for one that will not (401, a bad query), with
/// Prometheus's own error text.
fn answer(status: u16, body: &[u8], url: &str, query: &str) -> Result<Result<Answer, String>, ImportError> {
    let parsed: Option<Answer> = serde_json::from_slice(body).ok();
    let said = parsed
        .as_ref()
        .and_then(|x| x.error.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_owned());
    match (status, parsed) {
        (200, Some(x)) if x.status == "success" => Ok(Ok(x)),
        (429 | 500..=599, _) => Ok(Err(format!("HTTP {status}: {said}"))),
        (401, _) => Err(ImportError(format!(
            "{url}: 401 Unauthorized ({said}): set --bearer-token-file, GREENFILL_PROMETHEUS_TOKEN or --basic-auth-user"
        ))),
        (_, x) => {
            let kind = x.and_then(|x| x.error_type).unwrap_or_else(|| format!("HTTP {status}"));
            Err(ImportError(format!("{url}: query `{query}`: {kind}: {said}")))
        }
    }
}

/// Add one chunk's series; every point must be new.
fn add(points: &mut Points, answer: Answer, label: &str, query: &str) -> Result<(), ImportError> {
    let Some(data) = answer.data else { return Err(ImportError(format!("query `{query}`: an answer without data"))) };
    if data.result_type != "matrix" {
        return Err(ImportError(format!("query `{query}`: a {} answer, not a range (matrix)", data.result_type)));
    }
    for m in data.result {
        let Some(name) = m.metric.get(label) else {
            let labels: Vec<String> = m.metric.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            return Err(ImportError(format!(
                "query `{query}`: a series has no label `{label}` ({{{}}}); choose one with --label",
                labels.join(", ")
            )));
        };
        let series = points.entry(name.clone()).or_default();
        for (t, v) in m.values {
            #[allow(clippy::cast_possible_truncation, reason = "unix seconds")]
            let t = t.round() as i64;
            let v = v.parse::<f64>().ok().filter(|x| x.is_finite());
            if series.insert(t, v).is_some() {
                return Err(ImportError(format!(
                    "query `{query}`: two series share the label {label}=\"{name}\" at {}; aggregate by it in the query",
                    format_timestamp(t)
                )));
            }
        }
    }
    Ok(())
}

/// Write the long CSV through a temporary file, so a failure leaves nothing.
fn write(out: &Path, label: &str, value_name: &str, points: &Points) -> Result<usize> {
    let tmp = out.with_extension("partial");
    let mut w = csv::Writer::from_path(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    w.write_record(["time", label, value_name])?;
    let mut by_time: BTreeMap<i64, Vec<(&str, Option<f64>)>> = BTreeMap::new();
    for (name, series) in points {
        for (t, v) in series {
            by_time.entry(*t).or_default().push((name, *v));
        }
    }
    let mut rows = 0;
    for (t, list) in by_time {
        for (name, v) in list {
            w.write_record([t.to_string(), name.to_owned(), v.map_or_else(String::new, |x| x.to_string())])?;
            rows += 1;
        }
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_meet_without_overlap_and_cover_the_range() {
        assert_eq!(chunks(0, 100, 10, 11_000), [(0, 100)]);
        // 31 points in chunks of 10: 0..90, 100..190, 200..290, 300.
        assert_eq!(chunks(0, 300, 10, 10), [(0, 90), (100, 190), (200, 290), (300, 300)]);
        let c = chunks(60, 86_400 * 40, 60, 11_000);
        let points: i64 = c.iter().map(|(a, b)| (b - a) / 60 + 1).sum();
        assert_eq!(points, (86_400 * 40 - 60) / 60 + 1);
        assert!(c.windows(2).all(|w| w[1].0 == w[0].1 + 60));
    }

    #[test]
    fn presets_are_the_queries_they_say() {
        assert_eq!(
            preset_query(Preset::NodeCpu, 600, ""),
            r#"1 - avg by (instance) (rate(node_cpu_seconds_total{mode="idle"}[600s]))"#
        );
        assert_eq!(
            preset_query(Preset::ContainerCpu, 60, r#"namespace!~"batch|ml""#),
            r#"sum by (instance) (rate(container_cpu_usage_seconds_total{container!="",namespace!~"batch|ml"}[60s])) / on (instance) max by (instance) (machine_cpu_cores)"#
        );
    }

    #[test]
    fn times_are_absolute_or_from_now() {
        assert_eq!(time_arg("start", "now", 1000).unwrap(), 1000);
        assert_eq!(time_arg("start", "now-5m", 1000).unwrap(), 700);
        assert_eq!(time_arg("start", "2022-06-01T00:00:00Z", 0).unwrap(), 1_654_041_600);
        let e = time_arg("start", "yesterday", 0).unwrap_err().to_string();
        assert!(e.contains("--start \"yesterday\": not a time"), "{e}");
    }
}
