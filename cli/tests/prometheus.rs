//! `greenfill data import prometheus` against a real Prometheus (Debian's
//! `prometheus`, loopback, a temporary storage dir, 1 s scrapes, basic auth by
//! its own web config) scraping an exporter this test serves with known values.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use support::Proc;

const PASSWORD: &str = "s3cret-pw";

fn port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An exporter of two gauges whose values never change: `gf_util{node="a"}`
/// 0.25 and `{node="b"}` 0.75.
fn exporter() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let body = "# TYPE gf_util gauge\ngf_util{node=\"a\"} 0.25\ngf_util{node=\"b\"} 0.75\n";
            let _ = write!(
                reader.get_mut(),
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

fn prometheus(dir: &Path, exporter: u16) -> (Proc, String) {
    let hash = Command::new("htpasswd").args(["-nbBC", "4", "gf", PASSWORD]).output().unwrap();
    let hash = String::from_utf8(hash.stdout).unwrap();
    let hash = hash.trim().strip_prefix("gf:").unwrap().to_owned();
    std::fs::write(dir.join("web.yml"), format!("basic_auth_users:\n  gf: '{hash}'\n")).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: gf\n    \
             static_configs:\n      - targets: ['127.0.0.1:{exporter}']\n"
        ),
    )
    .unwrap();
    let port = port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--web.config.file={}", dir.join("web.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    (Proc(child), format!("http://127.0.0.1:{port}"))
}

fn import(url: &str, out: &Path, extra: &[&str], password: bool) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_greenfill"));
    c.args(["data", "import", "prometheus", "--url", url, "--out"]).arg(out).args(["--basic-auth-user", "gf"]);
    c.args(extra);
    if password {
        c.env("GREENFILL_PROMETHEUS_PASSWORD", PASSWORD);
    } else {
        c.env_remove("GREENFILL_PROMETHEUS_PASSWORD");
    }
    c.output().unwrap()
}

fn rows(path: &Path) -> Vec<(i64, String, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("time,node,cpu_fraction"));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn a_prometheus_range_imports_every_point_once_in_chunks_and_bad_input_exits_2_writing_nothing() {
    for tool in ["prometheus", "htpasswd"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| !o.status.success()) {
            greenfill_core::testing::cannot_run(
                "prometheus import",
                &format!("`{tool}` is not installed (scripts/setup.sh)"),
            );
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let (_prom, url) = prometheus(dir.path(), exporter());
    let out = dir.path().join("usage.csv");
    let q = ["--query", "gf_util", "--label", "node", "--step", "1s", "--value-name", "cpu_fraction"];
    // Wait for 15 s of scrapes (Prometheus starts, then scrapes every second).
    let t0 = Instant::now();
    let first = loop {
        let o = import(&url, &out, &[&q[..], &["--start", "now-60s"]].concat(), true);
        if o.status.success() {
            let r = rows(&out);
            if r.iter().filter(|x| x.1 == "a").count() >= 15 {
                break r[0].0;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no data after 60 s: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_millis(500));
    };
    let (start, end) = (first.to_string(), (first + 14).to_string());
    let window = [&q[..], &["--start", &start, "--end", &end]].concat();
    let o = import(&url, &out, &window, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole = rows(&out);
    // 15 points per series, one per second on the grid, each once, with the
    // exporter's values.
    for (node, value) in [("a", 0.25), ("b", 0.75)] {
        let times: Vec<i64> = whole.iter().filter(|r| r.1 == node).map(|r| r.0).collect();
        assert_eq!(times, (first..=first + 14).collect::<Vec<_>>(), "{node}");
        assert!(whole.iter().filter(|r| r.1 == node).all(|r| (r.2 - value).abs() <= 0.01 * value), "{whole:?}");
    }
    assert_eq!(whole.len(), 30);
    // In chunks of 4 points (4 requests): the same file.
    let chunked = dir.path().join("chunked.csv");
    let o = import(&url, &chunked, &[&window[..], &["--max-points", "4"]].concat(), true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&chunked).unwrap(), std::fs::read_to_string(&out).unwrap());
    // Greenfill reads it as a usage trace: two series in long format.
    let inspect = Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["data", "inspect", "--kind", "usage", "--json"])
        .arg(&out)
        .output()
        .unwrap();
    let j: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(j["format"], "Long", "{j}");
    assert_eq!(j["series"].as_array().map(Vec::len), Some(2), "{j}");

    // Prometheus's own answer, saved as it came, reads as the same trace.
    let saved = dir.path().join("answer.json");
    let curl = Command::new("curl")
        .args(["-sfG", "-u", &format!("gf:{PASSWORD}"), "-o"])
        .arg(&saved)
        .arg(format!("{url}/api/v1/query_range"))
        .args([
            "--data-urlencode",
            "query=gf_util",
            "-d",
            &format!("start={start}"),
            "-d",
            &format!("end={end}"),
            "-d",
            "step=1",
        ])
        .status();
    if curl.is_ok_and(|s| s.success()) {
        let inspect = Command::new(env!("CARGO_BIN_EXE_greenfill"))
            .args(["data", "inspect", "--kind", "usage", "--json"])
            .arg(&saved)
            .output()
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&inspect.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&inspect.stderr)));
        assert_eq!((j["format"].as_str(), j["unit"].as_str()), (Some("PrometheusJson"), Some("fraction")), "{j}");
        let ids: Vec<&str> = j["series"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 2, "{j}");
        assert!(j["series"].as_array().unwrap().iter().all(|s| s["points"] == 15), "{j}");
    } else {
        greenfill_core::testing::cannot_run("prometheus import (saved answer)", "curl is not installed");
    }

    // Bad input: one line naming the cause, exit 2, nothing written.
    let bad = dir.path().join("bad.csv");
    let cases: [(&str, Vec<&str>, bool, &str); 5] = [
        ("http://127.0.0.1:1", q[..4].to_vec(), true, "127.0.0.1:1/api/v1/query_range"),
        (&url, vec!["--query", "gf_util{", "--label", "node"], true, "bad_data"),
        (&url, vec!["--query", "nothing_here", "--label", "node"], true, "matched no series"),
        (&url, q[..4].to_vec(), false, "401 Unauthorized"),
        (&url, vec!["--query", "gf_util", "--label", "pod"], true, "has no label `pod`"),
    ];
    for (u, args, password, want) in cases {
        let o = import(u, &bad, &[&args[..], &["--step", "1s", "--start", &start, "--end", &end]].concat(), password);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: want `{want}` in {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(!bad.exists() && !bad.with_extension("partial").exists(), "{args:?} wrote a file");
    }
    // The presets are PromQL this Prometheus parses: with no node_exporter or
    // cAdvisor behind it they match nothing, and say so (not `bad_data`).
    for preset in ["node-cpu", "container-cpu"] {
        let args = ["--preset", preset, "--online-selector", r#"namespace!~"batch""#, "--step", "1s"];
        let o = import(&url, &bad, &[&args[..], &["--start", &start, "--end", &end]].concat(), true);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.code() == Some(2) && err.contains("matched no series"), "{preset}: {err}");
    }
}
