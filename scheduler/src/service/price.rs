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

/// Source `key` (`price.sources[0]`, `price.zones.PJM.sources[1]`).
fn build(cfg: &PriceDecl, key: &str, decl: &PriceSourceDecl) -> anyhow::Result<Box<dyn PriceSource>> {
    let e = |e: greenfill_carbon::SourceError| anyhow::anyhow!("{key}: {e}");
    Ok(match decl {
        PriceSourceDecl::EnergyCharts { zone, base_url } => Box::new(
            EnergyChartsPrice::new(base_url.as_deref().unwrap_or("https://api.energy-charts.info"), zone, cfg.timeout)
                .map_err(e)?,
        ),
        PriceSourceDecl::Entsoe { zone, token_file, token_env, base_url } => {
            let token = match (token_file, token_env) {
                (Some(f), _) => std::fs::read_to_string(f)
                    .map_err(|err| anyhow::anyhow!("{key}.token_file = {}: {err}", f.display()))?,
                (None, Some(v)) => {
                    std::env::var(v).map_err(|_| anyhow::anyhow!("{key}.token_env = {v:?}: the variable is not set"))?
                }
                (None, None) => anyhow::bail!("{key}: entsoe needs token_file or token_env"),
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
    /// The feed of `[price]`'s own sources.
    pub fn new(cfg: &PriceDecl) -> anyhow::Result<PriceFeed> {
        Self::of(cfg, "price", &cfg.sources)
    }

    /// The feed of `decls`, named `key` in errors (`price.zones.PJM`).
    fn of(cfg: &PriceDecl, key: &str, decls: &[PriceSourceDecl]) -> anyhow::Result<PriceFeed> {
        let sources = decls
            .iter()
            .enumerate()
            .map(|(i, d)| build(cfg, &format!("{key}.sources[{i}]"), d))
            .collect::<anyhow::Result<Vec<_>>>()?;
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

/// The fleet's prices: `[price]`'s feed, and one per `[price.zones]` zone
/// for the pools in that (carbon) zone.
#[derive(Debug)]
pub struct Market {
    pub default: PriceFeed,
    zones: std::collections::BTreeMap<String, PriceFeed>,
}

impl Market {
    pub fn new(cfg: &PriceDecl) -> anyhow::Result<Market> {
        let zones = cfg
            .zones
            .iter()
            .map(|(name, z)| Ok((name.clone(), PriceFeed::of(cfg, &format!("price.zones.{name}"), &z.sources)?)))
            .collect::<anyhow::Result<_>>()?;
        Ok(Market { default: PriceFeed::new(cfg)?, zones })
    }

    /// The feed of carbon zone `zone`'s pools: its own, else `[price]`'s.
    pub fn of_zone(&self, zone: &str) -> &PriceFeed {
        self.zones.get(zone).unwrap_or(&self.default)
    }

    /// A zone's own feed, if it has one.
    pub fn own(&self, zone: &str) -> Option<&PriceFeed> {
        self.zones.get(zone)
    }

    /// Refresh every feed.
    pub async fn refresh(&self, now: i64) {
        self.default.refresh(now).await;
        for feed in self.zones.values() {
            feed.refresh(now).await;
        }
    }
}

/// Refresh every `price.refresh` until shutdown (the first ask is made
/// before the service serves).
pub async fn run(st: Arc<super::State>) {
    let Some(market) = st.price.as_ref() else { return };
    let every = market.default.refresh.max(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            () = st.shutdown.cancelled() => return,
            () = greenfill_runtime::clock::sleep(every) => {}
        }
        market.refresh(super::now()).await;
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

    #[tokio::test]
    async fn a_pool_in_a_priced_zone_pays_its_zones_price_and_the_others_the_default() {
        let text = "sources = [{ kind = \"constant\", value = 50 }]\n\
                    [zones.PJM]\nsources = [{ kind = \"constant\", value = 10 }]\n";
        let market = Market::new(&toml::from_str::<PriceDecl>(text).unwrap()).unwrap();
        let now = 1_796_198_400;
        market.refresh(now).await;
        assert_eq!(market.of_zone("PJM").slots(now, 3600, 1), Some(vec![10.0]));
        assert_eq!(market.of_zone("CISO").slots(now, 3600, 1), Some(vec![50.0]));
        assert!(market.own("CISO").is_none() && market.own("PJM").is_some());
    }
}
