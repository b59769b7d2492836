use super::table::Table;
use super::{DataError, infer_step, open};
use crate::{Series, SeriesStats};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

/// The machine-usage formats greenfill reads. `Auto` decides from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageFormat {
    #[default]
    Auto,
    /// Alibaba 2018 `machine_usage`: no header,
    /// `machine_id,time_stamp,cpu_util_percent,mem_util_percent,…`, irregular samples.
    Alibaba2018Machines,
    /// Bitbrains GWA-T-12 per-VM file (`;`-separated, `CPU usage [%]`).
    BitbrainsVm,
    /// One aggregated cluster series with a header: a time column (`timestamp`,
    /// `timestamp_s`) or none (row i is at i × step), and a value column chosen by
    /// metric (Google 2019, Azure v2, Alibaba grouped, Bitbrains derived, hourly loads).
    Aggregate,
    /// Long format, one sample per row: a time column, a series column
    /// (`series`, `instance`, `node`, `machine`, `pod`, `id`) and a value
    /// column, rows of several series interleaved (what `greenfill data import
    /// prometheus` writes, and most exports of a time-series database).
    Long,
    /// Prometheus's own JSON answer to a range query (`/api/v1/query_range`,
    /// saved as it came): one series per `instance` (else `node`, `pod`, or the
    /// whole label set: the first that tells every series apart). Values are a share when all lie in 0–1, percent when all
    /// lie in 0–100, else of unknown unit (the simulator then refuses them).
    PrometheusJson,
}

/// Which quantity to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsageMetric {
    #[default]
    Cpu,
    Mem,
}

#[derive(Debug, Clone, Default)]
pub struct UsageOptions {
    pub format: UsageFormat,
    pub metric: UsageMetric,
    /// Output step in seconds. Defaults: the file's own step when it has timestamps;
    /// 300 s for Alibaba 2018 machines; taken from a `_<N>_seconds` or `Hourly` file
    /// name when there is no time column.
    pub step: Option<i64>,
    /// Name of the value column, overriding the metric's default.
    pub value_column: Option<String>,
    /// Leave gaps as NaN instead of filling them (to score forecasts only on
    /// observed values).
    pub keep_gaps: bool,
}

/// Usage series read from one file, one per machine (or one for an aggregate).
#[derive(Debug, Clone)]
pub struct UsageTrace {
    pub format: UsageFormat,
    pub series: Vec<Series>,
    pub rows: usize,
    /// Statistics of the observed values over all series.
    pub stats: SeriesStats,
    /// Unit of the values as the file gives them (`percent`, `fraction`, or the
    /// column's name when the unit is the trace's own).
    pub unit: String,
}

pub fn load_usage(path: &Path, opts: &UsageOptions) -> Result<UsageTrace, DataError> {
    let name = path.display().to_string();
    let stem = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    read_usage_named(&name, &stem, open(path)?, opts)
}

/// Read usage from bytes; `path` names the input in errors (and its file name gives
/// the step hint and the series id where the format has no ids).
pub fn read_usage(path: &str, input: impl Read, opts: &UsageOptions) -> Result<UsageTrace, DataError> {
    let stem = Path::new(path).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    read_usage_named(path, &stem, input, opts)
}

fn read_usage_named(
    path: &str,
    file_name: &str,
    input: impl Read,
    opts: &UsageOptions,
) -> Result<UsageTrace, DataError> {
    let mut bytes = Vec::new();
    let mut input = input;
    input.read_to_end(&mut bytes).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
    let format = match opts.format {
        UsageFormat::Auto => detect(&bytes),
        f => f,
    };
    match format {
        UsageFormat::Alibaba2018Machines => alibaba_machines(path, &bytes, opts),
        UsageFormat::BitbrainsVm => bitbrains_vm(path, file_name, &bytes, opts),
        UsageFormat::Long => long(path, &bytes, opts),
        UsageFormat::PrometheusJson => prometheus_json(path, &bytes, opts),
        UsageFormat::Aggregate | UsageFormat::Auto => aggregate(path, file_name, &bytes, opts),
    }
}

fn detect(bytes: &[u8]) -> UsageFormat {
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{') {
        return UsageFormat::PrometheusJson;
    }
    let first = String::from_utf8_lossy(bytes.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    if first.starts_with("m_") {
        UsageFormat::Alibaba2018Machines
    } else if first.contains("CPU usage [%]") {
        UsageFormat::BitbrainsVm
    } else {
        let cells: Vec<String> = first.split([',', ';', '\t']).map(|c| c.trim().to_ascii_lowercase()).collect();
        let has = |names: &[&str]| cells.iter().any(|c| names.contains(&c.as_str()));
        if has(TIME_NAMES) && has(SERIES_NAMES) { UsageFormat::Long } else { UsageFormat::Aggregate }
    }
}

fn stem(file_name: &str) -> String {
    file_name.rsplit_once('.').map_or(file_name, |(s, _)| s).to_owned()
}

fn finish(
    keep_gaps: bool,
    path: &str,
    format: UsageFormat,
    rows: usize,
    unit: String,
    per_id: BTreeMap<String, Vec<(i64, f64)>>,
    step: i64,
) -> Result<UsageTrace, DataError> {
    let stats = SeriesStats::of(per_id.values().flatten().map(|(_, v)| *v))
        .ok_or_else(|| DataError::File { path: path.to_owned(), problem: "no usage value in any row".into() })?;
    for samples in per_id.values() {
        crate::data::check_span(path, samples, step)?;
    }
    let series = per_id
        .into_iter()
        .filter_map(|(id, samples)| {
            if keep_gaps { Series::binned(id, step, &samples) } else { Series::from_samples(id, step, &samples) }
        })
        .collect();
    Ok(UsageTrace { format, series, rows, stats, unit })
}

fn alibaba_machines(path: &str, bytes: &[u8], opts: &UsageOptions) -> Result<UsageTrace, DataError> {
    let table = Table::read(path, bytes, false)?;
    let col = match opts.metric {
        UsageMetric::Cpu => 2,
        UsageMetric::Mem => 3,
    };
    let mut per_id: BTreeMap<String, Vec<(u64, i64, f64)>> = BTreeMap::new();
    for (line, rec) in &table.rows {
        let id = Table::cell(rec, 0);
        if id.is_empty() {
            return Err(table.field_error(*line, 0, "empty machine id"));
        }
        let t = table.required_number(*line, rec, 1)?;
        #[allow(clippy::cast_possible_truncation, reason = "trace seconds are small whole numbers")]
        let t = t as i64;
        let v = table.number(*line, rec, col)?;
        if let Some(v) = v
            && !(0.0..=100.0).contains(&v)
        {
            return Err(table.field_error(*line, col, format!("utilisation {v} % is outside 0..=100")));
        }
        per_id.entry(id.to_owned()).or_default().push((*line, t, v.unwrap_or(f64::NAN)));
    }
    // The trace is not sorted by time within a machine; samples at the same second
    // are duplicates that the resampling averages.
    let mut out = BTreeMap::new();
    for (id, mut rows) in per_id {
        rows.sort_by_key(|r| r.1);
        out.insert(id, rows.into_iter().map(|(_, t, v)| (t, v)).collect());
    }
    finish(
        opts.keep_gaps,
        path,
        UsageFormat::Alibaba2018Machines,
        table.rows.len(),
        "percent".into(),
        out,
        opts.step.unwrap_or(300),
    )
}

fn bitbrains_vm(path: &str, file_name: &str, bytes: &[u8], opts: &UsageOptions) -> Result<UsageTrace, DataError> {
    let table = Table::read(path, bytes, true)?;
    let tcol = table.require("Timestamp [ms]")?;
    let vcol = match (&opts.value_column, opts.metric) {
        (Some(c), _) => table.require(c)?,
        (None, UsageMetric::Cpu) => table.require("CPU usage [%]")?,
        (None, UsageMetric::Mem) => table.require("Memory usage [KB]")?,
    };
    let mut times = Vec::with_capacity(table.rows.len());
    let mut samples = Vec::with_capacity(table.rows.len());
    for (line, rec) in &table.rows {
        let t = table.timestamp(*line, rec, tcol)?;
        let v = table.number(*line, rec, vcol)?;
        times.push((*line, t));
        samples.push((t, v.unwrap_or(f64::NAN)));
    }
    table.check_increasing(&times, tcol)?;
    let step = opts.step.unwrap_or(300);
    let unit = match opts.metric {
        UsageMetric::Cpu if opts.value_column.is_none() => "percent".into(),
        _ => table.column_name(vcol),
    };
    let per_id = BTreeMap::from([(stem(file_name), samples)]);
    finish(opts.keep_gaps, path, UsageFormat::BitbrainsVm, table.rows.len(), unit, per_id, step)
}

const TIME_NAMES: &[&str] = &["timestamp", "timestamp_s", "time", "time_stamp"];
const CPU_NAMES: &[&str] = &["cpu_usage_frac", "avg_cpu", "cpu_util_percent", "cpu_load", "cpu_usage", "cpu"];
const MEM_NAMES: &[&str] = &["avg_mem", "mem_util_percent", "assigned_mem", "mem"];
const SERIES_NAMES: &[&str] = &["series", "instance", "node", "machine", "machine_id", "pod", "id"];

/// The unit a value column's name gives: `percent`, `fraction`, or the name.
fn unit_of(name: &str) -> String {
    let n = name.to_ascii_lowercase();
    if n.contains("percent") {
        "percent".to_owned()
    } else if n.contains("frac") || n.contains("share") || n.starts_with("avg_") || n == "cpu_load" {
        "fraction".to_owned()
    } else {
        name.to_owned()
    }
}

#[derive(serde::Deserialize)]
struct PromAnswer {
    data: PromData,
}

#[derive(serde::Deserialize)]
struct PromData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<PromSeries>,
}

#[derive(serde::Deserialize)]
struct PromSeries {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

fn prometheus_json(path: &str, bytes: &[u8], opts: &UsageOptions) -> Result<UsageTrace, DataError> {
    let bad = |problem: String| DataError::File { path: path.to_owned(), problem };
    let answer: PromAnswer = serde_json::from_slice(bytes)
        .map_err(|e| bad(format!("not a Prometheus query_range answer (status, data.result): {e}")))?;
    if answer.data.result_type != "matrix" {
        return Err(bad(format!("a {} answer, not a range query's (matrix)", answer.data.result_type)));
    }
    // Named by the first of these labels that every series has and no two
    // share (one exporter serves several nodes under one `instance`), else by
    // the whole label set: two series are never merged.
    let result = answer.data.result;
    let naming = ["instance", "node", "pod"].into_iter().find(|l| {
        let names: std::collections::BTreeSet<Option<&String>> = result.iter().map(|s| s.metric.get(*l)).collect();
        names.len() == result.len() && !names.contains(&None)
    });
    let mut per_id: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    let mut rows = 0;
    for s in result {
        let id = naming.and_then(|l| s.metric.get(l).cloned()).unwrap_or_else(|| {
            let labels: Vec<String> = s.metric.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{{{}}}", labels.join(","))
        });
        let samples = per_id.entry(id).or_default();
        for (t, v) in s.values {
            rows += 1;
            #[allow(clippy::cast_possible_truncation, reason = "unix seconds")]
            samples.push((t.round() as i64, v.parse::<f64>().ok().filter(|x| x.is_finite()).unwrap_or(f64::NAN)));
        }
    }
    for samples in per_id.values_mut() {
        samples.sort_by_key(|x| x.0);
    }
    let values = || per_id.values().flatten().map(|x| x.1).filter(|v| !v.is_nan());
    let unit = if values().all(|v| (0.0..=1.0).contains(&v)) {
        "fraction"
    } else if values().all(|v| (0.0..=100.0).contains(&v)) {
        "percent"
    } else {
        "value"
    };
    let mut times: Vec<i64> = per_id.values().flatten().map(|x| x.0).collect();
    times.sort_unstable();
    let step = opts.step.or_else(|| infer_step(&times)).unwrap_or(300);
    finish(opts.keep_gaps, path, UsageFormat::PrometheusJson, rows, unit.to_owned(), per_id, step)
}

fn long(path: &str, bytes: &[u8], opts: &UsageOptions) -> Result<UsageTrace, DataError> {
    let table = Table::read(path, bytes, true)?;
    let tcol = table.find(TIME_NAMES).ok_or_else(|| DataError::MissingColumn {
        path: path.to_owned(),
        column: TIME_NAMES.join(" | "),
        found: table.header.join(", "),
    })?;
    let scol = table.find(SERIES_NAMES).ok_or_else(|| DataError::MissingColumn {
        path: path.to_owned(),
        column: SERIES_NAMES.join(" | "),
        found: table.header.join(", "),
    })?;
    let vcol = match &opts.value_column {
        Some(c) => table.require(c)?,
        // The one column that is neither time nor series.
        None => match (0..table.header.len()).filter(|&c| c != tcol && c != scol).collect::<Vec<_>>()[..] {
            [c] => c,
            _ => {
                return Err(DataError::File {
                    path: path.to_owned(),
                    problem: format!(
                        "long format: more than one value column in `{}`; name one with --value-column",
                        table.header.join(", ")
                    ),
                });
            }
        },
    };
    let mut per_id: BTreeMap<String, Vec<(u64, i64, f64)>> = BTreeMap::new();
    for (line, rec) in &table.rows {
        let id = Table::cell(rec, scol);
        if id.is_empty() {
            return Err(table.field_error(*line, scol, "empty series name"));
        }
        let t = table.timestamp(*line, rec, tcol)?;
        let v = table.number(*line, rec, vcol)?.unwrap_or(f64::NAN);
        per_id.entry(id.to_owned()).or_default().push((*line, t, v));
    }
    let mut out = BTreeMap::new();
    let mut all_times = Vec::new();
    for (id, rows) in per_id {
        let times: Vec<(u64, i64)> = rows.iter().map(|(l, t, _)| (*l, *t)).collect();
        table.check_increasing(&times, tcol)?;
        all_times.extend(times.iter().map(|(_, t)| *t));
        out.insert(id, rows.into_iter().map(|(_, t, v)| (t, v)).collect());
    }
    all_times.sort_unstable();
    let step = opts.step.or_else(|| infer_step(&all_times)).unwrap_or(300);
    let unit = unit_of(&table.column_name(vcol));
    finish(opts.keep_gaps, path, UsageFormat::Long, table.rows.len(), unit, out, step)
}

fn step_from_name(file_name: &str) -> Option<i64> {
    if file_name.contains("Hourly") || file_name.contains("hourly") {
        return Some(3600);
    }
    let parts: Vec<&str> = file_name.split(['_', '.']).collect();
    parts.windows(2).find(|w| w[1] == "seconds").and_then(|w| w[0].parse().ok())
}

fn aggregate(path: &str, file_name: &str, bytes: &[u8], opts: &UsageOptions) -> Result<UsageTrace, DataError> {
    let table = Table::read(path, bytes, true)?;
    let vcol = match &opts.value_column {
        Some(c) => table.require(c)?,
        None => {
            let names = match opts.metric {
                UsageMetric::Cpu => CPU_NAMES,
                UsageMetric::Mem => MEM_NAMES,
            };
            table.find(names).ok_or_else(|| DataError::MissingColumn {
                path: path.to_owned(),
                column: format!("{} (or name one with --value-column)", names.join(" | ")),
                found: table.header.join(", "),
            })?
        }
    };
    let tcol = table.find(TIME_NAMES);
    let mut samples = Vec::with_capacity(table.rows.len());
    let step = if let Some(tcol) = tcol {
        let mut times = Vec::with_capacity(table.rows.len());
        for (line, rec) in &table.rows {
            let t = table.timestamp(*line, rec, tcol)?;
            times.push((*line, t));
            samples.push((t, table.number(*line, rec, vcol)?.unwrap_or(f64::NAN)));
        }
        table.check_increasing(&times, tcol)?;
        let bare: Vec<i64> = times.iter().map(|(_, t)| *t).collect();
        opts.step.or_else(|| infer_step(&bare)).unwrap_or(300)
    } else {
        let step = opts.step.or_else(|| step_from_name(file_name)).ok_or_else(|| DataError::File {
            path: path.to_owned(),
            problem: "no time column and no step in the file name: give the step (e.g. --step 5m)".into(),
        })?;
        for (i, (line, rec)) in table.rows.iter().enumerate() {
            let t = i64::try_from(i).unwrap_or(i64::MAX).saturating_mul(step);
            samples.push((t, table.number(*line, rec, vcol)?.unwrap_or(f64::NAN)));
        }
        step
    };
    let name = table.column_name(vcol);
    let unit = unit_of(&name);
    let per_id = BTreeMap::from([(format!("{}:{name}", stem(file_name)), samples)]);
    finish(opts.keep_gaps, path, UsageFormat::Aggregate, table.rows.len(), unit, per_id, step)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str, s: &str) -> Result<UsageTrace, DataError> {
        read_usage(name, s.as_bytes(), &UsageOptions::default())
    }

    #[test]
    fn alibaba_machines_are_split_and_resampled() {
        let t = read(
            "machine_usage.csv",
            "m_1,10,40,90,,,1,1,5\nm_1,100,60,90,,,1,1,5\nm_2,20,10,50,,,1,1,5\nm_1,700,,91,,,1,1,5\nm_1,905,20,91,,,1,1,5\n",
        )
        .unwrap();
        assert_eq!(t.format, UsageFormat::Alibaba2018Machines);
        assert_eq!(t.series.len(), 2);
        let m1 = &t.series[0];
        assert_eq!((m1.id.as_str(), m1.start, m1.step), ("m_1", 0, 300));
        // bins: [0,300) mean 50; [300,600) empty; [600,900) only an empty cell; [900,1200) 20
        assert_eq!(m1.values, vec![50.0, 40.0, 30.0, 20.0]);
        assert_eq!(m1.filled, 2);
    }

    #[test]
    fn aggregate_without_time_takes_step_from_name() {
        let t = read("x_grouped_300_seconds.csv", "cpu_util_percent,mem_util_percent\n10,1\n20,2\n").unwrap();
        assert_eq!(t.series[0].step, 300);
        assert_eq!(t.series[0].values, vec![10.0, 20.0]);
        assert_eq!(t.unit, "percent");
        let e = read("x.csv", "avg_cpu\n1\n").unwrap_err().to_string();
        assert!(e.contains("give the step"), "{e}");
    }

    #[test]
    fn a_long_table_gives_one_series_per_name_with_its_gaps() {
        // Issue 28: rows of two series interleaved, as a time-series database
        // exports them; b misses 600 (filled, counted), a's 900 is empty.
        let csv = "time,instance,cpu_fraction\n\
                   0,a,0.1\n0,b,0.5\n300,a,0.2\n300,b,0.6\n600,a,0.3\n900,a,\n900,b,0.8\n1200,a,0.5\n1200,b,0.9\n";
        let t = read("prom.csv", csv).unwrap();
        assert_eq!(t.format, UsageFormat::Long);
        assert_eq!(t.unit, "fraction");
        assert_eq!(t.rows, 9);
        let ids: Vec<&str> = t.series.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!((t.series[0].start, t.series[0].step), (0, 300));
        assert_eq!(t.series[0].values, vec![0.1, 0.2, 0.3, 0.4, 0.5]);
        assert_eq!(t.series[0].filled, 1);
        assert_eq!(t.series[1].values, vec![0.5, 0.6, 0.7, 0.8, 0.9]);
        assert_eq!(t.series[1].filled, 1);
        // Kept as gaps when asked.
        let kept = read_usage("prom.csv", csv.as_bytes(), &UsageOptions { keep_gaps: true, ..UsageOptions::default() })
            .unwrap();
        assert!(kept.series[1].values[2].is_nan());
        // Out of order within one series names the line; other series may interleave.
        let e = read("p.csv", "time,series,value_percent\n0,a,1\n300,b,1\n0,a,2\n").unwrap_err().to_string();
        assert!(e.contains("p.csv:4: column `time`") && e.contains("increasing time order"), "{e}");
        let e = read("p.csv", "time,series,x,y\n0,a,1,2\n").unwrap_err().to_string();
        assert!(e.contains("more than one value column in `time, series, x, y`"), "{e}");
        let e = read("p.csv", "time,series,v\n0,,1\n").unwrap_err().to_string();
        assert!(e.contains("p.csv:2: column `series`: empty series name"), "{e}");
    }

    #[test]
    fn a_saved_prometheus_answer_is_a_usage_trace() {
        // `curl …/api/v1/query_range?… > answer.json`, as Prometheus answers.
        let json = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"instance":"web-1:9100"},"values":[[1700000040,"0.25"],[1700000100,"0.5"],[1700000160,"NaN"],[1700000220,"0.75"]]},
            {"metric":{"instance":"web-2:9100"},"values":[[1700000040,"0.1"],[1700000100,"0.2"]]}]}}"#;
        let t = read("answer.json", json).unwrap();
        assert_eq!(t.format, UsageFormat::PrometheusJson);
        assert_eq!((t.unit.as_str(), t.rows), ("fraction", 6));
        let ids: Vec<&str> = t.series.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["web-1:9100", "web-2:9100"]);
        // One exporter for two nodes: `instance` does not tell them apart, `node` does.
        let two = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"instance":"e:1","node":"a"},"values":[[1700000040,"0.25"]]},
            {"metric":{"instance":"e:1","node":"b"},"values":[[1700000040,"0.75"]]}]}}"#;
        let ids: Vec<String> = read("a.json", two).unwrap().series.into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a", "b"]);
        let odd = two.replace("\"node\":\"b\"", "\"job\":\"b\"");
        let ids: Vec<String> = read("a.json", &odd).unwrap().series.into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["{instance=\"e:1\",job=\"b\"}", "{instance=\"e:1\",node=\"a\"}"], "the label sets");
        assert_eq!((t.series[0].start, t.series[0].step), (1_700_000_040, 60));
        assert_eq!(t.series[0].values, vec![0.25, 0.5, 0.625, 0.75], "NaN is a gap, filled");
        let pct = json.replace("\"0.75\"", "\"75\"");
        assert_eq!(read("a.json", &pct).unwrap().unit, "percent");
        let e = read("a.json", r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#).unwrap_err();
        assert!(e.to_string().contains("a vector answer, not a range query's"), "{e}");
        let e = read("a.json", "{\"status\":\"error\"}").unwrap_err();
        assert!(e.to_string().contains("not a Prometheus query_range answer"), "{e}");
    }

    #[test]
    fn bitbrains_vm_semicolons_and_tabs() {
        let t =
            read("vm1.csv", "Timestamp [ms];\tCPU cores;\tCPU usage [%]\n1372629804;\t1;\t2.0\n1372630104;\t1;\t4.0\n")
                .unwrap();
        assert_eq!(t.format, UsageFormat::BitbrainsVm);
        assert_eq!(t.series[0].id, "vm1");
        assert_eq!(t.series[0].values, vec![2.0, 4.0]);
    }

    #[test]
    fn broken_inputs_name_line_and_column() {
        let cases: &[(&str, &str, &str)] = &[
            ("m.csv", "m_1,10,400,1\n", "m.csv:1: column `#3`: utilisation 400 % is outside 0..=100"),
            ("m.csv", "m_1,ten,4,1\n", "m.csv:1: column `#2`: `ten` is not a number"),
            ("a.csv", "timestamp,cpu_usage\n0,1\n300,x\n", "a.csv:3: column `cpu_usage`: `x` is not a number"),
            ("a.csv", "timestamp,cpu_usage\n300,1\n0,1\n", "a.csv:3: column `timestamp`"),
            ("a.csv", "timestamp,disk\n0,1\n", "no column `cpu_usage_frac | avg_cpu"),
            ("a.csv", "timestamp,cpu_usage\n0,\n", "no usage value"),
        ];
        for (name, input, want) in cases {
            let err = read(name, input).unwrap_err().to_string();
            assert!(err.contains(want), "input {input:?}: got `{err}`, want `{want}`");
        }
    }
}
