//! Labels and annotations the operator puts on what it creates, so it can find and
//! prune its children, and so people can select them.

use std::collections::BTreeMap;

/// The operator's server-side-apply field manager (also its `managed-by` label).
pub const MANAGER: &str = crmessenger_api::common::managers::OPERATOR;
/// `app.kubernetes.io/managed-by`.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Names the MessengerAccount a child belongs to.
pub const ACCOUNT: &str = "crmessenger.io/account";
/// Names the CrmBinding a child belongs to.
pub const BINDING: &str = "crmessenger.io/binding";
/// `app.kubernetes.io/component`.
pub const COMPONENT: &str = "app.kubernetes.io/component";
/// Pod-template annotation: the hash of the config the pod runs.
pub const CONFIG_HASH: &str = "crmessenger.io/config-hash";
/// Pod-template annotation: a hash of the runtime Secret's values (a new database
/// URL or session key rolls the pod; the values themselves never leave the Secret).
pub const RUNTIME_HASH: &str = "crmessenger.io/runtime-hash";
/// Finalizer that logs the session out and purges data before deletion.
pub const FINALIZER: &str = "crmessenger.io/cleanup";

/// Labels of every child of an account.
pub fn account_labels(account: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGER.to_string()),
        (ACCOUNT.to_string(), account.to_string()),
        ("app.kubernetes.io/name".to_string(), "crmessenger-connector".to_string()),
    ])
}

/// The selector of an account's connector pod.
pub fn pod_selector(account: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(ACCOUNT.to_string(), account.to_string()), (COMPONENT.to_string(), "connector".to_string())])
}
