//! Request budgets: a rate limit shared by everyone who calls one CRM integration.
//!
//! The limiter is GCRA (a token bucket kept as one number, the theoretical arrival
//! time), so its whole state per key is one integer — easy to keep in memory here
//! or in a PostgreSQL row shared by all connectors. With a burst of 1, requests are
//! spaced at least `1/rate` apart, so no window of one second ever sees more than
//! `rate` requests, which is what amoCRM's limit counts.

use crate::clock::Clock;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A limit: `rate` requests per second with a burst of `burst` requests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    /// Sustained requests per second.
    pub rate: f64,
    /// Requests that may go back to back before the spacing applies (at least 1).
    pub burst: u32,
}

impl Limit {
    /// amoCRM's REST limit: 7 requests per second per integration, with a 10%
    /// margin (requests leave ≥ 157 ms apart, so even with 100 ms of network jitter
    /// no second sees an 8th request), and no burst.
    pub const AMOCRM_REST: Limit = Limit { rate: 7.0 / 1.10, burst: 1 };

    fn interval_ms(&self) -> f64 {
        1000.0 / self.rate.max(0.001)
    }
}

/// Where budget state lives. Implementations must make `take` atomic per key.
#[async_trait]
pub trait BudgetStore: Send + Sync + std::fmt::Debug {
    /// Takes one request from `key` at `now_ms` under `limit`: `Ok(())` when it may
    /// go now, `Err(wait)` when it must wait that long first (nothing is taken).
    async fn take(&self, key: &str, limit: Limit, now_ms: i64) -> Result<Result<(), Duration>, String>;
    /// Blocks `key` until `until_ms` (the CRM said `retry_after`).
    async fn block_until(&self, key: &str, until_ms: i64) -> Result<(), String>;
    /// How long until `take` would succeed at `now_ms`, taking nothing.
    async fn peek(&self, key: &str, limit: Limit, now_ms: i64) -> Result<Duration, String>;
}

/// The GCRA step, shared by every store: given the stored theoretical arrival time
/// (ms), returns the new one when the request may go, or the wait.
pub fn gcra(tat_ms: Option<f64>, limit: Limit, now_ms: i64) -> Result<f64, Duration> {
    let now = now_ms as f64;
    let interval = limit.interval_ms();
    let tolerance = interval * f64::from(limit.burst.max(1) - 1);
    let tat = tat_ms.unwrap_or(now).max(now);
    let allowed_at = tat - tolerance;
    if allowed_at > now {
        return Err(Duration::from_micros(((allowed_at - now) * 1000.0).ceil() as u64));
    }
    Ok(tat + interval)
}

/// Budget state in this process's memory (one process, or tests).
#[derive(Debug, Default, Clone)]
pub struct MemoryBudgetStore {
    state: Arc<Mutex<HashMap<String, f64>>>,
}

#[async_trait]
impl BudgetStore for MemoryBudgetStore {
    async fn take(&self, key: &str, limit: Limit, now_ms: i64) -> Result<Result<(), Duration>, String> {
        let mut state = self.state.lock().map_err(|_| "budget state poisoned".to_string())?;
        match gcra(state.get(key).copied(), limit, now_ms) {
            Ok(tat) => {
                state.insert(key.to_string(), tat);
                Ok(Ok(()))
            }
            Err(wait) => Ok(Err(wait)),
        }
    }

    async fn block_until(&self, key: &str, until_ms: i64) -> Result<(), String> {
        let mut state = self.state.lock().map_err(|_| "budget state poisoned".to_string())?;
        let tat = state.entry(key.to_string()).or_insert(0.0);
        *tat = tat.max(until_ms as f64);
        Ok(())
    }

    async fn peek(&self, key: &str, limit: Limit, now_ms: i64) -> Result<Duration, String> {
        let state = self.state.lock().map_err(|_| "budget state poisoned".to_string())?;
        Ok(gcra(state.get(key).copied(), limit, now_ms).err().unwrap_or_default())
    }
}

/// A budget for one key (e.g. `amocrm-rest:<host>:<client id>`).
#[derive(Debug, Clone)]
pub struct Budget {
    store: Arc<dyn BudgetStore>,
    clock: Arc<dyn Clock>,
    key: String,
    limit: Arc<std::sync::RwLock<Limit>>,
}

impl Budget {
    /// A budget for `key` under `limit`, kept in `store`, timed by `clock`.
    pub fn new(store: Arc<dyn BudgetStore>, clock: Arc<dyn Clock>, key: impl Into<String>, limit: Limit) -> Self {
        Self { store, clock, key: key.into(), limit: Arc::new(std::sync::RwLock::new(limit)) }
    }

    /// An unshared in-memory budget.
    pub fn in_memory(clock: Arc<dyn Clock>, key: impl Into<String>, limit: Limit) -> Self {
        Self::new(Arc::new(MemoryBudgetStore::default()), clock, key, limit)
    }

    /// Waits until one request may be made, then takes it.
    pub async fn acquire(&self) -> Result<(), String> {
        loop {
            let limit = self.limit();
            match self.store.take(&self.key, limit, self.clock.now_ms()).await? {
                Ok(()) => return Ok(()),
                Err(wait) => self.clock.sleep(wait).await,
            }
        }
    }

    /// Waits until a request could be made, taking nothing: a caller that gathers
    /// work into one request waits here first, so what arrives meanwhile goes in
    /// the same request. Returns whether it waited.
    pub async fn ready(&self) -> Result<bool, String> {
        let mut waited = false;
        loop {
            let wait = self.store.peek(&self.key, self.limit(), self.clock.now_ms()).await?;
            if wait.is_zero() {
                return Ok(waited);
            }
            waited = true;
            self.clock.sleep(wait).await;
        }
    }

    /// Stops everyone sharing this budget for `d` (the CRM's `retry_after`).
    pub async fn pause(&self, d: Duration) -> Result<(), String> {
        // The next request may go once the theoretical arrival time is reached.
        let until = self.clock.now_ms() + d.as_millis() as i64;
        self.store.block_until(&self.key, until).await
    }

    /// The limit in force.
    pub fn limit(&self) -> Limit {
        *self.limit.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the limit for this budget and every clone of it (a new rate from
    /// the connector's config applies without a restart).
    pub fn set_limit(&self, limit: Limit) {
        *self.limit.write().unwrap_or_else(|e| e.into_inner()) = limit;
    }

    /// The key this budget is kept under.
    pub fn key(&self) -> &str {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcra_spaces_requests_and_never_exceeds_the_rate_in_any_window() {
        let limit = Limit { rate: 7.0, burst: 1 };
        let mut tat = None;
        let mut now = 0i64;
        let mut sent = Vec::new();
        while sent.len() < 50 {
            match gcra(tat, limit, now) {
                Ok(t) => {
                    tat = Some(t);
                    sent.push(now);
                }
                Err(wait) => now += wait.as_millis().max(1) as i64,
            }
        }
        for (i, &t) in sent.iter().enumerate() {
            let in_window = sent[i..].iter().take_while(|&&u| u - t < 1000).count();
            assert!(in_window <= 7, "{in_window} requests within 1 s starting at {t} ms");
        }
    }

    #[test]
    fn burst_allows_back_to_back_requests_then_spacing() {
        let limit = Limit { rate: 10.0, burst: 3 };
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, limit, 0).expect("burst"));
        }
        let wait = gcra(tat, limit, 0).expect_err("fourth must wait");
        assert_eq!(wait, Duration::from_millis(100));
    }
}

#[cfg(test)]
mod pause_tests {
    use super::*;
    use crate::clock::SystemClock;

    #[tokio::test]
    async fn pause_holds_every_holder_of_the_budget() {
        let clock = Arc::new(SystemClock);
        let budget = Budget::in_memory(clock.clone(), "k", Limit { rate: 10.0, burst: 1 });
        let other = budget.clone();
        budget.acquire().await.unwrap();
        budget.pause(Duration::from_millis(300)).await.unwrap();
        let start = clock.now_ms();
        other.acquire().await.unwrap();
        assert!(clock.now_ms() - start >= 298, "waited {} ms", clock.now_ms() - start);
    }
}
