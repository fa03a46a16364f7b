//! Which binding serves which account. Pure: the same answer in every controller.
//!
//! An account belongs to at most one binding. When several select it, the oldest
//! binding (then the first by name) keeps it; the others are refused with the reason
//! `AccountAlreadyBound`.

use crate::{CrmBinding, MessengerAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Whether `binding` selects `account` (same namespace, by name or by labels).
pub fn selects(binding: &CrmBinding, account: &MessengerAccount) -> bool {
    if binding.namespace() != account.namespace() {
        return false;
    }
    let name = account.name_any();
    if let Some(names) = &binding.spec.account_names {
        return names.contains(&name);
    }
    match &binding.spec.account_selector {
        Some(selector) => matches(selector, account.labels()),
        None => false,
    }
}

/// Whether `labels` satisfy `selector` (matchLabels and matchExpressions, ANDed).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_label = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    let non_empty = selector.match_labels.as_ref().is_some_and(|m| !m.is_empty())
        || selector.match_expressions.as_ref().is_some_and(|m| !m.is_empty());
    non_empty && by_label && by_expr
}

/// The binding that owns `account` among `bindings`: the oldest that selects it.
pub fn owner<'a>(account: &MessengerAccount, bindings: &'a [CrmBinding]) -> Option<&'a CrmBinding> {
    bindings.iter().filter(|b| b.metadata.deletion_timestamp.is_none() && selects(b, account)).min_by(|a, b| {
        let key = |x: &CrmBinding| (x.metadata.creation_timestamp.clone().map(|t| t.0), x.name_any());
        key(a).cmp(&key(b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account(name: &str, labels: serde_json::Value) -> MessengerAccount {
        serde_json::from_value(json!({
            "apiVersion": "crmessenger.io/v1alpha1", "kind": "MessengerAccount",
            "metadata": { "name": name, "namespace": "ns", "labels": labels },
            "spec": { "provider": "telegram", "telegram": { "apiCredentials": { "secretName": "s" } } },
        }))
        .unwrap()
    }

    fn binding(name: &str, created: &str, spec: serde_json::Value) -> CrmBinding {
        let mut full = json!({ "policyRef": { "name": "p" }, "crm": { "type": "amocrm", "amocrm": { "baseUrl": "https://x.amocrm.ru", "credentialsSecret": { "name": "c" } } } });
        full.as_object_mut().unwrap().extend(spec.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "apiVersion": "crmessenger.io/v1alpha1", "kind": "CrmBinding",
            "metadata": { "name": name, "namespace": "ns", "creationTimestamp": created },
            "spec": full,
        }))
        .unwrap()
    }

    #[test]
    fn by_name_and_by_selector() {
        let a = account("a", json!({ "team": "sales", "tier": "gold" }));
        assert!(selects(&binding("b", "2026-01-01T00:00:00Z", json!({ "accountNames": ["a"] })), &a));
        assert!(!selects(&binding("b", "2026-01-01T00:00:00Z", json!({ "accountNames": ["z"] })), &a));
        let sel = |s: serde_json::Value| binding("b", "2026-01-01T00:00:00Z", json!({ "accountSelector": s }));
        assert!(selects(&sel(json!({ "matchLabels": { "team": "sales" } })), &a));
        assert!(!selects(&sel(json!({ "matchLabels": { "team": "support" } })), &a));
        assert!(selects(
            &sel(json!({ "matchExpressions": [{ "key": "tier", "operator": "In", "values": ["gold"] }] })),
            &a
        ));
        assert!(!selects(&sel(json!({ "matchExpressions": [{ "key": "tier", "operator": "DoesNotExist" }] })), &a));
        assert!(!selects(&sel(json!({})), &a), "an empty selector selects nothing here");
    }

    #[test]
    fn the_oldest_binding_owns_a_contested_account() {
        let a = account("a", json!({ "team": "sales" }));
        let bindings = vec![
            binding("newer", "2026-02-01T00:00:00Z", json!({ "accountNames": ["a"] })),
            binding(
                "older",
                "2026-01-01T00:00:00Z",
                json!({ "accountSelector": { "matchLabels": { "team": "sales" } } }),
            ),
            binding("other", "2025-01-01T00:00:00Z", json!({ "accountNames": ["b"] })),
        ];
        assert_eq!(owner(&a, &bindings).map(|b| b.name_any()).as_deref(), Some("older"));
    }
}
