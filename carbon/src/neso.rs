//! UK NESO Carbon Intensity API (no key): `GET /intensity/{from}/fw48h`
//! (national, 30-min, `actual` where measured, else `forecast`) and
//! `GET /regional/intensity/{from}/fw48h/regionid/{id}` (regions 1–17,
//! forecast only). g CO2/kWh, average.

use crate::http::{Http, parse_time};
use crate::{Fetch, Forecast, Point, Provenance, SignalKind, Source, SourceError};
use serde::Deserialize;
use std::time::Duration;

pub(crate) const PROVIDER: &str = "neso";
pub(crate) const BASE_URL: &str = "https://api.carbonintensity.org.uk";

#[derive(Debug, Clone)]
pub(crate) struct Neso {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    /// `None` = national (Great Britain).
    pub(crate) region: Option<u8>,
}

#[derive(Deserialize)]
struct Intensity {
    forecast: Option<f64>,
    actual: Option<f64>,
}

#[derive(Deserialize)]
struct Period {
    from: String,
    intensity: Intensity,
}

#[derive(Deserialize)]
struct National {
    data: Vec<Period>,
}

#[derive(Deserialize)]
struct Region {
    data: Vec<Period>,
}

/// The published docs show the regional `data` as one object; the service
/// answers with an array of one. Both are read.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(Region),
    Many(Vec<Region>),
}

#[derive(Deserialize)]
struct Regional {
    data: OneOrMany,
}

impl Neso {
    fn zone(&self) -> String {
        self.region.map_or_else(|| "GB".into(), |r| r.to_string())
    }

    async fn get(&self, now: i64) -> Result<Forecast, SourceError> {
        let from = now - now.rem_euclid(1800) - 3600;
        let from = chrono::DateTime::from_timestamp(from, 0).unwrap_or_default().format("%Y-%m-%dT%H:%MZ");
        let base = self.base_url.trim_end_matches('/');
        let periods = match self.region {
            None => {
                let url = format!("{base}/intensity/{from}/fw48h");
                self.http.json::<National>(self.http.client.get(url).header("Accept", "application/json")).await?.data
            }
            Some(id) => {
                let url = format!("{base}/regional/intensity/{from}/fw48h/regionid/{id}");
                let r: Regional =
                    self.http.json(self.http.client.get(url).header("Accept", "application/json")).await?;
                match r.data {
                    OneOrMany::One(r) => r.data,
                    OneOrMany::Many(rs) => rs.into_iter().flat_map(|r| r.data).collect(),
                }
            }
        };
        let mut points = Vec::with_capacity(periods.len());
        for p in periods {
            let at = parse_time(PROVIDER, &p.from)?;
            if let Some(v) = p.intensity.actual.or(p.intensity.forecast) {
                points.push(Point { at, g_per_kwh: v });
            }
        }
        let provenance =
            Provenance { provider: PROVIDER.into(), zone: self.zone(), signal: SignalKind::Average, generated_at: now };
        Forecast::new(provenance, 1800, points)
    }
}

impl Source for Neso {
    fn name(&self) -> String {
        format!("{PROVIDER}:{}", self.zone())
    }

    fn fetch(&self, now: i64) -> Fetch<'_> {
        Box::pin(self.get(now))
    }

    fn refresh(&self) -> Duration {
        Duration::from_secs(30 * 60)
    }
}
