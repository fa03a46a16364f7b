//! One clock for everything time-based (budgets, backoff, token expiry, escalation),
//! so tests can move time for the code and the fakes together (with the test
//! clock, `crmessenger_testkit::TestClock`).

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
