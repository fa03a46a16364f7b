//! The one test clock: real wall-clock time plus an offset a test moves. The code
//! under test reads it through `crm::clock::Clock`, the fakes directly, so a test
//! moves time for both at once by sharing clones of one clock.

use crmessenger_crm::clock::{Clock, SystemClock};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The system clock shifted by an offset that tests move forward. It keeps running
/// with real time; clones share one offset. Sleeping still takes real time, minus
/// any jump made while sleeping.
#[derive(Clone, Debug, Default)]
pub struct TestClock {
    offset_ms: Arc<AtomicI64>,
}

impl TestClock {
    /// A clock that reads the real time until moved.
    pub fn new() -> Self {
        Self::default()
    }

    /// Milliseconds since the Unix epoch on this clock.
    pub fn now_ms(&self) -> i64 {
        SystemClock.now_ms().saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }

    /// Seconds since the Unix epoch on this clock.
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves this clock (and every clone of it) forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock so that it now reads `ms` (it keeps running from there).
    pub fn set_ms(&self, ms: i64) {
        self.offset_ms.store(ms.saturating_sub(SystemClock.now_ms()), Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Clock for TestClock {
    fn now_ms(&self) -> i64 {
        TestClock::now_ms(self)
    }

    async fn sleep(&self, d: Duration) {
        let until = TestClock::now_ms(self) + d.as_millis() as i64;
        loop {
            let left = until - TestClock::now_ms(self);
            if left <= 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(left.min(50) as u64)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_move_together_and_set_reads_back() {
        let a = TestClock::new();
        let b = a.clone();
        let before = b.now_ms();
        a.advance(Duration::from_secs(3600));
        assert!(b.now_ms() - before >= 3_600_000);
        b.set_ms(1_000_000);
        assert!((a.now_ms() - 1_000_000).abs() < 1_000, "{}", a.now_ms());
        assert_eq!(Clock::now_ms(&a) / 10_000, a.now_ms() / 10_000);
    }
}
