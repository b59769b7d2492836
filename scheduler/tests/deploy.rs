//! The Kubernetes manifests keep the agent's guard and the scheduler's plans in
//! step: the guard's CPU threshold is 1 − the plan's CPU margin. A lower threshold
//! throttles work the plan counted on; a higher one lets batch past the margin.

use greenfill_scheduler::service::Config;
use std::path::Path;

#[test]
fn the_agents_cpu_threshold_is_one_minus_the_schedulers_cpu_margin() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/configmap.yaml"));
    let yaml = std::fs::read_to_string(path).unwrap();
    let args = yaml.lines().find_map(|l| l.trim().strip_prefix("GREENFILL_AGENT_ARGS:")).expect("agent args");
    let words: Vec<&str> = args.trim().trim_matches('"').split_whitespace().collect();
    let at = words.iter().position(|w| *w == "--cpu-threshold").expect("--cpu-threshold in the agent's args");
    let threshold: f64 = words[at + 1].parse().unwrap();
    // The scheduler's config is the block under `scheduler.toml: |`, indented.
    let mut lines = yaml.lines().skip_while(|l| !l.trim_start().starts_with("scheduler.toml: |")).skip(1);
    let first = lines.next().expect("scheduler.toml has a body");
    let indent = first.len() - first.trim_start().len();
    let body: Vec<&str> = std::iter::once(first)
        .chain(lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent))
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect();
    // Parsed, not validated: the tokens come from a Secret at run time.
    let cfg: Config = toml::from_str(&body.join("\n")).unwrap();
    assert!(
        (threshold - (1.0 - cfg.planning.cpu_margin)).abs() < 1e-9,
        "--cpu-threshold {threshold} but planning.cpu_margin {}",
        cfg.planning.cpu_margin
    );
}

/// The DaemonSet's agents prove their node with a projected service-account
/// token whose audience is the one the scheduler's `[kubernetes]` checks.
#[test]
fn the_agents_token_audience_is_the_one_the_scheduler_checks() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes"));
    let config = std::fs::read_to_string(dir.join("configmap.yaml")).unwrap();
    let ds = std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    let audience = config
        .lines()
        .find_map(|l| l.trim().strip_prefix("audience = "))
        .expect("[kubernetes] audience in the scheduler's config")
        .trim_matches('"');
    let projected = ds.lines().find_map(|l| l.trim().strip_prefix("audience: ")).expect("a projected token");
    assert_eq!(projected, audience);
    assert!(ds.contains("GREENFILL_AGENT_TOKEN_FILE"), "the agent reads the projected token");
    assert!(!ds.contains("key: agent-token"), "no shared agent secret in the DaemonSet");
}

/// The value after `key: ` on the first line at or after `from` that has it.
fn value_after<'a>(lines: &[&'a str], from: usize, key: &str) -> Option<(usize, &'a str)> {
    lines.iter().enumerate().skip(from).find_map(|(i, l)| l.trim().strip_prefix(key).map(|v| (i, v.trim())))
}

/// Image jobs: the socket the agent is told is the host's containerd socket,
/// mounted as a socket; and the state volume sits at the host's own path,
/// since containerd's shim (on the host) starts the jobs' logger from it.
#[test]
fn the_agent_reaches_the_hosts_containerd_and_its_logger_is_at_a_host_path() {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes"));
    let ds = std::fs::read_to_string(dir.join("daemonset.yaml")).unwrap();
    let lines: Vec<&str> = ds.lines().collect();
    let env_at = lines.iter().position(|l| l.contains("name: GREENFILL_CONTAINERD_SOCKET")).expect("the socket env");
    let (_, socket) = value_after(&lines, env_at, "value: ").unwrap();
    let volume = |name: &str| -> (String, String) {
        let mount =
            lines.iter().position(|l| l.trim() == format!("- name: {name}") && !l.contains("GREENFILL")).unwrap();
        let (_, mount_path) = value_after(&lines, mount, "mountPath: ").unwrap();
        let decl = lines.iter().rposition(|l| l.trim() == format!("- name: {name}")).unwrap();
        let (_, host_path) = value_after(&lines, decl, "path: ").unwrap();
        (mount_path.to_owned(), host_path.to_owned())
    };
    let (mounted, host) = volume("containerd");
    assert_eq!((mounted.as_str(), host.as_str()), (socket, socket), "the socket mount");
    let decl = lines.iter().rposition(|l| l.trim() == "- name: containerd").unwrap();
    assert_eq!(value_after(&lines, decl, "type: ").unwrap().1, "Socket");
    let state_env = lines.iter().position(|l| l.contains("name: GREENFILL_STATE_DIR")).unwrap();
    let (_, state_dir) = value_after(&lines, state_env, "value: ").unwrap();
    let (mounted, host) = volume("state");
    assert_eq!((mounted.as_str(), host.as_str()), (state_dir, state_dir), "the state volume at the host's path");
}

/// Every `greenfill_…` word in `text`.
fn metric_words(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("greenfill_") {
        let word: String =
            rest[i..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        rest = &rest[i + word.len()..];
        out.insert(word);
    }
    out
}

/// The names the `metrics` macros are called with in the `.rs` files under `dir`.
fn emitted(dir: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(emitted(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&p).unwrap();
            for mac in ["counter!(", "gauge!(", "histogram!("] {
                for (i, _) in text.match_indices(mac) {
                    let after = text[i + mac.len()..].trim_start();
                    if let Some(name) = after.strip_prefix('"').and_then(|s| s.split('"').next()) {
                        out.insert(name.to_owned());
                    }
                }
            }
            // The agent sets its per-class gauges through a closure of names.
            if p.ends_with("daemon.rs") {
                for (i, _) in text.match_indices("set(\"greenfill_") {
                    out.extend(metric_words(&text[i..i + 60]).into_iter().take(1));
                }
            }
        }
    }
    out
}

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The agent's described series: the names in `daemon::METRICS`.
fn agent_described() -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("agent/src/daemon.rs")).unwrap();
    let start = text.find("pub const METRICS").expect("agent METRICS");
    let end = start + text[start..].find("\n};").expect("the end of METRICS");
    text[start..end].split("name: \"").skip(1).filter_map(|s| Some(s.split('"').next()?.to_owned())).collect()
}

#[test]
fn every_series_the_daemons_emit_is_described_for_prometheus() {
    use greenfill_scheduler::service;
    let described: std::collections::BTreeSet<String> = service::METRICS.iter().map(|d| d.name.to_owned()).collect();
    let mut emitted_here = emitted(&root().join("scheduler/src"));
    emitted_here.extend(emitted(&root().join("carbon/src")));
    assert_eq!(emitted_here, described, "the scheduler's METRICS list and its metrics calls differ");
    let agent = emitted(&root().join("agent/src"));
    assert_eq!(agent, agent_described(), "the agent's METRICS list and its metrics calls differ");
    assert!(agent.contains("greenfill_cpu_cores") && described.contains("greenfill_carbon_source"));
}

#[test]
fn every_dashboard_query_names_a_metric_the_daemons_export() {
    let path = root().join("deploy/grafana/greenfill.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exported: std::collections::BTreeSet<String> =
        greenfill_scheduler::service::METRICS.iter().map(|d| d.name.to_owned()).collect();
    exported.extend(greenfill_scheduler::service::ledger::counter_names().map(str::to_owned));
    exported.extend(agent_described());
    let panels = dash["panels"].as_array().expect("panels");
    let mut queries = 0;
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_words(expr);
            assert!(!names.is_empty(), "{}: {expr} names no greenfill metric", p["title"]);
            for n in names {
                // Summaries also export `_sum` and `_count`.
                let base = n.strip_suffix("_sum").or_else(|| n.strip_suffix("_count")).unwrap_or(&n);
                assert!(exported.contains(&n) || exported.contains(base), "{}: {expr}: no metric {n}", p["title"]);
            }
            queries += 1;
        }
    }
    assert!(queries >= 10, "{queries} queries");
    let ids: std::collections::BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
}
