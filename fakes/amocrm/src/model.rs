//! The entities the fake stores, as tests see them in a [`Snapshot`].

use serde::Serialize;
use serde_json::Value;

/// A contact (`/api/v4/contacts`).
#[derive(Clone, Debug, Serialize)]
pub struct Contact {
    /// Contact ID.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// Responsible user.
    pub responsible_user_id: i64,
    /// Who created it (0 = robot / Chats API).
    pub created_by: i64,
    /// Custom field values in amoCRM's response form (an array, or `null`).
    pub custom_fields_values: Value,
    /// Unix seconds, fake clock.
    pub created_at: i64,
    /// Unix seconds, fake clock.
    pub updated_at: i64,
    /// Linked leads.
    pub lead_ids: Vec<i64>,
    /// Tag names.
    pub tags: Vec<String>,
    /// Whether it was deleted.
    pub is_deleted: bool,
}

/// A lead source of the integration (Sources API).
#[derive(Clone, Debug, Serialize)]
pub struct Source {
    /// Source ID.
    pub id: i64,
    /// Its name in reports.
    pub name: String,
    /// The integration's own id for it (≤ 36 printable ASCII, immutable).
    pub external_id: String,
    /// The pipeline its incoming leads go to.
    pub pipeline_id: i64,
    /// The integration's default source.
    pub default: bool,
}

/// A lead (`/api/v4/leads`).
#[derive(Clone, Debug, Serialize)]
pub struct Lead {
    /// Lead ID.
    pub id: i64,
    /// Lead name.
    pub name: String,
    /// Budget.
    pub price: i64,
    /// Current status (stage).
    pub status_id: i64,
    /// Pipeline.
    pub pipeline_id: i64,
    /// Responsible user.
    pub responsible_user_id: i64,
    /// Linked contacts; the first is the main contact.
    pub contact_ids: Vec<i64>,
    /// Tag names.
    pub tags: Vec<String>,
    /// Custom field values (always `null`: leads have no custom fields in the fake).
    pub custom_fields_values: Value,
    /// Unix seconds, fake clock.
    pub created_at: i64,
    /// Unix seconds, fake clock.
    pub updated_at: i64,
    /// Who created it (0 = robot).
    pub created_by: i64,
    /// When it was won or lost.
    pub closed_at: Option<i64>,
    /// Whether it was deleted.
    pub is_deleted: bool,
    /// The lead source it was created with (`_embedded.source.external_id`).
    #[serde(default)]
    pub source_id: Option<i64>,
}

/// A note on a lead or a contact.
#[derive(Clone, Debug, Serialize)]
pub struct Note {
    /// Note ID.
    pub id: i64,
    /// "leads" or "contacts".
    pub entity_type: String,
    /// The lead or contact.
    pub entity_id: i64,
    /// "common", "service_message", ...
    pub note_type: String,
    /// Type-specific parameters (`{"text": ...}` for common notes).
    pub params: Value,
    /// Author user ID.
    pub created_by: i64,
    /// Responsible user.
    pub responsible_user_id: i64,
    /// Unix seconds, fake clock.
    pub created_at: i64,
    /// Unix seconds, fake clock.
    pub updated_at: i64,
    /// When the fake wrote it: microseconds since the fake started (real,
    /// monotonic; see [`crate::FakeAmo::started_at`]). Not part of the API.
    #[serde(skip)]
    pub written_us: u64,
}

/// A task.
#[derive(Clone, Debug, Serialize)]
pub struct Task {
    /// Task ID.
    pub id: i64,
    /// The entity it is attached to (0: none).
    pub entity_id: i64,
    /// "leads", "contacts", ... ("" : none).
    pub entity_type: String,
    /// Task text.
    pub text: String,
    /// Deadline, Unix seconds.
    pub complete_till: i64,
    /// Task type (1 call, 2 meeting).
    pub task_type_id: i64,
    /// Responsible user.
    pub responsible_user_id: i64,
    /// Whether it was completed.
    pub is_completed: bool,
    /// `result.text` given when completing it.
    pub result_text: Option<String>,
    /// Author.
    pub created_by: i64,
    /// Unix seconds, fake clock.
    pub created_at: i64,
    /// Unix seconds, fake clock.
    pub updated_at: i64,
}

/// A Chats API conversation.
#[derive(Clone, Debug, Serialize)]
pub struct Chat {
    /// amojo chat ID (uuid).
    pub id: String,
    /// The integration's conversation ID.
    pub conversation_id: String,
    /// The contact the chat is linked to.
    pub contact_id: Option<i64>,
    /// ID of the contact↔chat link (changes when relinked).
    pub link_id: Option<i64>,
    /// `source.external_id`.
    pub source_external_id: Option<String>,
    /// The client: `{id (amojo), client_id, name, avatar, phone, email}`.
    pub user: Value,
    /// Unix seconds, fake clock.
    pub created_at: i64,
}

/// Who wrote a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the client (the integration sent it with `sender` only).
    Inbound,
    /// To the client (a manager or bot).
    Outbound,
}

/// A message in a Chats API conversation.
#[derive(Clone, Debug, Serialize)]
pub struct ChatMessage {
    /// amojo message ID (uuid).
    pub id: String,
    /// The integration's msgid (empty for messages written by a manager in amoCRM).
    pub msgid: String,
    /// The integration's conversation ID.
    pub conversation_id: String,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Message type ("text", "picture", ...).
    pub message_type: String,
    /// Text.
    pub text: String,
    /// Media URL.
    pub media: Option<String>,
    /// File name.
    pub file_name: Option<String>,
    /// File size.
    pub file_size: Option<i64>,
    /// `silent` flag.
    pub silent: bool,
    /// Unix seconds as sent.
    pub timestamp: i64,
    /// Milliseconds as sent.
    pub msec_timestamp: Option<i64>,
    /// Sender as sent.
    pub sender: Value,
    /// Receiver as sent.
    pub receiver: Option<Value>,
    /// Last delivery status (1 delivered, 2 read, -1 error).
    pub delivery_status: Option<i64>,
    /// Error code of a -1 delivery status.
    pub delivery_error_code: Option<i64>,
    /// Error text of a -1 delivery status.
    pub delivery_error: Option<String>,
    /// How many times it was edited.
    pub edits: u32,
}

/// An Unsorted (incoming lead) entry.
#[derive(Clone, Debug, Serialize)]
pub struct Unsorted {
    /// Unsorted UID.
    pub uid: String,
    /// The lead created with it.
    pub lead_id: i64,
    /// The contact created with it.
    pub contact_id: i64,
    /// Always "chats" here.
    pub category: String,
    /// The conversation that caused it.
    pub conversation_id: String,
    /// Pipeline of the lead.
    pub pipeline_id: i64,
    /// Unix seconds, fake clock.
    pub created_at: i64,
}

/// A REST webhook subscription (`/api/v4/webhooks`).
#[derive(Clone, Debug, Serialize)]
pub struct WebhookSubscription {
    /// Subscription ID.
    pub id: i64,
    /// Destination URL.
    pub destination: String,
    /// Events, e.g. "note_lead".
    pub settings: Vec<String>,
    /// Sort order.
    pub sort: i64,
    /// Disabled after too many invalid replies.
    pub disabled: bool,
    /// Unix seconds, fake clock.
    pub created_at: i64,
}

/// One attempt to deliver a REST webhook.
#[derive(Clone, Debug, Serialize)]
pub struct WebhookDelivery {
    /// Destination URL.
    pub destination: String,
    /// Event name, e.g. "note_lead".
    pub event: String,
    /// 1 for the first try, up to 5.
    pub attempt: u32,
    /// Fake-clock ms when sent.
    pub at_ms: i64,
    /// The HTTP status received (`None`: no reply, timeout, connection error).
    pub status: Option<u16>,
    /// Transport error, if any.
    pub error: Option<String>,
    /// Whether the reply counted as success (100–299).
    pub success: bool,
    /// The form-encoded body.
    pub body: String,
}

/// One Chats API outgoing hook (manager reply) delivery.
#[derive(Clone, Debug, Serialize)]
pub struct HookDelivery {
    /// The URL posted to.
    pub url: String,
    /// amojo message ID.
    pub message_id: String,
    /// Conversation.
    pub conversation_id: String,
    /// Fake-clock ms when sent.
    pub at_ms: i64,
    /// The raw JSON body.
    pub body: String,
    /// X-Signature sent.
    pub signature: String,
    /// HTTP status received (`None`: none).
    pub status: Option<u16>,
    /// Transport error or "no hook_url configured".
    pub error: Option<String>,
}

/// One API request the fake answered (control requests excluded).
#[derive(Clone, Debug, Serialize)]
pub struct RequestRecord {
    /// Fake-clock ms when it arrived.
    pub at_ms: i64,
    /// Real ms since the fake started (monotonic).
    pub real_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Query string, if any.
    pub query: Option<String>,
    /// Status of the response (also for dropped responses: the one not sent).
    pub status: u16,
    /// Whether the response was withheld by a `DropResponse` fault.
    pub dropped: bool,
}

/// A file in amoCRM's file service.
#[derive(Clone, Debug, Serialize)]
pub struct DriveFile {
    /// File UUID.
    pub uuid: String,
    /// UUID of its (only) version.
    pub version_uuid: String,
    /// File name.
    pub name: String,
    /// MIME type given when it was uploaded.
    pub mime_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Its bytes.
    #[serde(skip)]
    pub bytes: Vec<u8>,
    /// The user who uploaded it (the integration's user for API uploads).
    pub created_by: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Leads it is linked to.
    pub leads: Vec<i64>,
    /// Contacts it is linked to.
    #[serde(default)]
    pub contacts: Vec<i64>,
}

/// Everything that exists in the fake, for assertions.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// Contacts.
    pub contacts: Vec<Contact>,
    /// Files in the file service.
    pub files: Vec<DriveFile>,
    /// Leads.
    pub leads: Vec<Lead>,
    /// Notes.
    pub notes: Vec<Note>,
    /// Tasks.
    pub tasks: Vec<Task>,
    /// Chats API conversations.
    pub chats: Vec<Chat>,
    /// Chats API messages.
    pub chat_messages: Vec<ChatMessage>,
    /// Unsorted entries created by inbound chat messages.
    pub unsorted: Vec<Unsorted>,
    /// The integration's lead sources.
    pub sources: Vec<Source>,
    /// Manager notifications (one per non-silent inbound message).
    pub notifications: u32,
    /// REST webhook subscriptions.
    pub webhooks: Vec<WebhookSubscription>,
    /// REST webhook delivery attempts.
    pub webhook_deliveries: Vec<WebhookDelivery>,
    /// Chats outgoing hook deliveries.
    pub chat_hook_deliveries: Vec<HookDelivery>,
    /// Every API request.
    pub requests: Vec<RequestRecord>,
    /// Successful refresh_token grants.
    pub refreshes: u32,
    /// Chats API scopes connected.
    pub connected_scopes: Vec<String>,
}

/// An access/refresh token pair.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct TokenPair {
    /// Bearer token for REST calls.
    pub access_token: String,
    /// Single-use refresh token.
    pub refresh_token: String,
    /// Access token lifetime in seconds.
    pub expires_in: i64,
}
