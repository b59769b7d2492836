//! Bearer-token auth and per-client rate limits, as a tonic interceptor in front
//! of each service. Users and agents have separate token sets: a user token does
//! not open the agent stream and an agent token cannot submit jobs.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use tonic::{Request, Status};

#[derive(Debug, Clone)]
pub struct Guard {
    /// `None` = insecure local mode: no token needed.
    tokens: Option<Arc<HashSet<String>>>,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
    who: &'static str,
}

impl Guard {
    pub fn new(tokens: Option<&[String]>, per_second: u32, burst: u32, who: &'static str) -> Guard {
        let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
        Guard {
            tokens: tokens.map(|t| Arc::new(t.iter().cloned().collect())),
            limiter: Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))),
            who,
        }
    }

    pub fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        if let Some(tokens) = &self.tokens {
            match &token {
                Some(t) if tokens.contains(t) => {}
                Some(_) => {
                    return Err(Status::unauthenticated(format!("the bearer token is not a known {} token", self.who)));
                }
                None => {
                    return Err(Status::unauthenticated(format!(
                        "no `authorization: Bearer <token>` header; this call needs a {} token",
                        self.who
                    )));
                }
            }
        }
        let key = token.unwrap_or_else(|| req.remote_addr().map(|a| a.ip().to_string()).unwrap_or_default());
        if self.limiter.check_key(&key).is_err() {
            metrics::counter!("greenfill_rate_limited_total", "who" => self.who).increment(1);
            return Err(Status::resource_exhausted("rate limit reached for this client; retry with backoff"));
        }
        Ok(req)
    }
}
