//! Gauges read off the watched objects every few seconds, for alerts that must
//! fire even when no reconcile runs: each account's and binding's conditions, and
//! the age of each connector's heartbeat (a dead connector renews nothing, so
//! only a reader with a clock can tell).

use crate::controller::{Guarded, Shared};
use crate::metrics::{AccountLabel, BindingConditionLabels, ConditionLabels, Metrics};
use crmessenger_api::{CrmBinding, MessengerAccount};
use k8s_openapi::api::coordination::v1::Lease;
use kube::ResourceExt;

/// The account conditions exported as gauges.
const ACCOUNT_CONDITIONS: [&str; 4] = ["Ready", "ConnectorAvailable", "LoggedIn", "CrmSynced"];
/// The binding conditions exported as gauges.
const BINDING_CONDITIONS: [&str; 2] = ["Ready", "CredentialsValid"];

fn key(namespace: Option<String>, name: &str) -> String {
    format!("{}/{name}", namespace.unwrap_or_default())
}

/// How often the gauges are refreshed.
const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Refreshes the gauges from the watched stores every [`EVERY`], for ever.
pub async fn run(shared: std::sync::Arc<Shared>) {
    loop {
        let s = &shared.stores;
        let leases: Vec<Lease> = s.leases.state().iter().map(|l| (**l).clone()).collect();
        let now = jiff::Timestamp::now().as_millisecond();
        refresh(&shared.metrics, &readable(s.accounts.state()), &readable(s.bindings.state()), &leases, now);
        tokio::time::sleep(EVERY).await;
    }
}

/// The objects of a store that deserialized.
fn readable<K: Clone>(list: Vec<std::sync::Arc<Guarded<K>>>) -> Vec<K> {
    list.iter().filter_map(|o| o.0.as_ref().ok().cloned()).collect()
}

/// Sets the gauges from the current objects (series of objects gone, or of a
/// reason that changed, are dropped). `now_ms` is the wall clock.
pub fn refresh(m: &Metrics, accounts: &[MessengerAccount], bindings: &[CrmBinding], leases: &[Lease], now_ms: i64) {
    m.account_condition.clear();
    m.heartbeat_age.clear();
    m.binding_condition.clear();
    for a in accounts.iter().filter(|a| !a.spec.suspend && a.metadata.deletion_timestamp.is_none()) {
        let account = key(a.namespace(), &a.name_any());
        let conditions = a.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        for c in conditions.iter().filter(|c| ACCOUNT_CONDITIONS.contains(&c.type_.as_str())) {
            let labels =
                ConditionLabels { account: account.clone(), condition: c.type_.clone(), reason: c.reason.clone() };
            m.account_condition.get_or_create(&labels).set(i64::from(c.status == "True"));
        }
        let lease = leases
            .iter()
            .find(|l| l.namespace() == a.namespace() && l.labels().get(crate::labels::ACCOUNT) == Some(&a.name_any()));
        if let Some(renewed) = lease.and_then(|l| l.spec.as_ref()).and_then(|s| s.renew_time.as_ref()) {
            let age = (now_ms - renewed.0.as_millisecond()).max(0) as f64 / 1000.0;
            m.heartbeat_age.get_or_create(&AccountLabel { account }).set(age);
        }
    }
    for b in bindings {
        let binding = key(b.namespace(), &b.name_any());
        let conditions = b.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
        for c in conditions.iter().filter(|c| BINDING_CONDITIONS.contains(&c.type_.as_str())) {
            let labels = BindingConditionLabels {
                binding: binding.clone(),
                condition: c.type_.clone(),
                reason: c.reason.clone(),
            };
            m.binding_condition.get_or_create(&labels).set(i64::from(c.status == "True"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_and_heartbeat_ages_become_gauges_and_suspended_accounts_none() {
        let account = |name: &str, suspend: bool| -> MessengerAccount {
            serde_json::from_value(json!({
                "apiVersion": "crmessenger.io/v1alpha1", "kind": "MessengerAccount",
                "metadata": { "name": name, "namespace": "shop" },
                "spec": { "provider": "telegram", "suspend": suspend, "telegram": { "apiCredentials": { "secretName": "tg" } } },
                "status": { "conditions": [
                    { "type": "LoggedIn", "status": "False", "reason": "LoggedOut", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" },
                    { "type": "SendingAllowed", "status": "True", "reason": "Allowed", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" },
                ] },
            }))
            .unwrap()
        };
        let binding: CrmBinding = serde_json::from_value(json!({
            "apiVersion": "crmessenger.io/v1alpha1", "kind": "CrmBinding",
            "metadata": { "name": "main", "namespace": "shop" },
            "spec": { "accountNames": ["tg"], "policyRef": { "name": "p" }, "crm": { "type": "amocrm", "amocrm": {
                "baseUrl": "https://shop.amocrm.ru", "credentialsSecret": { "name": "amo" }, "responsibleUserIds": [1] } } },
            "status": { "conditions": [
                { "type": "CredentialsValid", "status": "False", "reason": "ReauthorizationRequired", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" },
            ] },
        }))
        .unwrap();
        let lease: Lease = serde_json::from_value(json!({
            "metadata": { "name": "tg-connector", "namespace": "shop", "labels": { "crmessenger.io/account": "tg" } },
            "spec": { "renewTime": "2026-01-01T00:00:00.000000Z" },
        }))
        .unwrap();
        let m = Metrics::default();
        let now = jiff::Timestamp::from_second(1_767_225_640).unwrap().as_millisecond(); // 40 s later
        refresh(&m, &[account("tg", false), account("sleepy", true)], &[binding], &[lease], now);
        let text = m.encode();
        for line in [
            r#"crmessenger_operator_account_condition{account="shop/tg",condition="LoggedIn",reason="LoggedOut"} 0"#,
            r#"crmessenger_operator_connector_heartbeat_age_seconds{account="shop/tg"} 40.0"#,
            r#"crmessenger_operator_binding_condition{binding="shop/main",condition="CredentialsValid",reason="ReauthorizationRequired"} 0"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert!(!text.contains("shop/sleepy"), "a suspended account raises nothing:\n{text}");
        assert!(!text.contains("SendingAllowed"), "only the exported conditions:\n{text}");
        // The account is gone: so are its series.
        refresh(&m, &[], &[], &[], now);
        assert!(!m.encode().contains("shop/tg"));
    }
}
