//! What can run: the manifests of a directory, each account's binding, policy and
//! rendered config, decided by the operator's own rules. Pure but for reading the
//! files.

use anyhow::Context;
use crmessenger_api::common::secret_strings;
use crmessenger_api::config::{ConnectorConfig, RuntimeSettings, render};
use crmessenger_api::manifests::{self, Manifests};
use crmessenger_api::selection;
use crmessenger_crm::amocrm::grant::Bootstrap;
use kube::ResourceExt;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads every manifest file of `dir` (sorted by name); errors name the file.
pub fn load(dir: &Path, namespace: &str) -> anyhow::Result<Manifests> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read the manifest directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
        .collect();
    files.sort();
    let mut all = Manifests::default();
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        let m = manifests::parse(&text, namespace).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        all.extend(m);
    }
    Ok(all)
}

/// What can run, and what cannot and why.
#[derive(Debug, Default)]
pub struct Plan {
    /// Configs of the accounts that can run, with their binding's credentials.
    pub accounts: Vec<(ConnectorConfig, Bootstrap)>,
    /// `(namespace/name, why)` of each account that cannot.
    pub skipped: Vec<(String, String)>,
}

/// Secrets by `(namespace, name)`, as strings.
pub fn secrets_of(m: &Manifests) -> BTreeMap<(String, String), BTreeMap<String, String>> {
    m.secrets.iter().map(|s| ((s.namespace().unwrap_or_default(), s.name_any()), secret_strings(s))).collect()
}

/// Decides, for every account, its binding and policy and renders its config —
/// the same rules as the operator (the oldest binding that selects an account owns
/// it; every Secret the config names must exist and hold its key). Pure.
pub fn plan(m: &Manifests, crm_requests_per_second: f64) -> Plan {
    let secrets = secrets_of(m);
    let mut out = Plan::default();
    for account in &m.accounts {
        let ns = account.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", account.name_any());
        let result = (|| -> Result<(ConnectorConfig, Bootstrap), String> {
            let binding = selection::owner(account, &m.bindings).ok_or("no CrmBinding selects this account")?;
            let policy_name = &binding.spec.policy_ref.name;
            let policy = m
                .policies
                .iter()
                .find(|p| p.namespace().as_deref() == Some(&ns) && &p.name_any() == policy_name)
                .ok_or_else(|| {
                    format!("CrmBinding {} names SyncPolicy {policy_name}, which is not declared", binding.name_any())
                })?;
            let runtime = RuntimeSettings { crm_requests_per_second, token_version: None };
            let config = render(account, binding, policy, runtime).map_err(|e| e.to_string())?;
            let amo = &config.crm.amocrm;
            let credentials = secrets.get(&(ns.clone(), amo.credentials_secret.name.clone())).ok_or_else(|| {
                format!(
                    "Secret {} (spec.crm.amocrm.credentialsSecret of CrmBinding {}) is not declared",
                    amo.credentials_secret.name,
                    binding.name_any()
                )
            })?;
            let bootstrap = Bootstrap::read(&amo.credentials_secret.name, credentials)?;
            // The token Secret is the operator's; here the pair lives in the database.
            for r in config.secret_refs().into_iter().filter(|r| *r != config.crm.token) {
                let data = secrets
                    .get(&(ns.clone(), r.name.clone()))
                    .ok_or_else(|| format!("Secret {} is not declared", r.name))?;
                if !data.contains_key(&r.key) {
                    return Err(format!("Secret {} has no key {}", r.name, r.key));
                }
            }
            Ok((config, bootstrap))
        })();
        match result {
            Ok(ok) => out.accounts.push(ok),
            Err(why) => out.skipped.push((key, why)),
        }
    }
    out
}

/// The scripted messenger URL of `account`, from `NAMESPACE/NAME=URL` or `URL` entries.
pub fn scripted_url<'a>(entries: &'a [String], account: &str) -> Option<&'a str> {
    let specific = entries.iter().find_map(|e| {
        if e.starts_with("http://") || e.starts_with("https://") {
            return None;
        }
        e.split_once('=').filter(|(k, _)| *k == account).map(|(_, v)| v)
    });
    specific
        .or_else(|| entries.iter().find(|e| e.starts_with("http://") || e.starts_with("https://")).map(|s| s.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmessenger_crm::budget::Limit;

    const DIR: &str = r#"
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {name: shop-bot}
spec:
  provider: telegram
  telegram: {loginMethod: botToken, apiCredentials: {secretName: tg}, botToken: {name: tg, key: bot}}
---
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {name: orphan}
spec:
  provider: telegram
  telegram: {loginMethod: botToken, apiCredentials: {secretName: tg}, botToken: {name: tg, key: bot}}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {name: amo}
spec:
  accountNames: [shop-bot]
  policyRef: {name: default}
  crm: {type: amocrm, amocrm: {baseUrl: "https://shop.amocrm.ru", credentialsSecret: {name: amo}}}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {name: default}
spec: {}
---
apiVersion: v1
kind: Secret
metadata: {name: amo}
stringData: {long_lived_token: t}
"#;

    fn with_tg(extra: &str) -> Manifests {
        manifests::parse(
            &format!("{DIR}---\napiVersion: v1\nkind: Secret\nmetadata: {{name: tg}}\nstringData: {extra}\n"),
            "home",
        )
        .unwrap()
    }

    fn plan_default(m: &Manifests) -> Plan {
        plan(m, Limit::AMOCRM_REST.rate)
    }

    #[test]
    fn plans_bound_accounts_and_says_why_others_cannot_run() {
        let p = plan_default(&with_tg("{api_id: '1', api_hash: h, bot: b}"));
        assert_eq!(p.accounts.len(), 1);
        assert_eq!(p.accounts[0].0.account.name, "shop-bot");
        assert_eq!(p.skipped, vec![("home/orphan".to_string(), "no CrmBinding selects this account".to_string())]);
    }

    #[test]
    fn a_missing_secret_key_is_named() {
        let p = plan_default(&with_tg("{api_id: '1', api_hash: h}"));
        assert!(p.accounts.is_empty());
        assert_eq!(p.skipped[0], ("home/shop-bot".to_string(), "Secret tg has no key bot".to_string()));
    }

    #[test]
    fn scripted_urls_per_account_or_for_all() {
        let e = vec!["home/a=http://one".to_string(), "http://all".to_string()];
        assert_eq!(scripted_url(&e, "home/a"), Some("http://one"));
        assert_eq!(scripted_url(&e, "home/b"), Some("http://all"));
        assert_eq!(scripted_url(&e[..1], "home/b"), None);
    }
}
