//! Energy-Charts (Fraunhofer ISE, no key): `GET /co2eq?country=de` →
//! `{unix_seconds: [...], co2eq: [...], co2eq_forecast: [...]}`, parallel
//! arrays, `null` where a value is missing; g CO2e/kWh, average. A measured
//! value wins over the forecast for the same time.

use crate::http::Http;
use crate::{Fetch, Forecast, Point, Provenance, SignalKind, Source, SourceError};
use serde::Deserialize;

pub(crate) const PROVIDER: &str = "energy-charts";
pub(crate) const BASE_URL: &str = "https://api.energy-charts.info";

#[derive(Debug, Clone)]
pub(crate) struct EnergyCharts {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    pub(crate) country: String,
}

#[derive(Deserialize)]
struct Answer {
    unix_seconds: Vec<i64>,
    #[serde(default)]
    co2eq: Vec<Option<f64>>,
    #[serde(default)]
    co2eq_forecast: Vec<Option<f64>>,
}

impl EnergyCharts {
    async fn get(&self, now: i64) -> Result<Forecast, SourceError> {
        let url = format!("{}/co2eq", self.base_url.trim_end_matches('/'));
        let req = self.http.client.get(url).query(&[("country", self.country.as_str())]);
        let a: Answer = self.http.json(req).await?;
        let malformed = |detail: String| SourceError::Malformed { provider: PROVIDER.into(), detail };
        let n = a.unix_seconds.len();
        if a.co2eq.len() > n || a.co2eq_forecast.len() > n {
            return Err(malformed(format!(
                "{} times but {} co2eq and {} co2eq_forecast values",
                n,
                a.co2eq.len(),
                a.co2eq_forecast.len()
            )));
        }
        let step = a.unix_seconds.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).min().unwrap_or(900);
        let points = a
            .unix_seconds
            .iter()
            .enumerate()
            .filter_map(|(i, &at)| {
                let v = a.co2eq.get(i).copied().flatten().or(a.co2eq_forecast.get(i).copied().flatten())?;
                Some(Point { at, g_per_kwh: v })
            })
            .collect();
        let provenance = Provenance {
            provider: PROVIDER.into(),
            zone: self.country.clone(),
            signal: SignalKind::Average,
            generated_at: now,
        };
        Forecast::new(provenance, step, points)
    }
}

impl Source for EnergyCharts {
    fn name(&self) -> String {
        format!("{PROVIDER}:{}", self.country)
    }

    fn fetch(&self, now: i64) -> Fetch<'_> {
        Box::pin(self.get(now))
    }
}
