//! The REST rate limit (429, then 403 after abuse) and fault injection.

use std::collections::VecDeque;
use std::time::Duration;

/// What an injected fault does to a matching request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Answer with this status and amoCRM's documented body for it (429 includes
    /// `retry_after`), without processing the request.
    Status(u16),
    /// Sleep (real time), then process normally.
    Delay(Duration),
    /// Process the request (the write happens), then never answer: the
    /// connection is held open until the client gives up, so the client is "in doubt".
    DropResponse,
}

/// A fault to inject into requests matching `method` (any, if `None`) and `path_prefix`.
#[derive(Clone, Debug)]
pub struct Fault {
    /// Only requests with this method; `None` matches every method.
    pub method: Option<http::Method>,
    /// Only requests whose path starts with this ("" matches all).
    pub path_prefix: String,
    /// What happens.
    pub kind: FaultKind,
    /// How many matching requests it affects (0: none).
    pub times: u32,
}

/// Injected faults, consumed in injection order.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    list: Vec<Fault>,
}

impl Faults {
    /// Adds a fault.
    pub fn push(&mut self, fault: Fault) {
        if fault.times > 0 {
            self.list.push(fault);
        }
    }

    /// Drops every fault not yet used up.
    pub fn clear(&mut self) {
        self.list.clear();
    }

    /// Takes one use of the first fault matching this request.
    pub fn take(&mut self, method: &http::Method, path: &str) -> Option<FaultKind> {
        let idx = self
            .list
            .iter()
            .position(|f| f.method.as_ref().is_none_or(|m| m == method) && path.starts_with(&f.path_prefix))?;
        let fault = &mut self.list[idx];
        let kind = fault.kind.clone();
        fault.times -= 1;
        if fault.times == 0 {
            self.list.remove(idx);
        }
        Some(kind)
    }
}

/// Why a REST request was refused by the limiter.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 429 with `retry_after`.
    TooMany,
    /// 403: blocked after abuse.
    Blocked,
}

/// The sliding windows.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    /// Fake-clock ms of admitted requests within the last second (the fake's
    /// clock, so tests that move it move the limit's window with it).
    admitted: VecDeque<i64>,
    /// Fake-clock ms of 429 replies within the last 60 s.
    refused: VecDeque<i64>,
    blocked: bool,
}

const WINDOW_MS: i64 = 1_000;
const ABUSE_WINDOW_MS: i64 = 60_000;

impl Limits {
    /// Admits or refuses a REST request arriving at `fake_ms` on the fake's clock.
    pub fn check(&mut self, fake_ms: i64, per_sec: u32, abuse_threshold: u32) -> Result<(), Refusal> {
        if self.blocked {
            return Err(Refusal::Blocked);
        }
        while let Some(front) = self.admitted.front() {
            if fake_ms - *front >= WINDOW_MS {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
        if self.admitted.len() < per_sec as usize {
            self.admitted.push_back(fake_ms);
            return Ok(());
        }
        while let Some(front) = self.refused.front() {
            if fake_ms - *front > ABUSE_WINDOW_MS {
                self.refused.pop_front();
            } else {
                break;
            }
        }
        self.refused.push_back(fake_ms);
        if self.refused.len() >= abuse_threshold.max(1) as usize {
            self.blocked = true;
        }
        Err(Refusal::TooMany)
    }

    /// Clears the block and both windows.
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eighth_request_in_a_second_is_refused_and_abuse_blocks() {
        let mut l = Limits::default();
        for _ in 0..7 {
            assert_eq!(l.check(0, 7, 3), Ok(()));
        }
        assert_eq!(l.check(0, 7, 3), Err(Refusal::TooMany));
        // A second later the window is free again.
        for _ in 0..7 {
            assert_eq!(l.check(WINDOW_MS, 7, 3), Ok(()));
        }
        assert_eq!(l.check(WINDOW_MS, 7, 3), Err(Refusal::TooMany));
        assert_eq!(l.check(WINDOW_MS + 10, 7, 3), Err(Refusal::TooMany));
        // The third 429 within 60 s blocks everything.
        assert_eq!(l.check(WINDOW_MS * 5, 7, 3), Err(Refusal::Blocked));
        l.reset();
        assert_eq!(l.check(WINDOW_MS * 5, 7, 3), Ok(()));
    }

    #[test]
    fn faults_are_consumed() {
        let mut f = Faults::default();
        f.push(Fault {
            method: Some(http::Method::POST),
            path_prefix: "/api/v4/leads".into(),
            kind: FaultKind::Status(503),
            times: 2,
        });
        assert_eq!(f.take(&http::Method::GET, "/api/v4/leads"), None);
        assert_eq!(f.take(&http::Method::POST, "/api/v4/leads/complex"), Some(FaultKind::Status(503)));
        assert!(f.take(&http::Method::POST, "/api/v4/leads").is_some());
        assert_eq!(f.take(&http::Method::POST, "/api/v4/leads"), None);
    }
}
