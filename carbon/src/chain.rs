//! A zone's sources in order of preference, with a cache and fallbacks.
//!
//! [`Zone::refresh`] walks the sources: a source whose last answer is younger
//! than its refresh interval is not asked again (the cache); one that asked to
//! be left alone (`Retry-After`) or that failed is not asked before its
//! backoff ends. A source that fails is replaced by its own last good answer
//! while that is younger than `stale_after`, and after that by the next
//! source; past the last source, the constant. Planning never stops, and the
//! [`Signal`] says which source and how old. Each provider's error is logged
//! once, when it starts, with the provider's message; its recovery once more.

use crate::{Forecast, Point, Source, SourceError};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How much history is kept (for the ledger of jobs that ran long ago).
const HISTORY_KEEP: i64 = 14 * 86_400;
/// First wait after a failure; doubled per failure up to the source's refresh.
const FIRST_BACKOFF: i64 = 30;

/// How the signal in force was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// The source answered within its refresh interval.
    Live,
    /// The source failed, or has not been asked since a restart: its last
    /// good answer, younger than `stale_after`.
    Kept,
    /// Every source failed or was stale: the zone's constant.
    Constant,
}

impl Fallback {
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::Live => "live",
            Fallback::Kept => "kept",
            Fallback::Constant => "constant",
        }
    }
}

/// The intensity a zone plans with now, and where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signal {
    /// The source's name (`neso:GB`), or `constant:V`.
    pub source: String,
    /// Its position in the zone's list (0 = preferred); the constant's is the list's length.
    pub rank: usize,
    pub fallback: Fallback,
    /// Unix seconds the answer was fetched.
    pub fetched_at: i64,
    pub forecast: Forecast,
}

/// What is kept across a restart: the last good answer and the history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Persisted {
    pub source: String,
    pub fetched_at: i64,
    pub forecast: Forecast,
    /// The intensities of the past, as the latest answers gave them.
    pub history: Vec<Past>,
}

/// One interval of the past and its intensity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Past {
    pub from: i64,
    pub to: i64,
    pub g_per_kwh: f64,
}

#[derive(Debug, Default)]
struct SourceState {
    answer: Option<(Forecast, i64)>,
    next_try: i64,
    failures: u32,
    last_error: Option<&'static str>,
    /// The answer came from the store (a restart), not from the source.
    restored: bool,
}

#[derive(Debug)]
struct State {
    sources: Vec<SourceState>,
    current: Signal,
    /// Sorted by `from`, intervals apart.
    history: Vec<Past>,
}

/// One grid zone's carbon signal.
#[derive(Debug)]
pub struct Zone {
    pub name: String,
    sources: Vec<Arc<dyn Source>>,
    stale_after: Duration,
    constant: crate::Constant,
    state: Mutex<State>,
}

impl Zone {
    /// `constant` is the last resort, after every source.
    pub fn new(name: &str, sources: Vec<Arc<dyn Source>>, stale_after: Duration, constant: f64, now: i64) -> Zone {
        let constant = crate::Constant { g_per_kwh: constant };
        let current = Self::constant_signal(&constant, sources.len(), now);
        let state =
            State { sources: sources.iter().map(|_| SourceState::default()).collect(), current, history: vec![] };
        Zone { name: name.to_owned(), sources, stale_after, constant, state: Mutex::new(state) }
    }

    fn constant_signal(c: &crate::Constant, rank: usize, now: i64) -> Signal {
        let provenance = crate::Provenance {
            provider: "constant".into(),
            zone: String::new(),
            signal: crate::SignalKind::Average,
            generated_at: now,
        };
        let point = Point { at: now - now.rem_euclid(3600), g_per_kwh: c.g_per_kwh };
        let forecast = Forecast { provenance, step_s: 3600, points: vec![point] };
        Signal { source: c_name(c), rank, fallback: Fallback::Constant, fetched_at: now, forecast }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The signal in force.
    pub fn signal(&self) -> Signal {
        self.lock().current.clone()
    }

    /// The sources' names, in order.
    pub fn source_names(&self) -> Vec<String> {
        self.sources.iter().map(|s| s.name()).collect()
    }

    /// Start from a persisted answer (a restart): it counts as its source's
    /// last good answer, so it serves while younger than `stale_after`.
    pub fn restore(&self, p: Persisted, now: i64) {
        let mut st = self.lock();
        st.history = p.history;
        if let Some(i) = self.sources.iter().position(|s| s.name() == p.source) {
            st.sources[i].answer = Some((p.forecast, p.fetched_at));
            st.sources[i].restored = true;
        }
        drop(st);
        self.choose(now, None);
    }

    /// Mean intensity over `[from, to)`: the history where it holds the
    /// time, else the signal in force. For accounting.
    pub fn mean(&self, from: i64, to: i64) -> f64 {
        let st = self.lock();
        let at = |t: i64| -> f64 {
            let i = st.history.partition_point(|p| p.from <= t);
            match i.checked_sub(1).map(|i| st.history[i]) {
                Some(p) if t < p.to => p.g_per_kwh,
                _ => st.current.forecast.at(t),
            }
        };
        if to <= from {
            return at(from);
        }
        let step = ((to - from) / 288).clamp(1, 60);
        let (mut t, mut sum, mut n) = (from, 0.0, 0.0);
        while t < to {
            sum += at(t);
            n += 1.0;
            t += step;
        }
        sum / n
    }

    /// Ask the sources as needed; returns what to persist when a source gave
    /// a new answer.
    pub async fn refresh(&self, now: i64) -> Option<Persisted> {
        let mut fresh = None;
        for (i, source) in self.sources.iter().enumerate() {
            let (cached, next_try) = {
                let st = self.lock();
                let s = &st.sources[i];
                (s.answer.as_ref().map(|(_, at)| *at), s.next_try)
            };
            if cached.is_some_and(|at| now - at < secs(source.refresh())) {
                break;
            }
            if now < next_try {
                if self.usable(i, now) {
                    break;
                }
                continue;
            }
            match source.fetch(now).await {
                Ok(f) => {
                    self.answered(i, f, now);
                    fresh = Some(i);
                    break;
                }
                Err(e) => {
                    self.failed(i, &e, now);
                    if self.usable(i, now) {
                        break;
                    }
                }
            }
        }
        self.choose(now, fresh);
        let st = self.lock();
        fresh.map(|_| Persisted {
            source: st.current.source.clone(),
            fetched_at: st.current.fetched_at,
            forecast: st.current.forecast.clone(),
            history: st.history.clone(),
        })
    }

    /// Ask every source once (at start, to find a bad config early); returns
    /// each source's error by position, and what to persist if one answered.
    pub async fn probe(&self, now: i64) -> (Vec<(usize, SourceError)>, Option<Persisted>) {
        let mut errors = Vec::new();
        let mut fresh = None;
        for (i, source) in self.sources.iter().enumerate() {
            match source.fetch(now).await {
                Ok(f) => {
                    self.answered(i, f, now);
                    fresh = fresh.or(Some(i));
                }
                Err(e) => {
                    self.failed(i, &e, now);
                    errors.push((i, e));
                }
            }
        }
        self.choose(now, fresh);
        let st = self.lock();
        let persisted = fresh.map(|_| Persisted {
            source: st.current.source.clone(),
            fetched_at: st.current.fetched_at,
            forecast: st.current.forecast.clone(),
            history: st.history.clone(),
        });
        (errors, persisted)
    }

    /// Does source `i` hold an answer young enough to plan with?
    fn usable(&self, i: usize, now: i64) -> bool {
        self.lock().sources[i].answer.as_ref().is_some_and(|(_, at)| now - at < secs(self.stale_after))
    }

    fn answered(&self, i: usize, f: Forecast, now: i64) {
        let mut st = self.lock();
        let s = &mut st.sources[i];
        if let Some(kind) = s.last_error.take() {
            tracing::info!(zone = %self.name, source = %self.sources[i].name(), after = kind, "carbon source answers again");
        }
        s.answer = Some((f, now));
        s.restored = false;
        s.failures = 0;
        s.next_try = 0;
    }

    fn failed(&self, i: usize, e: &SourceError, now: i64) {
        let mut st = self.lock();
        let s = &mut st.sources[i];
        metrics_error(&self.name, &self.sources[i].name(), e.kind());
        if s.last_error != Some(e.kind()) {
            tracing::warn!(zone = %self.name, source = %self.sources[i].name(), error = %e,
                "carbon source failed; planning on its last answer while fresh, else the next source");
        }
        s.last_error = Some(e.kind());
        s.failures = s.failures.saturating_add(1);
        let backoff = (FIRST_BACKOFF << s.failures.min(10)).min(secs(self.sources[i].refresh()).max(FIRST_BACKOFF));
        let asked = e.retry_after().map_or(0, secs);
        s.next_try = now + backoff.max(asked);
    }

    /// Put in force the first source's usable answer, else the constant, and
    /// record the history up to now.
    fn choose(&self, now: i64, fresh: Option<usize>) {
        let mut st = self.lock();
        let pick = (0..self.sources.len()).find_map(|i| {
            let (f, at) = st.sources[i].answer.as_ref()?;
            (now - at < secs(self.stale_after)).then(|| (i, f.clone(), *at))
        });
        st.current = match pick {
            Some((i, forecast, fetched_at)) => {
                let live = fresh == Some(i) || now - fetched_at < secs(self.sources[i].refresh());
                let s = &st.sources[i];
                let fallback =
                    if live && s.last_error.is_none() && !s.restored { Fallback::Live } else { Fallback::Kept };
                Signal { source: self.sources[i].name(), rank: i, fallback, fetched_at, forecast }
            }
            None => Self::constant_signal(&self.constant, self.sources.len(), now),
        };
        record_history(&mut st, now);
    }
}

/// Take the past intervals of the signal in force into the history (an
/// answer's measured values replace what an earlier one forecast), and drop
/// what is older than the retention.
fn record_history(st: &mut State, now: i64) {
    let f = &st.current.forecast;
    if st.current.fallback == Fallback::Constant {
        // The constant holds no knowledge of the past; keep what is known.
        return;
    }
    let past: Vec<Past> = f
        .points
        .iter()
        .filter(|p| p.at < now)
        .map(|p| Past { from: p.at, to: (p.at + f.step_s).min(now.max(p.at + 1)), g_per_kwh: p.g_per_kwh })
        .collect();
    if let (Some(first), Some(last)) = (past.first(), past.last()) {
        let (lo, hi) = (first.from, last.to);
        st.history.retain(|h| h.to <= lo || h.from >= hi);
        st.history.extend(past);
        st.history.sort_by_key(|h| h.from);
    }
    let keep_from = now - HISTORY_KEEP;
    let drop = st.history.partition_point(|p| p.to < keep_from);
    st.history.drain(..drop);
}

fn c_name(c: &crate::Constant) -> String {
    crate::Source::name(c)
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

fn metrics_error(zone: &str, source: &str, kind: &'static str) {
    metrics::counter!("greenfill_carbon_fetch_errors_total", "zone" => zone.to_owned(), "source" => source.to_owned(), "kind" => kind)
        .increment(1);
}
