//! Derives a binding's status from what was observed. Pure.

use crate::conditions::{Verdict, merge};
use crate::selection;
use crmessenger_api::binding::ContactFields;
use crmessenger_api::common::conditions::READY;
use crmessenger_api::{CrmBinding, CrmBindingStatus, MessengerAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

/// The accounts a binding selects: the ones it serves (sorted) and the ones
/// another binding already owns (`name (bound by other)`).
#[derive(Debug, Default, PartialEq)]
pub struct Selection {
    /// Served by this binding.
    pub bound: Vec<String>,
    /// Selected, but bound by another binding.
    pub refused: Vec<String>,
}

/// Which of `accounts` (those of the binding's namespace) `binding` serves, given
/// every binding of the namespace.
pub fn select<'a>(
    binding: &CrmBinding,
    accounts: impl Iterator<Item = &'a MessengerAccount>,
    bindings: &[CrmBinding],
) -> Selection {
    let mut s = Selection::default();
    for account in accounts.filter(|a| selection::selects(binding, a)) {
        match selection::owner(account, bindings) {
            Some(owner) if owner.name_any() == binding.name_any() => s.bound.push(account.name_any()),
            Some(owner) => s.refused.push(format!("{} (bound by {})", account.name_any(), owner.name_any())),
            None => {}
        }
    }
    s.bound.sort();
    s
}

/// Ready: credentials valid, policy found, no account taken from another binding,
/// at least one account served.
pub fn ready(binding: &CrmBinding, credentials: &Verdict, policy_found: bool, s: &Selection) -> Verdict {
    if !credentials.ok {
        Verdict::no(READY, &credentials.reason, credentials.message.clone())
    } else if !policy_found {
        Verdict::no(
            READY,
            "PolicyNotFound",
            format!("SyncPolicy {} does not exist in this namespace", binding.spec.policy_ref.name),
        )
    } else if !s.refused.is_empty() {
        Verdict::no(
            READY,
            "AccountAlreadyBound",
            format!("already bound by another CrmBinding: {}", s.refused.join(", ")),
        )
    } else if s.bound.is_empty() {
        Verdict::no(READY, "NoAccounts", "selects no MessengerAccount in this namespace")
    } else {
        Verdict::yes(READY, "Bound", format!("serves {}", s.bound.join(", ")))
    }
}

/// What a reconcile observed, besides the conditions.
#[derive(Debug, Default)]
pub struct Observed {
    /// The accounts served.
    pub bound: Vec<String>,
    /// When the access token expires (Unix seconds).
    pub token_expires_at: Option<i64>,
    /// The contacts' identity fields found or created in the CRM.
    pub contact_fields: Option<ContactFields>,
    /// The accounts whose lead source exists in the CRM.
    pub lead_sources: Vec<String>,
}

/// The status to write, or `None` when it would change nothing.
pub fn status(
    binding: &CrmBinding,
    verdicts: &[Verdict],
    observed: Observed,
    now: jiff::Timestamp,
) -> Option<CrmBindingStatus> {
    let previous = binding.status.clone().unwrap_or_default();
    let conditions = merge(&previous.conditions, verdicts, binding.metadata.generation, now);
    let next = CrmBindingStatus {
        observed_generation: binding.metadata.generation,
        bound_account_count: Some(observed.bound.len() as i32),
        bound_accounts: observed.bound,
        token_expires_at: observed.token_expires_at.and_then(|s| jiff::Timestamp::from_second(s).ok()).map(Time),
        contact_fields: observed.contact_fields,
        lead_sources: observed.lead_sources,
        conditions,
        ..Default::default()
    };
    let same = previous.observed_generation == next.observed_generation
        && previous.bound_accounts == next.bound_accounts
        && previous.bound_account_count == next.bound_account_count
        && previous.token_expires_at == next.token_expires_at
        && previous.contact_fields == next.contact_fields
        && previous.lead_sources == next.lead_sources
        && crate::conditions::unchanged(&previous.conditions, &next.conditions);
    (!same).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmessenger_api::common::conditions::CREDENTIALS_VALID;
    use serde_json::json;

    fn binding(name: &str, created: &str, spec: serde_json::Value) -> CrmBinding {
        let mut full = json!({ "policyRef": { "name": "p" }, "crm": { "type": "amocrm", "amocrm": { "baseUrl": "https://x.amocrm.ru", "credentialsSecret": { "name": "c" } } } });
        full.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "crmessenger.io/v1alpha1", "kind": "CrmBinding",
            "metadata": { "name": name, "namespace": "ns", "generation": 1, "creationTimestamp": created },
            "spec": full,
        }))
        .unwrap()
    }

    fn account(name: &str, team: &str) -> MessengerAccount {
        serde_json::from_value(json!({
            "apiVersion": "crmessenger.io/v1alpha1", "kind": "MessengerAccount",
            "metadata": { "name": name, "namespace": "ns", "labels": { "team": team } },
            "spec": { "provider": "telegram", "telegram": { "apiCredentials": { "secretName": "s" } } },
        }))
        .unwrap()
    }

    #[test]
    fn serves_what_it_owns_and_names_what_another_binding_owns() {
        let sales = binding(
            "sales",
            "2026-01-01T00:00:00Z",
            json!({ "accountSelector": { "matchLabels": { "team": "sales" } } }),
        );
        let named = binding("named", "2026-02-01T00:00:00Z", json!({ "accountNames": ["a", "c"] }));
        let accounts = [account("b", "sales"), account("a", "sales"), account("c", "support")];
        let bindings = [sales.clone(), named.clone()];
        let s = select(&sales, accounts.iter(), &bindings);
        assert_eq!(s, Selection { bound: vec!["a".into(), "b".into()], refused: vec![] });
        let n = select(&named, accounts.iter(), &bindings);
        assert_eq!(n, Selection { bound: vec!["c".into()], refused: vec!["a (bound by sales)".into()] });
    }

    #[test]
    fn ready_says_the_first_thing_that_is_wrong() {
        let b = binding("sales", "2026-01-01T00:00:00Z", json!({}));
        let ok = Verdict::yes(CREDENTIALS_VALID, "TokenValid", "");
        let bad = Verdict::no(CREDENTIALS_VALID, "SecretNotFound", "Secret c does not exist");
        let served = Selection { bound: vec!["a".into()], refused: vec![] };
        assert_eq!(ready(&b, &bad, true, &served).reason, "SecretNotFound");
        assert_eq!(ready(&b, &ok, false, &served).reason, "PolicyNotFound");
        let taken = Selection { bound: vec![], refused: vec!["a (bound by x)".into()] };
        assert_eq!(ready(&b, &ok, true, &taken).message, "already bound by another CrmBinding: a (bound by x)");
        assert_eq!(ready(&b, &ok, true, &Selection::default()).reason, "NoAccounts");
        let r = ready(&b, &ok, true, &served);
        assert!(r.ok && r.message == "serves a", "{r:?}");
    }

    fn observed(bound: &[&str], expires: i64) -> Observed {
        Observed {
            bound: bound.iter().map(|s| s.to_string()).collect(),
            token_expires_at: Some(expires),
            contact_fields: None,
            lead_sources: Vec::new(),
        }
    }

    #[test]
    fn an_unchanged_status_is_not_written_again() {
        let mut b = binding("sales", "2026-01-01T00:00:00Z", json!({}));
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let verdicts = [Verdict::yes(READY, "Bound", "serves a")];
        let first = status(&b, &verdicts, observed(&["a"], 2_000_000), now).expect("a first status");
        assert_eq!(first.bound_account_count, Some(1));
        assert_eq!(first.token_expires_at.as_ref().map(|t| t.0.as_second()), Some(2_000_000));
        b.status = Some(first);
        let later = jiff::Timestamp::from_second(1_000_100).unwrap();
        assert_eq!(status(&b, &verdicts, observed(&["a"], 2_000_000), later), None);
        let lost = status(&b, &verdicts, observed(&[], 2_000_000), later).expect("the account left");
        assert_eq!((lost.bound_accounts.len(), lost.bound_account_count), (0, Some(0)));
        assert!(status(&b, &verdicts, observed(&["a"], 3_000_000), later).is_some(), "a new token expiry");
    }
}
