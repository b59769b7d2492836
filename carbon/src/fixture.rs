//! A local HTTP server that answers as the providers do, for tests: replies
//! are set per path prefix (the longest matching prefix wins), every request
//! is recorded, and the server can be stopped mid-test. Bodies in each
//! provider's documented format are in [`bodies`]. Loopback only.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the server answers on a path.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// Wait this long first (a timeout test).
    pub delay: Duration,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    #[must_use]
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.into(), value.into()));
        self
    }

    #[must_use]
    pub fn delayed(mut self, d: Duration) -> Reply {
        self.delay = d;
        self
    }
}

/// A request the server saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub path: String,
    pub query: String,
    /// Lower-case names.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Routes {
    replies: Vec<(String, Reply)>,
    seen: Vec<Seen>,
}

/// The server; dropped or [`Fixture::stop`]ped, it stops listening.
#[derive(Debug)]
pub struct Fixture {
    pub addr: SocketAddr,
    routes: Arc<Mutex<Routes>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    /// Listen on a free loopback port (on the current tokio runtime).
    pub async fn start() -> std::io::Result<Fixture> {
        Self::start_on("127.0.0.1:0".parse().expect("literal"), Arc::default()).await
    }

    async fn start_on(addr: SocketAddr, routes: Arc<Mutex<Routes>>) -> std::io::Result<Fixture> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback(handle).with_state(routes.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Fixture { addr, routes, stop: Some(tx), task: Some(task) })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer requests whose path starts with `prefix` with `reply`.
    pub fn reply(&self, prefix: &str, reply: Reply) {
        let mut r = self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.replies.retain(|(p, _)| p != prefix);
        r.replies.push((prefix.to_owned(), reply));
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).seen.clone()
    }

    /// Stop listening (connections are refused from then on).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Listen again on the same port, with the same replies.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop().await;
        let again = Self::start_on(self.addr, self.routes.clone()).await?;
        *self = again;
        Ok(())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn handle(State(routes): State<Arc<Mutex<Routes>>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let seen = Seen {
        path: path.clone(),
        query: req.uri().query().unwrap_or_default().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
    };
    let reply = {
        let mut r = routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        r.seen.push(seen);
        r.replies
            .iter()
            .filter(|(p, _)| path.starts_with(p.as_str()))
            .max_by_key(|(p, _)| p.len())
            .map(|(_, r)| r.clone())
    };
    let reply = reply.unwrap_or_else(|| Reply::json(404, r#"{"message":"no fixture for this path"}"#));
    tokio::time::sleep(reply.delay).await;
    let mut resp = Response::new(Body::from(reply.body));
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in reply.headers {
        if let (Ok(n), Ok(v)) = (HeaderName::try_from(n), HeaderValue::try_from(v)) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp
}

/// Bodies as each provider documents them. Times are Unix seconds; values in
/// the provider's own unit.
pub mod bodies {
    fn iso(t: i64, fmt: &str) -> String {
        chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().format(fmt).to_string()
    }

    /// NESO `/intensity/{from}/fw48h`: 30-min periods from `from`.
    pub fn neso(from: i64, forecast: &[f64]) -> String {
        let data: Vec<String> = forecast
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let t = from + 1800 * i64::try_from(i).unwrap_or(0);
                format!(
                    r#"{{"from":"{}","to":"{}","intensity":{{"forecast":{v},"actual":null,"index":"moderate"}}}}"#,
                    iso(t, "%Y-%m-%dT%H:%MZ"),
                    iso(t + 1800, "%Y-%m-%dT%H:%MZ")
                )
            })
            .collect();
        format!(r#"{{"data":[{}]}}"#, data.join(","))
    }

    /// NESO regional: `data` is an array of one region, as the service answers.
    pub fn neso_regional(region: u8, from: i64, forecast: &[f64]) -> String {
        let inner = neso(from, forecast);
        let periods = inner.trim_start_matches(r#"{"data":"#).trim_end_matches('}');
        format!(
            r#"{{"data":[{{"regionid":{region},"dnoregion":"UKPN London","shortname":"London","data":{periods}}}]}}"#
        )
    }

    /// Energy-Charts `/co2eq`: parallel arrays; `None` is JSON null.
    pub fn energy_charts(times: &[i64], co2eq: &[Option<f64>], forecast: &[Option<f64>]) -> String {
        let list = |v: &[Option<f64>]| {
            v.iter().map(|x| x.map_or("null".into(), |x| x.to_string())).collect::<Vec<_>>().join(",")
        };
        let t: Vec<String> = times.iter().map(ToString::to_string).collect();
        format!(
            r#"{{"unix_seconds":[{}],"co2eq":[{}],"co2eq_forecast":[{}],"deprecated":false}}"#,
            t.join(","),
            list(co2eq),
            list(forecast)
        )
    }

    /// Energy-Charts `/price?bzn=…`: parallel arrays, as the service answers.
    pub fn energy_charts_price(times: &[i64], price: &[Option<f64>], unit: &str) -> String {
        let p: Vec<String> = price.iter().map(|x| x.map_or("null".into(), |x| x.to_string())).collect();
        let t: Vec<String> = times.iter().map(ToString::to_string).collect();
        format!(
            r#"{{"license_info":"CC BY 4.0 (creativecommons.org/licenses/by/4.0) from Bundesnetzagentur | SMARD.de","unix_seconds":[{}],"price":[{}],"unit":"{unit}","deprecated":false}}"#,
            t.join(","),
            p.join(",")
        )
    }

    /// ENTSO-E A44: one `TimeSeries` with one `Period` from `start` at
    /// `resolution` (`PT60M`, `PT15M`), `positions` long, and the points
    /// given as (position, price): left-out positions repeat (curve A03).
    pub fn entsoe_a44(eic: &str, start: i64, resolution: &str, positions: i64, points: &[(i64, f64)]) -> String {
        let step = if resolution == "PT15M" { 900 } else { 3600 };
        let end = start + positions * step;
        let pts: String = points
            .iter()
            .map(|(pos, p)| format!("<Point><position>{pos}</position><price.amount>{p}</price.amount></Point>"))
            .collect();
        let interval =
            format!("<start>{}</start><end>{}</end>", iso(start, "%Y-%m-%dT%H:%MZ"), iso(end, "%Y-%m-%dT%H:%MZ"));
        format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<Publication_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3">
  <mRID>1f5b8a</mRID><revisionNumber>1</revisionNumber><type>A44</type>
  <sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450</sender_MarketParticipant.mRID>
  <period.timeInterval>{interval}</period.timeInterval>
  <TimeSeries>
    <mRID>1</mRID><auction.type>A01</auction.type><businessType>A62</businessType>
    <in_Domain.mRID codingScheme="A01">{eic}</in_Domain.mRID>
    <out_Domain.mRID codingScheme="A01">{eic}</out_Domain.mRID>
    <contract_MarketAgreement.type>A01</contract_MarketAgreement.type>
    <currency_Unit.name>EUR</currency_Unit.name>
    <price_Measure_Unit.name>MWH</price_Measure_Unit.name>
    <curveType>A03</curveType>
    <Period><timeInterval>{interval}</timeInterval><resolution>{resolution}</resolution>{pts}</Period>
  </TimeSeries>
</Publication_MarketDocument>"#
        )
    }

    /// ENTSO-E's answer when nothing matches (HTTP 200, an acknowledgement).
    pub fn entsoe_no_data() -> String {
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Acknowledgement_MarketDocument xmlns="urn:iec62325.351:tc57wg16:451-1:acknowledgementdocument:7:0">
  <mRID>5c1e</mRID><createdDateTime>2026-12-07T10:00:00Z</createdDateTime>
  <Reason><code>999</code><text>No matching data found for Data item Day-ahead Prices [12.1.D] (10YFR-RTE------C, 10YFR-RTE------C) and interval 2026-12-07T00:00:00.000Z/2026-12-08T00:00:00.000Z.</text></Reason>
</Acknowledgement_MarketDocument>"#
            .into()
    }

    fn em_value(zone: &str, t: i64, v: f64) -> String {
        format!(
            r#"{{"zone":"{zone}","carbonIntensity":{v},"datetime":"{}","updatedAt":"{}","emissionFactorType":"lifecycle","isEstimated":false}}"#,
            iso(t, "%Y-%m-%dT%H:%M:%S%.3fZ"),
            iso(t, "%Y-%m-%dT%H:%M:%S%.3fZ")
        )
    }

    /// Electricity Maps `/v3/carbon-intensity/history`: hourly from `from`.
    pub fn em_history(zone: &str, from: i64, values: &[f64]) -> String {
        let h: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| em_value(zone, from + 3600 * i64::try_from(i).unwrap_or(0), *v))
            .collect();
        format!(r#"{{"zone":"{zone}","history":[{}]}}"#, h.join(","))
    }

    /// Electricity Maps `/v3/carbon-intensity/forecast`: hourly from `from`.
    pub fn em_forecast(zone: &str, from: i64, values: &[f64], updated_at: i64) -> String {
        let f: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    r#"{{"carbonIntensity":{v},"datetime":"{}"}}"#,
                    iso(from + 3600 * i64::try_from(i).unwrap_or(0), "%Y-%m-%dT%H:%M:%S%.3fZ")
                )
            })
            .collect();
        format!(
            r#"{{"zone":"{zone}","forecast":[{}],"updatedAt":"{}"}}"#,
            f.join(","),
            iso(updated_at, "%Y-%m-%dT%H:%M:%S%.3fZ")
        )
    }

    /// WattTime `/login`.
    pub fn watttime_login(token: &str) -> String {
        format!(r#"{{"token":"{token}"}}"#)
    }

    /// WattTime `/v3/forecast`: 5-min points from `from` in lb/MWh (or `units`).
    pub fn watttime(region: &str, from: i64, values: &[f64], units: &str, generated_at: i64) -> String {
        let d: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    r#"{{"point_time":"{}","value":{v}}}"#,
                    iso(from + 300 * i64::try_from(i).unwrap_or(0), "%Y-%m-%dT%H:%M:%S+00:00")
                )
            })
            .collect();
        format!(
            r#"{{"data":[{}],"meta":{{"data_point_period_seconds":300,"region":"{region}","warnings":[],"signal_type":"co2_moer","model":{{"date":"2026-03-01","type":"binned_regression"}},"units":"{units}","generated_at_period_seconds":300,"generated_at":"{}"}}}}"#,
            d.join(","),
            iso(generated_at, "%Y-%m-%dT%H:%M:%S+00:00")
        )
    }
}
