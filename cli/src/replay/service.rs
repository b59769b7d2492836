//! The replay's scheduler: its config from the scenario (pools, power, carbon
//! zones, planning), the process, and its removal.

use anyhow::{Context, Result};
use greenfill_core::cluster::PowerModel;
use greenfill_sim::{Inputs, Resolved};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The MAC address the replay gives node `i` (locally administered).
pub(crate) fn mac(i: usize) -> [u8; 6] {
    let b = u32::try_from(i).unwrap_or(u32::MAX).to_be_bytes();
    [0x02, 0x67, b[0], b[1], b[2], b[3]]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Node `i`'s name: its pool's name and its index in the pool.
pub(crate) fn node_name(inp: &Inputs, i: usize) -> String {
    let pool = inp.node_pool[i];
    format!("{}-{}", inp.pools[pool].name, i - inp.pool_first[pool])
}

/// What of the scenario the service cannot run, each naming its key.
pub(crate) fn unexpressible(r: &Resolved, inp: &Inputs) -> Vec<String> {
    let mut bad = Vec::new();
    if r.power.is_none() {
        bad.push(format!(
            "power.model = {:?}: the service powers nodes through its state machine; replay needs \"states\"",
            r.scenario.power.model
        ));
    }
    if r.objective != greenfill_planner::Objective::Carbon {
        bad.push(format!(
            "objective.mode = {:?}: the replay runs the carbon objective only (the service's [price] feed is not on the virtual clock yet)",
            r.scenario.objective.mode
        ));
    }
    let first = &inp.pools[0];
    for (i, p) in inp.pools.iter().enumerate() {
        if !matches!(p.power, PowerModel::Linear { .. }) {
            bad.push(format!(
                "cluster.pools[{i}].power: the service estimates energy with one linear model (idle_w, max_w); this pool has a table"
            ));
        } else if p.power != first.power || (p.pue - first.pue).abs() > 1e-12 {
            bad.push(format!(
                "cluster.pools[{i}].power and .pue: the service has one power model and PUE for every pool ([power]); {} differs from {}",
                p.name, first.name
            ));
        }
    }
    bad
}

/// The forecaster the service runs: the scenario's, unless it is `perfect`
/// (the actual future, which no service has), then the default.
pub(crate) fn service_forecast(r: &Resolved) -> &str {
    if r.scenario.forecast == "perfect" { "greenfill" } else { &r.scenario.forecast }
}

/// Each carbon zone's forecast as the scenario tells the planner, one CSV each:
/// `default` (the scenario's own signal) and one per `[carbon.zones]` key.
/// Past the run the last value holds, as the simulator's plans see it.
fn write_carbon(inp: &Inputs, dir: &Path, horizon_s: i64) -> Result<Vec<(String, PathBuf)>> {
    let beyond = usize::try_from(horizon_s / inp.step_s.max(1)).unwrap_or(0) + 1;
    let mut zones = vec![("default".to_owned(), inp.carbon_forecast.as_slice())];
    zones.extend(inp.zones.iter().map(|z| (z.name.clone(), z.forecast.as_slice())));
    let mut out = Vec::new();
    for (name, values) in zones {
        let path = dir.join(format!("carbon-{name}.csv"));
        let mut text = String::from("timestamp,carbon_intensity\n");
        let last = values.last().copied().unwrap_or(0.0);
        let held = values.iter().copied().chain(std::iter::repeat_n(last, beyond));
        for (k, v) in held.enumerate() {
            let t = inp.start + i64::try_from(k).unwrap_or(0) * inp.step_s;
            text.push_str(&format!("{},{v}\n", greenfill_core::time::format_timestamp(t)));
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        out.push((name, path));
    }
    Ok(out)
}

fn secs(s: i64) -> String {
    format!("{s}s")
}

/// The scheduler's config for the scenario: a loopback, insecure-local service
/// whose store lives in `dir/store`; the `agent` power driver, its Wake-on-LAN
/// packets sent to `wol`.
pub(crate) fn config(r: &Resolved, inp: &Inputs, dir: &Path, port: u16, wol: u16) -> Result<String> {
    let s = &r.scenario;
    let (idle_w, max_w) = match inp.pools[0].power {
        PowerModel::Linear { idle_w, max_w } => (idle_w, max_w),
        PowerModel::Table { .. } => anyhow::bail!("a table power model (refused before)"),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut zones = serde_json::Map::new();
    // The signal reaches as far as the scenario's planner sees it.
    let reach = (r.horizon_s + r.slot_s).max(2 * 86_400);
    for (name, path) in write_carbon(inp, dir, reach)? {
        let horizon = secs(reach);
        zones.insert(name, json!({ "sources": [{ "kind": "file", "path": path, "horizon": horizon }] }));
    }
    let pools: Vec<Value> = inp.pools.iter().enumerate().map(|(i, p)| pool(r, inp, i, p, wol)).collect();
    let retention = (inp.history as i64 + inp.steps as i64 + 1) * inp.step_s;
    let config = json!({
        "listen": format!("127.0.0.1:{port}"),
        "data_dir": dir.join("store"),
        "insecure_local": true,
        "pools": pools,
        "planning": {
            "interval": secs(r.plan_every_s),
            "min_gap": "0s",
            "slot": secs(r.slot_s),
            "horizon": secs(r.horizon_s),
            "stale_after": secs(3 * inp.step_s),
            "telemetry_bucket": secs(inp.step_s),
            "telemetry_retention": secs(retention),
            "forecast": service_forecast(r),
            "quantile": s.quantile,
            "cpu_margin": s.safety_margin,
            "mem_margin": s.safety_margin,
            "delay_cost": s.delay_cost,
            "guard_slack": s.guard_slack,
            "solve_limit": "5s",
            "reconcile_grace": "0s",
        },
        "limits": { "requests_per_second": 1_000_000, "burst": 1_000_000 },
        "power": { "idle_w": idle_w, "max_w": max_w, "pue": inp.pools[0].pue },
        "carbon": { "default_zone": "default", "check_every": secs(inp.step_s), "zones": zones },
    });
    toml::to_string(&config).context("the scheduler's config as TOML")
}

/// One `[[pools]]` entry; sleepable pools get the scenario's power settings.
#[allow(clippy::cast_possible_truncation, reason = "node counts are small")]
fn pool(r: &Resolved, inp: &Inputs, i: usize, p: &greenfill_core::cluster::Pool, wol: u16) -> Value {
    let mut v = json!({
        "name": p.name,
        "cores": p.cores,
        "memory_gib": p.memory_gib,
        "zone": p.zone.clone().unwrap_or_else(|| "default".to_owned()),
        "embodied_g_per_hour": p.embodied_g_per_hour,
    });
    if let (false, Some(model)) = (p.always_on, r.power) {
        let st = &model.settings;
        let first = inp.pool_first[i];
        let macs: serde_json::Map<String, Value> =
            (first..first + p.nodes as usize).map(|n| (node_name(inp, n), json!(mac_text(mac(n))))).collect();
        v["power"] = json!({
            "driver": "agent",
            "suspend_after": secs(st.suspend_after_s),
            "wake": secs(st.wake_s),
            "min_off": secs(st.min_off_s),
            "suspend_timeout": secs(st.suspend_timeout_s),
            "resume_timeout": secs(st.resume_timeout_s),
            "reserve": st.reserve,
            "max_suspends_per_day": st.max_suspends_per_day,
            "suspend_rate": st.suspend_rate,
            "resume_rate": st.resume_rate,
            "wake_energy_wh": p.wake_wh,
            "agent": { "broadcast": format!("127.0.0.1:{wol}"), "macs": macs },
        });
    }
    v
}

/// The running scheduler; dropped, it is killed and its directory removed.
pub(crate) struct Scheduler {
    child: Option<std::process::Child>,
    pub(crate) port: u16,
    dir: PathBuf,
    log: PathBuf,
}

impl Scheduler {
    /// Start `bin` on `config` with its virtual clock at `start`, and wait until
    /// it serves; a scheduler that exits or does not serve in 60 s is reported
    /// with its log's tail.
    pub(crate) fn start(bin: &Path, dir: &Path, config: &str, port: u16, start: i64) -> Result<Scheduler> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("scheduler.toml");
        std::fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
        let log = dir.join("scheduler.log");
        let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = std::process::Command::new(bin)
            .arg("--config")
            .arg(&path)
            .args(["--virtual-clock", &start.to_string()])
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {} (build it, or name it with --scheduler)", bin.display()))?;
        let mut s = Scheduler { child: Some(child), port, dir: dir.to_owned(), log };
        s.wait_serving()?;
        Ok(s)
    }

    fn wait_serving(&mut self) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                anyhow::bail!("the replay's scheduler exited ({status}) before serving:\n{}", self.log_tail());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > until {
                anyhow::bail!(
                    "the replay's scheduler did not serve on 127.0.0.1:{} in 60 s:\n{}",
                    self.port,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of its log.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stop it and remove its store, keeping its log (and config) beside `out`.
    pub(crate) fn stop(mut self, keep_log: &Path) {
        let _ = std::fs::copy(&self.log, keep_log);
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.kill();
    }
}
