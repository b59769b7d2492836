//! What-if grids: the same scenario with some keys set to each combination of
//! values, run in parallel, one summary row per point.

use crate::engine::Policy;
use crate::scenario::{Scenario, ScenarioError};
use crate::{inputs, report, run};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// One point of the grid and what each policy did there.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// The values set at this point, by key.
    pub point: BTreeMap<String, String>,
    /// Per policy: energy_kwh, carbon_kg, cost, mean_cpu_util_powered (and _with_drain), jobs_late,
    /// online_overload_steps, guard_throttled_steps.
    pub policies: BTreeMap<String, BTreeMap<&'static str, f64>>,
    pub saved: report::Saved,
}

/// Set `key` (dotted, array indices as numbers: `cluster.pools.0.pue`; `pue` sets
/// every pool's) to `value` (a TOML value; a bare word is a string).
fn set(doc: &mut toml::Table, key: &str, value: &str) -> Result<(), String> {
    let parsed: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    };
    if key == "pue" {
        let pools = doc
            .get_mut("cluster")
            .and_then(|c| c.get_mut("pools"))
            .and_then(toml::Value::as_array_mut)
            .ok_or("pue: the scenario has no cluster.pools")?;
        for p in pools {
            if let Some(t) = p.as_table_mut() {
                t.insert("pue".into(), parsed.clone());
            }
        }
        return Ok(());
    }
    let parts: Vec<&str> = key.split('.').collect();
    // A section the scenario may leave out (`objective.mode`) is made here.
    if parts.len() == 2 && ["objective", "power", "price"].contains(&parts[0]) && !doc.contains_key(parts[0]) {
        doc.insert(parts[0].to_owned(), toml::Value::Table(toml::Table::new()));
    }
    let mut cur: &mut toml::Value =
        doc.get_mut(parts[0]).ok_or_else(|| format!("{key}: no `{}` in the scenario", parts[0]))?;
    if parts.len() == 1 {
        *cur = parsed;
        return Ok(());
    }
    for (i, part) in parts[1..].iter().enumerate() {
        let last = i + 2 == parts.len();
        cur = match cur {
            toml::Value::Table(t) if last => {
                t.insert((*part).to_owned(), parsed);
                return Ok(());
            }
            toml::Value::Table(t) => t.get_mut(*part).ok_or_else(|| format!("{key}: no `{part}`"))?,
            toml::Value::Array(a) => {
                let idx: usize = part.parse().map_err(|_| format!("{key}: `{part}` is not an index"))?;
                let len = a.len();
                let slot = a.get_mut(idx).ok_or_else(|| format!("{key}: index {idx} is past the {len} entries"))?;
                if last {
                    *slot = parsed;
                    return Ok(());
                }
                slot
            }
            _ => return Err(format!("{key}: `{part}` is inside a value that is not a table")),
        };
    }
    Ok(())
}

/// All combinations of `sets` (key, values), in order.
fn grid(sets: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut out = vec![Vec::new()];
    for (k, vs) in sets {
        out = out
            .into_iter()
            .flat_map(|p| vs.iter().map(move |v| [p.clone(), vec![(k.clone(), v.clone())]].concat()))
            .collect();
    }
    out
}

/// Run the grid on up to `threads` threads.
pub fn sweep(
    path: &str,
    text: &str,
    base: &Path,
    sets: &[(String, Vec<String>)],
    threads: usize,
) -> Result<Vec<SweepRow>, ScenarioError> {
    let doc: toml::Table =
        toml::from_str(text).map_err(|e| ScenarioError::Invalid { path: path.to_owned(), message: e.to_string() })?;
    let points = grid(sets);
    // Check every point before running any.
    let mut resolved = Vec::with_capacity(points.len());
    for p in &points {
        let mut d = doc.clone();
        for (k, v) in p {
            set(&mut d, k, v).map_err(|message| ScenarioError::Invalid {
                path: path.to_owned(),
                message: format!("--set {message}"),
            })?;
        }
        resolved.push(Scenario::parse(path, &toml::to_string(&d).unwrap_or_default(), base)?);
    }
    let chunk = points.len().div_ceil(threads.max(1)).max(1);
    let rows: Vec<Result<SweepRow, ScenarioError>> = std::thread::scope(|s| {
        let handles: Vec<_> = resolved
            .chunks(chunk)
            .zip(points.chunks(chunk))
            .map(|(rs, ps)| {
                s.spawn(move || {
                    rs.iter()
                        .zip(ps)
                        .map(|(r, p)| {
                            let inputs = inputs::load(r)?;
                            let results = run(r, &inputs, |_, _| {})?;
                            let summary = report::summarize(r, &inputs, &results);
                            Ok(row(p, &results, summary.saved))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    rows.into_iter().collect()
}

fn row(point: &[(String, String)], results: &[(Policy, crate::PolicyResult)], saved: report::Saved) -> SweepRow {
    SweepRow {
        point: point.iter().cloned().collect(),
        policies: results
            .iter()
            .map(|(p, x)| {
                #[allow(clippy::cast_precision_loss, reason = "counts fit an f64")]
                let m = BTreeMap::from([
                    ("energy_kwh", x.energy_kwh),
                    ("carbon_kg", x.carbon_kg),
                    ("cost", x.cost),
                    ("mean_cpu_util_powered", x.mean_cpu_util_powered),
                    ("mean_cpu_util_powered_with_drain", x.mean_cpu_util_powered_with_drain),
                    ("jobs_late", x.jobs_late as f64),
                    ("online_overload_steps", x.online_overload_steps as f64),
                    ("guard_throttled_steps", x.guard_throttled_steps as f64),
                ]);
                (p.name().to_owned(), m)
            })
            .collect(),
        saved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_set_by_path() {
        let mut d: toml::Table =
            toml::from_str("a = 1\n[b]\nc = \"x\"\n[[cluster.pools]]\npue = 1.1\n[[cluster.pools]]\npue = 1.2\n")
                .unwrap();
        set(&mut d, "a", "2").unwrap();
        set(&mut d, "b.c", "hello").unwrap();
        set(&mut d, "cluster.pools.1.pue", "1.5").unwrap();
        assert_eq!(d["a"].as_integer(), Some(2));
        assert_eq!(d["b"]["c"].as_str(), Some("hello"));
        assert_eq!(d["cluster"]["pools"][1]["pue"].as_float(), Some(1.5));
        set(&mut d, "pue", "1.3").unwrap();
        assert_eq!(d["cluster"]["pools"][0]["pue"].as_float(), Some(1.3));
        assert!(set(&mut d, "nope.x", "1").unwrap_err().contains("no `nope`"));
        assert!(set(&mut d, "cluster.pools.7.pue", "1").unwrap_err().contains("index 7"));
    }

    #[test]
    fn the_grid_is_every_combination() {
        let g =
            grid(&[("a".into(), vec!["1".into(), "2".into()]), ("b".into(), vec!["x".into(), "y".into(), "z".into()])]);
        assert_eq!(g.len(), 6);
        assert_eq!(g[5], vec![("a".to_owned(), "2".to_owned()), ("b".to_owned(), "z".to_owned())]);
    }
}

/// The sweep's trade-off as a page: each point's greenfill run by carbon (x)
/// and energy bill (y), labelled with what the point set, asap's runs beside
/// them; `None` when the scenario has no prices (every bill 0).
pub fn frontier_html(title: &str, rows: &[SweepRow]) -> Option<String> {
    let point = |r: &SweepRow, policy: &str| {
        let p = r.policies.get(policy)?;
        Some((p.get("carbon_kg").copied()?, p.get("cost").copied()?))
    };
    let ours: Vec<(f64, f64, String)> = rows
        .iter()
        .filter_map(|r| {
            let (c, b) = point(r, "greenfill")?;
            Some((c, b, r.point.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")))
        })
        .collect();
    if ours.iter().all(|(_, b, _)| *b == 0.0) {
        return None;
    }
    let theirs: Vec<(f64, f64)> = rows.iter().filter_map(|r| point(r, "asap")).collect();
    let all = ours.iter().map(|(c, b, _)| (*c, *b)).chain(theirs.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for (c, b) in all {
        (x0, x1, y0, y1) = (x0.min(c), x1.max(c), y0.min(b), y1.max(b));
    }
    let pad = |lo: f64, hi: f64| {
        let d = ((hi - lo) * 0.1).max(hi.abs() * 1e-3).max(1e-9);
        (lo - d, hi + d)
    };
    let ((x0, x1), (y0, y1)) = (pad(x0, x1), pad(y0, y1));
    let (w, h, m) = (900.0, 520.0, 70.0);
    let sx = |c: f64| m + (c - x0) / (x1 - x0) * (w - 2.0 * m);
    let sy = |b: f64| h - m - (b - y0) / (y1 - y0) * (h - 2.0 * m);
    let mut svg = format!(r#"<svg viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="carbon against cost">"#);
    let _ = write!(
        svg,
        r##"<line x1="{m}" y1="{y}" x2="{x}" y2="{y}" stroke="#999"/><line x1="{m}" y1="{m}" x2="{m}" y2="{y}" stroke="#999"/><text x="{cx}" y="{ty}" font-size="13" text-anchor="middle">kg CO2 (greenfill: green; asap: red)</text><text x="16" y="{cy}" font-size="13" transform="rotate(-90 16 {cy})" text-anchor="middle">energy bill</text><text x="{m}" y="{ly}" font-size="11">{x0:.1}</text><text x="{x}" y="{ly}" font-size="11" text-anchor="end">{x1:.1}</text><text x="{lx}" y="{y}" font-size="11" text-anchor="end">{y0:.1}</text><text x="{lx}" y="{m}" font-size="11" text-anchor="end">{y1:.1}</text>"##,
        y = h - m,
        x = w - m,
        cx = w / 2.0,
        ty = h - 20.0,
        cy = h / 2.0,
        ly = h - m + 16.0,
        lx = m - 6.0
    );
    for (c, b) in &theirs {
        let _ = write!(svg, r##"<circle cx="{:.1}" cy="{:.1}" r="5" fill="#d62728"/>"##, sx(*c), sy(*b));
    }
    for (c, b, label) in &ours {
        // Labels right of the middle read leftwards, so none runs off the page.
        let (dx, anchor) = if sx(*c) > w / 2.0 { (-9.0, "end") } else { (9.0, "start") };
        let _ = write!(
            svg,
            r##"<circle class="point" cx="{:.1}" cy="{:.1}" r="6" fill="#2ca02c"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="{anchor}">{label}</text>"##,
            sx(*c),
            sy(*b),
            sx(*c) + dx,
            sy(*b) - 8.0
        );
    }
    svg.push_str("</svg>");
    let table: String =
        ours.iter().map(|(c, b, label)| format!("<tr><td>{label}</td><td>{c:.2}</td><td>{b:.2}</td></tr>")).collect();
    Some(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}: carbon against cost</title></head>\
         <body style=\"font-family:sans-serif;max-width:960px;margin:auto\"><h2>{title}: carbon against cost</h2>{svg}\
         <table border=\"1\" cellpadding=\"4\"><tr><th>point</th><th>kg CO2</th><th>bill</th></tr>{table}</table></body></html>\n"
    ))
}

#[cfg(test)]
mod frontier_tests {
    use super::*;

    fn row(point: &str, carbon: f64, cost: f64) -> SweepRow {
        let m = |c, b| BTreeMap::from([("carbon_kg", c), ("cost", b)]);
        SweepRow {
            point: BTreeMap::from([("objective.carbon_price".to_owned(), point.to_owned())]),
            policies: BTreeMap::from([("greenfill".to_owned(), m(carbon, cost)), ("asap".to_owned(), m(152.8, 88.1))]),
            saved: report::Saved::default(),
        }
    }

    #[test]
    fn the_frontier_draws_each_point_and_only_with_prices() {
        let page = frontier_html("t", &[row("0", 158.9, 83.1), row("3000", 150.2, 93.7)]).unwrap();
        assert_eq!(page.matches(r#"class="point""#).count(), 2);
        assert!(page.contains("objective.carbon_price=3000") && page.contains("<td>150.20</td><td>93.70</td>"));
        assert!(frontier_html("t", &[row("0", 158.9, 0.0)]).is_none());
    }
}
