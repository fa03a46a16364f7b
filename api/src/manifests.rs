//! Reading CRMessenger objects out of multi-document YAML manifests (the examples,
//! or a directory of manifests in standalone mode). Pure: text in, objects out.

use crate::{CrmBinding, MessengerAccount, SyncPolicy};
use serde::Deserialize;

/// The CRMessenger objects and Secrets of a manifest; other kinds are skipped.
#[derive(Debug, Default, Clone)]
pub struct Manifests {
    /// MessengerAccounts, in file order.
    pub accounts: Vec<MessengerAccount>,
    /// CrmBindings, in file order.
    pub bindings: Vec<CrmBinding>,
    /// SyncPolicies, in file order.
    pub policies: Vec<SyncPolicy>,
    /// Secrets (standalone mode reads credentials from them), in file order.
    pub secrets: Vec<k8s_openapi::api::core::v1::Secret>,
}

impl Manifests {
    /// Adds everything in `other`.
    pub fn extend(&mut self, other: Manifests) {
        self.accounts.extend(other.accounts);
        self.bindings.extend(other.bindings);
        self.policies.extend(other.policies);
        self.secrets.extend(other.secrets);
    }
}

/// Parses `text`; objects without a namespace get `namespace`.
pub fn parse(text: &str, namespace: &str) -> Result<Manifests, String> {
    let mut out = Manifests::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        let mut v = serde_json::to_value(value).map_err(|e| format!("document {}: {e}", i + 1))?;
        if v.is_null() {
            continue;
        }
        if v["metadata"]["namespace"].is_null() && v["metadata"].is_object() {
            v["metadata"]["namespace"] = namespace.into();
        }
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let what = |e: serde_json::Error| format!("document {} ({kind}): {e}", i + 1);
        match kind.as_str() {
            "MessengerAccount" => out.accounts.push(serde_json::from_value(v).map_err(what)?),
            "CrmBinding" => out.bindings.push(serde_json::from_value(v).map_err(what)?),
            "SyncPolicy" => out.policies.push(serde_json::from_value(v).map_err(what)?),
            "Secret" if v["apiVersion"] == "v1" => out.secrets.push(serde_json::from_value(v).map_err(what)?),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_parses_into_one_account_binding_and_policy() {
        let dir = crate::examples_dir();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            // `quickstart/` is a set of its own (below).
            if path.is_dir() {
                continue;
            }
            let m = parse(&std::fs::read_to_string(&path).unwrap(), "shop").unwrap();
            assert_eq!((m.accounts.len(), m.bindings.len(), m.policies.len()), (1, 1, 1), "{}", path.display());
            assert_eq!(m.accounts[0].metadata.namespace.as_deref(), Some("shop"));
        }
    }

    #[test]
    fn the_quickstart_is_two_accounts_one_binding_that_selects_both_and_one_policy() {
        let dir = crate::examples_dir().join("quickstart");
        let mut text = String::new();
        for file in ["secrets.yaml", "shop.yaml"] {
            text.push_str(&std::fs::read_to_string(dir.join(file)).unwrap());
            text.push_str("\n---\n");
        }
        let m = parse(&text, "default").unwrap();
        assert_eq!((m.accounts.len(), m.bindings.len(), m.policies.len(), m.secrets.len()), (2, 1, 1, 3));
        for a in &m.accounts {
            assert_eq!(a.metadata.namespace.as_deref(), Some("shop"));
            assert!(crate::selection::selects(&m.bindings[0], a), "{:?} is not selected", a.metadata.name);
        }
    }

    #[test]
    fn secrets_are_read_with_data_and_string_data() {
        let m = parse(
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: aGk=}\nstringData: {b: there}\n---\nkind: ConfigMap\nmetadata: {name: c}\n",
            "ns",
        )
        .unwrap();
        assert_eq!(m.secrets.len(), 1);
        let data = crate::common::secret_strings(&m.secrets[0]);
        assert_eq!((data["a"].as_str(), data["b"].as_str()), ("hi", "there"));
        assert_eq!(m.secrets[0].metadata.namespace.as_deref(), Some("ns"));
    }

    #[test]
    fn a_bad_object_names_its_document() {
        let e = parse("kind: SyncPolicy\nmetadata: {name: p}\nspec: {assignment: {strategy: sometimes}}\n", "ns")
            .unwrap_err();
        assert!(e.contains("document 1 (SyncPolicy)"), "{e}");
    }
}
