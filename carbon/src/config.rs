//! Sources as a config names them (`{ kind = "neso", region = 13 }`), checked
//! and built at start: a missing key, a secret that cannot be read or a zone
//! the provider cannot have is an error naming the key.

use crate::electricity_maps::{ElectricityMaps, Place};
use crate::energy_charts::EnergyCharts;
use crate::http::Http;
use crate::neso::Neso;
use crate::watttime::WattTime;
use crate::{Constant, File, Source};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One source of a zone.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// UK NESO: national (no `region`) or a region id 1–17.
    Neso {
        region: Option<u8>,
        base_url: Option<String>,
    },
    /// Energy-Charts: a country code (`de`, `fr`, …).
    EnergyCharts {
        country: String,
        base_url: Option<String>,
    },
    /// Electricity Maps: `zone` or `lat` and `lon`; the token from `token_file` or `token_env`.
    ElectricityMaps {
        zone: Option<String>,
        lat: Option<f64>,
        lon: Option<f64>,
        token_file: Option<PathBuf>,
        token_env: Option<String>,
        /// Ask for the forecast (paid plans); else the last 24 h held forward.
        forecast: Option<bool>,
        base_url: Option<String>,
    },
    /// WattTime: a region (`CAISO_NORTH`); the password from `password_file` or `password_env`.
    Watttime {
        region: String,
        username: String,
        password_file: Option<PathBuf>,
        password_env: Option<String>,
        base_url: Option<String>,
    },
    /// A carbon CSV, replayed by position in its span; a forecast reaches
    /// `horizon` ahead (default 2 days, as the providers' do).
    File {
        path: PathBuf,
        horizon: Option<String>,
    },
    Constant {
        value: f64,
    },
}

/// One grid zone: its sources, first preferred.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    pub sources: Vec<SourceConfig>,
    /// Ask each source this often instead of at its provider's own interval
    /// (NESO 30 min, Energy-Charts 30 min, Electricity Maps 1 h, WattTime 5 min).
    pub refresh: Option<String>,
}

/// A source asked at another interval than its provider's.
#[derive(Debug)]
struct Every {
    inner: Arc<dyn Source>,
    refresh: Duration,
}

impl Source for Every {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn fetch(&self, now: i64) -> crate::Fetch<'_> {
        self.inner.fetch(now)
    }

    fn refresh(&self) -> Duration {
        self.refresh
    }
}

/// A bad key: `carbon.zones.GB.sources[0].token_file = "…": why`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key} = {value}: {why}")]
pub struct BadKey {
    pub key: String,
    pub value: String,
    pub why: String,
}

fn bad(key: &str, field: &str, value: impl std::fmt::Debug, why: &str) -> BadKey {
    BadKey { key: format!("{key}.{field}"), value: format!("{value:?}"), why: why.into() }
}

/// Energy-Charts' `country` values (its API's list).
const ENERGY_CHARTS_COUNTRIES: &[&str] = &[
    "al", "am", "at", "az", "ba", "be", "bg", "by", "ch", "cy", "cz", "de", "dk", "ee", "es", "eu", "fi", "fr", "ge",
    "gr", "hr", "hu", "ie", "it", "lt", "lu", "lv", "md", "me", "mk", "mt", "nie", "nl", "no", "pl", "pt", "ro", "rs",
    "ru", "se", "si", "sk", "tr", "ua", "uk", "xk",
];

fn secret(key: &str, file: Option<&PathBuf>, env: Option<&String>, what: &str) -> Result<String, BadKey> {
    let s = match (file, env) {
        (Some(f), _) => std::fs::read_to_string(f)
            .map_err(|e| bad(key, &format!("{what}_file"), f.display().to_string(), &format!("cannot be read: {e}")))?,
        (None, Some(v)) => std::env::var(v)
            .map_err(|_| bad(key, &format!("{what}_env"), v, "is not set in the scheduler's environment"))?,
        (None, None) => {
            return Err(bad(
                key,
                &format!("{what}_file"),
                "(unset)",
                &format!("this source needs a {what}: set {what}_file or {what}_env"),
            ));
        }
    };
    let s = s.trim().to_owned();
    if s.is_empty() {
        return Err(bad(key, &format!("{what}_file"), "(empty)", &format!("the {what} is empty")));
    }
    Ok(s)
}

impl SourceConfig {
    /// Check it and build the source; `key` is where it sits in the config.
    pub fn build(&self, key: &str, timeout: Duration) -> Result<Arc<dyn Source>, BadKey> {
        let http = |provider: &'static str, zone: &str| {
            Http::new(provider, zone, timeout).map_err(|e| bad(key, "kind", provider, &e.to_string()))
        };
        let url = |u: &Option<String>, default: &str| u.clone().unwrap_or_else(|| default.to_owned());
        Ok(match self {
            SourceConfig::Neso { region, base_url } => {
                if let Some(r) = region.filter(|r| !(1..=17).contains(r)) {
                    return Err(bad(key, "region", r, "NESO's regions are 1 to 17 (omit it for Great Britain)"));
                }
                let zone = region.map_or_else(|| "GB".into(), |r| r.to_string());
                Arc::new(Neso {
                    http: http(crate::neso::PROVIDER, &zone)?,
                    base_url: url(base_url, crate::neso::BASE_URL),
                    region: *region,
                })
            }
            SourceConfig::EnergyCharts { country, base_url } => {
                let c = country.to_lowercase();
                if !ENERGY_CHARTS_COUNTRIES.contains(&c.as_str()) {
                    return Err(bad(
                        key,
                        "country",
                        country,
                        &format!("Energy-Charts knows: {}", ENERGY_CHARTS_COUNTRIES.join(", ")),
                    ));
                }
                Arc::new(EnergyCharts {
                    http: http(crate::energy_charts::PROVIDER, &c)?,
                    base_url: url(base_url, crate::energy_charts::BASE_URL),
                    country: c,
                })
            }
            SourceConfig::ElectricityMaps { zone, lat, lon, token_file, token_env, forecast, base_url } => {
                let place = match (zone, lat, lon) {
                    (Some(z), None, None) if !z.trim().is_empty() => Place::Zone(z.trim().to_owned()),
                    (None, Some(lat), Some(lon)) if (-90.0..=90.0).contains(lat) && (-180.0..=180.0).contains(lon) => {
                        Place::LatLon(*lat, *lon)
                    }
                    _ => {
                        return Err(bad(
                            key,
                            "zone",
                            zone,
                            "set zone (e.g. \"DE\"), or lat and lon (in range), not both",
                        ));
                    }
                };
                let token = secret(key, token_file.as_ref(), token_env.as_ref(), "token")?;
                let name = match &place {
                    Place::Zone(z) => z.clone(),
                    Place::LatLon(a, b) => format!("{a},{b}"),
                };
                Arc::new(ElectricityMaps {
                    http: http(crate::electricity_maps::PROVIDER, &name)?,
                    base_url: url(base_url, crate::electricity_maps::BASE_URL),
                    place,
                    token,
                    forecast: forecast.unwrap_or(true),
                    no_forecast_until: std::sync::Mutex::new(0),
                })
            }
            SourceConfig::Watttime { region, username, password_file, password_env, base_url } => {
                if region.trim().is_empty() {
                    return Err(bad(key, "region", region, "name a WattTime region, e.g. CAISO_NORTH"));
                }
                if username.trim().is_empty() {
                    return Err(bad(key, "username", username, "must be set"));
                }
                let password = secret(key, password_file.as_ref(), password_env.as_ref(), "password")?;
                Arc::new(WattTime {
                    http: http(crate::watttime::PROVIDER, region)?,
                    base_url: url(base_url, crate::watttime::BASE_URL),
                    region: region.clone(),
                    username: username.clone(),
                    password,
                    token: tokio::sync::Mutex::new(None),
                })
            }
            SourceConfig::File { path, horizon } => {
                let file =
                    File::load(path).map_err(|e| bad(key, "path", path.display().to_string(), &e.to_string()))?;
                let Some(h) = horizon else { return Ok(Arc::new(file)) };
                match greenfill_core::time::parse_duration(h) {
                    #[allow(clippy::cast_possible_truncation, reason = "a horizon in seconds")]
                    Some(secs) if secs >= 3600.0 => Arc::new(file.reaching(secs as i64)),
                    _ => return Err(bad(key, "horizon", h, "need a duration of 1h or more (e.g. 48h, 7d)")),
                }
            }
            SourceConfig::Constant { value } => {
                if !(value.is_finite() && *value >= 0.0) {
                    return Err(bad(key, "value", value, "intensities must be finite and >= 0 (g CO2e/kWh)"));
                }
                Arc::new(Constant { g_per_kwh: *value })
            }
        })
    }
}

impl ZoneConfig {
    /// Build every source; every bad key is reported.
    pub fn build(&self, key: &str, timeout: Duration) -> Result<Vec<Arc<dyn Source>>, Vec<BadKey>> {
        let mut ok = Vec::new();
        let mut errors = Vec::new();
        if self.sources.is_empty() {
            errors.push(BadKey {
                key: format!("{key}.sources"),
                value: "[]".into(),
                why: "name one source or more".into(),
            });
        }
        let refresh = match self.refresh.as_deref().map(|r| (r, greenfill_core::time::parse_duration(r))) {
            None => None,
            Some((_, Some(s))) if s >= 1.0 => Some(Duration::from_secs_f64(s)),
            Some((r, _)) => {
                errors.push(bad(key, "refresh", r, "need a duration of 1s or more (e.g. 5m)"));
                None
            }
        };
        for (i, s) in self.sources.iter().enumerate() {
            match s.build(&format!("{key}.sources[{i}]"), timeout) {
                Ok(s) => ok.push(match refresh {
                    Some(refresh) => Arc::new(Every { inner: s, refresh }),
                    None => s,
                }),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() { Ok(ok) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml_src: &str) -> Result<Vec<Arc<dyn Source>>, Vec<BadKey>> {
        let z: ZoneConfig = toml::from_str(toml_src).unwrap();
        z.build("carbon.zones.GB", Duration::from_secs(5))
    }

    #[test]
    fn bad_sources_are_refused_naming_the_key() {
        let errors = build(
            r#"sources = [
                { kind = "neso", region = 40 },
                { kind = "electricity-maps", zone = "DE" },
                { kind = "watttime", region = "CAISO_NORTH", username = "u", password_env = "GREENFILL_NO_SUCH_VAR" },
                { kind = "energy-charts", country = "atlantis" },
                { kind = "constant", value = -3.0 },
            ]"#,
        )
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 5, "{text:#?}");
        assert!(text[0].starts_with("carbon.zones.GB.sources[0].region = 40: NESO's regions are 1 to 17"), "{text:#?}");
        assert!(text[1].starts_with("carbon.zones.GB.sources[1].token_file = \"(unset)\": this source needs a token"));
        assert!(text[2].starts_with("carbon.zones.GB.sources[2].password_env = \"GREENFILL_NO_SUCH_VAR\": is not set"));
        assert!(text[3].starts_with("carbon.zones.GB.sources[3].country = \"atlantis\": Energy-Charts knows: al,"));
        assert!(text[4].starts_with("carbon.zones.GB.sources[4].value = -3.0"));
    }

    #[tokio::test]
    async fn a_file_forecast_reaches_two_days_or_its_horizon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ci.csv");
        let rows: String = (0..24 * 30).map(|h| format!("{},{}\n", 1_640_995_200 + h * 3600, 100 + h % 24)).collect();
        std::fs::write(&path, format!("timestamp,carbon_intensity\n{rows}")).unwrap();
        let p = path.display();
        let now = 1_640_995_200 + 86_400;
        for (horizon, reach) in [("", 2 * 86_400), (", horizon = \"7d\"", 7 * 86_400)] {
            let sources = build(&format!("sources = [{{ kind = \"file\", path = \"{p}\"{horizon} }}]")).unwrap();
            let f = sources[0].fetch(now).await.unwrap();
            assert!(f.covers_until() >= now + reach, "{horizon:?}: {} < {}", f.covers_until(), now + reach);
            assert!(f.covers_until() <= now + reach + 3600, "{horizon:?}");
        }
        let text: Vec<String> = build(&format!("sources = [{{ kind = \"file\", path = \"{p}\", horizon = \"5m\" }}]"))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            text[0].starts_with("carbon.zones.GB.sources[0].horizon = \"5m\": need a duration of 1h or more"),
            "{text:?}"
        );
    }

    #[test]
    fn an_unknown_kind_or_key_is_a_parse_error_naming_it() {
        let e = toml::from_str::<ZoneConfig>(r#"sources = [{ kind = "carbonara" }]"#).unwrap_err().to_string();
        assert!(e.contains("unknown variant `carbonara`") && e.contains("neso"), "{e}");
        let e = toml::from_str::<ZoneConfig>(r#"sources = [{ kind = "neso", regoin = 3 }]"#).unwrap_err().to_string();
        assert!(e.contains("unknown field `regoin`"), "{e}");
    }

    #[test]
    fn good_sources_are_named_by_provider_and_zone() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "secret\n").unwrap();
        let src = format!(
            r#"sources = [
                {{ kind = "neso", region = 13 }},
                {{ kind = "neso" }},
                {{ kind = "energy-charts", country = "DE" }},
                {{ kind = "electricity-maps", lat = 48.1, lon = 11.6, token_file = "{}" }},
                {{ kind = "constant", value = 200 }},
            ]"#,
            token.display()
        );
        let names: Vec<String> = build(&src).unwrap().iter().map(|s| s.name()).collect();
        assert_eq!(names, ["neso:13", "neso:GB", "energy-charts:de", "electricity-maps:48.1,11.6", "constant:200"]);
    }
}
