//! `SyncPolicy`: how messages flow between messengers and the CRM.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

/// How messages flow between the messengers and the CRM: which chats are synced,
/// how leads are created and de-duplicated, who gets them, what happens to media,
/// when an unanswered customer is escalated, how much history is imported, and how
/// fast replies may be sent. CrmBindings refer to a policy by name; one policy can
/// serve many bindings.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "crmessenger.io",
    version = "v1alpha1",
    kind = "SyncPolicy",
    namespaced,
    status = "SyncPolicyStatus",
    shortname = "syncpol",
    category = "crmessenger",
    doc = "How messages flow between the messengers and the CRM.",
    printcolumn(name = "Assignment", type_ = "string", json_path = ".spec.assignment.strategy"),
    printcolumn(name = "Escalate-After", type_ = "string", json_path = ".spec.escalation.after"),
    printcolumn(
        name = "Send/min",
        type_ = "integer",
        json_path = ".spec.rateLimits.messagesPerMinute",
        priority = "1"
    ),
    printcolumn(name = "Bindings", type_ = "integer", json_path = ".status.bindingCount"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicySpec {
    /// Which chats are synced.
    #[serde(default)]
    pub chats: ChatFilter,
    /// How contacts and leads are created and matched.
    #[serde(default)]
    pub leads: LeadSettings,
    /// Who new leads are assigned to.
    #[serde(default)]
    pub assignment: Assignment,
    /// What happens to photos, documents, voice and video.
    #[serde(default)]
    pub media: MediaSettings,
    /// A CRM task when a customer waits too long for an answer.
    #[serde(default)]
    pub escalation: Escalation,
    /// History imported when an account first signs in.
    #[serde(default)]
    pub backfill: Backfill,
    /// How fast replies may be sent to the messenger, to stay clear of bans.
    #[serde(default)]
    pub rate_limits: RateLimits,
    /// WhatsApp-specific behaviour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<WhatsAppPolicy>,
}

/// Which chats are synced. Private chats are on by default; groups and channels off.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.private || self.groups || self.channels || size(self.allow) > 0").message("the policy admits no chat at all: enable private, groups or channels, or list chats in allow"),
    validation = Rule::new("!self.allow.exists(a, a in self.deny)").message("a chat cannot be in both allow and deny").field_path(".deny")
)]
#[serde(rename_all = "camelCase")]
pub struct ChatFilter {
    /// Sync one-to-one chats with customers.
    #[serde(default = "yes")]
    pub private: bool,
    /// Sync groups and supergroups (messages carry the sender).
    #[serde(default)]
    pub groups: bool,
    /// Sync channels the account reads.
    #[serde(default)]
    pub channels: bool,
    /// Chats synced regardless of the switches above: numeric chat ids, `@usernames`
    /// or phone numbers.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allow: Vec<String>,
    /// Chats never synced, even if a switch or `allow` admits them.
    #[serde(default)]
    #[schemars(length(max = 100), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub deny: Vec<String>,
}

impl Default for ChatFilter {
    fn default() -> Self {
        Self { private: true, groups: false, channels: false, allow: vec![], deny: vec![] }
    }
}

/// A way to recognise the same person across messengers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub enum DedupKey {
    /// Phone number, normalised to E.164.
    Phone,
    /// Telegram user id.
    TelegramUserId,
    /// Telegram username.
    TelegramUsername,
    /// WhatsApp id.
    WhatsappId,
}

/// How contacts and leads are created and matched.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeadSettings {
    /// Create a lead for a new conversation. When false, no lead is made: the
    /// conversation is kept on the customer's contact (its notes, files, escalation
    /// tasks, and managers' `>>` notes there as replies).
    #[serde(default = "yes")]
    pub create: bool,
    /// A returning customer's message goes to their open lead instead of a new one.
    #[serde(default = "yes")]
    pub reuse_open_lead: bool,
    /// Identities used to find an existing contact before creating one.
    #[serde(default = "default_dedup")]
    #[schemars(length(max = 4))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub deduplicate_by: Vec<DedupKey>,
    /// Name of new leads. `{name}` is the customer's name, `{channel}` the
    /// messenger, `{phone}` and `{username}` the customer's phone and Telegram
    /// username (empty when the messenger does not give them).
    #[serde(default = "default_lead_name")]
    #[schemars(length(min = 1, max = 255))]
    pub name_template: String,
    /// Tags added to new leads, besides the messenger's own tag.
    #[serde(default)]
    #[schemars(length(max = 10), inner(length(min = 1, max = 64)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub tags: Vec<String>,
}

impl Default for LeadSettings {
    fn default() -> Self {
        Self {
            create: true,
            reuse_open_lead: true,
            deduplicate_by: default_dedup(),
            name_template: default_lead_name(),
            tags: vec![],
        }
    }
}

/// How new leads are assigned.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum AssignmentStrategy {
    /// In turn, over the binding's `responsibleUserIds`.
    #[default]
    RoundRobin,
    /// Always to `userId`.
    Fixed,
}

/// Who new leads are assigned to.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[x_kube(
    validation = Rule::new("self.strategy != 'fixed' || has(self.userId)").message("userId is required when strategy is fixed").field_path(".userId"),
    validation = Rule::new("self.strategy == 'fixed' || !has(self.userId)").message("userId is only used when strategy is fixed").field_path(".userId")
)]
#[serde(rename_all = "camelCase")]
pub struct Assignment {
    /// `roundRobin` (default) or `fixed`.
    #[serde(default)]
    pub strategy: AssignmentStrategy,
    /// The CRM user id every lead goes to, with `fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub user_id: Option<i64>,
}

/// What is done with media.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum MediaMode {
    /// Download it and put a link to it in the CRM.
    #[default]
    Link,
    /// Do not download it; the CRM note says what kind of media was sent.
    Skip,
}

/// Media handling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MediaSettings {
    /// `link` (default) or `skip`.
    #[serde(default)]
    pub mode: MediaMode,
    /// Larger files are not downloaded (MiB, 1 to 2000).
    #[serde(default = "default_media_size")]
    #[schemars(range(min = 1, max = 2000))]
    #[serde(rename = "maxSizeMiB")]
    pub max_size_mib: i32,
}

impl MediaSettings {
    /// The largest file let through, in bytes (`maxSizeMiB`, at least 1 MiB).
    pub fn max_bytes(&self) -> u64 {
        self.max_size_mib.max(1) as u64 * 1024 * 1024
    }
}

impl Default for MediaSettings {
    fn default() -> Self {
        Self { mode: MediaMode::default(), max_size_mib: default_media_size() }
    }
}

/// Unanswered-message escalation: a CRM task when a customer waits too long.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("!self.after.matches('^([0-9]+(ms|s|m|h))+$') || !self.deadline.matches('^([0-9]+(ms|s|m|h))+$') || duration(self.deadline) >= duration(self.after)").message("deadline must not be shorter than after").field_path(".deadline")
)]
#[serde(rename_all = "camelCase")]
pub struct Escalation {
    /// Create tasks for unanswered customers.
    #[serde(default)]
    pub enabled: bool,
    /// How long a customer's message may stay unanswered (`1m` to `168h`).
    #[serde(default = "default_escalate_after")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('1m') && duration(self) <= duration('168h')").message("must be a duration between 1m and 168h, such as 15m"))]
    pub after: String,
    /// Text of the task; unset, it says that a customer is waiting for a reply,
    /// in the binding's language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1000))]
    pub task_text: Option<String>,
    /// How long the manager has to complete the task (`5m` to `720h`).
    #[serde(default = "default_task_deadline")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('5m') && duration(self) <= duration('720h')").message("must be a duration between 5m and 720h, such as 1h"))]
    pub deadline: String,
}

impl Default for Escalation {
    fn default() -> Self {
        Self { enabled: false, after: default_escalate_after(), task_text: None, deadline: default_task_deadline() }
    }
}

/// History imported when an account first signs in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Backfill {
    /// Days of history to import (0, the default, imports none; at most 365).
    /// Imported messages do not notify managers.
    #[serde(default)]
    #[schemars(range(min = 0, max = 365))]
    pub days: i32,
    /// Import at most this many chats, most recent first (0 means all that the chat
    /// filter admits).
    #[serde(default)]
    #[schemars(range(min = 0, max = 10000))]
    pub max_chats: i32,
}

/// Send rate limits toward the messenger.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.perChatPerMinute <= self.messagesPerMinute").message("perChatPerMinute cannot exceed messagesPerMinute").field_path(".perChatPerMinute")
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Messages per minute an account may send in total (1 to 1800).
    #[serde(default = "default_per_minute")]
    #[schemars(range(min = 1, max = 1800))]
    pub messages_per_minute: i32,
    /// Messages per minute to any one chat (1 to 60).
    #[serde(default = "default_per_chat")]
    #[schemars(range(min = 1, max = 60))]
    pub per_chat_per_minute: i32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self { messages_per_minute: default_per_minute(), per_chat_per_minute: default_per_chat() }
    }
}

/// WhatsApp-specific behaviour.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WhatsAppPolicy {
    /// Approved template sent instead of a free-form reply outside WhatsApp's 24-hour
    /// customer-service window. Without it, such replies are dead-lettered with a
    /// clear reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_window_template: Option<TemplateRef>,
}

/// An approved WhatsApp message template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Template name as approved in WhatsApp Manager.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9_]+$')").message("template names have lowercase letters, digits and underscores only"))]
    pub name: String,
    /// Template language code, e.g. `en_US` or `ru`.
    #[schemars(length(min = 2, max = 16))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z]{2,3}(_[A-Z]{2})?$')").message("must be a language code such as en_US or ru"))]
    pub language: String,
}

/// Observed state of a SyncPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicyStatus {
    /// The generation of the spec the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current conditions: Ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// CrmBindings that use this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bindings: Vec<String>,
    /// How many CrmBindings use this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_count: Option<i32>,
}

fn yes() -> bool {
    true
}
fn default_dedup() -> Vec<DedupKey> {
    vec![DedupKey::Phone, DedupKey::TelegramUserId, DedupKey::TelegramUsername, DedupKey::WhatsappId]
}
fn default_lead_name() -> String {
    "{channel}: {name}".into()
}
fn default_media_size() -> i32 {
    20
}
fn default_escalate_after() -> String {
    "15m".into()
}
fn default_task_deadline() -> String {
    "1h".into()
}
fn default_per_minute() -> i32 {
    30
}
fn default_per_chat() -> i32 {
    20
}
