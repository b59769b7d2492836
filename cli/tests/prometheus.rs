//! `greenfill data import prometheus` against a real Prometheus (Debian's
//! `prometheus`, loopback, a temporary storage dir, 1 s scrapes, basic auth by
//! its own web config) scraping an exporter this test serves with known values,
//! and one scraping a real node_exporter (Debian's `prometheus-node-exporter`).

mod support;

use std::collections::BTreeMap;
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

/// Whether every tool is installed; if not, says which (and fails under CI).
fn have(test: &str, tools: &[&str]) -> bool {
    for tool in tools {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| !o.status.success()) {
            greenfill_core::testing::cannot_run(test, &format!("`{tool}` is not installed (scripts/setup.sh)"));
            return false;
        }
    }
    true
}

fn rows(path: &Path) -> Vec<(i64, String, f64)> {
    rows_under(path, "time,node,cpu_fraction")
}

/// The long CSV's rows, after checking its header.
fn rows_under(path: &Path, header: &str) -> Vec<(i64, String, f64)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(header));
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].to_owned(), f[2].parse().unwrap())
        })
        .collect()
}

#[test]
fn a_prometheus_range_imports_every_point_once_in_chunks_and_bad_input_exits_2_writing_nothing() {
    if !have("prometheus import", &["prometheus", "htpasswd"]) {
        return;
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

/// node_exporter with only its CPU collector, on loopback.
fn node_exporter(dir: &Path) -> (Proc, u16) {
    let port = port();
    let child = Command::new("prometheus-node-exporter")
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .args(["--collector.disable-defaults", "--collector.cpu"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("node_exporter.log")).unwrap())
        .spawn()
        .unwrap();
    (Proc(child), port)
}

/// The exporter's idle seconds per CPU, read from it directly.
fn idle_now(port: u16) -> BTreeMap<String, f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    body.lines()
        .filter_map(|l| l.strip_prefix("node_cpu_seconds_total{cpu=\""))
        .filter_map(|l| l.split_once("\",mode=\"idle\"} "))
        .map(|(cpu, v)| (cpu.to_owned(), v.trim().parse().unwrap()))
        .collect()
}

/// Issue 28's real-exporter check. The raw form imports node_exporter's idle
/// counters per CPU; the preset's busy share must equal what the test computes
/// from them as Prometheus's `rate()` does (the slope between the first and last
/// sample in the 60 s window: with 1 s scrapes, the grid points 59 s apart)
/// within 1 % of a core. Then the imported file is a scenario `sim run` runs.
#[test]
fn a_real_node_exporter_imports_alike_by_preset_and_raw_query_and_sim_init_runs_it() {
    if !have("prometheus import (node_exporter)", &["prometheus", "htpasswd", "prometheus-node-exporter"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_exporter, ne) = node_exporter(dir.path());
    let (_prom, url) = prometheus(dir.path(), ne);
    let raw = dir.path().join("idle.csv");
    let idle = ["--query", r#"node_cpu_seconds_total{mode="idle"}"#, "--label", "cpu", "--step", "1s"];
    let idle = [&idle[..], &["--value-name", "idle_seconds"]].concat();
    let header = "time,cpu,idle_seconds";
    // 75 s of scrapes: the preset's rate looks 60 s back, then 15 points to compare.
    let t0 = Instant::now();
    let first = loop {
        let o = import(&url, &raw, &[&idle[..], &["--start", "now-300s"]].concat(), true);
        if o.status.success() {
            let times: Vec<i64> = rows_under(&raw, header).iter().filter(|r| r.1 == "0").map(|r| r.0).collect();
            if times.len() >= 76 {
                break times[0];
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(200), "no data after 200 s: {}", String::from_utf8_lossy(&o.stderr));
        std::thread::sleep(Duration::from_secs(1));
    };
    let (from, end) = (first + 60, first + 74);
    let o = import(
        &url,
        &raw,
        &[&idle[..], &["--start", &(first + 1).to_string(), "--end", &end.to_string()]].concat(),
        true,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = idle_now(ne);
    let counters = rows_under(&raw, header);
    let cpus: Vec<&String> = after.keys().collect();
    assert!(!cpus.is_empty(), "node_exporter reported no idle CPU time");
    let mut idle_at = BTreeMap::new();
    for cpu in &cpus {
        let series: Vec<&(i64, String, f64)> = counters.iter().filter(|r| &&r.1 == cpu).collect();
        // Every second of the grid once, counters that only grow, and no faster
        // than the wall clock; the exporter's own reading now is past the last.
        let times: Vec<i64> = series.iter().map(|r| r.0).collect();
        assert_eq!(times, (first + 1..=end).collect::<Vec<_>>(), "cpu {cpu}");
        assert!(series.windows(2).all(|w| w[1].2 >= w[0].2 && w[1].2 - w[0].2 <= 1.1), "cpu {cpu}: {series:?}");
        let last = series.last().unwrap().2;
        assert!(after[*cpu] >= last, "cpu {cpu}: the exporter says {} now, the import {last}", after[*cpu]);
        for r in series {
            idle_at.insert((cpu.as_str(), r.0), r.2);
        }
    }
    assert_eq!(counters.len(), cpus.len() * 74, "a series that is not one of the exporter's CPUs");

    let preset = dir.path().join("busy.csv");
    let window = ["--start", &from.to_string(), "--end", &end.to_string()];
    let o = import(&url, &preset, &[&["--preset", "node-cpu", "--step", "1s"][..], &window[..]].concat(), true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let busy = rows_under(&preset, "time,instance,cpu_fraction");
    let instance = format!("127.0.0.1:{ne}");
    assert_eq!(busy.iter().map(|r| r.0).collect::<Vec<_>>(), (from..=end).collect::<Vec<_>>(), "{busy:?}");
    for (t, name, value) in &busy {
        assert_eq!(name, &instance);
        let idle_share: f64 =
            cpus.iter().map(|c| (idle_at[&(c.as_str(), *t)] - idle_at[&(c.as_str(), t - 59)]) / 59.0).sum::<f64>()
                / cpus.len() as f64;
        let want = 1.0 - idle_share;
        assert!((value - want).abs() <= 0.01, "at {t}: the preset says {value}, the counters {want}");
    }

    // From "my cluster" to a scenario, run at once.
    let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let scenario = dir.path().join("mine.toml");
    let init = Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["sim", "init", "--zone", "CISO", "--usage"])
        .arg(&preset)
        .arg("--jobs")
        .arg(repo.join("data/jobs/azure-100k.csv"))
        .arg("--out")
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let run = Command::new(env!("CARGO_BIN_EXE_greenfill"))
        .args(["sim", "run", "--json", "--scenario"])
        .arg(&scenario)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert!(v["policies"]["greenfill"]["jobs_completed"].as_u64().is_some_and(|n| n > 0), "{v}");
}
