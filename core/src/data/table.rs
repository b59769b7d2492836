//! A CSV table with a header, read whole: delimiter detection, header lookup by
//! name, and typed cell access that produces [`DataError`]s naming line and column.

use super::DataError;
use std::io::Read;

pub(crate) struct Table {
    pub(crate) path: String,
    pub(crate) header: Vec<String>,
    /// Rows with the 1-based line number each started on.
    pub(crate) rows: Vec<(u64, csv::StringRecord)>,
}

impl Table {
    /// Read all of `input`. `has_header = false` makes the header empty and keeps
    /// the first line as a row.
    pub(crate) fn read(path: &str, mut input: impl Read, has_header: bool) -> Result<Table, DataError> {
        let mut bytes = Vec::new();
        input.read_to_end(&mut bytes).map_err(|source| DataError::Io { path: path.to_owned(), source })?;
        let first_line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
        // The most frequent candidate on the first line; ties go to the earlier one
        // (Bitbrains separates with `;\t`, and the tab is trimmed away).
        let count = |d: u8| first_line.iter().filter(|b| **b == d).count();
        let delimiter = [b';', b'\t'].into_iter().fold(b',', |best, d| if count(d) > count(best) { d } else { best });
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(has_header)
            .flexible(true)
            .trim(csv::Trim::All)
            .from_reader(bytes.as_slice());
        let header = if has_header {
            reader
                .headers()
                .map_err(|e| csv_error(path, &e))?
                .iter()
                .map(|h| h.trim_start_matches('\u{feff}').to_owned())
                .collect()
        } else {
            Vec::new()
        };
        let mut rows = Vec::new();
        for record in reader.records() {
            let record = record.map_err(|e| csv_error(path, &e))?;
            let line = record.position().map_or(0, csv::Position::line);
            if record.iter().all(str::is_empty) {
                continue;
            }
            rows.push((line, record));
        }
        Ok(Table { path: path.to_owned(), header, rows })
    }

    /// Index of the first header that matches one of `names` (case-insensitive,
    /// in the order given).
    pub(crate) fn find(&self, names: &[&str]) -> Option<usize> {
        names.iter().find_map(|n| self.header.iter().position(|h| h.eq_ignore_ascii_case(n)))
    }

    /// Index of the column named `name`, or an error listing the columns there are.
    pub(crate) fn require(&self, name: &str) -> Result<usize, DataError> {
        self.find(&[name]).ok_or_else(|| DataError::MissingColumn {
            path: self.path.clone(),
            column: name.to_owned(),
            found: self.header.join(", "),
        })
    }

    pub(crate) fn column_name(&self, col: usize) -> String {
        self.header.get(col).cloned().unwrap_or_else(|| format!("#{}", col + 1))
    }

    pub(crate) fn field_error(&self, line: u64, col: usize, problem: impl Into<String>) -> DataError {
        DataError::Field { path: self.path.clone(), line, column: self.column_name(col), problem: problem.into() }
    }

    /// The raw cell (empty when the row is short).
    pub(crate) fn cell(record: &csv::StringRecord, col: usize) -> &str {
        record.get(col).unwrap_or("")
    }

    /// A number, `None` for an empty cell; an error for anything else that is not
    /// a finite number.
    pub(crate) fn number(&self, line: u64, record: &csv::StringRecord, col: usize) -> Result<Option<f64>, DataError> {
        let s = Self::cell(record, col);
        if s.is_empty() || s.eq_ignore_ascii_case("nan") || s.eq_ignore_ascii_case("null") {
            return Ok(None);
        }
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(self.field_error(line, col, format!("`{s}` is not a number"))),
        }
    }

    /// A number that must be present.
    pub(crate) fn required_number(&self, line: u64, record: &csv::StringRecord, col: usize) -> Result<f64, DataError> {
        self.number(line, record, col)?.ok_or_else(|| self.field_error(line, col, "empty cell"))
    }

    /// A timestamp (see [`crate::time::parse_timestamp`]).
    pub(crate) fn timestamp(&self, line: u64, record: &csv::StringRecord, col: usize) -> Result<i64, DataError> {
        let s = Self::cell(record, col);
        crate::time::parse_timestamp(s).ok_or_else(|| self.field_error(line, col, format!("`{s}` is not a timestamp")))
    }

    /// Error unless times increase strictly, naming the first line that does not.
    pub(crate) fn check_increasing(&self, times: &[(u64, i64)], col: usize) -> Result<(), DataError> {
        for w in times.windows(2) {
            if w[1].1 <= w[0].1 {
                return Err(self.field_error(
                    w[1].0,
                    col,
                    format!(
                        "time {} is not after the previous row's {} (rows must be in increasing time order)",
                        crate::time::format_timestamp(w[1].1),
                        crate::time::format_timestamp(w[0].1)
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn csv_error(path: &str, e: &csv::Error) -> DataError {
    let line = e.position().map_or(0, csv::Position::line);
    DataError::Row { path: path.to_owned(), line, problem: e.to_string() }
}
