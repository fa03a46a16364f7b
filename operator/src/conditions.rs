//! Building conditions whose `lastTransitionTime` only moves when the status flips.

use crmessenger_api::common::conditions::upsert;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition computed by a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Condition type.
    pub type_: &'static str,
    /// True or False.
    pub ok: bool,
    /// CamelCase reason a person can act on.
    pub reason: String,
    /// One sentence saying what is wrong or right.
    pub message: String,
}

impl Verdict {
    /// A True condition.
    pub fn yes(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self { type_, ok: true, reason: reason.into(), message: message.into() }
    }
    /// A False condition.
    pub fn no(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self { type_, ok: false, reason: reason.into(), message: message.into() }
    }
}

/// Merges `verdicts` into the existing conditions (keeping transition times where the
/// status did not change) and returns only the conditions of the verdicts' types —
/// what this field manager applies.
pub fn merge(existing: &[Condition], verdicts: &[Verdict], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    let mut all = existing.to_vec();
    for v in verdicts {
        upsert(
            &mut all,
            Condition {
                type_: v.type_.to_string(),
                status: if v.ok { "True" } else { "False" }.to_string(),
                reason: v.reason.clone(),
                message: v.message.clone(),
                observed_generation: generation,
                last_transition_time: Time(now),
            },
        );
    }
    all.retain(|c| verdicts.iter().any(|v| v.type_ == c.type_));
    all
}

/// Whether `new` says the same as the matching conditions in `existing` (ignoring
/// transition times): used to skip status writes that would change nothing.
pub fn unchanged(existing: &[Condition], new: &[Condition]) -> bool {
    new.iter().all(|c| {
        existing.iter().any(|o| {
            o.type_ == c.type_
                && o.status == c.status
                && o.reason == c.reason
                && o.message == c.message
                && o.observed_generation == c.observed_generation
        })
    })
}

/// Whether `verdict` is a failure the existing conditions do not already report
/// (not False, or False for another reason): when a Warning Event is due, so a
/// failure is announced once, not at every reconcile.
pub fn newly_failed(existing: &[Condition], verdict: &Verdict) -> bool {
    !verdict.ok
        && !crmessenger_api::common::conditions::find(existing, verdict.type_)
            .is_some_and(|c| c.status == "False" && c.reason == verdict.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_only_own_types_and_transition_times() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = merge(&[], &[Verdict::yes("Ready", "Running", "ok")], Some(1), t0);
        let mut existing = first.clone();
        existing.push(Condition {
            type_: "LoggedIn".into(),
            status: "True".into(),
            reason: "x".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(t0),
        });
        let again = merge(&existing, &[Verdict::yes("Ready", "Running", "still ok")], Some(2), t1);
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].last_transition_time.0, t0);
        assert_eq!(again[0].observed_generation, Some(2));
        let flipped = merge(&existing, &[Verdict::no("Ready", "Broken", "no")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time.0, t1);
    }
}
