//! Checks that an account, its binding and the binding's policy make a usable
//! configuration. Pure.

use super::build::RuntimeValues;
use crate::conditions::Verdict;
use crate::settings::Database;
use crmessenger_api::common::conditions::CONFIG_VALID;
use crmessenger_api::{CrmBinding, SyncPolicy};
use kube::ResourceExt;

/// The binding and policy an account runs under, or why it cannot run.
pub fn resolve<'a>(
    account: &str,
    binding: Option<&'a CrmBinding>,
    policy: Option<&'a SyncPolicy>,
) -> Result<(&'a CrmBinding, &'a SyncPolicy), Verdict> {
    let Some(binding) = binding else {
        return Err(Verdict::no(
            CONFIG_VALID,
            "NotBound",
            "no CrmBinding selects this account: create one that names it in accountNames or matches its labels",
        ));
    };
    let Some(policy) = policy else {
        return Err(Verdict::no(
            CONFIG_VALID,
            "PolicyNotFound",
            format!(
                "CrmBinding {} refers to SyncPolicy {}, which does not exist in this namespace",
                binding.name_any(),
                binding.spec.policy_ref.name
            ),
        ));
    };
    if !identity_fields_settled(binding) {
        return Err(Verdict::no(
            CONFIG_VALID,
            WAITING_FOR_BINDING,
            format!(
                "CrmBinding {} has not looked up the contacts' identity fields yet (condition ContactFieldsReady)",
                binding.name_any()
            ),
        ));
    }
    if !lead_source_settled(binding, account) {
        return Err(Verdict::no(
            CONFIG_VALID,
            WAITING_FOR_BINDING,
            format!(
                "CrmBinding {} has not made this account's lead source yet (condition LeadSourcesReady)",
                binding.name_any()
            ),
        ));
    }
    Ok((binding, policy))
}

/// Whether the account's lead source is settled: made, refused by the CRM, not
/// asked for, or not to be made while the binding's credentials do not work (the
/// connector's configuration names the source or the tag).
fn lead_source_settled(binding: &CrmBinding, account: &str) -> bool {
    if binding.spec.crm.amocrm.as_ref().is_some_and(|a| !a.lead_sources) {
        return true;
    }
    binding.status.as_ref().is_some_and(|s| {
        let credentials_failed = s
            .conditions
            .iter()
            .any(|c| c.type_ == crmessenger_api::common::conditions::CREDENTIALS_VALID && c.status == "False");
        s.lead_sources.iter().any(|a| a == account) || s.lead_sources_refused() || credentials_failed
    })
}

/// Whether the binding's identity fields are known — named in its spec, or looked
/// up by the operator (whatever came of it) — so a connector is not started with
/// a configuration that changes a moment later.
/// The account waits for its binding's lookups (seconds).
pub const WAITING_FOR_BINDING: &str = "WaitingForBinding";

fn identity_fields_settled(binding: &CrmBinding) -> bool {
    let named = binding.spec.crm.amocrm.as_ref().is_some_and(|a| {
        let f = &a.contact_fields;
        f.telegram_user_id.is_some() && f.telegram_username.is_some() && f.whatsapp_id.is_some()
    });
    named
        || binding.status.as_ref().is_some_and(|s| {
            s.conditions.iter().any(|c| c.type_ == crmessenger_api::common::conditions::CONTACT_FIELDS_READY)
        })
}

/// Whether connectors can be given a database (`runtime` holds what the operator
/// read from the database Secret, or why it could not). A connector without one
/// exits at once, so this is a validation outcome, not a crash-looping pod.
pub fn database(source: &Database, runtime: &RuntimeValues) -> Result<(), Verdict> {
    match source {
        Database::Unmanaged => Ok(()),
        Database::NotConfigured => Err(Verdict::no(
            CONFIG_VALID,
            DATABASE_NOT_CONFIGURED,
            "no database is configured for connectors: set postgres.dsnSecret.name (a Secret in the operator's \
             namespace holding a PostgreSQL URL) or postgres.bundled.enabled=true in the chart's values",
        )),
        Database::Secret { name, key } => match &runtime.database_url {
            Some(_) => Ok(()),
            None => Err(Verdict::no(
                CONFIG_VALID,
                DATABASE_SECRET_MISSING,
                runtime.database_missing.clone().unwrap_or_else(|| format!("Secret {name} has no key {key}")),
            )),
        },
    }
}

/// Reason: the installation has no database for connectors.
pub const DATABASE_NOT_CONFIGURED: &str = "DatabaseNotConfigured";
/// Reason: the database Secret the installation names is absent or lacks its key.
pub const DATABASE_SECRET_MISSING: &str = "DatabaseSecretMissing";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_database_is_a_reason_that_says_what_to_set() {
        let none = RuntimeValues::default();
        let err = database(&Database::NotConfigured, &none).unwrap_err();
        assert_eq!((err.ok, err.reason.as_str()), (false, "DatabaseNotConfigured"));
        assert!(
            err.message.contains("postgres.dsnSecret.name") && err.message.contains("postgres.bundled.enabled=true")
        );
        let secret = Database::Secret { name: "db".into(), key: "dsn".into() };
        let absent = RuntimeValues { database_missing: Some("Secret crm/db does not exist".into()), ..none.clone() };
        let err = database(&secret, &absent).unwrap_err();
        assert_eq!(
            (err.reason.as_str(), err.message.as_str()),
            ("DatabaseSecretMissing", "Secret crm/db does not exist")
        );
        let read = RuntimeValues { database_url: Some("postgres://u@127.0.0.1/db".into()), ..none.clone() };
        assert!(database(&secret, &read).is_ok());
        assert!(database(&Database::Unmanaged, &none).is_ok());
    }
}
