use thiserror::Error;

/// Why a trace could not be read. Every variant names the file; those about a
/// value also name the line (1-based, as an editor shows it) and the column.
#[derive(Debug, Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: column `{column}`: {problem}")]
    Field { path: String, line: u64, column: String, problem: String },
    #[error("{path}: no column `{column}` (columns found: {found})")]
    MissingColumn { path: String, column: String, found: String },
    #[error("{path}:{line}: {problem}")]
    Row { path: String, line: u64, problem: String },
    #[error("{path}: {problem}")]
    File { path: String, problem: String },
}
