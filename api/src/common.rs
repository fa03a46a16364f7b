//! Types shared by the three resources: Secret references, conditions, and the CEL
//! building blocks that keep their rules uniform.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// CEL rule: the string is a Kubernetes object name (an RFC 1123 DNS subdomain).
pub(crate) const NAME_RULE: &str = "self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')";
/// Message for [`NAME_RULE`] on a Secret name.
pub(crate) const SECRET_NAME_MSG: &str = "must be the name of a Secret in this namespace: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit";
/// CEL rule: the string is a valid Secret data key.
pub(crate) const SECRET_KEY_RULE: &str = "self.matches('^[-._a-zA-Z0-9]+$')";
/// Message for [`SECRET_KEY_RULE`].
pub(crate) const SECRET_KEY_MSG: &str = "must be a Secret data key: letters, digits, '-', '_' or '.'";

/// A key in a Secret that the connector or the operator reads.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of a Secret in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message(crate::common::SECRET_NAME_MSG))]
    pub name: String,
    /// Key inside that Secret whose value is used.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::common::SECRET_KEY_RULE).message(crate::common::SECRET_KEY_MSG))]
    pub key: String,
}

/// A whole Secret, whose expected keys are documented where it is used.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of a Secret in the same namespace as this object.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message(crate::common::SECRET_NAME_MSG))]
    pub name: String,
}

/// A reference to another object of this API in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalObjectRef {
    /// Name of the object, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message("must be an object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"))]
    pub name: String,
}

/// The server-side-apply field managers: who owns which fields of the project's
/// objects (the operator: specs, children, its status fields; the connector: the
/// status fields it reports).
pub mod managers {
    /// The operator.
    pub const OPERATOR: &str = "crmessenger-operator";
    /// The connector.
    pub const CONNECTOR: &str = "crmessenger-connector";
}

/// Condition types and the helpers that keep `lastTransitionTime` honest.
pub mod conditions {
    use super::Condition;

    /// Everything an object needs works; the one condition `kubectl wait` should use.
    pub const READY: &str = "Ready";
    /// The object's spec and the objects it references make a usable configuration.
    pub const CONFIG_VALID: &str = "ConfigValid";
    /// The connector is running the current configuration and renews its heartbeat.
    pub const CONNECTOR_AVAILABLE: &str = "ConnectorAvailable";
    /// The messenger account is signed in.
    pub const LOGGED_IN: &str = "LoggedIn";
    /// The connector has a live connection to the messenger.
    pub const MESSENGER_CONNECTED: &str = "MessengerConnected";
    /// Messages reach the CRM.
    pub const CRM_SYNCED: &str = "CrmSynced";
    /// The CRM credentials work (tokens valid or refreshable).
    pub const CREDENTIALS_VALID: &str = "CredentialsValid";
    /// The contacts' identity fields exist in the CRM and are known (found or
    /// created by the operator, or named in the binding).
    pub const CONTACT_FIELDS_READY: &str = "ContactFieldsReady";
    /// Each bound account is a lead source in the CRM (else its leads are tagged).
    pub const LEAD_SOURCES_READY: &str = "LeadSourcesReady";

    /// Reasons of the connector's `LoggedIn` condition (the connector writes them,
    /// the operator reads them to set the account's phase).
    pub mod login {
        /// Signed in.
        pub const LOGGED_IN: &str = "LoggedIn";
        /// A QR code waits to be scanned on the login page.
        pub const WAITING_FOR_QR_SCAN: &str = "WaitingForQrScan";
        /// The login code Telegram sent waits to be typed.
        pub const CODE_REQUIRED: &str = "CodeRequired";
        /// The two-step verification password waits to be typed.
        pub const PASSWORD_REQUIRED: &str = "PasswordRequired";
        /// The session ended; a new login is needed.
        pub const LOGGED_OUT: &str = "LoggedOut";
        /// The connector has not asked the messenger yet.
        pub const STARTING: &str = "Starting";
        /// Reasons that wait for a person to log in: the account is `LoggingIn`.
        pub const WAITING_FOR_A_PERSON: [&str; 4] = [WAITING_FOR_QR_SCAN, CODE_REQUIRED, PASSWORD_REQUIRED, LOGGED_OUT];
    }

    /// Sets `new` in `list`, replacing the condition of the same type. The transition
    /// time is kept from the old condition unless the status actually flips, so
    /// `lastTransitionTime` means what it says.
    pub fn upsert(list: &mut Vec<Condition>, mut new: Condition) {
        match list.iter_mut().find(|c| c.type_ == new.type_) {
            Some(old) => {
                if old.status == new.status {
                    new.last_transition_time = old.last_transition_time.clone();
                }
                *old = new;
            }
            None => list.push(new),
        }
    }

    /// The condition of type `type_`, if present.
    pub fn find<'a>(list: &'a [Condition], type_: &str) -> Option<&'a Condition> {
        list.iter().find(|c| c.type_ == type_)
    }

    /// True when the condition is present, `True`, and was computed for `generation`.
    pub fn is_true_for(list: &[Condition], type_: &str, generation: Option<i64>) -> bool {
        find(list, type_).is_some_and(|c| c.status == "True" && c.observed_generation == generation)
    }
}

#[cfg(test)]
mod tests {
    use super::conditions::{find, upsert};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
    use k8s_openapi::jiff::Timestamp;

    fn cond(status: &str, at: i64) -> Condition {
        Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::from_second(at).unwrap()),
        }
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let mut list = vec![cond("True", 100)];
        upsert(&mut list, cond("True", 200));
        assert_eq!(find(&list, "Ready").unwrap().last_transition_time.0.as_second(), 100);
        upsert(&mut list, cond("False", 300));
        assert_eq!(find(&list, "Ready").unwrap().last_transition_time.0.as_second(), 300);
        assert_eq!(list.len(), 1);
    }
}

/// A Secret's data as strings (values that are not UTF-8 are skipped); `data`
/// wins over `stringData` for a key in both.
pub fn secret_strings(secret: &k8s_openapi::api::core::v1::Secret) -> std::collections::BTreeMap<String, String> {
    let mut out = secret.string_data.clone().unwrap_or_default();
    for (k, v) in secret.data.iter().flatten() {
        if let Ok(s) = String::from_utf8(v.0.clone()) {
            out.insert(k.clone(), s);
        }
    }
    out
}

/// Parses a Go-style duration as the CRDs accept it (`15m`, `1h30m`, `500ms`):
/// one or more `<digits><unit>` with units `ms`, `s`, `m`, `h`.
pub fn parse_duration(text: &str) -> Option<std::time::Duration> {
    let mut total: u64 = 0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        total = total.checked_add(n.checked_mul(unit_ms)?)?;
        rest = &rest[len..];
    }
    Some(std::time::Duration::from_millis(total))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn parses_what_the_crds_accept() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        for bad in ["", "m", "15", "15d", "1.5h", "-1m"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}

/// Whether `id` names a dead letter as the connector lists them (`inbox/SEQ` or
/// `outbox/SEQ`): what `kubectl crmessenger replay --id` takes.
pub fn valid_dead_letter_id(id: &str) -> bool {
    let seq = id.strip_prefix("inbox/").or_else(|| id.strip_prefix("outbox/"));
    seq.is_some_and(|s| s.parse::<i64>().is_ok_and(|n| n > 0))
}
