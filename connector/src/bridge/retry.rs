//! The circuit breaker, on the shared `Clock`; the backoff is the project's one
//! (`crmessenger_crm::backoff`).

pub use crmessenger_crm::backoff::backoff;
use std::time::Duration;

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

/// The policy's send limits toward the messenger: at most `per_minute` sends in
/// any 60 s, and `per_chat` to any one chat.
#[derive(Debug, Clone)]
pub struct SendRate {
    per_minute: usize,
    per_chat: usize,
    all: std::collections::VecDeque<i64>,
    chats: std::collections::HashMap<String, std::collections::VecDeque<i64>>,
}

const MINUTE_MS: i64 = 60_000;

impl SendRate {
    /// Limits of at least one send a minute each.
    pub fn new(per_minute: i32, per_chat: i32) -> Self {
        Self {
            per_minute: per_minute.max(1) as usize,
            per_chat: per_chat.max(1) as usize,
            all: Default::default(),
            chats: Default::default(),
        }
    }

    /// When a send to `chat` may go: `now_ms` or later.
    pub fn next_slot(&mut self, chat: &str, now_ms: i64) -> i64 {
        let horizon = now_ms - MINUTE_MS;
        while self.all.front().is_some_and(|t| *t <= horizon) {
            self.all.pop_front();
        }
        self.chats.retain(|_, q| {
            while q.front().is_some_and(|t| *t <= horizon) {
                q.pop_front();
            }
            !q.is_empty()
        });
        let mut slot = now_ms;
        if self.all.len() >= self.per_minute {
            slot = slot.max(self.all[self.all.len() - self.per_minute] + MINUTE_MS);
        }
        if let Some(q) = self.chats.get(chat)
            && q.len() >= self.per_chat
        {
            slot = slot.max(q[q.len() - self.per_chat] + MINUTE_MS);
        }
        slot
    }

    /// A send to `chat` went out at `now_ms`.
    pub fn record(&mut self, chat: &str, now_ms: i64) {
        self.all.push_back(now_ms);
        self.chats.entry(chat.to_string()).or_default().push_back(now_ms);
    }
}

#[cfg(test)]
mod send_rate_tests {
    use super::SendRate;

    #[test]
    fn sends_wait_for_the_minute_window() {
        let mut r = SendRate::new(3, 2);
        assert_eq!(r.next_slot("a", 0), 0);
        r.record("a", 0);
        r.record("a", 1_000);
        // The chat's limit: the third send to "a" waits until the first leaves the window.
        assert_eq!(r.next_slot("a", 2_000), 60_000);
        assert_eq!(r.next_slot("b", 2_000), 2_000);
        r.record("b", 2_000);
        // The account's limit: a fourth send anywhere waits too.
        assert_eq!(r.next_slot("c", 3_000), 60_000);
        assert_eq!(r.next_slot("c", 60_000), 60_000);
        assert_eq!(r.next_slot("a", 61_000), 61_000);
    }
}
