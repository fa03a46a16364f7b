//! The scripted messenger's wire types: what its HTTP API carries. Shared by the
//! connector's scripted adapter (`crmessenger-connector`'s `messenger::scripted`)
//! and the scripted messenger itself (`crmessenger-fake-messenger`), so no test
//! fake is a dependency of the production build.

use serde::{Deserialize, Serialize};

/// The kind of a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    /// One customer.
    #[default]
    Private,
    /// A group.
    Group,
    /// A broadcast channel.
    Channel,
}

/// Who wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Sender {
    /// Messenger user id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Phone number, when the messenger shares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Username, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// An attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// Id to fetch it with (`/v1/media/{id}`).
    pub id: String,
    /// `photo`, `video`, `voice`, `audio` or `document`.
    pub kind: String,
    /// File name.
    pub file_name: String,
    /// MIME type.
    pub mime_type: String,
    /// Size in bytes.
    pub size: u64,
}

/// One update: a message of a chat (a customer's, or one written on the account's
/// side), or an edit or deletion of one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    /// Position in the log (assigned by the messenger).
    #[serde(default)]
    pub seq: u64,
    /// `message`, `edit` or `delete`; `delivered` or `read` for a receipt of a
    /// message the account sent (`message_id` is its id).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Chat id.
    pub chat_id: String,
    /// Chat kind.
    #[serde(default)]
    pub chat_kind: ChatKind,
    /// Chat title (groups and channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_title: Option<String>,
    /// How many members a group has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u32>,
    /// Message id, unique within the chat.
    pub message_id: String,
    /// Author.
    pub sender: Sender,
    /// Text or caption.
    #[serde(default)]
    pub text: String,
    /// Attachment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Media>,
    /// A shared location `(latitude, longitude)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<(f64, f64)>,
    /// A shared contact `(name, phone)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<(String, String)>,
    /// When it was written, Unix milliseconds (assigned when unset).
    #[serde(default)]
    pub sent_at_ms: i64,
    /// Written on the account's side: by its owner on their own phone, or the
    /// echo of a message the connector sent (`sender` is then the account).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outgoing: bool,
    /// For an outgoing message in a private chat: the person written to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Sender>,
}

fn default_kind() -> String {
    "message".into()
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentFile {
    /// `picture`, `video`, `voice`, `audio` or `file`.
    pub kind: String,
    /// File name.
    pub file_name: String,
    /// Its bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// A message the connector sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// Chat id.
    pub chat_id: String,
    /// Text (a file's caption).
    pub text: String,
    /// The file it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SentFile>,
    /// Earlier texts, oldest first, when it was edited (`text` is the current one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edits: Vec<String>,
    /// The sender's idempotency key.
    pub random_id: i64,
    /// Id the messenger gave it.
    pub message_id: String,
    /// When it was accepted, Unix milliseconds.
    pub at_ms: i64,
}

/// A send request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendRequest {
    /// Chat id.
    pub chat_id: String,
    /// Text (a file's caption).
    pub text: String,
    /// A file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<SentFile>,
    /// Idempotency key: a second send with the same id in the same chat is not
    /// delivered again.
    pub random_id: i64,
}

/// An edit of a sent message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EditRequest {
    /// Chat id.
    pub chat_id: String,
    /// The message's id.
    pub message_id: String,
    /// Its new text.
    pub text: String,
}

/// The answer to a send.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SendResponse {
    /// Id of the message.
    pub message_id: String,
    /// The `random_id` had been used already; nothing new was delivered.
    pub duplicate: bool,
}

/// A page of updates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Updates {
    /// Updates after the requested cursor, oldest first.
    pub updates: Vec<Update>,
    /// The newest `seq` in the log.
    pub last_seq: u64,
}

/// Login state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// `qr` (waiting for a scan), `logged_in` or `logged_out`.
    pub state: String,
    /// The QR code's content, while waiting for a scan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr: Option<String>,
    /// When the QR code expires, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qr_expires_at_ms: Option<i64>,
    /// The account's own user id, once logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The account's username, once logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The account's phone number, once logged in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}
