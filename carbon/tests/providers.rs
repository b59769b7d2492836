//! Each provider against a local server answering in its documented format:
//! the happy path with its unit checked on a known value, and every error
//! (401, 403, 429 with Retry-After, 5xx, a timeout, malformed JSON, gaps).
//! Then a zone's fallbacks, cache and persistence. No test reaches the internet.

use greenfill_carbon::fixture::{Fixture, Reply, bodies};
use greenfill_carbon::{Fallback, SignalKind, Source, SourceConfig, SourceError, Zone};
use std::sync::Arc;
use std::time::Duration;

/// 2026-12-02T08:00:00Z.
const NOW: i64 = 1_796_198_400;
const TIMEOUT: Duration = Duration::from_millis(800);

fn source(toml_src: &str) -> Arc<dyn Source> {
    let c: SourceConfig = toml::from_str(toml_src).unwrap();
    c.build("carbon.zones.z.sources[0]", TIMEOUT).unwrap()
}

/// Every error path of one source, with the path its data comes from.
async fn errors_of(fx: &Fixture, src: &Arc<dyn Source>, path: &str) {
    let cases: [(Reply, &str); 6] = [
        (Reply::json(401, r#"{"message":"Invalid token"}"#), "unauthorized"),
        (Reply::json(403, r#"{"error":"Your plan does not include this zone"}"#), "forbidden"),
        (Reply::json(429, r#"{"message":"slow down"}"#).header("retry-after", "120"), "rate_limited"),
        (Reply::json(503, "<html>upstream down</html>"), "server"),
        (Reply::json(200, r#"{"data": [ {"from": "#), "malformed"),
        (Reply::json(200, "{}").delayed(TIMEOUT * 3), "timeout"),
    ];
    for (reply, kind) in cases {
        fx.reply(path, reply.clone());
        let e = src.fetch(NOW).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{}: {reply:?} gave {e}", src.name());
        let text = e.to_string();
        match kind {
            "unauthorized" => assert!(text.contains("Invalid token"), "{text}"),
            "forbidden" => assert!(text.contains("Your plan does not include this zone"), "{text}"),
            "rate_limited" => {
                assert_eq!(e.retry_after(), Some(Duration::from_secs(120)));
                assert!(text.contains("retry after 120 s") && text.contains("slow down"), "{text}");
            }
            "server" => assert!(text.contains("503") && text.contains("upstream down"), "{text}"),
            "timeout" => assert!(text.contains("no answer from http://127.0.0.1"), "{text}"),
            _ => assert!(text.contains("not in the documented format"), "{text}"),
        }
    }
}

#[tokio::test]
async fn neso_national_and_regional() {
    let fx = Fixture::start().await.unwrap();
    let from = NOW - 3600;
    fx.reply("/intensity/", Reply::json(200, bodies::neso(from, &[210.0, 200.0, 190.0, 120.0, 80.0])));
    let national = source(&format!(
        r#"kind = "neso"
base_url = "{}""#,
        fx.url()
    ));
    let f = national.fetch(NOW).await.unwrap();
    assert_eq!(f.provenance.provider, "neso");
    assert_eq!(f.provenance.zone, "GB");
    assert_eq!(f.provenance.signal, SignalKind::Average);
    assert_eq!((f.step_s, f.points.len(), f.points[0].at), (1800, 5, from));
    assert_eq!(f.at(NOW), 190.0, "g/kWh as given; the period holding 08:00");
    let seen = fx.seen();
    assert_eq!(seen[0].path, "/intensity/2026-12-02T07:00Z/fw48h", "an hour back, in NESO's minute format");

    // The regional endpoint's `data` is an array of one region (the docs show an object).
    fx.reply("/regional/", Reply::json(200, bodies::neso_regional(13, from, &[300.0, 310.0])));
    let london = source(&format!(
        r#"kind = "neso"
region = 13
base_url = "{}""#,
        fx.url()
    ));
    let f = london.fetch(NOW).await.unwrap();
    assert_eq!((f.provenance.zone.as_str(), f.points.len()), ("13", 2));
    assert_eq!(fx.seen().last().unwrap().path, "/regional/intensity/2026-12-02T07:00Z/fw48h/regionid/13");
    // And the documented object shape is read too.
    let mut object: serde_json::Value = serde_json::from_str(&bodies::neso_regional(13, from, &[300.0])).unwrap();
    object["data"] = object["data"][0].take();
    assert!(object["data"].is_object());
    fx.reply("/regional/", Reply::json(200, object.to_string()));
    assert_eq!(london.fetch(NOW).await.unwrap().points.len(), 1);

    // A forecast with gaps: periods missing are bridged, and counted.
    let mut gappy: serde_json::Value = serde_json::from_str(&bodies::neso(from, &[100.0, 0.0, 0.0, 400.0])).unwrap();
    let data = gappy["data"].as_array_mut().unwrap();
    data.remove(2);
    data.remove(1);
    fx.reply("/intensity/", Reply::json(200, gappy.to_string()));
    let f = national.fetch(NOW).await.unwrap();
    assert_eq!(f.gaps(), 2);
    assert!((f.at(from + 1800) - 200.0).abs() < 1e-9, "a third of the way from 100 to 400");

    errors_of(&fx, &national, "/intensity/").await;
    fx.reply(
        "/regional/",
        Reply::json(400, r#"{"error":{"code":"400 Bad Request","message":"Please enter a valid region id"}}"#),
    );
    let e = london.fetch(NOW).await.unwrap_err();
    assert!(e.is_config() && e.to_string().contains("Please enter a valid region id"), "{e}");
}

#[tokio::test]
async fn energy_charts_prefers_measured_values_and_reads_nulls() {
    let fx = Fixture::start().await.unwrap();
    let t: Vec<i64> = (0..6).map(|i| NOW - 1800 + 900 * i).collect();
    let body = bodies::energy_charts(
        &t,
        &[Some(400.0), Some(390.0), Some(380.0), None, None, None],
        &[Some(999.0), None, None, Some(300.0), None, Some(250.0)],
    );
    fx.reply("/co2eq", Reply::json(200, body));
    let src = source(&format!(
        r#"kind = "energy-charts"
country = "de"
base_url = "{}""#,
        fx.url()
    ));
    let f = src.fetch(NOW).await.unwrap();
    assert_eq!(f.step_s, 900);
    let values: Vec<f64> = f.points.iter().map(|p| p.g_per_kwh).collect();
    assert_eq!(values, [400.0, 390.0, 380.0, 300.0, 250.0], "measured wins; a slot with neither is a gap");
    assert_eq!(f.gaps(), 1);
    assert_eq!(fx.seen()[0].query, "country=de");

    fx.reply("/co2eq", Reply::json(200, r#"{"unix_seconds":[1,2],"co2eq":[1,2,3],"co2eq_forecast":[]}"#));
    let e = src.fetch(NOW).await.unwrap_err();
    assert!(e.to_string().contains("2 times but 3 co2eq"), "{e}");
    fx.reply("/co2eq", Reply::json(404, r#"{"detail":"Country xx not found"}"#));
    assert_eq!(src.fetch(NOW).await.unwrap_err().kind(), "unknown_zone");
    errors_of(&fx, &src, "/co2eq").await;
}

#[tokio::test]
async fn electricity_maps_sends_its_token_and_falls_back_to_history_without_a_forecast_plan() {
    let fx = Fixture::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "em-secret\n").unwrap();
    fx.reply("/v3/carbon-intensity/history", Reply::json(200, bodies::em_history("DE", NOW - 7200, &[420.0, 410.0])));
    fx.reply(
        "/v3/carbon-intensity/forecast",
        Reply::json(200, bodies::em_forecast("DE", NOW, &[300.0, 200.0], NOW - 60)),
    );
    let src = source(&format!(
        r#"kind = "electricity-maps"
zone = "DE"
token_file = "{}"
base_url = "{}""#,
        dir.path().join("token").display(),
        fx.url()
    ));
    let f = src.fetch(NOW).await.unwrap();
    let values: Vec<f64> = f.points.iter().map(|p| p.g_per_kwh).collect();
    assert_eq!(values, [420.0, 410.0, 300.0, 200.0]);
    assert_eq!((f.provenance.zone.as_str(), f.provenance.generated_at, f.step_s), ("DE", NOW - 60, 3600));
    for s in fx.seen() {
        assert_eq!(s.header("auth-token"), Some("em-secret"), "{s:?}");
        assert_eq!(s.query, "zone=DE");
    }

    // The free tier: the forecast is refused; the history serves, held forward.
    fx.reply(
        "/v3/carbon-intensity/forecast",
        Reply::json(403, r#"{"message":"Forecast is not included in your plan"}"#),
    );
    let f = src.fetch(NOW).await.unwrap();
    assert_eq!(f.points.len(), 2);
    assert_eq!(f.at(NOW + 7200), 410.0);
    let asked = fx.seen().len();
    src.fetch(NOW + 600).await.unwrap();
    assert_eq!(fx.seen().len(), asked + 1, "the refused forecast is not asked again the same day");

    errors_of(&fx, &src, "/v3/carbon-intensity/history").await;
    fx.reply(
        "/v3/carbon-intensity/history",
        Reply::json(400, r#"{"status":"error","message":"Zone 'XX' does not exist."}"#),
    );
    let e = src.fetch(NOW).await.unwrap_err();
    assert!(e.is_config() && e.to_string().contains("Zone 'XX' does not exist."), "{e}");
    assert!(!e.to_string().contains("em-secret"));
}

#[tokio::test]
async fn watttime_converts_pounds_per_mwh_and_logs_in_again_on_401() {
    let fx = Fixture::start().await.unwrap();
    fx.reply("/login", Reply::json(200, bodies::watttime_login("tok-1")));
    fx.reply(
        "/v3/forecast",
        Reply::json(200, bodies::watttime("CAISO_NORTH", NOW, &[1000.0, 500.0], "lbs_co2_per_mwh", NOW - 30)),
    );
    let src = {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2").unwrap();
        source(&format!(
            r#"kind = "watttime"
region = "CAISO_NORTH"
username = "greenfill"
password_file = "{}"
base_url = "{}""#,
            pw.display(),
            fx.url()
        ))
    };
    let f = src.fetch(NOW).await.unwrap();
    assert!((f.points[0].g_per_kwh - 453.592_37).abs() < 1e-9, "1,000 lb/MWh = 453.6 g/kWh: {}", f.points[0].g_per_kwh);
    assert_eq!((f.step_s, f.provenance.signal, f.provenance.generated_at), (300, SignalKind::Marginal, NOW - 30));
    let seen = fx.seen();
    assert_eq!(seen[0].path, "/login");
    assert_eq!(seen[0].header("authorization"), Some("Basic Z3JlZW5maWxsOmh1bnRlcjI="), "greenfill:hunter2");
    assert_eq!(seen[1].header("authorization"), Some("Bearer tok-1"));
    assert_eq!(seen[1].query, "region=CAISO_NORTH&signal_type=co2_moer");

    // The token is reused, then refused: one more login, and the call is made again.
    src.fetch(NOW + 60).await.unwrap();
    assert_eq!(fx.seen().iter().filter(|s| s.path == "/login").count(), 1, "the token is reused");
    fx.reply("/login", Reply::json(200, bodies::watttime_login("tok-2")));
    fx.reply("/v3/forecast", Reply::json(401, r#"{"error":"token expired"}"#));
    assert_eq!(src.fetch(NOW + 120).await.unwrap_err().kind(), "unauthorized");
    let seen = fx.seen();
    let tail: Vec<(&str, Option<&str>)> =
        seen[seen.len() - 3..].iter().map(|s| (s.path.as_str(), s.header("authorization"))).collect();
    assert_eq!(
        tail,
        [("/v3/forecast", Some("Bearer tok-1")), ("/login", tail[1].1), ("/v3/forecast", Some("Bearer tok-2"))]
    );

    // A percentile is never taken for an intensity.
    fx.reply("/v3/forecast", Reply::json(200, bodies::watttime("CAISO_NORTH", NOW, &[42.0], "percentile", NOW)));
    let e = src.fetch(NOW + 180).await.unwrap_err();
    assert!(e.to_string().contains("percentile"), "{e}");
    errors_of(&fx, &src, "/v3/forecast").await;
    fx.reply("/login", Reply::json(403, r#"{"error":"no access to region"}"#));
    fx.reply("/v3/forecast", Reply::json(401, "{}"));
    assert_eq!(src.fetch(NOW + 240).await.unwrap_err().kind(), "forbidden");
}

#[tokio::test]
async fn a_zone_keeps_a_failed_sources_last_answer_then_takes_the_next_then_the_constant() {
    let mut primary = Fixture::start().await.unwrap();
    let second = Fixture::start().await.unwrap();
    primary.reply("/intensity/", Reply::json(200, bodies::neso(NOW - 3600, &[100.0; 100])));
    second.reply(
        "/co2eq",
        Reply::json(200, bodies::energy_charts(&[NOW - 900, NOW], &[Some(333.0), None], &[None, Some(333.0)])),
    );
    let sources = vec![
        source(&format!("kind = \"neso\"\nbase_url = \"{}\"", primary.url())),
        source(&format!("kind = \"energy-charts\"\ncountry = \"de\"\nbase_url = \"{}\"", second.url())),
    ];
    let zone = Zone::new("GB", sources.clone(), Duration::from_secs(6 * 3600), 250.0, NOW);
    assert_eq!(zone.signal().fallback, Fallback::Constant, "nothing asked yet");

    let persisted = zone.refresh(NOW).await.expect("a new answer is persisted");
    let s = zone.signal();
    assert_eq!((s.source.as_str(), s.fallback, s.forecast.at(NOW)), ("neso:GB", Fallback::Live, 100.0));
    assert!(zone.refresh(NOW + 60).await.is_none(), "cached within the refresh interval");
    assert_eq!(primary.seen().len(), 1);

    // The primary goes away: its last answer serves while younger than 6 h.
    primary.stop().await;
    zone.refresh(NOW + 1900).await;
    let s = zone.signal();
    assert_eq!((s.source.as_str(), s.fallback, s.fetched_at), ("neso:GB", Fallback::Kept, NOW));
    assert!(second.seen().is_empty(), "the next source is not needed yet");
    // Then the next source.
    zone.refresh(NOW + 6 * 3600 + 1).await;
    let s = zone.signal();
    assert_eq!((s.source.as_str(), s.rank, s.fallback), ("energy-charts:de", 1, Fallback::Live));
    // Then, with both gone and stale, the constant.
    second.reply("/co2eq", Reply::json(500, "{}"));
    zone.refresh(NOW + 13 * 3600).await;
    let s = zone.signal();
    assert_eq!(
        (s.source.as_str(), s.rank, s.fallback, s.forecast.at(NOW)),
        ("constant:250", 2, Fallback::Constant, 250.0)
    );

    // A restart: the persisted answer serves at once, before any source is asked.
    let again = Zone::new("GB", sources, Duration::from_secs(6 * 3600), 250.0, NOW + 600);
    again.restore(persisted.clone(), NOW + 600);
    let s = again.signal();
    assert_eq!((s.source.as_str(), s.fallback, s.fetched_at), ("neso:GB", Fallback::Kept, NOW));
    // History is what was in force: the 100 g of the primary's answer.
    assert!((again.mean(NOW - 600, NOW) - 100.0).abs() < 1e-9);
    let json = serde_json::to_string(&persisted).unwrap();
    assert_eq!(serde_json::from_str::<greenfill_carbon::Persisted>(&json).unwrap(), persisted);
    primary.restart().await.unwrap();
}

#[tokio::test]
async fn a_rate_limited_source_is_not_asked_before_its_retry_after() {
    let fx = Fixture::start().await.unwrap();
    fx.reply("/intensity/", Reply::json(429, r#"{"message":"slow down"}"#).header("retry-after", "600"));
    let src = source(&format!("kind = \"neso\"\nbase_url = \"{}\"", fx.url()));
    let zone = Zone::new("GB", vec![src], Duration::from_secs(3600), 250.0, NOW);
    zone.refresh(NOW).await;
    for t in [NOW + 60, NOW + 300, NOW + 599] {
        zone.refresh(t).await;
    }
    assert_eq!(fx.seen().len(), 1, "asked once in the 600 s it asked for");
    fx.reply("/intensity/", Reply::json(200, bodies::neso(NOW, &[90.0; 10])));
    zone.refresh(NOW + 600).await;
    assert_eq!((fx.seen().len(), zone.signal().fallback), (2, Fallback::Live));
}

#[test]
fn the_unit_conversion_is_exact() {
    assert!((1000.0 * greenfill_carbon::LB_PER_MWH_TO_G_PER_KWH - 453.592_37).abs() < 1e-9);
    let e = SourceError::RateLimited { provider: "x".into(), retry_after: None, message: "m".into() };
    assert_eq!(e.to_string(), "x: 429 Too Many Requests: m");
}
