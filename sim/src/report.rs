//! summary.json, timeseries.csv and report.html (charts as inline SVG: it reads in a
//! browser with no network).

use crate::engine::{Policy, PolicyResult};
use crate::inputs::Inputs;
use crate::scenario::Resolved;
use greenfill_core::time::format_timestamp;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Clone, Serialize)]
pub struct Savings {
    pub energy_kwh: f64,
    /// Operational carbon.
    pub carbon_kg: f64,
    pub energy_pct: f64,
    pub carbon_pct: f64,
    /// Embodied carbon of the powered node-hours saved (0 unless pools set
    /// `embodied_g_per_hour`).
    pub embodied_kg: f64,
    /// Powered node-hours saved.
    pub node_hours: f64,
    /// The energy bill saved at `[price]`'s prices (0 without one), and its share.
    pub cost: f64,
    pub cost_pct: f64,
    /// The saving in words, with the reason when energy and carbon part ways.
    pub in_words: String,
}

/// What `greenfill` saves against the other policies. A saving is given only
/// between policies that did the same batch work: batch core-hours within
/// [`LIKE_WORK`] of each other; otherwise `not_compared` says why.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Saved {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_dedicated: Option<Savings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_asap: Option<Savings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs_coloc: Option<Savings>,
    /// Policy → why greenfill is not compared with it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub not_compared: BTreeMap<String, String>,
}

/// Two policies did like work when their batch core-hours differ by at most
/// this share of the larger (the drain lets every policy finish; jobs still
/// running at the end differ by a few).
pub const LIKE_WORK: f64 = 0.02;

/// Why `ours` and `base` cannot be compared, if they cannot.
pub(crate) fn unlike_work(base_name: &str, base: &PolicyResult, ours: &PolicyResult) -> Option<String> {
    let (a, b) = (base.batch_core_hours, ours.batch_core_hours);
    let most = a.max(b);
    (most > 0.0 && (a - b).abs() > LIKE_WORK * most).then(|| {
        format!(
            "{base_name} did {a:.1} batch core-hours ({} jobs), greenfill {b:.1} ({} jobs): more than {:.0} % apart, so \
             their energy is not for like work",
            base.jobs_completed,
            ours.jobs_completed,
            LIKE_WORK * 100.0
        )
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub scenario: String,
    pub start: String,
    pub steps: usize,
    pub step_s: i64,
    pub nodes: usize,
    pub jobs: usize,
    pub forecast: String,
    /// `[price]`'s currency, when the scenario has prices (each policy's `cost`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub policies: BTreeMap<String, PolicyResult>,
    pub saved: Saved,
    /// Where the saving against dedicated comes from (`sim run --attribution`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attribution: Option<crate::Attribution>,
    /// Policy → the lower bound on its run's carbon (`sim run --gap`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub gap: BTreeMap<String, crate::Bound>,
}

fn savings(base: &PolicyResult, ours: &PolicyResult) -> Savings {
    let pct = |a: f64, b: f64| if a > 0.0 { (a - b) / a * 100.0 } else { 0.0 };
    let mut x = Savings {
        energy_kwh: base.energy_kwh - ours.energy_kwh,
        carbon_kg: base.carbon_kg - ours.carbon_kg,
        energy_pct: pct(base.energy_kwh, ours.energy_kwh),
        carbon_pct: pct(base.carbon_kg, ours.carbon_kg),
        embodied_kg: base.embodied_kg - ours.embodied_kg,
        node_hours: base.node_hours - ours.node_hours,
        cost: base.cost - ours.cost,
        cost_pct: if base.cost.abs() > 0.0 { (base.cost - ours.cost) / base.cost.abs() * 100.0 } else { 0.0 },
        in_words: String::new(),
    };
    x.in_words = in_words(&x);
    x
}

/// Energy below 1 MWh is given in kWh, carbon below 1 t in kg, a share below
/// 0.1 % with two decimals (Double-11's saving against asap is 0.04 %).
fn energy(kwh: f64) -> String {
    if kwh.abs() >= 1000.0 { format!("{:.2} MWh", kwh / 1000.0) } else { format!("{kwh:.1} kWh") }
}

fn carbon(kg: f64) -> String {
    if kg.abs() >= 1000.0 { format!("{:.3} t CO2", kg / 1000.0) } else { format!("{kg:.1} kg CO2") }
}

fn share(pct: f64) -> String {
    if pct != 0.0 && pct.abs() < 0.1 { format!("{pct:.2} %") } else { format!("{pct:.1} %") }
}

/// "saves 1.2 MWh (3.0 %) and 0.700 t CO2 (3.1 %)"; when greenfill spends
/// energy to save carbon, that in words with where the energy went (issue 32:
/// the demo said "saves -0.01 MWh" and left the reader to guess).
fn in_words(x: &Savings) -> String {
    let both =
        |e: f64, ep: f64, c: f64, cp: f64| format!("{} ({}) and {} ({})", energy(e), share(ep), carbon(c), share(cp));
    if x.energy_kwh >= 0.0 && x.carbon_kg >= 0.0 {
        return format!("saves {}", both(x.energy_kwh, x.energy_pct, x.carbon_kg, x.carbon_pct));
    }
    // Under 0.005 % of energy either way is no difference worth a reason.
    if x.carbon_kg > 0.0 && x.energy_pct.abs() < 0.005 {
        return format!("saves {} ({}) with the same energy", carbon(x.carbon_kg), share(x.carbon_pct));
    }
    if x.carbon_kg > 0.0 {
        let why = if x.node_hours < 0.0 {
            format!(
                "it runs jobs in cleaner hours, bunched together, which keeps machines powered {:.0} more node-hours",
                -x.node_hours
            )
        } else {
            "it runs jobs in cleaner hours on machines that draw more per core".to_owned()
        };
        return format!(
            "spends {} ({}) more energy to save {} ({}): {why}",
            energy(-x.energy_kwh),
            share(-x.energy_pct),
            carbon(x.carbon_kg),
            share(x.carbon_pct)
        );
    }
    if x.energy_kwh > 0.0 {
        return format!(
            "saves {} ({}) but emits {} ({}) more: it uses less energy in dirtier hours",
            energy(x.energy_kwh),
            share(x.energy_pct),
            carbon(-x.carbon_kg),
            share(-x.carbon_pct)
        );
    }
    format!(
        "uses {} ({}) more energy and emits {} ({}) more",
        energy(-x.energy_kwh),
        share(-x.energy_pct),
        carbon(-x.carbon_kg),
        share(-x.carbon_pct)
    )
}

pub fn summarize(r: &Resolved, inputs: &Inputs, results: &[(Policy, PolicyResult)]) -> Summary {
    let get = |p: Policy| results.iter().find(|(q, _)| *q == p).map(|(_, x)| x);
    let ours = get(Policy::Greenfill);
    let mut not_compared = BTreeMap::new();
    let mut vs = |p: Policy| {
        let (o, b) = (ours?, get(p)?);
        match unlike_work(p.name(), b, o) {
            Some(why) => {
                not_compared.insert(p.name().to_owned(), why);
                None
            }
            None => Some(savings(b, o)),
        }
    };
    let saved = Saved {
        vs_dedicated: vs(Policy::Dedicated),
        vs_asap: vs(Policy::Asap),
        vs_coloc: vs(Policy::Coloc),
        not_compared,
    };
    Summary {
        scenario: r.scenario.name.clone(),
        start: format_timestamp(inputs.start),
        steps: inputs.steps,
        step_s: inputs.step_s,
        nodes: inputs.nodes(),
        jobs: inputs.jobs.len(),
        forecast: r.scenario.forecast.clone(),
        currency: r.scenario.price.as_ref().map(|p| p.currency.clone()),
        policies: results.iter().map(|(p, x)| (p.name().to_owned(), x.clone())).collect(),
        saved,
        attribution: None,
        gap: BTreeMap::new(),
    }
}

pub fn write_outputs(
    dir: &Path,
    summary: &Summary,
    inputs: &Inputs,
    results: &[(Policy, PolicyResult)],
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(summary)? + "\n")?;
    let mut w = csv::Writer::from_path(dir.join("timeseries.csv"))?;
    let mut header =
        vec!["step".to_owned(), "time".to_owned(), "carbon_g_per_kwh".to_owned(), "online_util".to_owned()];
    for (p, _) in results {
        for c in [
            "powered_nodes",
            "cpu_util_powered",
            "power_kw",
            "batch_running",
            "batch_cores",
            "overloaded_nodes",
            "throttled_nodes",
        ] {
            header.push(format!("{}_{c}", p.name()));
        }
    }
    w.write_record(&header)?;
    for t in 0..inputs.steps {
        let mut row = vec![
            t.to_string(),
            format_timestamp(inputs.start + i64::try_from(t).unwrap_or(0) * inputs.step_s),
            format!("{:.2}", inputs.carbon[t]),
            format!("{:.4}", inputs.online[t]),
        ];
        for (_, x) in results {
            let s = &x.steps[t];
            row.extend([
                s.powered_nodes.to_string(),
                format!("{:.4}", s.cpu_util_powered),
                format!("{:.3}", s.power_kw),
                s.batch_running.to_string(),
                format!("{:.2}", s.batch_cores),
                s.overloaded_nodes.to_string(),
                s.throttled_nodes.to_string(),
            ]);
        }
        w.write_record(&row)?;
    }
    w.flush()?;
    std::fs::write(dir.join("report.html"), html(summary, inputs, results))?;
    Ok(())
}

const COLORS: [&str; 4] = ["#7f7f7f", "#d62728", "#1f77b4", "#2ca02c"];
/// Lines of pools and zones (apart from the policies' colours).
const SERIES_COLORS: [&str; 6] = ["#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#bcbd22"];

/// Bucket means so a chart has at most `max` points.
fn thin(v: &[f64], max: usize) -> Vec<f64> {
    let k = v.len().div_ceil(max).max(1);
    v.chunks(k).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect()
}

/// A number with four significant figures (0.1253, 12.53, 1253), so labels
/// tell 0.125 t from 0.128 t at any scale.
fn sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    #[allow(clippy::cast_possible_truncation, reason = "a small exponent")]
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 6);
    format!("{v:.*}", usize::try_from(digits).unwrap_or(0))
}

/// The time a chart's x axis spans.
#[derive(Debug, Clone, Copy)]
struct TimeAxis {
    start: i64,
    end: i64,
}

impl TimeAxis {
    /// Six ticks from start to end: dates, with the time of day on spans under
    /// three days.
    fn ticks(self) -> Vec<(f64, String)> {
        let span = (self.end - self.start).max(1);
        let fmt = if span < 3 * 86_400 { "%m-%d %H:%M" } else { "%Y-%m-%d" };
        (0..=5i32)
            .map(|i| {
                let at = self.start + span * i64::from(i) / 5;
                let label =
                    chrono::DateTime::from_timestamp(at, 0).map(|d| d.format(fmt).to_string()).unwrap_or_default();
                (f64::from(i) / 5.0, label)
            })
            .collect()
    }
}

fn line_chart(title: &str, unit: &str, axis: TimeAxis, series: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, pad, bottom) = (900.0, 280.0, 56.0, 64.0);
    let plot_h = h - bottom - 10.0;
    let max = series.iter().flat_map(|s| s.2.iter()).copied().fold(0.0f64, f64::max).max(1e-9) * 1.05;
    let mut out = format!(
        r##"<h3>{title}</h3><svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{title}"><rect x="{pad}" y="10" width="{}" height="{plot_h}" fill="none" stroke="#ccc"/>"##,
        w - pad - 10.0,
    );
    for i in 0..=4 {
        let y = 10.0 + plot_h * f64::from(i) / 4.0;
        let v = max * (1.0 - f64::from(i) / 4.0);
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text><line x1="{pad}" x2="{}" y1="{y}" y2="{y}" stroke="#eee"/>"##,
            pad - 4.0,
            y + 4.0,
            sig(v),
            w - 10.0
        );
    }
    for (frac, label) in axis.ticks() {
        let x = pad + (w - pad - 10.0) * frac;
        let anchor = if frac >= 1.0 { "end" } else { "middle" };
        let _ = write!(
            out,
            r##"<line x1="{x:.1}" x2="{x:.1}" y1="{}" y2="{}" stroke="#999"/><text x="{x:.1}" y="{}" font-size="11" text-anchor="{anchor}">{label}</text>"##,
            10.0 + plot_h,
            14.0 + plot_h,
            26.0 + plot_h
        );
    }
    let _ = write!(
        out,
        r#"<text x="12" y="{}" font-size="11" transform="rotate(-90 12 {})">{unit}</text>"#,
        plot_h / 2.0,
        plot_h / 2.0
    );
    for (i, (name, color, v)) in series.iter().enumerate() {
        let n = v.len().max(2) - 1;
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(k, y)| {
                format!("{:.1},{:.1}", pad + (w - pad - 10.0) * k as f64 / n as f64, 10.0 + plot_h * (1.0 - y / max))
            })
            .collect();
        let _ =
            write!(out, r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, pts.join(" "));
        let _ = write!(
            out,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}" font-size="12">{name}</text>"#,
            pad + 150.0 * i as f64,
            h - 16.0,
            pad + 16.0 + 150.0 * i as f64,
            h - 12.0
        );
    }
    out + "</svg>"
}

fn bar_chart(title: &str, unit: &str, bars: &[(&str, &str, f64)]) -> String {
    let (w, bh) = (900.0, 28.0);
    let h = 20.0 + bh * bars.len() as f64;
    let max = bars.iter().map(|b| b.2).fold(0.0f64, f64::max).max(1e-9);
    let mut out =
        format!(r#"<h3>{title}</h3><svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{title}">"#);
    for (i, (name, color, v)) in bars.iter().enumerate() {
        let y = 10.0 + bh * i as f64;
        let len = (w - 260.0) * v / max;
        let _ = write!(
            out,
            r#"<text x="100" y="{}" font-size="13" text-anchor="end">{name}</text><rect x="110" y="{y}" width="{len:.1}" height="{}" fill="{color}"/><text x="{}" y="{}" font-size="12">{} {unit}</text>"#,
            y + 17.0,
            bh - 8.0,
            116.0 + len,
            y + 16.0,
            sig(*v)
        );
    }
    out + "</svg>"
}

/// The attribution ladder as a table: what each step saves, of the whole.
fn attribution_html(a: &crate::Attribution) -> String {
    let mut rows = String::new();
    for x in &a.steps {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{:.1}</td><td>{:.1} %</td><td>{:.1}</td><td>{:.1} %</td><td>{}</td></tr>",
            x.step,
            x.saved_kwh,
            x.share_of_energy_pct,
            x.saved_kg,
            x.share_of_carbon_pct,
            if x.like_work { "yes" } else { "no" }
        );
    }
    format!(
        "<h2>Where the saving against dedicated machines comes from</h2><p>Each step is a run of its own with one \
         more part on; steps sum to the whole saving ({:.1} kWh, {:.1} kg CO2).</p><table><tr><th>step</th><th>kWh \
         saved</th><th>of energy saved</th><th>kg CO2 saved</th><th>of carbon saved</th><th>like work</th></tr>{rows}\
         </table>",
        a.total_saved_kwh, a.total_saved_kg
    )
}

fn html(s: &Summary, inputs: &Inputs, results: &[(Policy, PolicyResult)]) -> String {
    let color = |p: Policy| {
        COLORS[match p {
            Policy::Dedicated => 0,
            Policy::Asap => 1,
            Policy::Coloc => 2,
            Policy::Greenfill => 3,
        }]
    };
    let max_points = 1000;
    let power: Vec<(&str, &str, Vec<f64>)> = results
        .iter()
        .map(|(p, x)| (p.name(), color(*p), thin(&x.steps.iter().map(|r| r.power_kw).collect::<Vec<_>>(), max_points)))
        .collect();
    let util: Vec<(&str, &str, Vec<f64>)> = results
        .iter()
        .map(|(p, x)| {
            (
                p.name(),
                color(*p),
                thin(&x.steps.iter().map(|r| r.cpu_util_powered * 100.0).collect::<Vec<_>>(), max_points),
            )
        })
        .collect();
    let batch: Vec<(&str, &str, Vec<f64>)> = results
        .iter()
        .map(|(p, x)| {
            (p.name(), color(*p), thin(&x.steps.iter().map(|r| r.batch_cores).collect::<Vec<_>>(), max_points))
        })
        .collect();
    let axis =
        TimeAxis { start: inputs.start, end: inputs.start + i64::try_from(inputs.steps).unwrap_or(0) * inputs.step_s };
    let mut carbon = vec![("grid intensity", "#555", thin(&inputs.carbon, max_points))];
    for (i, z) in inputs.zones.iter().enumerate() {
        carbon.push((z.name.as_str(), SERIES_COLORS[i % SERIES_COLORS.len()], thin(&z.actual, max_points)));
    }
    if !inputs.zones.is_empty() && inputs.pool_zone.iter().all(Option::is_some) {
        carbon.remove(0);
    }
    // Powered nodes per pool, of greenfill (else the last policy).
    let shown = results.iter().find(|(p, _)| *p == Policy::Greenfill).or(results.last());
    let powered: Vec<(&str, &str, Vec<f64>)> = shown
        .map(|(_, x)| {
            inputs
                .pools
                .iter()
                .enumerate()
                .map(|(i, pool)| {
                    let v: Vec<f64> =
                        x.steps.iter().map(|r| f64::from(r.powered_by_pool.get(i).copied().unwrap_or(0))).collect();
                    (pool.name.as_str(), SERIES_COLORS[i % SERIES_COLORS.len()], thin(&v, max_points))
                })
                .collect()
        })
        .unwrap_or_default();
    let powered_title = format!("Powered nodes per pool ({})", shown.map_or("", |(p, _)| p.name()));
    let carbon_bars: Vec<(&str, &str, f64)> =
        results.iter().map(|(p, x)| (p.name(), color(*p), x.carbon_kg / 1000.0)).collect();
    let energy_bars: Vec<(&str, &str, f64)> =
        results.iter().map(|(p, x)| (p.name(), color(*p), x.energy_kwh / 1000.0)).collect();
    let mut rows = String::new();
    for (p, x) in results {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.1} % ({:.1} %)</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} ({:.0})</td><td>{:.0}</td><td>{} / {}</td></tr>",
            p.name(),
            sig(x.energy_kwh / 1000.0),
            sig(x.carbon_kg / 1000.0),
            x.node_hours,
            x.mean_cpu_util_powered * 100.0,
            x.mean_cpu_util_powered_with_drain * 100.0,
            x.jobs_completed,
            x.jobs_late,
            x.jobs_unfinished,
            x.online_overload_steps,
            x.guard_throttled_steps,
            x.guard_throttled_core_hours,
            x.batch_core_hours,
            x.suspends,
            x.resumes
        );
    }
    let headline = match (&s.saved.vs_dedicated, &s.saved.vs_asap) {
        (Some(d), a) => {
            let mut h = format!(
                "Against batch on dedicated machines, greenfill saves <b>{} MWh ({:.1} %)</b> and <b>{} t CO2 ({:.1} %)</b>",
                sig(d.energy_kwh / 1000.0),
                d.energy_pct,
                sig(d.carbon_kg / 1000.0),
                d.carbon_pct
            );
            if let Some(a) = a {
                let _ = write!(
                    h,
                    "; against co-location without forecasts or carbon awareness (asap), {} t CO2 ({:.1} %)",
                    sig(a.carbon_kg / 1000.0),
                    a.carbon_pct
                );
            }
            h + "."
        }
        (None, Some(a)) => format!(
            "Against co-location without forecasts or carbon awareness (asap), greenfill saves <b>{} t CO2 ({:.1} %)</b>.",
            sig(a.carbon_kg / 1000.0),
            a.carbon_pct
        ),
        _ => match s.saved.not_compared.get("dedicated") {
            Some(why) => format!("No saving against dedicated machines: {why}."),
            None => "Run with the dedicated and greenfill policies to see savings.".to_owned(),
        },
    };
    format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>greenfill: {name}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;color:#222}}table{{border-collapse:collapse}}td,th{{border:1px solid #ddd;padding:4px 8px;text-align:right}}td:first-child{{text-align:left}}</style></head><body>
<h1>What-if: {name}</h1>
<p>{nodes} nodes, {jobs} batch jobs, {days:.1} days from {start} at {step} s steps; online forecast: {forecast}.</p>
<p style="font-size:1.2em">{headline}</p>
<table><tr><th>policy</th><th>energy MWh</th><th>carbon t</th><th>node-hours</th><th>CPU util. of powered nodes while jobs arrive (with the drain)</th><th>jobs done</th><th>late</th><th>unfinished</th><th>online overload node-steps</th><th>node-steps the guard throttled batch (core-hours taken)</th><th>batch core-hours</th><th>suspends / wakes</th></tr>{rows}</table>
{at}{cb}{eb}{pn}{pw}{ut}{bt}{ci}
<p style="color:#666">Energy = Σ power × step (PUE included); carbon = Σ energy × intensity. Plans use forecasts; accounting uses the actual traces. Each co-located node runs the agent's guard: for asap and greenfill (by default) batch runs at the kernel's idle priority and gets the CPU online leaves (cores − online); coloc caps it at its threshold × cores − online; throttled jobs finish later. An overload is a node-step whose online plus batch CPU use still exceeded its cores.</p>
</body></html>
"#,
        name = s.scenario,
        nodes = s.nodes,
        jobs = s.jobs,
        days = s.steps as f64 * s.step_s as f64 / 86_400.0,
        start = s.start,
        step = s.step_s,
        forecast = s.forecast,
        at = s.attribution.as_ref().map_or_else(String::new, attribution_html),
        cb = bar_chart("Carbon", "t CO2", &carbon_bars),
        eb = bar_chart("Energy", "MWh", &energy_bars),
        pn = line_chart(&powered_title, "nodes", axis, &powered),
        pw = line_chart("Power", "kW", axis, &power),
        ut = line_chart("CPU utilisation of powered nodes", "%", axis, &util),
        bt = line_chart("Batch cores running", "cores", axis, &batch),
        ci = line_chart("Grid carbon intensity", "gCO2/kWh", axis, &carbon),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saving_that_costs_energy_says_so_and_why() {
        let x = |energy_kwh, carbon_kg, node_hours| {
            let mut s = Savings {
                energy_kwh,
                carbon_kg,
                energy_pct: energy_kwh / 7.0,
                carbon_pct: carbon_kg / 1.3,
                embodied_kg: 0.0,
                node_hours,
                cost: 0.0,
                cost_pct: 0.0,
                in_words: String::new(),
            };
            s.in_words = in_words(&s);
            s.in_words
        };
        // The demo's figures against asap (under-used fleet, CISO).
        assert_eq!(
            x(-10.8, 2.9, -53.2),
            "spends 10.8 kWh (1.5 %) more energy to save 2.9 kg CO2 (2.2 %): it runs jobs in cleaner hours, bunched \
             together, which keeps machines powered 53 more node-hours"
        );
        // Double-11 against asap: a share below 0.1 % keeps two decimals.
        assert_eq!(x(19.8, 0.052, 0.0), "saves 19.8 kWh (2.8 %) and 0.1 kg CO2 (0.04 %)");
        assert_eq!(x(15_000.0, 1300.0, 9.0), "saves 15.00 MWh (2142.9 %) and 1.300 t CO2 (1000.0 %)");
        assert!(x(-1.0, -1.0, 0.0).starts_with("uses 1.0 kWh"));
        assert_eq!(x(-0.01, 0.8, 0.0), "saves 0.8 kg CO2 (0.6 %) with the same energy");
        assert!(x(1.0, -1.0, 0.0).contains("emits 1.0 kg CO2"));
    }

    #[test]
    fn labels_have_four_significant_figures_at_any_scale() {
        assert_eq!(sig(0.125), "0.1250");
        assert_eq!(sig(0.128), "0.1280");
        assert_eq!(sig(12.53), "12.53");
        assert_eq!(sig(1253.4), "1253");
        assert_eq!(sig(0.0), "0");
        let axis = TimeAxis { start: 1_641_168_000, end: 1_641_168_000 + 7 * 86_400 };
        let ticks = axis.ticks();
        assert_eq!(ticks.len(), 6);
        assert_eq!(ticks[0].1, "2022-01-03");
        assert_eq!(ticks[5].1, "2022-01-10");
        let day = TimeAxis { start: 1_641_168_000, end: 1_641_168_000 + 86_400 };
        assert_eq!(day.ticks()[1].1, "01-03 04:48");
    }
}
