//! `MessengerAccount`: one messenger identity (a Telegram user or bot, a WhatsApp
//! number) that one connector serves.

use crate::common::{LocalObjectRef, SecretKeyRef};
use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One messenger identity (a Telegram user account or bot, or a WhatsApp number)
/// served by one connector. The operator runs a connector for it; the connector logs
/// in, moves messages to and from the CRM named by the CrmBinding that selects this
/// account, and reports progress in the status.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "crmessenger.io",
    version = "v1alpha1",
    kind = "MessengerAccount",
    namespaced,
    status = "MessengerAccountStatus",
    shortname = "msgacct",
    category = "crmessenger",
    doc = "One messenger identity (a Telegram user account or bot, or a WhatsApp number) served by one connector.",
    validation = Rule::new("size(self.metadata.name) <= 51").message("metadata.name must be at most 51 characters: the connector pod is named NAME-connector-0, and pod names are DNS labels (63 characters)"),
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Identity",
        type_ = "string",
        json_path = ".status.identity.summary"
    ),
    printcolumn(
        name = "Dead",
        type_ = "integer",
        json_path = ".status.queues.deadLetters",
        priority = "1"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.provider != 'telegram' || has(self.telegram)").message("telegram settings are required when provider is telegram").field_path(".telegram"),
    validation = Rule::new("self.provider == 'telegram' || !has(self.telegram)").message("telegram settings are only allowed when provider is telegram").field_path(".telegram"),
    validation = Rule::new("self.provider != 'whatsapp' || has(self.whatsapp)").message("whatsapp settings are required when provider is whatsapp").field_path(".whatsapp"),
    validation = Rule::new("self.provider == 'whatsapp' || !has(self.whatsapp)").message("whatsapp settings are only allowed when provider is whatsapp").field_path(".whatsapp")
)]
#[serde(rename_all = "camelCase")]
pub struct MessengerAccountSpec {
    /// The messenger: `telegram` or `whatsapp`. Immutable: a different provider is a
    /// different account, so create a new MessengerAccount instead.
    #[x_kube(validation = Rule::new("self == oldSelf").message("provider is immutable; create a new MessengerAccount instead"))]
    pub provider: Provider,

    /// Telegram settings; required when `provider` is `telegram`, forbidden otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramSettings>,

    /// WhatsApp settings; required when `provider` is `whatsapp`, forbidden otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<WhatsAppSettings>,

    /// Stops the connector (scales it to zero) without logging the session out. The
    /// account shows phase `Suspended` until this is set back to false.
    #[serde(default)]
    pub suspend: bool,

    /// Overrides for the connector pod: image, resources and scheduling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<ConnectorOverrides>,
}

/// The messenger an account lives on.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum Provider {
    /// Telegram (a user account over MTProto, or a bot).
    Telegram,
    /// WhatsApp (Cloud API, or WhatsApp Web pairing).
    Whatsapp,
}

/// How a Telegram account signs in.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum TelegramLoginMethod {
    /// Scan a QR code with the Telegram app (Settings → Devices → Link Desktop Device).
    #[default]
    Qr,
    /// Type the code Telegram sends to `phoneNumber`.
    PhoneCode,
    /// Sign in as a bot with the token from @BotFather.
    BotToken,
}

/// Telegram settings of an account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.loginMethod != 'botToken' || has(self.botToken)").message("botToken is required when loginMethod is botToken").field_path(".botToken"),
    validation = Rule::new("self.loginMethod == 'botToken' || !has(self.botToken)").message("botToken is only allowed when loginMethod is botToken").field_path(".botToken"),
    validation = Rule::new("self.loginMethod != 'phoneCode' || has(self.phoneNumber)").message("phoneNumber is required when loginMethod is phoneCode").field_path(".phoneNumber"),
    validation = Rule::new("self.loginMethod != 'botToken' || !has(self.twoFactorPassword)").message("a bot has no two-factor password").field_path(".twoFactorPassword"),
    validation = Rule::new("(self.loginMethod == 'botToken') == (oldSelf.loginMethod == 'botToken')").message("cannot switch between a bot and a user account; create a new MessengerAccount instead").field_path(".loginMethod"),
    validation = Rule::new("!has(oldSelf.phoneNumber) || (has(self.phoneNumber) && self.phoneNumber == oldSelf.phoneNumber)").message("phoneNumber cannot be changed or removed once set: it names the signed-in account; create a new MessengerAccount instead").field_path(".phoneNumber")
)]
#[serde(rename_all = "camelCase")]
pub struct TelegramSettings {
    /// How the connector signs in: `qr` (default), `phoneCode` or `botToken`.
    #[serde(default)]
    pub login_method: TelegramLoginMethod,

    /// Secret with the Telegram API credentials from my.telegram.org (keys
    /// `api_id` and `api_hash` unless renamed here). Required for every method,
    /// bots included, since they sign in over MTProto.
    pub api_credentials: TelegramApiCredentials,

    /// The account's phone number in international format (`+79991234567`).
    /// Required for `phoneCode`; immutable once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[+][1-9][0-9]{6,14}$')").message("must be an E.164 phone number such as +79991234567"))]
    pub phone_number: Option<String>,

    /// The bot token from @BotFather; only with `loginMethod: botToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot_token: Option<SecretKeyRef>,

    /// The two-step verification password, if the account has one. It can also be
    /// typed on the login page or put in the Secret `<account>-login` (key
    /// `password`), which the connector deletes after use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_factor_password: Option<SecretKeyRef>,
}

/// Where the Telegram API id and hash are.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TelegramApiCredentials {
    /// Name of the Secret, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::common::NAME_RULE).message(crate::common::SECRET_NAME_MSG))]
    pub secret_name: String,
    /// Key holding the numeric api_id.
    #[serde(default = "default_api_id_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::common::SECRET_KEY_RULE).message(crate::common::SECRET_KEY_MSG))]
    pub api_id_key: String,
    /// Key holding the api_hash.
    #[serde(default = "default_api_hash_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::common::SECRET_KEY_RULE).message(crate::common::SECRET_KEY_MSG))]
    pub api_hash_key: String,
}

fn default_api_id_key() -> String {
    "api_id".into()
}
fn default_api_hash_key() -> String {
    "api_hash".into()
}

/// How a WhatsApp account connects.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum WhatsAppLoginMethod {
    /// The official WhatsApp Business Cloud API (a Meta app and a phone number id).
    #[default]
    CloudApi,
    /// WhatsApp Web multi-device pairing by QR code. Unofficial: WhatsApp may ban
    /// numbers that use it; only available in connectors built with that feature.
    Qr,
}

/// WhatsApp settings of an account.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("self.loginMethod != 'cloudApi' || has(self.cloudApi)").message("cloudApi settings are required when loginMethod is cloudApi").field_path(".cloudApi"),
    validation = Rule::new("self.loginMethod == 'cloudApi' || !has(self.cloudApi)").message("cloudApi settings are only allowed when loginMethod is cloudApi").field_path(".cloudApi"),
    validation = Rule::new("self.loginMethod == oldSelf.loginMethod").message("loginMethod is immutable: a Cloud API number and a paired WhatsApp Web session are different accounts").field_path(".loginMethod")
)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppSettings {
    /// `cloudApi` (default) or `qr` (WhatsApp Web pairing). Immutable.
    #[serde(default)]
    pub login_method: WhatsAppLoginMethod,

    /// Cloud API settings; required when `loginMethod` is `cloudApi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloud_api: Option<CloudApiSettings>,
}

/// A WhatsApp Business Cloud API phone number.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CloudApiSettings {
    /// The phone number id from the Meta app's WhatsApp settings (digits, not the
    /// phone number itself). Webhooks are routed by it. Immutable.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(
        validation = Rule::new("self.matches('^[0-9]+$')").message("must be the numeric phone number id shown in the Meta app, not the phone number"),
        validation = Rule::new("self == oldSelf").message("phoneNumberId is immutable: it names the WhatsApp number; create a new MessengerAccount instead")
    )]
    pub phone_number_id: String,

    /// The WhatsApp Business Account id, shown for reference and used for templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]+$')").message("must be the numeric WhatsApp Business Account id"))]
    pub business_account_id: Option<String>,

    /// The system-user access token of the Meta app.
    pub access_token: SecretKeyRef,
}

/// Overrides for the connector pod. Everything here is optional.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorOverrides {
    /// Connector image; defaults to the one the operator was installed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// Compute resources of the connector container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Node labels the connector pod must run on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Tolerations of the connector pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Affinity rules of the connector pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Priority class of the connector pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
}

/// Observed state of a MessengerAccount. The operator owns `phase`,
/// `observedGeneration` and the conditions Ready, ConfigValid and
/// ConnectorAvailable; the connector owns `login`, `identity`, `connector`, `queues`
/// and the conditions LoggedIn, MessengerConnected and CrmSynced.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MessengerAccountStatus {
    /// A one-word summary derived from the conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<AccountPhase>,
    /// The generation of the spec that the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current conditions: Ready, ConfigValid, ConnectorAvailable, LoggedIn,
    /// MessengerConnected, CrmSynced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The CrmBinding this account belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<LocalObjectRef>,
    /// What a person must do to sign the account in, while it is not signed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<LoginStatus>,
    /// Who the account is signed in as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<AccountIdentity>,
    /// What the connector reports about itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connector: Option<ConnectorStatus>,
    /// The account's queues, as the connector last saw them (refreshed every few
    /// seconds while they change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<QueueStatus>,
}

/// The account's queues: what waits, what failed, and when traffic last moved.
/// `kubectl crmessenger dead-letters` lists the dead letters; `replay` retries them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Messages not yet in the CRM.
    #[serde(default)]
    pub inbound_pending: i64,
    /// Replies not yet sent to the messenger.
    #[serde(default)]
    pub outbound_pending: i64,
    /// Messages and replies that failed for good and wait for a replay.
    #[serde(default)]
    pub dead_letters: i64,
    /// Why the oldest dead letter failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub oldest_dead_letter_reason: Option<String>,
    /// When the inbox last delivered to the CRM (a customer's message, an edit, or
    /// what the owner wrote from their own phone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_inbound_at: Option<Time>,
    /// When the last reply was sent to the messenger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_outbound_at: Option<Time>,
}

/// A one-word summary of an account's state.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountPhase {
    /// The connector is being created or has not reported yet.
    Pending,
    /// The connector runs and waits for a person to log in (see `status.login`).
    LoggingIn,
    /// Signed in, connected, and syncing with the CRM.
    Running,
    /// Something is wrong; the Ready condition says what.
    Degraded,
    /// `spec.suspend` is true: the connector is stopped.
    Suspended,
    /// The account is being deleted: its session is being logged out.
    Terminating,
}

/// Login instructions, published by the connector while the account is not signed in.
/// It never holds a password or a code.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LoginStatus {
    /// The login method in progress (`qr`, `phoneCode`, `botToken`, `cloudApi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The URL encoded in the current QR code (for Telegram `tg://login?token=…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_url: Option<String>,
    /// When the current QR code expires; a new one replaces it before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// What to do next, e.g. the `kubectl port-forward` command for the login page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

/// The identity an account is signed in as. Phone numbers are masked.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AccountIdentity {
    /// The messenger's id of the account (Telegram user id, WhatsApp phone number id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The public username, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The phone number with all but the last digits masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_phone: Option<String>,
    /// One line for `kubectl get`: username or name, and the masked phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// What the connector reports about itself.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorStatus {
    /// Hash of the configuration the connector runs; compared with the operator's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The pod serving the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Set by the connector once it has logged the session out and purged the
    /// account's data after deletion was requested; the operator then removes its
    /// finalizer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_completed_at: Option<Time>,
}
