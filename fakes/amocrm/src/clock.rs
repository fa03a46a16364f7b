//! The injectable clock: real wall-clock time plus an offset that tests move.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The fake's notion of "now". It starts at the real wall-clock time and keeps
/// running with it; [`FakeClock::advance`] and [`FakeClock::set_ms`] shift it.
/// Clones share one offset. Token and code expiry, the Chats `Date` check,
/// REST webhook retry schedules and request logging all read this clock.
#[derive(Clone, Debug, Default)]
pub struct FakeClock {
    offset_ms: Arc<AtomicI64>,
}

fn real_now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

impl FakeClock {
    /// A clock that reads the real time until moved.
    pub fn new() -> Self {
        Self::default()
    }

    /// Milliseconds since the Unix epoch on the fake clock.
    pub fn now_ms(&self) -> i64 {
        real_now_ms().saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }

    /// Seconds since the Unix epoch on the fake clock.
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock so that it now reads `ms` (it keeps running from there).
    pub fn set_ms(&self, ms: i64) {
        self.offset_ms.store(ms.saturating_sub(real_now_ms()), Ordering::SeqCst);
    }
}
