//! What flows between the bridge and a CRM, independent of the CRM product.

pub use crmessenger_api::policy::DedupKey;
use serde::{Deserialize, Serialize};

/// The messenger a person writes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// Telegram.
    Telegram,
    /// WhatsApp.
    Whatsapp,
}

impl Channel {
    /// The human name, also used as the lead tag.
    pub fn label(self) -> &'static str {
        match self {
            Channel::Telegram => "Telegram",
            Channel::Whatsapp => "WhatsApp",
        }
    }
}

/// A customer as the messenger knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Display name.
    pub name: String,
    /// Phone number as the messenger gave it (normalised before use).
    pub phone: Option<String>,
    /// Telegram user id.
    pub telegram_user_id: Option<i64>,
    /// Telegram username, without `@`.
    pub telegram_username: Option<String>,
    /// WhatsApp id (business-scoped user id, or wa_id).
    pub whatsapp_id: Option<String>,
}

/// A contact in the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRef {
    /// CRM id.
    pub id: i64,
    /// Whether this call created it.
    pub created: bool,
}

/// What a new lead looks like.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeadRequest {
    /// Lead name.
    pub name: String,
    /// Pipeline; the CRM's main pipeline when unset.
    pub pipeline_id: Option<i64>,
    /// Stage; the pipeline's first stage when unset.
    pub status_id: Option<i64>,
    /// Responsible user; the integration's user when unset.
    pub responsible_user_id: Option<i64>,
    /// Tags (the channel's tag included).
    pub tags: Vec<String>,
    /// Reuse the contact's open lead instead of creating one.
    pub reuse_open: bool,
    /// Leads never reused for this one (the leads of group chats the contact
    /// writes in: a private chat gets its own).
    pub not_reused: Vec<i64>,
    /// The lead source's external id (the account's source, when the CRM has it).
    pub source: Option<String>,
}

/// A lead in the CRM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeadRef {
    /// CRM id.
    pub id: i64,
    /// Whether this call created it.
    pub created: bool,
    /// The uid of the Unsorted (incoming lead) entry when amoCRM made this lead
    /// itself and nobody has accepted it yet: adopting it (`Crm::adopt_lead`) puts
    /// it where the policy says instead of creating a second lead.
    pub incoming: Option<String>,
}

/// A note to add to a lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRequest {
    /// A string unique to this note and contained in `text` (e.g. a message
    /// reference): how an in-doubt write is found again.
    pub marker: String,
    /// The full text.
    pub text: String,
}

/// A note in the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteRef {
    /// CRM id.
    pub id: i64,
    /// The marker it was written with.
    pub marker: String,
}

/// A task to create (escalation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRequest {
    /// The lead it is about.
    pub lead_id: i64,
    /// What to do.
    pub text: String,
    /// Deadline, Unix seconds.
    pub complete_till: i64,
    /// Who must do it; the lead's responsible user when unset.
    pub responsible_user_id: Option<i64>,
}

/// A task in the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskRef {
    /// CRM id.
    pub id: i64,
}

/// A file to put in the CRM's file storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileUpload {
    /// File name.
    pub file_name: String,
    /// MIME type.
    pub mime_type: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A file in the CRM's file storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// File id (amoCRM: its UUID).
    pub uuid: String,
    /// The version (amoCRM: its version UUID).
    pub version_uuid: String,
    /// File name.
    pub file_name: String,
}

/// A file a manager sends with a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyFile {
    /// The file.
    pub file: StoredFile,
    /// The note that attached it; with the reply, the idempotency key of its send.
    pub source_id: String,
}

/// A manager's reply found in the CRM, to be sent to the customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The note (or chat message) it came from; the idempotency key.
    pub source_id: String,
    /// The lead it was written on.
    pub lead_id: i64,
    /// The text to send, prefix removed.
    pub text: String,
    /// The CRM user who wrote it.
    pub author_id: i64,
    /// When it was written, Unix seconds.
    pub created_at: i64,
    /// Files the manager attached to the lead for this reply, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ReplyFile>,
}

/// Where reply polling continues from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyCursor {
    /// Notes updated at or after this second are read next.
    pub updated_since: i64,
    /// Notes already seen at exactly `updated_since`.
    pub seen_at_cursor: Vec<i64>,
}

/// A customer's message for the CRM's chat (Chats API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPost {
    /// The customer.
    pub person: Person,
    /// The customer's contact when the conversation has one already (its lead was
    /// made first); otherwise it is found or created from `person` and `dedup`.
    pub contact_id: Option<i64>,
    /// Identities used to find the customer's contact.
    pub dedup: Vec<DedupKey>,
    /// Our id of the conversation (stable per messenger chat).
    pub conversation_id: String,
    /// Our id of the customer in the chat service.
    pub user_id: String,
    /// Our id of this message: the chat service echoes it.
    pub message_id: String,
    /// Sent at, Unix milliseconds.
    pub sent_at_ms: i64,
    /// Text (or caption).
    pub text: String,
    /// Public URL of an attachment, with its file name and size.
    pub media: Option<ChatMedia>,
    /// Import without notifying managers (history backfill).
    pub silent: bool,
    /// Written on the account's side (its owner answered from their own app):
    /// posted as a message to the customer, authored by the channel's bot.
    pub author: Option<ChatAuthor>,
}

/// Who wrote an account-side chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatAuthor {
    /// Our id of them in the chat service.
    pub id: String,
    /// Display name.
    pub name: String,
}

/// An attachment of a chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMedia {
    /// Chat-API message type: file, picture, video, voice, audio.
    pub kind: String,
    /// A public URL the CRM downloads it from.
    pub url: String,
    /// File name.
    pub file_name: String,
    /// Size in bytes.
    pub file_size: u64,
}

/// A chat message accepted by the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPostRef {
    /// The CRM's id of the message.
    pub crm_message_id: String,
    /// The CRM's id of the chat.
    pub chat_id: String,
    /// The contact the chat is linked to.
    pub contact_id: i64,
}

/// Delivery state of a manager's message, reported back to the CRM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Delivered to the customer's device.
    Delivered,
    /// Read by the customer.
    Read,
    /// Could not be delivered; the reason is shown to the manager.
    Failed {
        /// Chat-API error code (901 user deleted chat … 905 other).
        code: u16,
        /// Why.
        reason: String,
    },
}

/// One message of a chat's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatHistoryEntry {
    /// The CRM's message id.
    pub crm_message_id: String,
    /// Our message id, for messages we posted.
    pub client_message_id: Option<String>,
    /// Whether a manager wrote it (as opposed to the customer).
    pub from_manager: bool,
    /// Text.
    pub text: String,
    /// The attached file (picture, file, video, voice, audio), if any.
    pub media: Option<ChatMedia>,
    /// Unix seconds.
    pub timestamp: i64,
}
