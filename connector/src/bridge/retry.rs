//! Backoff with jitter and a circuit breaker, both on the shared `Clock`.

use std::time::Duration;

/// Exponential backoff: `base × 2^n`, capped, with ±20% jitter.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.as_millis() as f64 * 2f64.powi(failures.min(20) as i32);
    let capped = exp.min(cap.as_millis() as f64);
    let jitter = 0.8 + 0.4 * unit_random();
    Duration::from_millis((capped * jitter) as u64)
}

fn unit_random() -> f64 {
    let b = uuid::Uuid::new_v4().into_bytes();
    f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])) / f64::from(u32::MAX)
}

/// Holds CRM work back during an outage: after `threshold` consecutive failures
/// it opens for a cooldown that doubles on every failed probe (up to `max_cooldown`);
/// once the cooldown passes one probe goes through, and a success closes it.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    base_cooldown: Duration,
    max_cooldown: Duration,
    failures: u32,
    opens: u32,
    open_until_ms: Option<i64>,
}

impl Breaker {
    /// A breaker opening after `threshold` failures.
    pub fn new(threshold: u32, base_cooldown: Duration, max_cooldown: Duration) -> Self {
        Self { threshold, base_cooldown, max_cooldown, failures: 0, opens: 0, open_until_ms: None }
    }

    /// Whether work may go at `now_ms` (closed, or open with its cooldown over).
    pub fn allows(&self, now_ms: i64) -> bool {
        self.open_until_ms.is_none_or(|until| now_ms >= until)
    }

    /// Whether it is open (deliveries held back).
    pub fn is_open(&self) -> bool {
        self.open_until_ms.is_some()
    }

    /// When the next probe may go, while open.
    pub fn open_until_ms(&self) -> Option<i64> {
        self.open_until_ms
    }

    /// A call succeeded.
    pub fn success(&mut self) {
        self.failures = 0;
        self.opens = 0;
        self.open_until_ms = None;
    }

    /// A call failed at `now_ms`.
    pub fn failure(&mut self, now_ms: i64) {
        self.failures += 1;
        if self.open_until_ms.is_some() || self.failures >= self.threshold {
            self.opens += 1;
            let cooldown = self.base_cooldown.saturating_mul(2u32.saturating_pow(self.opens.saturating_sub(1).min(16)));
            let cooldown = cooldown.min(self.max_cooldown);
            self.open_until_ms = Some(now_ms + cooldown.as_millis() as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        let first = backoff(0, base, cap);
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200), "{first:?}");
        let fourth = backoff(3, base, cap);
        assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600), "{fourth:?}");
        assert!(backoff(30, base, cap) <= Duration::from_secs(72));
    }

    #[test]
    fn breaker_opens_probes_and_closes() {
        let mut b = Breaker::new(3, Duration::from_secs(5), Duration::from_secs(60));
        b.failure(0);
        b.failure(0);
        assert!(b.allows(0) && !b.is_open());
        b.failure(0);
        assert!(b.is_open() && !b.allows(4_999) && b.allows(5_000));
        // A failed probe doubles the cooldown.
        b.failure(5_000);
        assert!(!b.allows(14_999) && b.allows(15_000));
        b.success();
        assert!(!b.is_open() && b.allows(15_000));
    }
}
