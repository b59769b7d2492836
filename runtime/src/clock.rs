//! The daemons' one clock: the wall clock in every deployment; for `greenfill sim
//! replay`, a virtual clock that only [`advance`] moves, so a week of a scenario
//! runs through the real service in minutes and in the same order every time.
//!
//! The choice is made once per process, before anything reads the time
//! ([`use_virtual`]); the code paths the replay drives read time only here
//! ([`now`], [`now_ms`], [`sleep`]), never `chrono::Utc::now` or a tokio timer.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::watch;

/// Set once: the virtual clock's time, in unix milliseconds.
static VIRTUAL: OnceLock<watch::Sender<i64>> = OnceLock::new();

/// Run this process on a virtual clock starting at `start_s` (unix seconds).
/// Errors if the clock was chosen already.
pub fn use_virtual(start_s: i64) -> Result<(), String> {
    VIRTUAL.set(watch::Sender::new(start_s.saturating_mul(1000))).map_err(|_| "the clock was chosen already".to_owned())
}

/// Whether this process runs on the virtual clock.
pub fn is_virtual() -> bool {
    VIRTUAL.get().is_some()
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    match VIRTUAL.get() {
        Some(v) => *v.borrow(),
        None => chrono_now_ms(),
    }
}

/// Unix seconds now (rounded down).
pub fn now() -> i64 {
    now_ms().div_euclid(1000)
}

fn chrono_now_ms() -> i64 {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Move the virtual clock to `to_s` (unix seconds); never backwards. Returns the
/// time it shows. Errors on the wall clock.
pub fn advance(to_s: i64) -> Result<i64, String> {
    let v = VIRTUAL.get().ok_or_else(|| "this process runs on the wall clock".to_owned())?;
    v.send_if_modified(|t| {
        let to = to_s.saturating_mul(1000);
        let moved = to > *t;
        if moved {
            *t = to;
        }
        moved
    });
    Ok(now())
}

/// Wait `d` of this process's time: a tokio sleep on the wall clock; on the
/// virtual clock, until [`advance`] has moved it `d` on.
pub async fn sleep(d: Duration) {
    let Some(v) = VIRTUAL.get() else {
        tokio::time::sleep(d).await;
        return;
    };
    let until = now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
    let mut rx = v.subscribe();
    // `wait_for` returns an error only when the sender is gone, and it is a static.
    let _ = rx.wait_for(|t| *t >= until).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the clock is per process, and the test binary's other tests
    // would see it.
    #[tokio::test]
    async fn the_virtual_clock_moves_only_forward_and_only_when_advanced() {
        let wall = now();
        assert!(wall > 1_700_000_000, "the wall clock reads {wall}");
        assert!(advance(10).is_err(), "the wall clock cannot be advanced");
        use_virtual(1_000).unwrap();
        assert!(use_virtual(5).is_err());
        assert_eq!(now(), 1_000);
        let sleeper = tokio::spawn(sleep(Duration::from_secs(60)));
        tokio::task::yield_now().await;
        assert_eq!(advance(1_030), Ok(1_030));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke 30 s into a 60 s sleep");
        assert_eq!(advance(900), Ok(1_030), "the clock went backwards");
        assert_eq!(advance(1_060), Ok(1_060));
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.unwrap().unwrap();
        assert_eq!(now_ms(), 1_060_000);
    }
}
