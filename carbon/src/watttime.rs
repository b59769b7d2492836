//! WattTime v3: `GET /login` with Basic auth gives a bearer token (valid
//! about 30 minutes; fetched again before then, and once more on a 401);
//! `GET /v3/forecast?region=&signal_type=co2_moer` gives 5-min marginal
//! emissions in **lb/MWh** (× 0.45359237 = g/kWh). `signal-index` is a 0–100
//! percentile, not an intensity, and is refused.

use crate::http::{Http, parse_time};
use crate::{Fetch, Forecast, LB_PER_MWH_TO_G_PER_KWH, Point, Provenance, SignalKind, Source, SourceError};
use serde::Deserialize;
use std::time::Duration;
use tokio::sync::Mutex;

pub(crate) const PROVIDER: &str = "watttime";
pub(crate) const BASE_URL: &str = "https://api.watttime.org";
/// Log in again this long after the last login (tokens last about 30 min).
const TOKEN_LIFE_S: i64 = 25 * 60;

#[derive(Debug)]
pub(crate) struct WattTime {
    pub(crate) http: Http,
    pub(crate) base_url: String,
    pub(crate) region: String,
    pub(crate) username: String,
    pub(crate) password: String,
    /// The bearer token and when it was obtained.
    pub(crate) token: Mutex<Option<(String, i64)>>,
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

#[derive(Deserialize)]
struct DataPoint {
    point_time: String,
    value: Option<f64>,
}

#[derive(Deserialize)]
struct Meta {
    units: String,
    generated_at: Option<String>,
    data_point_period_seconds: Option<i64>,
}

#[derive(Deserialize)]
struct Answer {
    data: Vec<DataPoint>,
    meta: Meta,
}

impl WattTime {
    async fn login(&self, now: i64) -> Result<String, SourceError> {
        let url = format!("{}/login", self.base_url.trim_end_matches('/'));
        let req = self.http.client.get(url).basic_auth(&self.username, Some(&self.password));
        let l: Login = self.http.json(req).await?;
        *self.token.lock().await = Some((l.token.clone(), now));
        Ok(l.token)
    }

    async fn token(&self, now: i64) -> Result<String, SourceError> {
        let cached = self.token.lock().await.clone();
        match cached {
            Some((t, at)) if now - at < TOKEN_LIFE_S => Ok(t),
            _ => self.login(now).await,
        }
    }

    async fn forecast(&self, token: &str) -> Result<Answer, SourceError> {
        let url = format!("{}/v3/forecast", self.base_url.trim_end_matches('/'));
        let req = self
            .http
            .client
            .get(url)
            .bearer_auth(token)
            .query(&[("region", self.region.as_str()), ("signal_type", "co2_moer")]);
        self.http.json(req).await
    }

    async fn get(&self, now: i64) -> Result<Forecast, SourceError> {
        let token = self.token(now).await?;
        let answer = match self.forecast(&token).await {
            // The token expired early: log in once more.
            Err(SourceError::Unauthorized { .. }) => self.forecast(&self.login(now).await?).await?,
            other => other?,
        };
        let factor = match answer.meta.units.as_str() {
            "lbs_co2_per_mwh" => LB_PER_MWH_TO_G_PER_KWH,
            "kg_co2_per_mwh" | "g_co2_per_kwh" => 1.0,
            "percentile" => {
                return Err(SourceError::Malformed {
                    provider: PROVIDER.into(),
                    detail: "units = percentile: a signal index is a rank, not an intensity; use co2_moer".into(),
                });
            }
            other => {
                return Err(SourceError::Malformed {
                    provider: PROVIDER.into(),
                    detail: format!("units = {other:?}: expected lbs_co2_per_mwh"),
                });
            }
        };
        let mut points = Vec::with_capacity(answer.data.len());
        for d in answer.data {
            let at = parse_time(PROVIDER, &d.point_time)?;
            if let Some(v) = d.value {
                points.push(Point { at, g_per_kwh: v * factor });
            }
        }
        let generated_at = match answer.meta.generated_at.as_deref() {
            Some(g) => parse_time(PROVIDER, g)?,
            None => now,
        };
        let provenance = Provenance {
            provider: PROVIDER.into(),
            zone: self.region.clone(),
            signal: SignalKind::Marginal,
            generated_at,
        };
        Forecast::new(provenance, answer.meta.data_point_period_seconds.unwrap_or(300), points)
    }
}

impl Source for WattTime {
    fn name(&self) -> String {
        format!("{PROVIDER}:{}", self.region)
    }

    fn fetch(&self, now: i64) -> Fetch<'_> {
        Box::pin(self.get(now))
    }

    fn refresh(&self) -> Duration {
        Duration::from_secs(5 * 60)
    }
}
