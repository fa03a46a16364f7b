//! Derives an account's operator-owned status (phase, ConfigValid,
//! ConnectorAvailable, Ready) from what was observed. Pure.

use crate::conditions::Verdict;
use crmessenger_api::account::AccountPhase;
use crmessenger_api::common::conditions::find;
use crmessenger_api::common::conditions::{CONNECTOR_AVAILABLE, LOGGED_IN, MESSENGER_CONNECTED, READY, login};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

/// What the status is computed from.
#[derive(Clone, Copy)]
pub struct Observed<'a> {
    /// The connector's Lease.
    pub lease: Option<&'a Lease>,
    /// The config hash the connector reports running.
    pub running_hash: Option<&'a str>,
    /// The config hash the operator wants running (None when the config is invalid).
    pub desired_hash: Option<&'a str>,
    /// The connector-owned conditions.
    pub connector_conditions: &'a [Condition],
    /// `spec.suspend`.
    pub suspended: bool,
    /// Now.
    pub now: Timestamp,
    /// Heartbeats older than this are stale.
    pub heartbeat_timeout: Duration,
}

/// ConnectorAvailable: a fresh heartbeat from a connector running the desired config.
pub fn connector_available(o: &Observed) -> Verdict {
    if o.suspended {
        return Verdict::no(CONNECTOR_AVAILABLE, "Suspended", "spec.suspend is true: the connector is stopped");
    }
    let spec = o.lease.and_then(|l| l.spec.as_ref());
    let renewed = spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    let holder = spec.and_then(|s| s.holder_identity.clone()).unwrap_or_default();
    let Some(renewed) = renewed.filter(|_| !holder.is_empty()) else {
        return Verdict::no(CONNECTOR_AVAILABLE, "NoHeartbeat", "the connector has not renewed its Lease yet");
    };
    let age = o.now.duration_since(renewed);
    if age.as_secs_f64() > o.heartbeat_timeout.as_secs_f64() {
        return Verdict::no(
            CONNECTOR_AVAILABLE,
            "HeartbeatStale",
            format!(
                "the connector ({holder}) last renewed its Lease at {renewed}, more than {}s ago",
                o.heartbeat_timeout.as_secs()
            ),
        );
    }
    match (o.desired_hash, o.running_hash) {
        (Some(desired), Some(running)) if desired != running => Verdict::no(
            CONNECTOR_AVAILABLE,
            "ConfigOutdated",
            format!("the connector runs config {running}; config {desired} is rolling out"),
        ),
        (Some(desired), None) => Verdict::no(
            CONNECTOR_AVAILABLE,
            "ConfigOutdated",
            format!("the connector has not reported its config yet; config {desired} is rolling out"),
        ),
        _ => Verdict::yes(CONNECTOR_AVAILABLE, "Heartbeat", format!("{holder} renewed its Lease at {renewed}")),
    }
}

/// Ready: the whole chain works — config valid, connector available, logged in,
/// connected. A stale connector's own conditions cannot make it true, because
/// ConnectorAvailable gates them.
pub fn ready(config_valid: &Verdict, available: &Verdict, o: &Observed) -> Verdict {
    if !config_valid.ok {
        return Verdict::no(READY, &config_valid.reason, config_valid.message.clone());
    }
    if !available.ok {
        return Verdict::no(READY, &available.reason, available.message.clone());
    }
    for (type_, fallback) in [(LOGGED_IN, "NotLoggedIn"), (MESSENGER_CONNECTED, "MessengerDisconnected")] {
        match find(o.connector_conditions, type_) {
            Some(c) if c.status == "True" => {}
            Some(c) => return Verdict::no(READY, &c.reason, c.message.clone()),
            None => return Verdict::no(READY, fallback, format!("the connector has not reported {type_} yet")),
        }
    }
    Verdict::yes(READY, "Running", "signed in, connected and syncing")
}

/// The one-word phase shown by `kubectl get`.
pub fn phase(
    config_valid: &Verdict,
    available: &Verdict,
    ready: &Verdict,
    suspended: bool,
    deleting: bool,
) -> AccountPhase {
    if deleting {
        AccountPhase::Terminating
    } else if suspended {
        AccountPhase::Suspended
    } else if ready.ok {
        AccountPhase::Running
    } else if !config_valid.ok {
        AccountPhase::Degraded
    } else if !available.ok {
        match available.reason.as_str() {
            "NoHeartbeat" | "ConfigOutdated" => AccountPhase::Pending,
            _ => AccountPhase::Degraded,
        }
    } else if ready.reason == "NotLoggedIn" || login::WAITING_FOR_A_PERSON.contains(&ready.reason.as_str()) {
        AccountPhase::LoggingIn
    } else if ready.reason == login::STARTING {
        AccountPhase::Pending
    } else {
        AccountPhase::Degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmessenger_api::common::conditions::CONFIG_VALID;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use serde_json::json;

    fn lease(holder: &str, renewed: Timestamp) -> Lease {
        let mut l: Lease =
            serde_json::from_value(json!({ "metadata": { "name": "l" }, "spec": { "holderIdentity": holder } }))
                .unwrap();
        l.spec.as_mut().unwrap().renew_time = Some(MicroTime(renewed));
        l
    }

    fn cond(type_: &str, status: &str, reason: &str) -> Condition {
        serde_json::from_value(json!({ "type": type_, "status": status, "reason": reason, "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" })).unwrap()
    }

    fn observed<'a>(lease: Option<&'a Lease>, conditions: &'a [Condition], now: Timestamp) -> Observed<'a> {
        Observed {
            lease,
            running_hash: Some("h1"),
            desired_hash: Some("h1"),
            connector_conditions: conditions,
            suspended: false,
            now,
            heartbeat_timeout: Duration::from_secs(45),
        }
    }

    #[test]
    fn a_stale_heartbeat_overrides_the_connectors_own_conditions() {
        let now = Timestamp::from_second(10_000).unwrap();
        let good = vec![cond(LOGGED_IN, "True", "LoggedIn"), cond(MESSENGER_CONNECTED, "True", "Connected")];
        let valid = Verdict::yes(CONFIG_VALID, "Valid", "");
        let fresh = lease("pod-0", Timestamp::from_second(9_990).unwrap());
        let o = observed(Some(&fresh), &good, now);
        let available = connector_available(&o);
        assert!(ready(&valid, &available, &o).ok);
        assert_eq!(phase(&valid, &available, &ready(&valid, &available, &o), false, false), AccountPhase::Running);

        let stale = lease("pod-0", Timestamp::from_second(9_000).unwrap());
        let o = observed(Some(&stale), &good, now);
        let available = connector_available(&o);
        let r = ready(&valid, &available, &o);
        assert!(!available.ok && !r.ok);
        assert_eq!(r.reason, "HeartbeatStale");
        assert_eq!(phase(&valid, &available, &r, false, false), AccountPhase::Degraded);
    }

    #[test]
    fn an_old_config_is_not_available_and_login_is_waited_for() {
        let now = Timestamp::from_second(10_000).unwrap();
        let fresh = lease("pod-0", Timestamp::from_second(9_995).unwrap());
        let valid = Verdict::yes(CONFIG_VALID, "Valid", "");
        let mut o = observed(Some(&fresh), &[], now);
        o.desired_hash = Some("h2");
        assert_eq!(connector_available(&o).reason, "ConfigOutdated");
        o.desired_hash = Some("h1");
        // Each reason the connector reports while a person has to act: LoggingIn.
        let phase_for = |reason: &str| {
            let conditions = vec![cond(LOGGED_IN, "False", reason)];
            let o = Observed { connector_conditions: &conditions, ..o };
            let available = connector_available(&o);
            let r = ready(&valid, &available, &o);
            assert_eq!((r.ok, r.reason.as_str()), (false, reason));
            phase(&valid, &available, &r, false, false)
        };
        for reason in login::WAITING_FOR_A_PERSON {
            assert_eq!(phase_for(reason), AccountPhase::LoggingIn, "{reason}");
        }
        assert_eq!(phase_for(login::STARTING), AccountPhase::Pending);
    }

    #[test]
    fn suspended_and_deleting_win() {
        let now = Timestamp::from_second(10_000).unwrap();
        let mut o = observed(None, &[], now);
        o.suspended = true;
        let valid = Verdict::yes(CONFIG_VALID, "Valid", "");
        let available = connector_available(&o);
        assert_eq!(available.reason, "Suspended");
        let r = ready(&valid, &available, &o);
        assert_eq!(phase(&valid, &available, &r, true, false), AccountPhase::Suspended);
        assert_eq!(phase(&valid, &available, &r, true, true), AccountPhase::Terminating);
    }
}
