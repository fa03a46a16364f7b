//! The connector's configuration, rendered by one pure function from an account,
//! the binding that selects it and the binding's policy. The operator writes it into
//! the account's ConfigMap; standalone mode renders it from manifests on disk. It
//! holds Secret *references*, never Secret values.
//!
//! The config hash (a pod-template annotation: a change rolls the pod) covers
//! everything except [`RuntimeSettings`] — budgets and token versions change without
//! a restart, since the connector watches its ConfigMap.

use crate::account::{CloudApiSettings, Provider, TelegramSettings, WhatsAppLoginMethod};
use crate::binding::{AmoCrmSettings, CrmType};
use crate::common::SecretKeyRef;
use crate::policy::SyncPolicySpec;
use crate::{CrmBinding, MessengerAccount, SyncPolicy};
use serde::{Deserialize, Serialize};

/// The key of the config in the account's ConfigMap.
pub const CONFIG_KEY: &str = "connector.json";
/// The key in the operator-owned token Secret that holds the current access token.
pub const ACCESS_TOKEN_KEY: &str = "access_token";

/// Everything a connector needs to serve one account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorConfig {
    /// The account served.
    pub account: ObjectId,
    /// The binding that selects it.
    pub binding: ObjectId,
    /// The messenger.
    pub provider: Provider,
    /// Telegram settings, for Telegram accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramSettings>,
    /// WhatsApp settings, for WhatsApp accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<WhatsAppConfig>,
    /// The CRM side.
    pub crm: CrmConfig,
    /// How messages flow (the policy's spec as it was when rendered).
    pub policy: SyncPolicySpec,
    /// Settings that apply without a restart; not part of the hash.
    pub runtime: RuntimeSettings,
}

/// Namespace and name of an object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectId {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// WhatsApp settings as the connector uses them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppConfig {
    /// Cloud API or WhatsApp Web pairing.
    pub login_method: WhatsAppLoginMethod,
    /// Cloud API settings, for `cloudApi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_api: Option<CloudApiSettings>,
}

/// The CRM side of a connector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrmConfig {
    /// The CRM product.
    #[serde(rename = "type")]
    pub type_: CrmType,
    /// amoCRM settings from the binding (its bootstrap credentials Secret is the
    /// operator's business; the connector reads `token` instead).
    pub amocrm: AmoCrmSettings,
    /// The operator-owned Secret key holding the current access token.
    pub token: SecretKeyRef,
    /// The language notes and tasks are written in (the binding's `language`).
    #[serde(default)]
    pub language: crate::binding::Language,
    /// The account's lead source (its external id), when the CRM has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lead_source: Option<String>,
    /// Otherwise a tag every new lead of the account carries (the account's name),
    /// so reports can still split leads by account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_tag: Option<String>,
}

/// Whether the binding asks for lead sources (`spec.crm.amocrm.leadSources`).
fn amocrm_spec_sources(binding: &CrmBinding) -> bool {
    binding.spec.crm.amocrm.as_ref().is_none_or(|a| a.lead_sources)
}

/// The external id of an account's lead source: `crm-` and 32 hex digits of the
/// SHA-256 of `namespace/name` (36 characters, as amoCRM allows; stable; the
/// account's name does not show).
pub fn lead_source_id(namespace: &str, name: &str) -> String {
    let digest = sha256(format!("{namespace}/{name}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("crm-{}", &hex[..32])
}

/// Settings a connector applies without a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSettings {
    /// amoCRM REST requests per second shared by every connector of the integration.
    pub crm_requests_per_second: f64,
    /// The token Secret's resourceVersion when rendered (a change means a new token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_version: Option<String>,
}

/// Why a config cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The account has no settings for its provider (the API server should have
    /// refused it).
    MissingProviderSettings(Provider),
    /// The binding has no settings for its CRM type.
    MissingCrmSettings,
    /// An object has no namespace or name.
    Unnamed(&'static str),
}

impl std::fmt::Display for RenderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RenderError::MissingProviderSettings(p) => {
                write!(f, "spec has no settings for provider {p:?}")
            }
            RenderError::MissingCrmSettings => {
                write!(f, "the binding has no settings for its CRM type")
            }
            RenderError::Unnamed(what) => write!(f, "the {what} has no namespace or name"),
        }
    }
}

impl std::error::Error for RenderError {}

/// The name of the operator-owned Secret with a binding's live OAuth token pair.
pub fn token_secret_name(binding: &str) -> String {
    format!("{binding}-crm-token")
}

/// The name of the ConfigMap holding an account's connector config.
pub fn config_map_name(account: &str) -> String {
    format!("{account}-connector")
}

fn id_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    what: &'static str,
) -> Result<ObjectId, RenderError> {
    match (&meta.namespace, &meta.name) {
        (Some(namespace), Some(name)) => Ok(ObjectId { namespace: namespace.clone(), name: name.clone() }),
        _ => Err(RenderError::Unnamed(what)),
    }
}

/// Renders the connector config of `account`, bound by `binding` under `policy`.
pub fn render(
    account: &MessengerAccount,
    binding: &CrmBinding,
    policy: &SyncPolicy,
    runtime: RuntimeSettings,
) -> Result<ConnectorConfig, RenderError> {
    let spec = &account.spec;
    let telegram = match spec.provider {
        Provider::Telegram => {
            Some(spec.telegram.clone().ok_or(RenderError::MissingProviderSettings(Provider::Telegram))?)
        }
        Provider::Whatsapp => None,
    };
    let whatsapp = match spec.provider {
        Provider::Whatsapp => {
            let w = spec.whatsapp.clone().ok_or(RenderError::MissingProviderSettings(Provider::Whatsapp))?;
            Some(WhatsAppConfig { login_method: w.login_method, cloud_api: w.cloud_api })
        }
        Provider::Telegram => None,
    };
    let binding_id = id_of(&binding.metadata, "binding")?;
    let account_id = id_of(&account.metadata, "account")?;
    // The account's lead source when the operator made it; a tag when the CRM
    // cannot have sources (the binding says so in LeadSourcesReady=False).
    let status = binding.status.as_ref();
    let sourced = status.is_some_and(|s| s.lead_sources.contains(&account_id.name));
    let unavailable = status.is_some_and(|s| s.lead_sources_refused());
    let lead_source = sourced.then(|| lead_source_id(&account_id.namespace, &account_id.name));
    let source_tag = (!sourced && (unavailable || !amocrm_spec_sources(binding))).then(|| account_id.name.clone());
    let mut amocrm = binding.spec.crm.amocrm.clone().ok_or(RenderError::MissingCrmSettings)?;
    // Identity fields the spec leaves unset: the ones the operator created.
    if let Some(created) = binding.status.as_ref().and_then(|s| s.contact_fields.as_ref()) {
        let f = &mut amocrm.contact_fields;
        f.telegram_user_id = f.telegram_user_id.or(created.telegram_user_id);
        f.telegram_username = f.telegram_username.or(created.telegram_username);
        f.whatsapp_id = f.whatsapp_id.or(created.whatsapp_id);
    }
    Ok(ConnectorConfig {
        account: account_id,
        provider: spec.provider,
        telegram,
        whatsapp,
        crm: CrmConfig {
            type_: binding.spec.crm.type_,
            amocrm,
            token: SecretKeyRef { name: token_secret_name(&binding_id.name), key: ACCESS_TOKEN_KEY.into() },
            language: binding.spec.language,
            lead_source,
            source_tag,
        },
        binding: binding_id,
        policy: policy.spec.clone(),
        runtime,
    })
}

impl ConnectorConfig {
    /// The hash of everything that needs a restart to apply (all but `runtime`):
    /// hex SHA-256 of the canonical JSON, first 16 characters.
    pub fn hash(&self) -> String {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.remove("runtime");
        }
        // serde_json's map is ordered by key, so this text is canonical.
        let text = value.to_string();
        let digest = sha256(text.as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Every Secret the connector reads, as (name, key) pairs, sorted and unique —
    /// what its Role may `get`.
    pub fn secret_refs(&self) -> Vec<SecretKeyRef> {
        let mut refs = vec![self.crm.token.clone()];
        if let Some(ca) = &self.crm.amocrm.ca_secret {
            refs.push(ca.clone());
        }
        if let Some(t) = &self.telegram {
            refs.push(SecretKeyRef {
                name: t.api_credentials.secret_name.clone(),
                key: t.api_credentials.api_id_key.clone(),
            });
            refs.push(SecretKeyRef {
                name: t.api_credentials.secret_name.clone(),
                key: t.api_credentials.api_hash_key.clone(),
            });
            refs.extend(t.bot_token.clone());
            refs.extend(t.two_factor_password.clone());
        }
        if let Some(c) = self.whatsapp.as_ref().and_then(|w| w.cloud_api.as_ref()) {
            refs.push(c.access_token.clone());
        }
        refs.sort_by(|a, b| (&a.name, &a.key).cmp(&(&b.name, &b.key)));
        refs.dedup();
        refs
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The objects of one example manifest, with a namespace as `kubectl apply -n` gives.
    fn example(file: &str) -> (MessengerAccount, CrmBinding, SyncPolicy) {
        let text = std::fs::read_to_string(crate::examples_dir().join(file)).unwrap();
        let mut m = crate::manifests::parse(&text, "shop").unwrap();
        (m.accounts.remove(0), m.bindings.remove(0), m.policies.remove(0))
    }

    #[test]
    fn renders_secret_references_never_values() {
        let (a, b, p) = example("telegram-bot.yaml");
        let config = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
        assert_eq!(config.account, ObjectId { namespace: "shop".into(), name: "shop-bot".into() });
        assert_eq!(config.crm.token, SecretKeyRef { name: "shop-crm-token".into(), key: "access_token".into() });
        let text = serde_json::to_string(&config).unwrap();
        assert!(!text.contains("replace-with"), "a Secret value leaked into the config: {text}");
        let names: Vec<String> = config.secret_refs().iter().map(|r| format!("{}/{}", r.name, r.key)).collect();
        assert_eq!(names, ["shop-bot/api_hash", "shop-bot/api_id", "shop-bot/token", "shop-crm-token/access_token"]);
    }

    #[test]
    fn the_hash_ignores_runtime_settings_and_follows_the_policy() {
        let (a, b, mut p) = example("telegram-qr.yaml");
        let base = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
        let runtime = RuntimeSettings { crm_requests_per_second: 3.0, token_version: Some("42".into()) };
        assert_eq!(render(&a, &b, &p, runtime).unwrap().hash(), base.hash());
        p.spec.media.max_size_mib = 5;
        assert_ne!(render(&a, &b, &p, RuntimeSettings::default()).unwrap().hash(), base.hash());
        assert_eq!(base.hash().len(), 16);
    }

    #[test]
    fn whatsapp_accounts_render_their_number() {
        let (a, b, p) = example("whatsapp-cloud.yaml");
        let config = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
        assert!(config.telegram.is_none());
        let cloud = config.whatsapp.unwrap().cloud_api.unwrap();
        assert_eq!(cloud.phone_number_id, "109876543210987");
    }

    #[test]
    fn an_account_without_its_provider_settings_is_an_error() {
        let (mut a, b, p) = example("telegram-qr.yaml");
        a.spec.telegram = None;
        assert_eq!(
            render(&a, &b, &p, RuntimeSettings::default()).unwrap_err(),
            RenderError::MissingProviderSettings(Provider::Telegram)
        );
    }
}
