//! What-if grids: the same scenario with some keys set to each combination of
//! values, run in parallel, one summary row per point.

use crate::engine::Policy;
use crate::scenario::{Scenario, ScenarioError};
use crate::{inputs, report, run};
use serde::Serialize;
use std::collections::BTreeMap;
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
