//! Live carbon end to end (the real scheduler, agent and CLI on loopback; the
//! provider is a local server answering in Energy-Charts' format): the
//! scheduler plans on the live signal, a job that may wait runs in the valley
//! and its ledger shows a positive saving, the ledgers sum to the /metrics
//! counters, both daemons' /metrics pass `promtool check metrics`, and with
//! the provider gone the plan carries on from the kept forecast (across a
//! restart), then the next source.

mod support;

use greenfill_carbon::fixture::{Fixture, Reply, bodies};
use serde_json::Value;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{Cluster, Setup};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return String::new() };
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default()
}

/// Sum of a metric's samples over its label sets.
fn sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `promtool check metrics` on a scrape: no lint problem.
fn promtool(what: &str, metrics: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        greenfill_core::testing::cannot_run(
            "promtool",
            "promtool is not installed (scripts/setup.sh installs prometheus)",
        );
        return;
    };
    child.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "promtool check metrics on the {what}'s /metrics:\n{text}");
}

const BURN: &str = "end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do :; done";

#[test]
fn jobs_planned_on_a_live_signal_get_ledgers_that_sum_to_the_metrics_and_planning_survives_the_provider() {
    if !support::root_or_skip("carbon_e2e") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut fx = rt.block_on(Fixture::start()).unwrap();
    // 10-second points: 500 g/kWh, with a valley of 40 from 30 s to 90 s from now.
    let t0 = chrono::Utc::now().timestamp();
    let times: Vec<i64> = (-6..120).map(|k| t0 + 10 * k).collect();
    let values: Vec<Option<f64>> =
        times.iter().map(|&t| Some(if (t0 + 30..t0 + 90).contains(&t) { 40.0 } else { 500.0 })).collect();
    fx.reply("/co2eq", Reply::json(200, bodies::energy_charts(&times, &values, &vec![None; times.len()])));

    let (metrics, agent_metrics) = (free_port(), free_port());
    let setup = Setup {
        top: format!("metrics_listen = \"127.0.0.1:{metrics}\""),
        slot: Some("10s".into()),
        tables: format!(
            "[carbon]\ncheck_every = \"1s\"\nstale_after = \"20s\"\ntimeout = \"1s\"\n\
             [carbon.zones.grid]\nrefresh = \"2s\"\nsources = [\n  {{ kind = \"energy-charts\", country = \"de\", base_url = \"{}\" }},\n  \
             {{ kind = \"constant\", value = 321 }},\n]\n",
            fx.url()
        ),
        agent_args: vec!["--metrics-listen".into(), format!("127.0.0.1:{agent_metrics}")],
        agent_env: Vec::new(),
    };
    let mut c = Cluster::configured("carbon", &setup);

    // One job that must run now, one that may wait for the valley.
    let now_job = c.submit(&["--cpu", "1", "--duration", "10s", "--deadline", "+25s", "--shell", "--", BURN]);
    let wait_job = c.submit(&["--cpu", "1", "--duration", "20s", "--deadline", "+5m", "--shell", "--", BURN]);
    let jobs = c.wait_until("both jobs to succeed", Duration::from_secs(150), |jobs| {
        jobs.iter().filter(|j| j["state"] == "succeeded").count() == 2 || jobs.iter().any(|j| j["state"] == "failed")
    });
    let by_id = |id: &str| jobs.iter().find(|j| j["id"] == id).unwrap().clone();
    let (a, b) = (by_id(&now_job), by_id(&wait_job));
    assert_eq!((a["state"].as_str(), b["state"].as_str()), (Some("succeeded"), Some("succeeded")), "{jobs:#?}");
    let (la, lb) = (&a["ledger"], &b["ledger"]);
    for l in [la, lb] {
        assert!(l["energy_kwh"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l["cpu_seconds"].as_f64().unwrap() > 1.0, "{l}");
        assert_eq!((l["zone"].as_str(), l["signal_source"].as_str()), (Some("grid"), Some("energy-charts:de")), "{l}");
        assert_eq!((l["energy_source"].as_str(), l["signal_kind"].as_str()), (Some("power-model"), Some("average")));
        let (e, i, g) = (
            l["energy_kwh"].as_f64().unwrap(),
            l["intensity_g_per_kwh"].as_f64().unwrap(),
            l["carbon_g"].as_f64().unwrap(),
        );
        assert!((e * i - g).abs() < 1e-9, "carbon = energy × intensity: {l}");
        let (cf, saved) = (l["counterfactual_carbon_g"].as_f64().unwrap(), l["saved_g"].as_f64().unwrap());
        assert!((cf - g - saved).abs() < 1e-9, "{l}");
        assert!((l["sci_g_per_job"].as_f64().unwrap() - g).abs() < 1e-9, "no embodied carbon configured: {l}");
    }
    assert_eq!(la["intensity_g_per_kwh"].as_f64(), Some(500.0), "the job due now ran at 500: {la}");
    assert!(la["saved_g"].as_f64().unwrap().abs() < 1e-9, "it ran when it was submitted: {la}");
    assert_eq!(lb["intensity_g_per_kwh"].as_f64(), Some(40.0), "the other waited for the valley: {lb}");
    assert_eq!(lb["counterfactual_intensity_g_per_kwh"].as_f64(), Some(500.0), "{lb}");
    assert!(lb["saved_g"].as_f64().unwrap() > 0.0, "{lb}");
    let shown = c.greenfill(&["job", &wait_job]).unwrap();
    assert!(shown.contains("so waiting saved") && shown.contains("at 40.0 g/kWh in zone grid"), "{shown}");

    // The counters are the sum of the ledgers.
    let m = scrape(metrics);
    let ledgers: [(&str, &str, f64); 3] = [
        ("greenfill_job_carbon_grams_total", "carbon_g", 1.0),
        ("greenfill_job_counterfactual_carbon_grams_total", "counterfactual_carbon_g", 1.0),
        ("greenfill_job_energy_joules_total", "energy_kwh", 3.6e6),
    ];
    for (metric, field, scale) in ledgers {
        let jobs_sum: f64 = [la, lb].iter().map(|l| l[field].as_f64().unwrap() * scale).sum();
        let counted = sum(&m, metric);
        assert!(
            jobs_sum > 0.0 && (jobs_sum - counted).abs() <= 1e-9 * jobs_sum,
            "{metric}: {counted} vs {jobs_sum}\n{m}"
        );
    }
    assert_eq!(sum(&m, "greenfill_jobs_accounted_total"), 2.0);
    assert!(m.contains(r#"greenfill_carbon_source{zone="grid",source="energy-charts:de",fallback="live"} 1"#), "{m}");
    promtool("scheduler", &m);
    promtool("agent", &scrape(agent_metrics));

    // The provider goes away: its last forecast is kept, and its age shows.
    rt.block_on(fx.stop());
    let kept = r#"greenfill_carbon_source{zone="grid",source="energy-charts:de",fallback="kept"} 1"#;
    wait_for("the kept forecast", Duration::from_secs(15), || {
        scrape(metrics).contains(kept).then_some(()).map(|()| String::new())
    });
    // A restart plans from the persisted forecast at once.
    c.scheduler.take();
    c.start_scheduler();
    let m = wait_for("the restarted scheduler's kept forecast", Duration::from_secs(15), || {
        let m = scrape(metrics);
        m.contains(kept).then_some(m)
    });
    // The ledger's totals come from the store: the restart kept them (issue 30).
    let totals: Value =
        serde_json::from_str(&c.greenfill(&["ledger", "--by", "zone,user", "--json"]).unwrap()).unwrap();
    let row = &totals[0];
    assert_eq!(
        (row["zone"].as_str(), row["user"].as_str(), row["jobs"].as_u64()),
        (Some("grid"), Some("admin"), Some(2)),
        "{totals}"
    );
    for field in ["carbon_g", "counterfactual_carbon_g", "saved_g", "energy_kwh"] {
        let want: f64 = [la, lb].iter().map(|l| l[field].as_f64().unwrap()).sum();
        let got = row[field].as_f64().unwrap();
        assert!((got - want).abs() <= 1e-9 * want.abs().max(1e-9), "{field}: {got} vs {want}");
    }
    let age = sum(&m, "greenfill_carbon_signal_age_seconds");
    assert!(age >= 1.0, "the kept forecast's age: {age}\n{m}");
    assert!(sum(&m, "greenfill_carbon_intensity_grams_per_kwh") >= 40.0, "{m}");
    // Past `stale_after`, the next source.
    let m = wait_for("the next source", Duration::from_secs(40), || {
        let m = scrape(metrics);
        m.contains(r#"greenfill_carbon_source{zone="grid",source="constant:321",fallback="live"} 1"#).then_some(m)
    });
    assert_eq!(sum(&m, "greenfill_carbon_intensity_grams_per_kwh"), 321.0, "{m}");
    let log = std::fs::read_to_string(c.dir.path().join("scheduler.log")).unwrap();
    let failures = log.lines().filter(|l| l.contains("carbon source failed")).count();
    assert!(
        (1..=3).contains(&failures),
        "the provider's error is logged once per scheduler run, not per try: {failures}\n{log}"
    );
    // Jobs still plan and run.
    let late = c.submit(&["--cpu", "0.5", "--duration", "10s", "--", "true"]);
    let jobs = c.wait_until("a job after the provider left", Duration::from_secs(60), |jobs| {
        jobs.iter().any(|j| j["id"] == late && j["state"] == "succeeded")
    });
    let l: &Value = &jobs.iter().find(|j| j["id"] == late).unwrap()["ledger"];
    assert_eq!(l["signal_source"].as_str(), Some("constant:321"), "{l}");
}

#[test]
fn carbon_fetch_shows_what_a_source_gives_or_why_not() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fx = rt.block_on(Fixture::start()).unwrap();
    let now = chrono::Utc::now().timestamp();
    let from = now - now.rem_euclid(300) - 600;
    fx.reply("/login", Reply::json(200, bodies::watttime_login("t")));
    fx.reply(
        "/v3/forecast",
        Reply::json(200, bodies::watttime("CAISO_NORTH", from, &[1000.0; 24], "lbs_co2_per_mwh", now)),
    );
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret-pw").unwrap();
    let fetch = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
            .args(["carbon", "fetch", "--source", "watttime", "--zone", "CAISO_NORTH", "--username", "me"])
            .arg("--password-file")
            .arg(&pw)
            .args(["--base-url", &fx.url()])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = fetch(&["--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["source"], "watttime:CAISO_NORTH");
    assert_eq!(v["provenance"]["signal"], "marginal");
    assert!((v["now_g_per_kwh"].as_f64().unwrap() - 453.592_37).abs() < 1e-6, "{v}");
    assert_eq!((v["step_s"].as_i64(), v["points"].as_u64(), v["gaps"].as_u64()), (Some(300), Some(24), Some(0)));
    let (code, out, _) = fetch(&[]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("watttime:CAISO_NORTH: 24 points every 300 s") && out.contains("now: 453.6 g CO2e/kWh"),
        "{out}"
    );

    fx.reply("/v3/forecast", Reply::json(403, r#"{"error":"region CAISO_NORTH is not in your plan"}"#));
    let (code, _, err) = fetch(&[]);
    assert_eq!(code, Some(1));
    assert!(err.contains("watttime: 403 Forbidden") && err.contains("region CAISO_NORTH is not in your plan"), "{err}");
    assert!(!err.contains("secret-pw"));
    let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["carbon", "fetch", "--source", "carbonara"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--source \"carbonara\": unknown; known: neso"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["carbon", "fetch", "--source", "electricity-maps", "--zone", "DE"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs --token-file"));
}

/// A scheduler told to weigh the bill (`[objective] mode = "cost"`, prices
/// from a local server in Energy-Charts' format, carbon flat): a job that may
/// wait runs in the cheap window, and the plan says what it weighed.
#[test]
fn a_cost_objective_runs_a_job_that_may_wait_in_the_cheap_hours() {
    if !support::root_or_skip("price_e2e") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fx = rt.block_on(Fixture::start()).unwrap();
    // 10-second prices: 150 /MWh, cheap (-5, a negative price) from 30 s to 70 s.
    let t0 = chrono::Utc::now().timestamp();
    let times: Vec<i64> = (-6..120).map(|k| t0 + 10 * k).collect();
    let prices: Vec<Option<f64>> =
        times.iter().map(|&t| Some(if (t0 + 30..t0 + 70).contains(&t) { -5.0 } else { 150.0 })).collect();
    fx.reply("/price", Reply::json(200, bodies::energy_charts_price(&times, &prices, "EUR / MWh")));
    let setup = Setup {
        top: String::new(),
        slot: Some("10s".into()),
        tables: format!(
            "[objective]\nmode = \"cost\"\n[price]\nrefresh = \"5s\"\n\
             [[price.sources]]\nkind = \"energy-charts\"\nzone = \"DE-LU\"\nbase_url = \"{}\"\n",
            fx.url()
        ),
        agent_args: Vec::new(),
        agent_env: Vec::new(),
    };
    let c = Cluster::configured("price", &setup);
    let job = c.submit(&["--cpu", "1", "--duration", "10s", "--deadline", "+3m", "--shell", "--", BURN]);
    // The first plan with the job in it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let plan: Value = loop {
        let p = c.greenfill(&["plan", "--json"]).ok().and_then(|s| serde_json::from_str::<Value>(&s).ok());
        match p {
            Some(p) if p["jobs_planned"].as_u64() == Some(1) => break p,
            _ if Instant::now() > deadline => panic!("no plan with the job: {p:?}"),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    };
    assert_eq!((plan["objective"].as_str(), plan["currency"].as_str()), (Some("cost"), Some("EUR")), "{plan}");
    assert_eq!(plan["price_per_mwh"][0].as_f64(), Some(150.0), "{plan}");
    let why = c.greenfill(&["explain", &job]).unwrap();
    assert!(why.contains("for a cheaper window (objective cost)") && why.contains("150.00 EUR/MWh"), "{why}");
    let jobs = c.wait_until("the job to succeed", Duration::from_secs(150), |jobs| {
        jobs.iter().any(|j| j["id"] == job.as_str() && (j["state"] == "succeeded" || j["state"] == "failed"))
    });
    let j = jobs.iter().find(|j| j["id"] == job.as_str()).unwrap();
    assert_eq!(j["state"], "succeeded", "{j}");
    let started = chrono::DateTime::parse_from_rfc3339(j["started_at"].as_str().unwrap()).unwrap().timestamp();
    assert!((t0 + 25..t0 + 70).contains(&started), "started {} s after the prices' start: {j}", started - t0);
    // Its ledger: the bill at the price while it ran, against the bill at submission.
    let l = &j["ledger"];
    let (e, p, cost) =
        (l["energy_kwh"].as_f64().unwrap(), l["price_per_mwh"].as_f64().unwrap(), l["cost"].as_f64().unwrap());
    assert!(e > 0.0 && p < 150.0, "it ran while the price was down: {l}");
    assert!((e * p / 1000.0 - cost).abs() < 1e-12, "cost = energy × price: {l}");
    assert!((l["counterfactual_cost"].as_f64().unwrap() - e * 150.0 / 1000.0).abs() < 1e-12, "{l}");
    assert_eq!(l["currency"].as_str(), Some("EUR"), "{l}");
    assert!(l["saved_cost"].as_f64().unwrap() > 0.0, "{l}");
    let totals: Value = serde_json::from_str(&c.greenfill(&["ledger", "--json"]).unwrap()).unwrap();
    assert!((totals[0]["cost"].as_f64().unwrap() - cost).abs() < 1e-12, "{totals}");
    let shown = c.greenfill(&["job", &job]).unwrap();
    assert!(shown.contains("Energy bill") && shown.contains("so waiting saved"), "{shown}");
    assert!(fx.seen().iter().all(|s| s.path == "/price" && s.query.contains("bzn=DE-LU")));
}

#[test]
fn price_fetch_shows_what_a_source_gives_or_why_not() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fx = rt.block_on(Fixture::start()).unwrap();
    let from = 1_711_839_600; // 2024-03-30T23:00Z: a 23-hour day in Berlin
    let times: Vec<i64> = (0..23).map(|h| from + 3600 * h).collect();
    let prices: Vec<Option<f64>> = (0..23).map(|h| Some(if h == 13 { -12.5 } else { 70.0 })).collect();
    fx.reply("/price", Reply::json(200, bodies::energy_charts_price(&times, &prices, "EUR / MWh")));
    let fetch = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
            .args(["price", "fetch", "--source", "energy-charts", "--zone", "DE-LU", "--base-url", &fx.url()])
            .args(["--from", "2024-03-30T23:00:00Z", "--hours", "23"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = fetch(&["--json"]);
    assert_eq!(code, Some(0), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["source"].as_str(), v["unit"].as_str()), (Some("energy-charts:DE-LU"), Some("EUR / MWh")));
    assert_eq!(v["points"].as_u64(), Some(23));
    assert_eq!(v["hourly"][13]["per_mwh"].as_f64(), Some(-12.5), "negative prices are shown as they are");
    let (code, out, _) = fetch(&[]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("energy-charts:DE-LU: 23 prices every 3600 s from 2024-03-30T23:00Z"), "{out}");
    assert!(out.contains("2024-03-31T12:00Z     -12.50"), "{out}");
    fx.reply("/price", Reply::json(404, r#"{"detail":"Bidding zone XX not found"}"#));
    let (code, _, err) = fetch(&[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("energy-charts: zone \"DE-LU\" is unknown") && err.contains("Bidding zone XX not found"),
        "{err}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["price", "fetch", "--source", "entsoe", "--zone", "FR"])
        .env_remove("GREENFILL_ENTSOE_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--source entsoe: needs --token-file or GREENFILL_ENTSOE_TOKEN"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["price", "fetch", "--source", "nordpool", "--zone", "SE3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--source \"nordpool\": unknown; known: energy-charts, entsoe, file, constant"), "{err}");
}
