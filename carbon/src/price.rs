//! Day-ahead electricity prices, per bidding zone, behind one trait as the
//! carbon signals are: Energy-Charts' `/price` (keyless), ENTSO-E
//! Transparency's day-ahead prices (document A44, a security token), a CSV
//! file and a constant. Every answer becomes [`Prices`]: currency per MWh,
//! the currency named, sorted by time; negative prices are kept (they are
//! real: hours of surplus wind and sun).

use crate::SourceError;
use crate::http::{Http, parse_time};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// One interval's price: from `at` for the answer's `step_s`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PricePoint {
    pub at: i64,
    pub per_mwh: f64,
}

/// A provider's prices for one zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prices {
    /// `energy-charts`, `entsoe`, `file`, `constant`.
    pub provider: String,
    /// The bidding zone as the provider names it (`DE-LU`, an EIC code, a path).
    pub zone: String,
    /// ISO 4217 (`EUR`), as the provider states it.
    pub currency: String,
    pub step_s: i64,
    pub points: Vec<PricePoint>,
}

impl Prices {
    /// Sort, drop values that are not finite and the second of two points at
    /// one time. Fails when nothing is left.
    pub fn new(
        provider: &str,
        zone: &str,
        currency: &str,
        step_s: i64,
        mut points: Vec<PricePoint>,
    ) -> Result<Prices, SourceError> {
        points.retain(|p| p.per_mwh.is_finite());
        points.sort_by_key(|p| p.at);
        points.dedup_by_key(|p| p.at);
        if points.is_empty() {
            return Err(SourceError::NoPrices {
                provider: provider.into(),
                zone: zone.into(),
                message: "the answer holds no price".into(),
            });
        }
        Ok(Prices {
            provider: provider.into(),
            zone: zone.into(),
            currency: currency.into(),
            step_s: step_s.max(1),
            points,
        })
    }

    /// The price in force at `t`: the point whose interval holds it; before
    /// the first point the first, after the last the last.
    pub fn at(&self, t: i64) -> f64 {
        let i = self.points.partition_point(|p| p.at <= t);
        self.points[i.saturating_sub(1)].per_mwh
    }

    /// Mean price per slot of `slot_s` from `start`, `slots` of them (each
    /// sampled every minute: products are 15 or 60 minutes long).
    pub fn slot_means(&self, start: i64, slot_s: i64, slots: usize) -> Vec<f64> {
        (0..slots)
            .map(|s| {
                let from = start + slot_s * i64::try_from(s).unwrap_or(i64::MAX / 2);
                let n = (slot_s / 60).max(1);
                #[allow(clippy::cast_precision_loss, reason = "minutes in a slot")]
                let mean = (0..n).map(|k| self.at(from + k * 60)).sum::<f64>() / n as f64;
                mean
            })
            .collect()
    }
}

/// A future a price source returns.
pub type PriceFetch<'a> = Pin<Box<dyn Future<Output = Result<Prices, SourceError>> + Send + 'a>>;

/// A day-ahead price provider for one bidding zone.
pub trait PriceSource: Send + Sync + std::fmt::Debug {
    /// `provider:zone`, for logs and output.
    fn name(&self) -> String;
    /// The prices for `[from, to)` (unix seconds), as far as the provider has them.
    fn fetch(&self, from: i64, to: i64) -> PriceFetch<'_>;
}

/// `EUR / MWh`, `EUR/kWh`, `ct/kWh`: the currency and the factor to per MWh.
fn unit(provider: &str, unit: &str) -> Result<(String, f64), SourceError> {
    let compact: String = unit.chars().filter(|c| !c.is_whitespace()).collect();
    let (currency, per) = compact.split_once('/').ok_or_else(|| SourceError::Malformed {
        provider: provider.into(),
        detail: format!("unit {unit:?}: expected CURRENCY / MWh"),
    })?;
    let factor = match per.to_ascii_lowercase().as_str() {
        "mwh" => 1.0,
        "kwh" => 1000.0,
        _ => {
            return Err(SourceError::Malformed {
                provider: provider.into(),
                detail: format!("unit {unit:?}: prices per {per} are not known (per MWh or kWh)"),
            });
        }
    };
    // Cents are a hundredth of the currency (Energy-Charts' retail views).
    match currency {
        "ct" | "cent" => Ok(("EUR".into(), factor / 100.0)),
        c => Ok((c.to_ascii_uppercase(), factor)),
    }
}

pub(crate) const ENERGY_CHARTS: &str = "energy-charts";

/// Energy-Charts (Fraunhofer ISE): `GET /price?bzn=DE-LU&start=&end=` →
/// `{unix_seconds: [...], price: [...], unit: "EUR / MWh"}`, `null` where a
/// value is missing. Bidding zones: DE-LU, FR, NL, BE, AT, CH, PL, DK1, …
#[derive(Debug, Clone)]
pub struct EnergyChartsPrice {
    http: Http,
    base_url: String,
    bzn: String,
}

#[derive(Deserialize)]
struct EnergyChartsAnswer {
    unix_seconds: Vec<i64>,
    price: Vec<Option<f64>>,
    unit: String,
}

impl EnergyChartsPrice {
    /// `base_url` = `https://api.energy-charts.info` unless a test's fixture.
    pub fn new(base_url: &str, bzn: &str, timeout: std::time::Duration) -> Result<Self, SourceError> {
        let http = Http::new(ENERGY_CHARTS, bzn, timeout)?;
        Ok(EnergyChartsPrice { http, base_url: base_url.trim_end_matches('/').to_owned(), bzn: bzn.to_owned() })
    }

    async fn get(&self, from: i64, to: i64) -> Result<Prices, SourceError> {
        let iso =
            |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().format("%Y-%m-%dT%H:%MZ").to_string();
        let req = self.http.client.get(format!("{}/price", self.base_url)).query(&[
            ("bzn", self.bzn.as_str()),
            ("start", &iso(from)),
            ("end", &iso(to)),
        ]);
        let a: EnergyChartsAnswer = self.http.json(req).await?;
        if a.price.len() != a.unix_seconds.len() {
            return Err(SourceError::Malformed {
                provider: ENERGY_CHARTS.into(),
                detail: format!("{} times but {} prices", a.unix_seconds.len(), a.price.len()),
            });
        }
        let (currency, factor) = unit(ENERGY_CHARTS, &a.unit)?;
        let step = a.unix_seconds.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).min().unwrap_or(3600);
        let points = a
            .unix_seconds
            .iter()
            .zip(&a.price)
            .filter_map(|(&at, p)| Some(PricePoint { at, per_mwh: (*p)? * factor }))
            .collect();
        Prices::new(ENERGY_CHARTS, &self.bzn, &currency, step, points)
    }
}

impl PriceSource for EnergyChartsPrice {
    fn name(&self) -> String {
        format!("{ENERGY_CHARTS}:{}", self.bzn)
    }

    fn fetch(&self, from: i64, to: i64) -> PriceFetch<'_> {
        Box::pin(self.get(from, to))
    }
}

pub(crate) const ENTSOE: &str = "entsoe";

/// Bidding zones by their usual names → ENTSO-E's EIC codes (any other zone
/// is taken as an EIC code itself).
const EIC: &[(&str, &str)] = &[
    ("DE-LU", "10Y1001A1001A82H"),
    ("FR", "10YFR-RTE------C"),
    ("NL", "10YNL----------L"),
    ("BE", "10YBE----------2"),
    ("AT", "10YAT-APG------L"),
    ("ES", "10YES-REE------0"),
    ("PL", "10YPL-AREA-----S"),
    ("DK1", "10YDK-1--------W"),
    ("DK2", "10YDK-2--------M"),
];

/// ENTSO-E Transparency: `GET /api?documentType=A44&in_Domain=EIC&out_Domain=EIC
/// &periodStart=yyyyMMddHHmm&periodEnd=…&securityToken=…` → a
/// `Publication_MarketDocument` of `TimeSeries` / `Period`s, each with a
/// `timeInterval`, a `resolution` (PT60M, PT15M) and `Point`s by
/// `position` (1 = the interval's start). With curve type A03 a position is
/// left out when its price repeats the one before. No data is an
/// `Acknowledgement_MarketDocument` with a `Reason`'s `text`.
#[derive(Debug, Clone)]
pub struct EntsoePrice {
    http: Http,
    base_url: String,
    zone: String,
    eic: String,
    token: String,
}

impl EntsoePrice {
    /// `base_url` = `https://web-api.tp.entsoe.eu/api` unless a test's fixture.
    pub fn new(base_url: &str, zone: &str, token: &str, timeout: std::time::Duration) -> Result<Self, SourceError> {
        let http = Http::new(ENTSOE, zone, timeout)?;
        let eic = EIC.iter().find(|(n, _)| n.eq_ignore_ascii_case(zone)).map_or(zone, |(_, c)| c).to_owned();
        Ok(EntsoePrice { http, base_url: base_url.to_owned(), zone: zone.to_owned(), eic, token: token.to_owned() })
    }

    async fn get(&self, from: i64, to: i64) -> Result<Prices, SourceError> {
        let stamp =
            |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap_or_default().format("%Y%m%d%H%M").to_string();
        let req = self.http.client.get(&self.base_url).query(&[
            ("documentType", "A44"),
            ("in_Domain", &self.eic),
            ("out_Domain", &self.eic),
            ("periodStart", &stamp(from)),
            ("periodEnd", &stamp(to)),
            ("securityToken", &self.token),
        ]);
        // The token rides in the query: keep it out of every message.
        let body = self.http.send(req).await.map_err(|e| redact(e, &self.token))?;
        let text = String::from_utf8_lossy(&body);
        parse_a44(&text, &self.zone)
    }
}

fn redact(e: SourceError, token: &str) -> SourceError {
    if token.is_empty() {
        return e;
    }
    match e {
        SourceError::Transport { provider, url, detail } => {
            SourceError::Transport { provider, url, detail: detail.replace(token, "<token>") }
        }
        SourceError::Server { provider, status, message } => {
            SourceError::Server { provider, status, message: message.replace(token, "<token>") }
        }
        other => other,
    }
}

fn child<'a, 'i>(n: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn text<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    child(n, name).and_then(|c| c.text()).map(str::trim)
}

/// `PT60M`, `PT15M`, `PT30M`, `P1D` → seconds.
fn resolution(r: &str) -> Option<i64> {
    let r = r.trim();
    if r == "P1D" {
        return Some(86_400);
    }
    let minutes = r.strip_prefix("PT")?;
    if let Some(h) = minutes.strip_suffix('H') {
        return h.parse::<i64>().ok().map(|h| h * 3600);
    }
    minutes.strip_suffix('M')?.parse::<i64>().ok().map(|m| m * 60)
}

/// An A44 document's prices, or the acknowledgement's reason as the error.
pub(crate) fn parse_a44(xml: &str, zone: &str) -> Result<Prices, SourceError> {
    let malformed = |detail: String| SourceError::Malformed { provider: ENTSOE.into(), detail };
    let doc = roxmltree::Document::parse(xml).map_err(|e| malformed(format!("not XML: {e}")))?;
    let root = doc.root_element();
    if root.tag_name().name() == "Acknowledgement_MarketDocument" {
        let reason = child(root, "Reason").and_then(|r| text(r, "text")).unwrap_or("(no reason given)");
        return Err(SourceError::NoPrices { provider: ENTSOE.into(), zone: zone.into(), message: reason.into() });
    }
    if root.tag_name().name() != "Publication_MarketDocument" {
        return Err(malformed(format!("a {} document, not Publication_MarketDocument", root.tag_name().name())));
    }
    let (mut points, mut step, mut currency) = (Vec::new(), i64::MAX, String::from("EUR"));
    for ts in root.children().filter(|c| c.has_tag_name("TimeSeries")) {
        if let Some(c) = text(ts, "currency_Unit.name") {
            c.clone_into(&mut currency);
        }
        if let Some(u) = text(ts, "price_Measure_Unit.name").filter(|u| !u.eq_ignore_ascii_case("MWH")) {
            return Err(malformed(format!("price_Measure_Unit.name = {u:?}: expected MWH")));
        }
        for period in ts.children().filter(|c| c.has_tag_name("Period")) {
            let interval =
                child(period, "timeInterval").ok_or_else(|| malformed("a Period without timeInterval".into()))?;
            let start = parse_time(ENTSOE, text(interval, "start").unwrap_or_default())?;
            let end = parse_time(ENTSOE, text(interval, "end").unwrap_or_default())?;
            let res = text(period, "resolution").unwrap_or_default();
            let res_s = resolution(res).ok_or_else(|| malformed(format!("resolution {res:?}")))?;
            step = step.min(res_s);
            points.extend(period_points(period, start, end, res_s, &malformed)?);
        }
    }
    Prices::new(ENTSOE, zone, &currency, if step == i64::MAX { 3600 } else { step }, points)
}

/// A period's points, every position from 1 to the interval's last: one the
/// document leaves out repeats the price before it (curve type A03).
fn period_points(
    period: roxmltree::Node<'_, '_>,
    start: i64,
    end: i64,
    res_s: i64,
    malformed: &dyn Fn(String) -> SourceError,
) -> Result<Vec<PricePoint>, SourceError> {
    let mut given = std::collections::BTreeMap::new();
    for p in period.children().filter(|c| c.has_tag_name("Point")) {
        let get = |name: &str| text(p, name);
        let pos: i64 = get("position")
            .and_then(|v| v.parse().ok())
            .filter(|v| *v >= 1)
            .ok_or_else(|| malformed(format!("a Point's position {:?}", get("position"))))?;
        let price: f64 = get("price.amount")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| malformed(format!("position {pos}: price.amount {:?}", get("price.amount"))))?;
        given.insert(pos, price);
    }
    let last = (end - start) / res_s;
    let mut out = Vec::new();
    let mut price = None;
    for pos in 1..=last {
        if let Some(&p) = given.get(&pos) {
            price = Some(p);
        }
        if let Some(p) = price {
            out.push(PricePoint { at: start + (pos - 1) * res_s, per_mwh: p });
        }
    }
    Ok(out)
}

impl PriceSource for EntsoePrice {
    fn name(&self) -> String {
        format!("{ENTSOE}:{}", self.zone)
    }

    fn fetch(&self, from: i64, to: i64) -> PriceFetch<'_> {
        Box::pin(self.get(from, to))
    }
}

/// One price for every hour.
#[derive(Debug, Clone)]
pub struct ConstantPrice {
    pub per_mwh: f64,
    pub currency: String,
}

impl PriceSource for ConstantPrice {
    fn name(&self) -> String {
        format!("constant:{}", self.per_mwh)
    }

    fn fetch(&self, from: i64, to: i64) -> PriceFetch<'_> {
        let start = from - from.rem_euclid(3600);
        let points =
            (0..((to - start) / 3600).max(1)).map(|h| PricePoint { at: start + h * 3600, per_mwh: self.per_mwh });
        Box::pin(std::future::ready(Prices::new("constant", "", &self.currency, 3600, points.collect())))
    }
}

/// A price CSV (`time,price`, or Energy-Charts' and ENTSO-E's exports),
/// replayed by position in its own span: last year's prices for this year.
#[derive(Debug, Clone)]
pub struct FilePrice {
    pub path: std::path::PathBuf,
    pub currency: String,
    series: greenfill_core::Series,
}

impl FilePrice {
    pub fn load(path: &std::path::Path, currency: &str) -> Result<FilePrice, SourceError> {
        let trace = greenfill_core::data::load_price(path, &greenfill_core::data::CarbonOptions::default())
            .map_err(|e| SourceError::Local { provider: "file".into(), detail: e.to_string() })?;
        Ok(FilePrice { path: path.to_owned(), currency: currency.to_owned(), series: trace.series })
    }

    fn window(&self, from: i64, to: i64) -> Result<Prices, SourceError> {
        let s = &self.series;
        let step = s.step.max(1);
        let span = step * i64::try_from(s.values.len()).unwrap_or(1).max(1);
        let first = from - from.rem_euclid(step);
        let points = (0..((to - first) / step).max(1))
            .map(|k| {
                let at = first + k * step;
                let i = usize::try_from((at - s.start).rem_euclid(span) / step).unwrap_or(0);
                PricePoint { at, per_mwh: s.values.get(i).copied().unwrap_or(f64::NAN) }
            })
            .collect();
        Prices::new("file", &self.path.display().to_string(), &self.currency, step, points)
    }
}

impl PriceSource for FilePrice {
    fn name(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn fetch(&self, from: i64, to: i64) -> PriceFetch<'_> {
        Box::pin(std::future::ready(self.window(from, to)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_become_currency_per_mwh() {
        assert_eq!(unit("t", "EUR / MWh").unwrap(), ("EUR".into(), 1.0));
        assert_eq!(unit("t", "EUR/kWh").unwrap(), ("EUR".into(), 1000.0));
        assert_eq!(unit("t", "ct / kWh").unwrap(), ("EUR".into(), 10.0));
        assert!(unit("t", "EUR / GJ").unwrap_err().to_string().contains("\"EUR / GJ\""));
        assert!(unit("t", "EUR").unwrap_err().to_string().contains("expected CURRENCY / MWh"));
    }

    #[test]
    fn resolutions_in_iso_8601() {
        assert_eq!(resolution("PT60M"), Some(3600));
        assert_eq!(resolution("PT15M"), Some(900));
        assert_eq!(resolution("PT1H"), Some(3600));
        assert_eq!(resolution("P1D"), Some(86_400));
        assert_eq!(resolution("hourly"), None);
    }

    #[test]
    fn a_price_holds_through_its_interval_and_slots_average_it() {
        let p = Prices::new(
            "t",
            "z",
            "EUR",
            3600,
            vec![PricePoint { at: 3600, per_mwh: -10.0 }, PricePoint { at: 0, per_mwh: 50.0 }],
        )
        .unwrap();
        assert_eq!(p.at(-5), 50.0);
        assert_eq!(p.at(3599), 50.0);
        assert_eq!(p.at(3600), -10.0, "negative prices are kept");
        assert_eq!(p.at(99_999), -10.0);
        assert_eq!(p.slot_means(1800, 3600, 1), vec![20.0]);
        let e = Prices::new("entsoe", "FR", "EUR", 3600, vec![PricePoint { at: 0, per_mwh: f64::NAN }]).unwrap_err();
        assert_eq!(e.to_string(), "entsoe: no day-ahead price for zone \"FR\": the answer holds no price");
    }
}
