use super::table::Table;
use super::{DataError, infer_step, open};
use crate::{Series, SeriesStats};
use std::io::Read;
use std::path::Path;

/// Which columns hold time and intensity. `None` picks the first known name
/// (EIA/dc-rl `timestamp`+`avg_CI`, ENTSO-E `Time`+`Carbon Intensity`,
/// Electricity Maps `Datetime (UTC)`+`Carbon Intensity gCO₂eq/kWh (direct)`).
#[derive(Debug, Clone, Default)]
pub struct CarbonOptions {
    pub time_column: Option<String>,
    pub value_column: Option<String>,
    /// Step of the output series in seconds; inferred from the rows when `None`.
    pub step: Option<i64>,
}

const TIME_NAMES: &[&str] = &["timestamp", "time", "datetime", "Datetime (UTC)", "date"];
const VALUE_NAMES: &[&str] = &[
    "avg_CI",
    "Carbon Intensity",
    "carbon_intensity",
    "Carbon Intensity gCO₂eq/kWh (direct)",
    "Carbon Intensity gCO₂eq/kWh (Life cycle)",
    "Carbon intensity gCO₂eq/kWh (direct)",
    "Carbon intensity gCO₂eq/kWh (Life cycle)",
    "ci",
    "value",
];

/// Carbon intensity in gCO2/kWh as a regular series.
#[derive(Debug, Clone)]
pub struct CarbonTrace {
    pub series: Series,
    /// Rows in the file (after the header).
    pub rows: usize,
    /// Statistics of the observed (non-empty) intensities.
    pub stats: SeriesStats,
}

pub fn load_carbon(path: &Path, opts: &CarbonOptions) -> Result<CarbonTrace, DataError> {
    read_carbon(&path.display().to_string(), open(path)?, opts)
}

pub fn read_carbon(path: &str, input: impl Read, opts: &CarbonOptions) -> Result<CarbonTrace, DataError> {
    read_signal(path, input, opts, Signal::Carbon)
}

/// Which signal a time series file holds: its column names and its range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// gCO2/kWh, never negative.
    Carbon,
    /// Currency per MWh; negative prices are real (surplus renewables).
    Price,
}

impl Signal {
    fn names(self) -> &'static [&'static str] {
        match self {
            Signal::Carbon => VALUE_NAMES,
            Signal::Price => crate::data::price::PRICE_NAMES,
        }
    }
}

/// A (time, value) series of `signal`: the column by name or by the signal's
/// usual names, rows in increasing time, gaps filled by the line between.
pub(crate) fn read_signal(
    path: &str,
    input: impl Read,
    opts: &CarbonOptions,
    signal: Signal,
) -> Result<CarbonTrace, DataError> {
    let table = Table::read(path, input, true)?;
    let time_col = match &opts.time_column {
        Some(c) => table.require(c)?,
        None => table.find(TIME_NAMES).unwrap_or(0),
    };
    let names = signal.names();
    let value_col = match &opts.value_column {
        Some(c) => table.require(c)?,
        None => table
            .find(names)
            .or_else(|| {
                (signal == Signal::Carbon)
                    .then(|| table.header.iter().position(|h| h.to_ascii_lowercase().contains("carbon intensity")))
                    .flatten()
            })
            .ok_or_else(|| DataError::MissingColumn {
                path: path.to_owned(),
                column: format!("{} (or name one with --value-column)", names[0]),
                found: table.header.join(", "),
            })?,
    };
    let mut times = Vec::with_capacity(table.rows.len());
    let mut samples = Vec::with_capacity(table.rows.len());
    for (line, rec) in &table.rows {
        let t = table.timestamp(*line, rec, time_col)?;
        let v = table.number(*line, rec, value_col)?;
        if let Some(v) = v
            && v < 0.0
            && signal == Signal::Carbon
        {
            return Err(table.field_error(*line, value_col, format!("carbon intensity {v} is negative")));
        }
        times.push((*line, t));
        samples.push((t, v.unwrap_or(f64::NAN)));
    }
    table.check_increasing(&times, time_col)?;
    let bare: Vec<i64> = times.iter().map(|(_, t)| *t).collect();
    let step = opts.step.or_else(|| infer_step(&bare)).unwrap_or(3600);
    let stats = SeriesStats::of(samples.iter().map(|(_, v)| *v)).ok_or_else(|| DataError::File {
        path: path.to_owned(),
        problem: format!("no value in column `{}`", table.column_name(value_col)),
    })?;
    crate::data::check_span(path, &samples, step)?;
    let id = table.column_name(value_col);
    let series = Series::from_samples(id, step, &samples).ok_or_else(|| DataError::File {
        path: path.to_owned(),
        problem: format!("no value in column `{}`", table.column_name(value_col)),
    })?;
    Ok(CarbonTrace { series, rows: table.rows.len(), stats })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> Result<CarbonTrace, DataError> {
        read_carbon("t.csv", s.as_bytes(), &CarbonOptions::default())
    }

    #[test]
    fn eia_rows_with_an_empty_cell() {
        let t = read(
            "timestamp,WND,avg_CI\n\
             2022-01-01 00:00:00+00:00,1,100\n\
             2022-01-01 01:00:00+00:00,1,\n\
             2022-01-01 02:00:00+00:00,1,300\n",
        )
        .unwrap();
        assert_eq!(t.rows, 3);
        assert_eq!(t.series.step, 3600);
        assert_eq!(t.series.values, vec![100.0, 200.0, 300.0]);
        assert_eq!(t.series.filled, 1);
        assert_eq!(t.stats.count, 2);
        assert!((t.stats.mean - 200.0).abs() < 1e-9);
    }

    #[test]
    fn entsoe_half_hourly_with_a_missing_row() {
        let t = read(
            "Time,Carbon Intensity\n2023-03-01T00:00:00Z,50\n2023-03-01T00:30:00Z,60\n\
             2023-03-01T01:00:00Z,70\n2023-03-01T02:00:00Z,90\n",
        )
        .unwrap();
        assert_eq!(t.series.step, 1800);
        assert_eq!(t.series.values, vec![50.0, 60.0, 70.0, 80.0, 90.0]);
        assert_eq!(t.series.filled, 1);
    }

    #[test]
    fn broken_inputs_name_line_and_column() {
        let cases: &[(&str, &str)] = &[
            ("timestamp,avg_CI\nnoon,1\n", "t.csv:2: column `timestamp`: `noon` is not a timestamp"),
            ("timestamp,avg_CI\n2022-01-01,abc\n", "t.csv:2: column `avg_CI`: `abc` is not a number"),
            ("timestamp,avg_CI\n2022-01-01,-3\n", "t.csv:2: column `avg_CI`: carbon intensity -3 is negative"),
            (
                "timestamp,avg_CI\n2022-01-02,1\n2022-01-01,2\n",
                "t.csv:3: column `timestamp`: time 2022-01-01T00:00:00Z is not after",
            ),
            ("timestamp,avg_CI\n2022-01-01,\n", "no value in column `avg_CI`"),
            ("timestamp,foo\n2022-01-01,1\n", "no column `avg_CI"),
        ];
        for (input, want) in cases {
            let err = read(input).unwrap_err().to_string();
            assert!(err.contains(want), "input {input:?}: got `{err}`, want `{want}`");
        }
    }
}
