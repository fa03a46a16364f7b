//! `CrmBinding`: joins messenger accounts to one CRM account under a SyncPolicy.

use crate::common::{LocalObjectRef, SecretKeyRef, SecretRef};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Joins messenger accounts (by name or by label selector) to one CRM account. An
/// account belongs to at most one binding; a second binding that selects it is refused
/// with the reason `AccountAlreadyBound`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "crmessenger.io",
    version = "v1alpha1",
    kind = "CrmBinding",
    namespaced,
    status = "CrmBindingStatus",
    shortname = "crmbind",
    category = "crmessenger",
    doc = "Joins messenger accounts to one CRM account under a SyncPolicy.",
    printcolumn(name = "CRM", type_ = "string", json_path = ".spec.crm.type"),
    printcolumn(name = "Host", type_ = "string", json_path = ".spec.crm.amocrm.baseUrl", priority = "1"),
    printcolumn(name = "Accounts", type_ = "integer", json_path = ".status.boundAccountCount"),
    printcolumn(name = "Policy", type_ = "string", json_path = ".spec.policyRef.name", priority = "1"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(
    validation = Rule::new("has(self.accountNames) != has(self.accountSelector)").message("name the accounts either in accountNames or with accountSelector: exactly one of the two")
)]
#[serde(rename_all = "camelCase")]
pub struct CrmBindingSpec {
    /// The MessengerAccounts to bind, by name, in this namespace. Use either this or
    /// `accountSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 253)))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(n, n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$'))").message("every entry must be a MessengerAccount name: lowercase letters, digits, '-' and '.'")
    )]
    pub account_names: Option<Vec<String>>,

    /// Selects MessengerAccounts in this namespace by label. Use either this or
    /// `accountNames`. An empty selector is refused, since it would bind every account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("has(self.matchLabels) || has(self.matchExpressions)").message("an empty selector would select every account in the namespace; give matchLabels or matchExpressions"))]
    pub account_selector: Option<LabelSelector>,

    /// The SyncPolicy (in this namespace) that says how messages flow.
    pub policy_ref: LocalObjectRef,

    /// The CRM account to sync with.
    pub crm: CrmSettings,

    /// The language of what the connector writes in the CRM for its users: notes,
    /// lead names of groups, escalation tasks. `en` (default) or `ru`.
    #[serde(default)]
    pub language: Language,
}

/// A language the connector writes the CRM's notes and tasks in.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Language {
    /// English.
    #[default]
    En,
    /// Russian.
    Ru,
}

/// The CRM side of a binding.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.type != 'amocrm' || has(self.amocrm)").message("amocrm settings are required when type is amocrm").field_path(".amocrm")
)]
#[serde(rename_all = "camelCase")]
pub struct CrmSettings {
    /// The CRM product. `amocrm` covers amoCRM and Kommo.
    #[serde(rename = "type")]
    pub type_: CrmType,

    /// amoCRM / Kommo settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amocrm: Option<AmoCrmSettings>,
}

/// A CRM product.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum CrmType {
    /// amoCRM or Kommo (REST API v4, optionally the Chats API).
    Amocrm,
}

/// How manager replies are noticed when no Chats API channel is used.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum ReplyDetection {
    /// Poll lead notes (one poller per binding). Works on every amoCRM plan.
    #[default]
    Poll,
    /// amoCRM REST webhooks (Extended or Professional plans), received by the gateway.
    Webhook,
}

/// An amoCRM or Kommo account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.statusId) || has(self.pipelineId)").message("statusId needs pipelineId: a stage belongs to a pipeline").field_path(".statusId")
)]
#[serde(rename_all = "camelCase")]
pub struct AmoCrmSettings {
    /// The account's own host, e.g. `https://example.amocrm.ru` or
    /// `https://example.kommo.com` (never the shared `www` host). HTTPS only; plain
    /// HTTP is accepted for loopback hosts, for local testing. Immutable: another host
    /// is another CRM account.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''").message("must be an absolute URL such as https://example.amocrm.ru"),
        validation = Rule::new("!isURL(self) || url(self).getScheme() == 'https' || url(self).getHostname() in ['127.0.0.1', 'localhost', '::1']").message("must use https (plain http is only allowed for a loopback host)"),
        validation = Rule::new("!isURL(self) || !url(self).getHostname().startsWith('www.')").message("use the account's own host (https://SUBDOMAIN.amocrm.ru), not the shared www host"),
        validation = Rule::new("!isURL(self) || (url(self).getEscapedPath() in ['', '/'] && url(self).getQuery().size() == 0)").message("must be the bare host, without a path or query"),
        validation = Rule::new("self == oldSelf").message("baseUrl is immutable: another host is another CRM account; create a new CrmBinding instead")
    )]
    pub base_url: String,

    /// Secret with the integration's OAuth credentials. It is read once to bootstrap:
    /// keys `client_id`, `client_secret`, `redirect_uri`, and either
    /// `authorization_code` (exchanged for a token pair) or `refresh_token`; or only
    /// `long_lived_token`. The live token pair is then kept in a Secret the operator
    /// owns, so rotating tokens never conflicts with GitOps.
    pub credentials_secret: SecretRef,

    /// Extra CA certificate (PEM) to trust for `baseUrl`, for private or test hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,

    /// Pipeline for new leads; the account's main pipeline when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pipeline_id: Option<i64>,

    /// Stage (status) for new leads in `pipelineId`; its first stage when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub status_id: Option<i64>,

    /// amoCRM user ids that new leads may be assigned to (see the policy's
    /// `assignment`). Empty: the integration's own user.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    #[x_kube(
        merge_strategy = ListMerge::Set,
        validation = Rule::new("self.all(id, id > 0)").message("user ids are positive integers")
    )]
    pub responsible_user_ids: Vec<i64>,

    /// The amoCRM user new leads go to when every user they would go to (the
    /// rotation's, or the policy's fixed user) is deactivated in amoCRM. Unset:
    /// the integration's own user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub fallback_user_id: Option<i64>,

    /// Custom fields of contacts where messenger identities are kept, so a returning
    /// customer is found instead of duplicated. Phone numbers use the built-in PHONE
    /// field.
    #[serde(default)]
    pub contact_fields: ContactFields,

    /// Make each bound account a lead source in amoCRM (Sources API: an
    /// administrator's token and the integration's widget with the `lead_sources`
    /// location), so reports split leads by account; where amoCRM refuses, and
    /// when this is false, each account's leads are tagged with its name instead.
    #[serde(default = "yes")]
    pub lead_sources: bool,

    /// The region (ISO 3166-1 alpha-2 in capitals: `RU`, `KZ`, `DE`, `US`, `BR`…)
    /// whose way of writing phone numbers is assumed for a number given without its
    /// country code, when customers' and contacts' numbers are compared in E.164.
    #[serde(default = "default_phone_region")]
    #[schemars(regex(pattern = "^[A-Z]{2}$"))]
    pub phone_region: String,

    /// Use the installation's amoCRM Chats API channel (messages appear in the
    /// CRM's chat) instead of lead notes. The channel is configured once per
    /// installation, in the chart.
    #[serde(default)]
    pub chats_channel: bool,

    /// How manager replies written as lead notes are noticed.
    #[serde(default)]
    pub replies: ReplySettings,
}

/// Custom field ids of contacts that hold messenger identities.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ContactFields {
    /// Field id holding the Telegram user id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub telegram_user_id: Option<i64>,
    /// Field id holding the Telegram username.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub telegram_username: Option<i64>,
    /// Field id holding the WhatsApp id (business-scoped user id or wa_id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub whatsapp_id: Option<i64>,
}

/// How manager replies are picked up from lead notes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReplySettings {
    /// `poll` (default, every plan) or `webhook` (amoCRM REST webhooks).
    #[serde(default)]
    pub detection: ReplyDetection,
    /// A lead note that starts with this prefix is sent to the customer (without the
    /// prefix).
    #[serde(default = "default_note_prefix")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new("self.trim() != ''").message("must contain a visible character"))]
    pub note_prefix: String,
    /// How often notes are polled, as a duration (`2s` to `10m`).
    #[serde(default = "default_poll_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('2s') && duration(self) <= duration('10m')").message("must be a duration between 2s and 10m, such as 10s"))]
    pub poll_interval: String,
}

impl Default for ReplySettings {
    fn default() -> Self {
        Self {
            detection: ReplyDetection::default(),
            note_prefix: default_note_prefix(),
            poll_interval: default_poll_interval(),
        }
    }
}

fn default_note_prefix() -> String {
    ">>".into()
}
fn default_poll_interval() -> String {
    "10s".into()
}

/// Observed state of a CrmBinding.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CrmBindingStatus {
    /// The generation of the spec the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current conditions: Ready, CredentialsValid, ContactFieldsReady, LeadSourcesReady.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Names of the MessengerAccounts this binding serves.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_accounts: Vec<String>,
    /// How many accounts this binding serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_account_count: Option<i32>,
    /// The CRM account the credentials belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_account: Option<CrmAccountStatus>,
    /// When the current access token expires (it is refreshed before then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at: Option<Time>,
    /// The identity fields of contacts the operator found or created in the CRM
    /// (used where `spec.crm.amocrm.contactFields` sets none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_fields: Option<ContactFields>,
    /// The accounts whose lead source exists in the CRM (condition
    /// `LeadSourcesReady`); the others' leads carry the account's name as a tag.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lead_sources: Vec<String>,
}

impl CrmBindingStatus {
    /// Whether the CRM refused the accounts' lead sources (or could not be asked),
    /// so their leads are tagged instead: `LeadSourcesReady=False` for another
    /// reason than still waiting for credentials or accounts.
    pub fn lead_sources_refused(&self) -> bool {
        self.conditions.iter().any(|c| {
            c.type_ == crate::common::conditions::LEAD_SOURCES_READY && c.status == "False" && c.reason != "Waiting"
        })
    }
}

/// Identity of the CRM account behind a binding.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CrmAccountStatus {
    /// The CRM's account id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The account's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The account's chat-service id (amoCRM `amojo_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_id: Option<String>,
}

fn yes() -> bool {
    true
}

fn default_phone_region() -> String {
    "RU".into()
}
