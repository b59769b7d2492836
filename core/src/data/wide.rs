use super::table::Table;
use super::{DataError, infer_step, open};
use crate::Series;
use std::io::Read;
use std::path::Path;

/// A table of several series over one time column (`timestamp`, `time` or the
/// first column): every other column becomes a [`Series`] named after its header.
pub fn load_wide(path: &Path, step: Option<i64>) -> Result<Vec<Series>, DataError> {
    read_wide(&path.display().to_string(), open(path)?, step)
}

pub fn read_wide(path: &str, input: impl Read, step: Option<i64>) -> Result<Vec<Series>, DataError> {
    let table = Table::read(path, input, true)?;
    let tcol = table.find(&["timestamp", "time", "datetime"]).unwrap_or(0);
    let mut times = Vec::with_capacity(table.rows.len());
    let cols: Vec<usize> = (0..table.header.len()).filter(|c| *c != tcol).collect();
    let mut samples: Vec<Vec<(i64, f64)>> = vec![Vec::with_capacity(table.rows.len()); cols.len()];
    for (line, rec) in &table.rows {
        let t = table.timestamp(*line, rec, tcol)?;
        times.push((*line, t));
        for (k, &c) in cols.iter().enumerate() {
            samples[k].push((t, table.number(*line, rec, c)?.unwrap_or(f64::NAN)));
        }
    }
    table.check_increasing(&times, tcol)?;
    let bare: Vec<i64> = times.iter().map(|(_, t)| *t).collect();
    let step = step.or_else(|| infer_step(&bare)).unwrap_or(300);
    for s in &samples {
        crate::data::check_span(path, s, step)?;
    }
    cols.iter()
        .zip(samples)
        .map(|(&c, s)| {
            Series::from_samples(table.column_name(c), step, &s).ok_or_else(|| DataError::File {
                path: path.to_owned(),
                problem: format!("column `{}` has no value", table.column_name(c)),
            })
        })
        .collect()
}
