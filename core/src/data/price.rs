//! Day-ahead electricity prices as a time series: `time,price` CSV, or the
//! columns Energy-Charts and ENTSO-E exports use. Currency per MWh, as every
//! European and US day-ahead market quotes it; negative prices are kept.

use super::carbon::{Signal, read_signal};
use super::{CarbonOptions, CarbonTrace, DataError, open};
use std::io::Read;
use std::path::Path;

/// Column names tried in order when none is given.
pub(crate) const PRICE_NAMES: &[&str] = &[
    "price",
    "Price",
    "price_eur_mwh",
    "Day-ahead Price [EUR/MWh]",
    "Day-ahead Price (EUR/MWh)",
    "Day-ahead auction (DE-LU) (EUR / MWh)",
    "lmp",
    "LMP",
    "value",
];

/// Prices per MWh as a regular series (the same shape as a carbon trace).
pub fn load_price(path: &Path, opts: &CarbonOptions) -> Result<CarbonTrace, DataError> {
    read_price(&path.display().to_string(), open(path)?, opts)
}

pub fn read_price(path: &str, input: impl Read, opts: &CarbonOptions) -> Result<CarbonTrace, DataError> {
    read_signal(path, input, opts, Signal::Price)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_prices_are_kept_and_gaps_filled() {
        let t = read_price(
            "p.csv",
            "time,price\n2024-05-12T10:00:00Z,-12.5\n2024-05-12T11:00:00Z,\n2024-05-12T12:00:00Z,7.5\n".as_bytes(),
            &CarbonOptions::default(),
        )
        .unwrap();
        assert_eq!(t.series.step, 3600);
        assert_eq!(t.series.values, vec![-12.5, -2.5, 7.5]);
        assert_eq!(t.series.filled, 1);
    }

    #[test]
    fn a_file_without_a_price_column_names_what_it_has() {
        let e = read_price("p.csv", "time,avg_CI\n2024-05-12T10:00:00Z,1\n".as_bytes(), &CarbonOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("price") && e.contains("time, avg_CI"), "{e}");
    }
}
