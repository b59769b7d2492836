//! One way to ask a provider over HTTP: its status codes become
//! [`SourceError`]s the same way for every provider, with the provider's own
//! message, and `Retry-After` read as seconds or as an HTTP date.

use crate::SourceError;
use serde::de::DeserializeOwned;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
    pub(crate) provider: &'static str,
    pub(crate) zone: String,
    pub(crate) timeout: Duration,
}

impl Http {
    pub(crate) fn new(provider: &'static str, zone: &str, timeout: Duration) -> Result<Http, SourceError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("greenfill/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SourceError::Local { provider: provider.into(), detail: format!("HTTP client: {e}") })?;
        Ok(Http { client, provider, zone: zone.to_owned(), timeout })
    }

    /// Send and decode a 200's JSON body as `T`.
    pub(crate) async fn json<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, SourceError> {
        let body = self.send(req).await?;
        serde_json::from_slice(&body)
            .map_err(|e| SourceError::Malformed { provider: self.provider.into(), detail: e.to_string() })
    }

    /// Send; a status other than 2xx becomes its error.
    pub(crate) async fn send(&self, req: reqwest::RequestBuilder) -> Result<Vec<u8>, SourceError> {
        let provider = self.provider.to_owned();
        let resp = req.send().await.map_err(|e| self.transport(&e))?;
        let status = resp.status().as_u16();
        let retry_after =
            resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(retry_after);
        let url = strip_query(resp.url());
        let body = resp.bytes().await.map_err(|e| self.transport(&e))?.to_vec();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = message(&body);
        Err(match status {
            401 => SourceError::Unauthorized { provider, status, message },
            403 => SourceError::Forbidden { provider, message },
            400 | 404 | 422 => SourceError::UnknownZone { provider, zone: self.zone.clone(), message },
            429 => SourceError::RateLimited { provider, retry_after, message },
            _ => SourceError::Server { provider, status, message: format!("{message} (at {url})") },
        })
    }

    fn transport(&self, e: &reqwest::Error) -> SourceError {
        let url = e.url().map(strip_query).unwrap_or_default();
        if e.is_timeout() {
            return SourceError::Timeout { provider: self.provider.into(), url, timeout: self.timeout };
        }
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        SourceError::Transport { provider: self.provider.into(), url, detail }
    }
}

/// The URL without its query (a query may hold a location; never a secret, but short is kinder).
fn strip_query(u: &reqwest::Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    u.to_string()
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT`.
pub(crate) fn retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO))
}

/// The provider's own words: `message`, `error` (a string or `{message}`) or
/// `detail` of a JSON body, else the body's first 200 characters.
fn message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for key in ["message", "error", "detail", "msg"] {
            match v.get(key) {
                Some(serde_json::Value::String(s)) => return s.clone(),
                Some(obj @ serde_json::Value::Object(_)) => {
                    if let Some(serde_json::Value::String(s)) = obj.get("message") {
                        return s.clone();
                    }
                }
                _ => {}
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() { "(no message)".into() } else { text.chars().take(200).collect() }
}

/// RFC 3339 (`2026-12-02T08:00:00.000Z`, `…+00:00`) or NESO's minutes-only
/// `2026-12-02T08:00Z`, as Unix seconds.
pub(crate) fn parse_time(provider: &str, s: &str) -> Result<i64, SourceError> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp());
    }
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%MZ")
        .map(|t| t.and_utc().timestamp())
        .map_err(|e| SourceError::Malformed { provider: provider.into(), detail: format!("time {s:?}: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        assert_eq!(retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a date past is now");
        assert_eq!(retry_after("soon"), None);
    }

    #[test]
    fn the_providers_message_is_found_where_each_puts_it() {
        assert_eq!(message(br#"{"error":{"code":"400 Bad Request","message":"Invalid region"}}"#), "Invalid region");
        assert_eq!(message(br#"{"detail":"Not Found"}"#), "Not Found");
        assert_eq!(message(br#"{"message":"Unauthorized"}"#), "Unauthorized");
        assert_eq!(message(b"<html>bad gateway</html>"), "<html>bad gateway</html>");
        assert_eq!(message(b""), "(no message)");
    }

    #[test]
    fn times_in_each_providers_format() {
        assert_eq!(parse_time("neso", "2026-12-02T08:00Z").unwrap(), 1_796_198_400);
        assert_eq!(parse_time("em", "2026-12-02T08:00:00.000Z").unwrap(), 1_796_198_400);
        assert_eq!(parse_time("wt", "2026-12-02T08:00:00+00:00").unwrap(), 1_796_198_400);
        assert!(parse_time("wt", "yesterday").unwrap_err().to_string().contains("\"yesterday\""));
    }
}
