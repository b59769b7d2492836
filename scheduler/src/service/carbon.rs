//! The grid's carbon signal per zone, for planning and for each job's ledger.
//!
//! Each pool names its zone (`[[pools]] zone`), each zone an ordered list of
//! sources (`[carbon.zones.NAME] sources`); a pool that names none is in
//! `carbon.default_zone`, else the one zone configured, else the built-in
//! `default` zone (`planning.carbon_file`, then `planning.carbon_constant`).
//! `planning.carbon_constant` is every zone's last resort.
//!
//! A task refreshes the zones every `carbon.check_every`; each new good
//! answer is committed (table `carbon_zones`) before it is used, so a restart
//! plans from the last forecast at once. `/metrics` shows each zone's source,
//! its fallback level and its age; the plan carries the same.

use super::{State, Write};
use greenfill_carbon::{Persisted, Source, Zone};
use greenfill_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The zone of pools that name none when no zone is configured.
pub const DEFAULT_ZONE: &str = "default";

/// Every zone and which pool is in which.
#[derive(Debug)]
pub struct Carbon {
    zones: BTreeMap<String, Arc<Zone>>,
    /// The zone each zone's sources sit under in the config (for errors).
    pool_zone: HashMap<String, String>,
    default_zone: String,
    /// The source label last exported per zone (its gauge is zeroed when it changes).
    shown: Mutex<HashMap<String, (String, &'static str)>>,
}

/// Each zone's sources, first preferred.
pub type Sources = BTreeMap<String, Vec<Arc<dyn Source>>>;

/// Sources of every zone, built (secrets read); errors name their keys.
pub fn build_zones(cfg: &super::Config) -> Result<Sources, Vec<greenfill_carbon::BadKey>> {
    let timeout = cfg.carbon.timeout;
    let mut zones = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, z) in &cfg.carbon.zones {
        match z.build(&format!("carbon.zones.{name}"), timeout) {
            Ok(s) => {
                zones.insert(name.clone(), s);
            }
            Err(e) => errors.extend(e),
        }
    }
    // The built-in zone, where pools that name none go to it.
    if cfg.carbon.default_zone() == DEFAULT_ZONE && !zones.contains_key(DEFAULT_ZONE) {
        let mut builtin: Vec<Arc<dyn Source>> = Vec::new();
        if let Some(path) = &cfg.planning.carbon_file {
            match greenfill_carbon::File::load(path) {
                Ok(f) => builtin.push(Arc::new(f)),
                Err(e) => errors.push(greenfill_carbon::BadKey {
                    key: "planning.carbon_file".into(),
                    value: path.display().to_string(),
                    why: e.to_string(),
                }),
            }
        }
        zones.insert(DEFAULT_ZONE.into(), builtin);
    }
    if errors.is_empty() { Ok(zones) } else { Err(errors) }
}

impl Carbon {
    pub fn new(cfg: &super::Config, now: i64) -> anyhow::Result<Carbon> {
        let built = build_zones(cfg)
            .map_err(|e| anyhow::anyhow!("{}", e.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))?;
        let constant = cfg.planning.carbon_constant;
        let zones = built
            .into_iter()
            .map(|(name, sources)| {
                let zone = Zone::new(&name, sources, cfg.carbon.stale_after, constant, now);
                (name, Arc::new(zone))
            })
            .collect();
        let pool_zone = cfg.pools.iter().filter_map(|p| Some((p.name.clone(), p.zone.clone()?))).collect();
        Ok(Carbon { zones, pool_zone, default_zone: cfg.carbon.default_zone(), shown: Mutex::default() })
    }

    /// Take up the persisted forecasts (zones no longer configured are ignored).
    pub fn restore(&self, rows: Vec<(String, String)>, now: i64) {
        for (zone, body) in rows {
            let Some(z) = self.zones.get(&zone) else { continue };
            match serde_json::from_str::<Persisted>(&body) {
                Ok(p) => {
                    tracing::info!(%zone, source = %p.source, age_s = now - p.fetched_at, "carbon forecast restored");
                    z.restore(p, now);
                }
                Err(e) => tracing::warn!(%zone, error = %e, "stored carbon forecast unreadable; ignored"),
            }
        }
    }

    /// Ask every source of every zone once. A zone the provider does not know
    /// (a config error) refuses the start, naming the key; other errors
    /// (the provider down, a timeout) are logged and planning goes on.
    pub async fn probe(&self, now: i64) -> anyhow::Result<Vec<(String, Persisted)>> {
        let mut bad = Vec::new();
        let mut fresh = Vec::new();
        for (name, z) in &self.zones {
            let (errors, persisted) = z.probe(now).await;
            for (i, e) in errors {
                if e.is_config() {
                    bad.push(format!("carbon.zones.{name}.sources[{i}]: {e}"));
                }
            }
            fresh.extend(persisted.map(|p| (name.clone(), p)));
        }
        if bad.is_empty() { Ok(fresh) } else { anyhow::bail!("{}", bad.join("; ")) }
    }

    pub fn zone_name_of(&self, pool: &str) -> &str {
        self.pool_zone.get(pool).map_or(self.default_zone.as_str(), String::as_str)
    }

    pub fn zone_of(&self, pool: &str) -> &Arc<Zone> {
        let name = self.zone_name_of(pool);
        self.zones.get(name).or_else(|| self.zones.get(DEFAULT_ZONE)).expect("the default zone always exists")
    }

    /// A pool's forecast intensity per planning slot.
    pub fn slots(&self, pool: &str, start: i64, slot_s: i64, slots: usize) -> Vec<f64> {
        self.zone_of(pool).signal().forecast.slot_means(start, slot_s, slots)
    }

    /// The default zone's, for pools the plan does not know.
    pub fn default_slots(&self, start: i64, slot_s: i64, slots: usize) -> Vec<f64> {
        self.zones[&self.default_zone].signal().forecast.slot_means(start, slot_s, slots)
    }

    /// Each zone's signal in force, as the plan records it.
    pub fn signals(&self, now: i64) -> Vec<pb::CarbonSignal> {
        self.zones
            .iter()
            .map(|(name, z)| {
                let s = z.signal();
                pb::CarbonSignal {
                    zone: name.clone(),
                    source: s.source.clone(),
                    fallback: s.fallback.as_str().into(),
                    signal: s.forecast.provenance.signal.as_str().into(),
                    fetched_at: Some(super::ts(s.fetched_at)),
                    age_seconds: (now - s.fetched_at).max(0) as f64,
                    intensity_g_per_kwh: s.forecast.at(now),
                }
            })
            .collect()
    }

    /// Gauges per zone: the intensity in force, the signal's age, and which
    /// source at which fallback level (1 for the one in force).
    pub fn export(&self, now: i64) {
        let mut shown = self.shown.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, z) in &self.zones {
            let s = z.signal();
            metrics::gauge!("greenfill_carbon_intensity_grams_per_kwh", "zone" => name.clone()).set(s.forecast.at(now));
            #[allow(clippy::cast_precision_loss, reason = "seconds")]
            metrics::gauge!("greenfill_carbon_signal_age_seconds", "zone" => name.clone())
                .set((now - s.fetched_at).max(0) as f64);
            let label = (s.source.clone(), s.fallback.as_str());
            if let Some(old) = shown.get(name).filter(|o| **o != label) {
                metrics::gauge!("greenfill_carbon_source", "zone" => name.clone(), "source" => old.0.clone(), "fallback" => old.1)
                    .set(0.0);
            }
            metrics::gauge!("greenfill_carbon_source", "zone" => name.clone(), "source" => label.0.clone(), "fallback" => label.1)
                .set(1.0);
            shown.insert(name.clone(), label);
        }
    }

    /// Refresh every zone; returns the new answers to persist.
    pub async fn refresh(&self, now: i64) -> Vec<(String, Persisted)> {
        let mut out = Vec::new();
        for (name, z) in &self.zones {
            if let Some(p) = z.refresh(now).await {
                out.push((name.clone(), p));
            }
        }
        out
    }
}

/// Commit new answers (before anything else sees them), then export and
/// replan if the signal changed.
async fn commit(st: &State, fresh: Vec<(String, Persisted)>) -> anyhow::Result<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    let mut writes = Vec::with_capacity(fresh.len());
    for (zone, p) in fresh {
        writes.push(Write::CarbonZone { zone, body: serde_json::to_string(&p)? });
    }
    let pending = {
        let _inner = st.lock();
        st.queue(writes, Vec::new())
    };
    st.finish(pending).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    st.replan.notify_one();
    Ok(())
}

/// On the virtual clock: the refresh `run` would make by `now`, made inside
/// the advance (so a replay's rounds see the same signal every time).
/// `last` is when the last refresh ran.
pub async fn refresh_due(st: &State, last: &mut i64, now: i64) {
    let every = i64::try_from(st.config.carbon.check_every.as_secs()).unwrap_or(60).max(1);
    if now < *last + every {
        return;
    }
    *last = now;
    let fresh = st.carbon.refresh(now).await;
    if let Err(e) = commit(st, fresh).await {
        tracing::warn!(error = %e, "carbon forecast not persisted");
    }
    st.carbon.export(now);
}

/// Commit the probe's answers (the virtual clock's start: no loop runs).
pub async fn commit_first(st: &State, first: Vec<(String, Persisted)>) {
    if let Err(e) = commit(st, first).await {
        tracing::warn!(error = %e, "carbon forecast not persisted");
    }
}

/// Probe once, then refresh every `carbon.check_every` until shutdown.
pub async fn run(st: Arc<State>, first: Vec<(String, Persisted)>) {
    let every = st.config.carbon.check_every.max(Duration::from_secs(1));
    let mut fresh = first;
    loop {
        if let Err(e) = commit(&st, std::mem::take(&mut fresh)).await {
            tracing::warn!(error = %e, "carbon forecast not persisted");
        }
        st.carbon.export(super::now());
        tokio::select! {
            () = st.shutdown.cancelled() => return,
            () = greenfill_runtime::clock::sleep(every) => {}
        }
        fresh = st.carbon.refresh(super::now()).await;
    }
}
