//! Each day-ahead price provider against a local server answering in its
//! documented format: units on a known value, days of 23 and 25 hours (the
//! clocks changing in the bidding zone), negative prices kept, left-out
//! positions, and every error. No test reaches the internet.

use greenfill_carbon::fixture::{Fixture, Reply, bodies};
use greenfill_carbon::price::{ConstantPrice, EnergyChartsPrice, EntsoePrice, FilePrice, PriceSource};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_millis(800);
/// 2024-03-30T23:00:00Z: midnight in Berlin on the day the clocks go forward.
const SPRING: i64 = 1_711_839_600;
/// 2024-10-26T22:00:00Z: midnight in Berlin on the day the clocks go back.
const AUTUMN: i64 = 1_729_980_000;

/// Every error a source can meet on `path`, each named by kind and carrying
/// the provider's words.
async fn errors_of(fx: &Fixture, src: &dyn PriceSource, path: &str, malformed: &str) {
    let cases: [(Reply, &str, &str); 5] = [
        (Reply::json(401, "Unauthorized"), "unauthorized", "Unauthorized"),
        (
            Reply::json(429, r#"{"message":"slow down"}"#).header("retry-after", "60"),
            "rate_limited",
            "retry after 60 s",
        ),
        (Reply::json(503, "<html>upstream down</html>"), "server", "upstream down"),
        (Reply::json(200, malformed), "malformed", "not in the documented format"),
        (Reply::json(200, "{}").delayed(TIMEOUT * 3), "timeout", "no answer from http://127.0.0.1"),
    ];
    for (reply, kind, words) in cases {
        fx.reply(path, reply.clone());
        let e = src.fetch(SPRING, SPRING + 86_400).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{}: {reply:?} gave {e}", src.name());
        assert!(e.to_string().contains(words), "{kind}: {e}");
    }
}

#[tokio::test]
async fn energy_charts_prices_in_eur_per_mwh_over_a_23_hour_day_with_negatives_and_gaps() {
    let fx = Fixture::start().await.unwrap();
    // The local day of 2024-03-31 has 23 hours: 23 hourly products.
    let times: Vec<i64> = (0..23).map(|h| SPRING + 3600 * h).collect();
    let mut prices: Vec<Option<f64>> = (0..23).map(|h| Some(80.0 - 5.0 * f64::from(h))).collect();
    prices[5] = None;
    fx.reply("/price", Reply::json(200, bodies::energy_charts_price(&times, &prices, "EUR / MWh")));
    let src = EnergyChartsPrice::new(&fx.url(), "DE-LU", TIMEOUT).unwrap();
    let p = src.fetch(SPRING, SPRING + 23 * 3600).await.unwrap();
    assert_eq!((p.currency.as_str(), p.step_s, p.points.len()), ("EUR", 3600, 22), "a null is a gap");
    assert_eq!(p.points[0].per_mwh, 80.0);
    assert_eq!(p.points.last().map(|x| (x.at, x.per_mwh)), Some((SPRING + 22 * 3600, -30.0)), "negative kept");
    assert_eq!(fx.seen()[0].query, "bzn=DE-LU&start=2024-03-30T23%3A00Z&end=2024-03-31T22%3A00Z");

    // A view in another unit is converted: 0.1 EUR/kWh is 100 EUR/MWh.
    fx.reply("/price", Reply::json(200, bodies::energy_charts_price(&times[..1], &[Some(0.1)], "EUR / kWh")));
    assert!((src.fetch(SPRING, SPRING + 3600).await.unwrap().points[0].per_mwh - 100.0).abs() < 1e-9);
    fx.reply("/price", Reply::json(200, bodies::energy_charts_price(&times[..1], &[Some(1.0)], "EUR / GJ")));
    let e = src.fetch(SPRING, SPRING + 3600).await.unwrap_err().to_string();
    assert!(e.contains("\"EUR / GJ\""), "{e}");
    fx.reply("/price", Reply::json(200, r#"{"unix_seconds":[1,2],"price":[1],"unit":"EUR / MWh"}"#));
    let e = src.fetch(SPRING, SPRING + 3600).await.unwrap_err().to_string();
    assert!(e.contains("2 times but 1 prices"), "{e}");
    fx.reply("/price", Reply::json(200, bodies::energy_charts_price(&times[..2], &[None, None], "EUR / MWh")));
    let e = src.fetch(SPRING, SPRING + 3600).await.unwrap_err();
    assert_eq!(e.kind(), "no_prices", "{e}");
    fx.reply("/price", Reply::json(404, r#"{"detail":"Bidding zone XX not found"}"#));
    let e = src.fetch(SPRING, SPRING + 3600).await.unwrap_err();
    assert_eq!(e.kind(), "unknown_zone");
    assert!(e.to_string().contains("Bidding zone XX not found"), "{e}");
    errors_of(&fx, &src, "/price", r#"{"unix_seconds": ["#).await;
}

#[tokio::test]
async fn entsoe_a44_fills_left_out_positions_and_counts_25_hours_on_the_long_day() {
    let fx = Fixture::start().await.unwrap();
    // 25 hourly positions; 2 to 4 are left out (they repeat position 1's
    // price), and one price is negative.
    let points: Vec<(i64, f64)> =
        [(1, 55.5), (5, 60.0), (6, -3.25)].into_iter().chain((7..=25).map(|p| (p, 40.0))).collect();
    fx.reply("/api", Reply::json(200, bodies::entsoe_a44("10Y1001A1001A82H", AUTUMN, "PT60M", 25, &points)));
    let src = EntsoePrice::new(&format!("{}/api", fx.url()), "DE-LU", "s3cret-token", TIMEOUT).unwrap();
    let p = src.fetch(AUTUMN, AUTUMN + 25 * 3600).await.unwrap();
    assert_eq!((p.currency.as_str(), p.step_s, p.points.len()), ("EUR", 3600, 25));
    let v: Vec<f64> = p.points.iter().take(7).map(|x| x.per_mwh).collect();
    assert_eq!(v, [55.5, 55.5, 55.5, 55.5, 60.0, -3.25, 40.0]);
    assert_eq!(p.points[24].at, AUTUMN + 24 * 3600);
    let q = &fx.seen()[0].query;
    assert!(
        q.contains("documentType=A44")
            && q.contains("in_Domain=10Y1001A1001A82H")
            && q.contains("out_Domain=10Y1001A1001A82H")
            && q.contains("periodStart=202410262200")
            && q.contains("periodEnd=202410272300")
            && q.contains("securityToken=s3cret-token"),
        "{q}"
    );

    // 15-minute products (the European market since 2025-10-01): 23 h = 92.
    let quarter: Vec<(i64, f64)> = (1..=92).map(|p| (p, 10.0)).collect();
    fx.reply("/api", Reply::json(200, bodies::entsoe_a44("10YFR-RTE------C", SPRING, "PT15M", 92, &quarter)));
    let fr = EntsoePrice::new(&format!("{}/api", fx.url()), "FR", "t", TIMEOUT).unwrap();
    let p = fr.fetch(SPRING, SPRING + 23 * 3600).await.unwrap();
    assert_eq!((p.step_s, p.points.len()), (900, 92));

    // No data: the acknowledgement's reason is the error.
    fx.reply("/api", Reply::json(200, bodies::entsoe_no_data()));
    let e = fr.fetch(SPRING, SPRING + 3600).await.unwrap_err();
    assert_eq!(e.kind(), "no_prices");
    assert!(e.to_string().contains("No matching data found for Data item Day-ahead Prices"), "{e}");
    fx.reply(
        "/api",
        Reply::json(200, "<Publication_MarketDocument><TimeSeries><Period/></TimeSeries></Publication_MarketDocument>"),
    );
    let e = fr.fetch(SPRING, SPRING + 3600).await.unwrap_err().to_string();
    assert!(e.contains("a Period without timeInterval"), "{e}");
    // The token never shows in an error.
    for path_errors in [Reply::json(503, "bad gateway"), Reply::json(401, "Unauthorized")] {
        fx.reply("/api", path_errors);
        let e = src.fetch(AUTUMN, AUTUMN + 3600).await.unwrap_err().to_string();
        assert!(!e.contains("s3cret-token"), "{e}");
    }
    errors_of(&fx, &src, "/api", "<Publication_MarketDocument><oops").await;
}

#[tokio::test]
async fn a_file_replays_by_position_and_a_constant_covers_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.csv");
    std::fs::write(&path, "time,price\n2024-01-01T00:00:00Z,10\n2024-01-01T01:00:00Z,-2\n2024-01-01T02:00:00Z,30\n")
        .unwrap();
    let f = FilePrice::load(&path, "EUR").unwrap();
    // 2025-01-01T01:00Z is 8,785 hours on: 8,785 mod 3 = 1, the second row.
    let t = 1_735_693_200;
    let p = f.fetch(t, t + 3 * 3600).await.unwrap();
    let v: Vec<f64> = p.points.iter().map(|x| x.per_mwh).collect();
    assert_eq!(v, [-2.0, 30.0, 10.0]);
    let e = FilePrice::load(&dir.path().join("none.csv"), "EUR").unwrap_err().to_string();
    assert!(e.contains("none.csv"), "{e}");

    let c = ConstantPrice { per_mwh: 72.5, currency: "EUR".into() };
    let p = c.fetch(t + 60, t + 2 * 3600).await.unwrap();
    assert_eq!(p.points.len(), 2);
    assert!(p.points.iter().all(|x| x.per_mwh == 72.5));
}
