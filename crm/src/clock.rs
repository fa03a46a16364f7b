//! One clock for everything time-based (budgets, backoff, token expiry, escalation),
//! so tests can move time for the code and the fakes together.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Wall-clock time in milliseconds since the Unix epoch, and sleeping.
#[async_trait::async_trait]
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
    /// Waits for `d` of this clock's time.
    async fn sleep(&self, d: Duration);
    /// Now, in whole seconds since the Unix epoch.
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait::async_trait]
impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        jiff::Timestamp::now().as_millisecond()
    }
    async fn sleep(&self, d: Duration) {
        tokio::time::sleep(d).await
    }
}

/// The system clock shifted by an offset that tests can move forward. Sleeping
/// still takes real time, minus any jump made while sleeping.
#[derive(Debug, Default, Clone)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicI64>,
}

impl OffsetClock {
    /// Moves this clock (and every clone of it) forward by `d`.
    pub fn advance(&self, d: Duration) {
        self.offset_ms.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Clock for OffsetClock {
    fn now_ms(&self) -> i64 {
        SystemClock.now_ms() + self.offset_ms.load(Ordering::SeqCst)
    }
    async fn sleep(&self, d: Duration) {
        let until = self.now_ms() + d.as_millis() as i64;
        loop {
            let left = until - self.now_ms();
            if left <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(left.min(50) as u64)).await;
        }
    }
}
