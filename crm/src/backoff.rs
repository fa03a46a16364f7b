//! The one backoff every retry loop of the project uses (the bridge's deliveries
//! and sends, the messenger adapters, the operator's failed reconciles).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Exponential backoff: `base × 2^failures`, capped at `cap`, with ±20% jitter so
/// that retries of many objects or connectors do not line up.
pub fn backoff(failures: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.as_millis() as f64 * 2f64.powi(failures.min(20) as i32);
    let capped = exp.min(cap.as_millis() as f64);
    let jitter = 0.8 + 0.4 * unit_random();
    Duration::from_millis((capped * jitter) as u64)
}

/// A number in [0, 1]: splitmix64 over the clock and a counter (jitter needs no
/// more than that).
fn unit_random() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos.wrapping_add(COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let (base, cap) = (Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            let first = backoff(0, base, cap);
            assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200), "{first:?}");
            let fourth = backoff(3, base, cap);
            assert!(fourth >= Duration::from_millis(6400) && fourth <= Duration::from_millis(9600), "{fourth:?}");
            assert!(backoff(30, base, cap) <= Duration::from_secs(72));
        }
    }
}
