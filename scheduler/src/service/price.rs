//! The fleet's day-ahead electricity price (`[price]`), for plans whose
//! `[objective]` weighs the bill. A task asks the source every
//! `price.refresh` for today and tomorrow (the day-ahead auction publishes
//! tomorrow's prices around noon); a failed ask keeps the last good answer.
//! Until a first answer arrives the plan weighs carbon alone, and says so in
//! the log.

use super::config::{PriceDecl, PriceSourceDecl};
use greenfill_carbon::price::{ConstantPrice, EnergyChartsPrice, EntsoePrice, FilePrice, PriceSource, Prices};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct PriceFeed {
    source: Box<dyn PriceSource>,
    last: Mutex<Option<Prices>>,
    refresh: std::time::Duration,
}

impl PriceFeed {
    pub fn new(cfg: &PriceDecl) -> anyhow::Result<PriceFeed> {
        let e = |e: greenfill_carbon::SourceError| anyhow::anyhow!("price.source: {e}");
        let source: Box<dyn PriceSource> = match &cfg.source {
            PriceSourceDecl::EnergyCharts { zone, base_url } => Box::new(
                EnergyChartsPrice::new(
                    base_url.as_deref().unwrap_or("https://api.energy-charts.info"),
                    zone,
                    cfg.timeout,
                )
                .map_err(e)?,
            ),
            PriceSourceDecl::Entsoe { zone, token_file, token_env, base_url } => {
                let token = match (token_file, token_env) {
                    (Some(f), _) => std::fs::read_to_string(f)
                        .map_err(|err| anyhow::anyhow!("price.source.token_file = {}: {err}", f.display()))?,
                    (None, Some(v)) => std::env::var(v)
                        .map_err(|_| anyhow::anyhow!("price.source.token_env = {v:?}: the variable is not set"))?,
                    (None, None) => anyhow::bail!("price.source: entsoe needs token_file or token_env"),
                };
                Box::new(
                    EntsoePrice::new(
                        base_url.as_deref().unwrap_or("https://web-api.tp.entsoe.eu/api"),
                        zone,
                        token.trim(),
                        cfg.timeout,
                    )
                    .map_err(e)?,
                )
            }
            PriceSourceDecl::File { path } => Box::new(FilePrice::load(path, &cfg.currency).map_err(e)?),
            PriceSourceDecl::Constant { value } => {
                Box::new(ConstantPrice { per_mwh: *value, currency: cfg.currency.clone() })
            }
        };
        Ok(PriceFeed { source, last: Mutex::new(None), refresh: cfg.refresh })
    }

    /// Ask for today and tomorrow (UTC days around `now`); keep the answer,
    /// or log why there is none and keep the last.
    pub async fn refresh(&self, now: i64) {
        let from = now - now.rem_euclid(86_400);
        match self.source.fetch(from, from + 2 * 86_400).await {
            Ok(p) => {
                tracing::debug!(source = %self.source.name(), points = p.points.len(), "day-ahead prices fetched");
                *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(p);
            }
            Err(err) => {
                tracing::warn!(source = %self.source.name(), error = %err, "day-ahead prices not fetched; the last answer is kept")
            }
        }
    }

    /// The mean price per planning slot, or `None` before any answer.
    pub fn slots(&self, start: i64, slot_s: i64, slots: usize) -> Option<Vec<f64>> {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.as_ref().map(|p| p.slot_means(start, slot_s, slots))
    }

    /// The mean price over `[from, to)` and its currency (a job's run).
    pub fn mean(&self, from: i64, to: i64) -> Option<(f64, String)> {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.as_ref().map(|p| (p.slot_means(from, (to - from).max(1), 1)[0], p.currency.clone()))
    }

    /// The price in force at `t` and its currency, for the plan's record.
    pub fn at(&self, t: i64) -> Option<(f64, String)> {
        let last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        last.as_ref().map(|p| (p.at(t), p.currency.clone()))
    }
}

/// Refresh every `price.refresh` until shutdown (the first ask is made
/// before the service serves).
pub async fn run(st: Arc<super::State>) {
    let Some(feed) = st.price.as_ref() else { return };
    let every = feed.refresh.max(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = st.shutdown.cancelled() => return,
            () = greenfill_runtime::clock::sleep(every) => {}
        }
        feed.refresh(super::now()).await;
    }
}
