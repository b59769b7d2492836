//! Electricity Maps v3 (header `auth-token`): `GET /v3/carbon-intensity/forecast`
//! (not on the free tier), `…/history` (the last 24 h) and `…/latest`, by
//! `zone=` or `lat=&lon=`; g CO2e/kWh, average, lifecycle factors by default.
//! Where the plan refuses the forecast (403), the history is used and the
//! latest value held, and the forecast is not asked again for a day.

use crate::http::{Http, parse_time};
use crate::{Fetch, Forecast, Point, Provenance, SignalKind, Source, SourceError};
use serde::Deserialize;
use std::sync::Mutex;

pub(crate) const PROVIDER: &str = "electricity-maps";
pub(crate) const BASE_URL: &str = "https://api.electricitymap.org";

/// Where: a zone key, or a point the provider maps to its zone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Place {
    Zone(String),
    LatLon(f64, f64),
}

#[derive(Debug)]
pub(crate) struct ElectricityMaps {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    pub(crate) place: Place,
    pub(crate) token: String,
    pub(crate) forecast: bool,
    /// Until when the forecast is known to be refused (Unix seconds).
    pub(crate) no_forecast_until: Mutex<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Value {
    carbon_intensity: Option<f64>,
    datetime: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ForecastAnswer {
    zone: Option<String>,
    forecast: Vec<Value>,
    updated_at: Option<String>,
}

#[derive(Deserialize)]
struct HistoryAnswer {
    zone: Option<String>,
    history: Vec<Value>,
}

impl ElectricityMaps {
    fn zone(&self) -> String {
        match &self.place {
            Place::Zone(z) => z.clone(),
            Place::LatLon(lat, lon) => format!("{lat},{lon}"),
        }
    }

    fn request(&self, endpoint: &str) -> reqwest::RequestBuilder {
        let url = format!("{}/v3/carbon-intensity/{endpoint}", self.base_url.trim_end_matches('/'));
        let req = self.http.client.get(url).header("auth-token", &self.token);
        match &self.place {
            Place::Zone(z) => req.query(&[("zone", z.as_str())]),
            Place::LatLon(lat, lon) => req.query(&[("lat", lat.to_string()), ("lon", lon.to_string())]),
        }
    }

    fn points(values: Vec<Value>) -> Result<Vec<Point>, SourceError> {
        let mut points = Vec::with_capacity(values.len());
        for v in values {
            let at = parse_time(PROVIDER, &v.datetime)?;
            if let Some(g) = v.carbon_intensity {
                points.push(Point { at, g_per_kwh: g });
            }
        }
        Ok(points)
    }

    async fn get(&self, now: i64) -> Result<Forecast, SourceError> {
        let refused_until = *self.no_forecast_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let history: HistoryAnswer = self.http.json(self.request("history")).await?;
        let mut zone = history.zone.unwrap_or_else(|| self.zone());
        let mut points = Self::points(history.history)?;
        let mut generated_at = now;
        if self.forecast && now >= refused_until {
            match self.http.json::<ForecastAnswer>(self.request("forecast")).await {
                Ok(f) => {
                    zone = f.zone.unwrap_or(zone);
                    if let Some(u) = f.updated_at.as_deref() {
                        generated_at = parse_time(PROVIDER, u)?;
                    }
                    points.extend(Self::points(f.forecast)?);
                }
                Err(SourceError::Forbidden { message, .. }) => {
                    tracing::warn!(zone = %self.zone(), %message, "electricity-maps: the plan has no forecast; \
                         planning on the last 24 h held forward (asked again in a day)");
                    *self.no_forecast_until.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = now + 86_400;
                }
                Err(e) => return Err(e),
            }
        }
        let step = points.windows(2).map(|w| w[1].at - w[0].at).filter(|d| *d > 0).min().unwrap_or(3600);
        let provenance = Provenance { provider: PROVIDER.into(), zone, signal: SignalKind::Average, generated_at };
        Forecast::new(provenance, step, points)
    }
}

impl Source for ElectricityMaps {
    fn name(&self) -> String {
        format!("{PROVIDER}:{}", self.zone())
    }

    fn fetch(&self, now: i64) -> Fetch<'_> {
        Box::pin(self.get(now))
    }

    fn refresh(&self) -> std::time::Duration {
        std::time::Duration::from_secs(3600)
    }
}
