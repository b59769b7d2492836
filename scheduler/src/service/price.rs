//! The fleet's day-ahead electricity price (`[price]`), for plans whose
//! `[objective]` weighs the bill. A task asks the source every
//! `price.refresh` for today and tomorrow (the day-ahead auction publishes
//! tomorrow's prices around noon), the sources in order until one answers
//! (one that sent `Retry-After` is skipped until then); when none does, the
//! last good answer is kept.
//! Until a first answer arrives the plan weighs carbon alone, and says so in
//! the log.

use super::config::{PriceDecl, PriceSourceDecl};
use greenfill_carbon::price::{ConstantPrice, EnergyChartsPrice, EntsoePrice, FilePrice, PriceSource, Prices};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct PriceFeed {
    /// In order of preference.
    sources: Vec<Box<dyn PriceSource>>,
    /// Per source: not asked before this (its `Retry-After`).
    not_before: Mutex<Vec<i64>>,
    last: Mutex<Option<Prices>>,
    refresh: std::time::Duration,
}

fn build(cfg: &PriceDecl, i: usize, decl: &PriceSourceDecl) -> anyhow::Result<Box<dyn PriceSource>> {
    let e = |e: greenfill_carbon::SourceError| anyhow::anyhow!("price.sources[{i}]: {e}");
    Ok(match decl {
        PriceSourceDecl::EnergyCharts { zone, base_url } => Box::new(
            EnergyChartsPrice::new(base_url.as_deref().unwrap_or("https://api.energy-charts.info"), zone, cfg.timeout)
                .map_err(e)?,
        ),
        PriceSourceDecl::Entsoe { zone, token_file, token_env, base_url } => {
            let token = match (token_file, token_env) {
                (Some(f), _) => std::fs::read_to_string(f)
                    .map_err(|err| anyhow::anyhow!("price.sources[{i}].token_file = {}: {err}", f.display()))?,
                (None, Some(v)) => std::env::var(v)
                    .map_err(|_| anyhow::anyhow!("price.sources[{i}].token_env = {v:?}: the variable is not set"))?,
                (None, None) => anyhow::bail!("price.sources[{i}]: entsoe needs token_file or token_env"),
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
    })
}

impl PriceFeed {
    pub fn new(cfg: &PriceDecl) -> anyhow::Result<PriceFeed> {
        let sources =
            cfg.sources.iter().enumerate().map(|(i, d)| build(cfg, i, d)).collect::<anyhow::Result<Vec<_>>>()?;
        Ok(PriceFeed {
            not_before: Mutex::new(vec![i64::MIN; sources.len()]),
            sources,
            last: Mutex::new(None),
            refresh: cfg.refresh,
        })
    }

    /// Ask for today and tomorrow (UTC days around `now`), each source in
    /// turn until one answers, skipping one whose `Retry-After` has not
    /// passed; keep the answer, or log why there is none and keep the last.
    /// Returns the name of the source that answered.
    pub async fn refresh(&self, now: i64) -> Option<String> {
        let from = now - now.rem_euclid(86_400);
        for (i, src) in self.sources.iter().enumerate() {
            if self.not_before.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i] > now {
                continue;
            }
            match src.fetch(from, from + 2 * 86_400).await {
                Ok(p) => {
                    tracing::debug!(source = %src.name(), points = p.points.len(), "day-ahead prices fetched");
                    *self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(p);
                    return Some(src.name());
                }
                Err(err) => {
                    if let Some(wait) = err.retry_after() {
                        let until = now + i64::try_from(wait.as_secs()).unwrap_or(i64::MAX / 2);
                        self.not_before.lock().unwrap_or_else(std::sync::PoisonError::into_inner)[i] = until;
                    }
                    tracing::warn!(source = %src.name(), error = %err, "day-ahead prices not fetched from this source");
                }
            }
        }
        tracing::warn!("no price source answered; the last answer is kept");
        None
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

#[cfg(test)]
mod tests {
    use super::*;
    use greenfill_carbon::fixture::{Fixture, Reply, bodies};

    #[tokio::test]
    async fn a_source_that_asks_to_wait_is_skipped_until_then_and_the_next_answers() {
        let fx = Fixture::start().await.unwrap();
        fx.reply("/price", Reply::json(429, r#"{"message":"slow down"}"#).header("retry-after", "120"));
        let text = format!(
            "[[sources]]\nkind = \"energy-charts\"\nzone = \"DE-LU\"\nbase_url = \"{}\"\n\
             [[sources]]\nkind = \"constant\"\nvalue = 42\n",
            fx.url()
        );
        let feed = PriceFeed::new(&toml::from_str::<PriceDecl>(&text).unwrap()).unwrap();
        let now = 1_796_198_400;
        assert_eq!(feed.slots(now, 3600, 1), None, "nothing before the first answer");
        assert_eq!(feed.refresh(now).await.as_deref(), Some("constant:42"));
        assert_eq!(feed.slots(now, 3600, 2), Some(vec![42.0, 42.0]));
        assert_eq!(feed.refresh(now + 60).await.as_deref(), Some("constant:42"));
        assert_eq!(fx.seen().len(), 1, "not asked again within its Retry-After");
        let day: Vec<i64> = (0..48).map(|h| now - now.rem_euclid(86_400) + 3600 * h).collect();
        fx.reply("/price", Reply::json(200, bodies::energy_charts_price(&day, &vec![Some(-3.0); 48], "EUR / MWh")));
        assert_eq!(feed.refresh(now + 121).await.as_deref(), Some("energy-charts:DE-LU"));
        assert_eq!(feed.slots(now, 3600, 1), Some(vec![-3.0]));
        // Every source down: the last answer stays.
        let mut fx = fx;
        fx.stop().await;
        let only = format!("[[sources]]\nkind = \"energy-charts\"\nzone = \"DE-LU\"\nbase_url = \"{}\"\n", fx.url());
        let lone = PriceFeed::new(&toml::from_str::<PriceDecl>(&only).unwrap()).unwrap();
        assert_eq!(lone.refresh(now).await, None);
        assert_eq!(lone.slots(now, 3600, 1), None);
        assert_eq!(feed.refresh(now + 200).await.as_deref(), Some("constant:42"));
    }
}
