//! The messenger side: the domain of messages and the [`Messenger`] trait every
//! adapter (Telegram, WhatsApp, the scripted messenger for tests) implements.
//!
//! The trait is pull-based: [`Messenger::updates`] returns the events after a
//! cursor and the cursor to continue from. The bridge writes the events into its
//! inbox and commits the cursor in the same transaction, so a crash at any point
//! makes the messenger deliver again exactly what was not yet stored.

pub mod scripted;
pub mod telegram;
pub mod whatsapp;
#[cfg(feature = "whatsapp-web")]
pub mod whatsapp_web;

use crate::texts::Texts;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The kind of a chat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatKind {
    /// A private chat with one person.
    Private,
    /// A group.
    Group,
    /// A broadcast channel.
    Channel,
}

/// A person as the messenger knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Messenger user id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Phone number, when shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    /// Username, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// An attachment, fetched from the messenger on demand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// The messenger's id of the file.
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

/// What a message carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Content {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// A file with an optional caption.
    Media {
        /// The file.
        media: MediaRef,
        /// Caption.
        caption: String,
    },
    /// A shared location.
    Location {
        /// Latitude.
        latitude: f64,
        /// Longitude.
        longitude: f64,
    },
    /// A shared contact card.
    Contact {
        /// Name on the card.
        name: String,
        /// Phone on the card.
        phone: String,
    },
}

/// A message in a chat: a customer's, or one written on the account's side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Chat id (stable per chat).
    pub chat_id: String,
    /// Chat kind.
    pub chat_kind: ChatKind,
    /// Chat title (groups and channels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_title: Option<String>,
    /// How many members a group has, when the messenger said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_members: Option<u32>,
    /// Message id, unique within the chat: with the account and chat, the
    /// idempotency key of the message.
    pub message_id: String,
    /// Author.
    pub sender: Identity,
    /// What it carries.
    pub content: Content,
    /// When it was written, Unix milliseconds.
    pub sent_at_ms: i64,
    /// Whether this is an edit of an earlier message.
    #[serde(default)]
    pub edited: bool,
    /// Imported history (backfill): recorded in the CRM without notifying anyone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history: bool,
    /// Written on the account's side: by its owner from their own phone or desktop,
    /// or an echo of a reply CRMessenger itself sent (the bridge recognises those by
    /// their message id and drops them). `sender` is then the account owner.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outgoing: bool,
    /// For an outgoing message in a private chat: the person the chat is with (the
    /// customer whose contact and lead the conversation belongs to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Identity>,
    /// Where a forwarded message came from (a person's or a chat's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarded_from: Option<String>,
    /// The message this one answers, within the chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Reply>,
}

/// The message a reply answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Its id in the chat.
    pub message_id: String,
    /// The part the writer quoted, or the bridge's copy of the whole text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<String>,
}

impl Message {
    /// The text, or a media message's caption (empty for locations and contacts).
    pub fn caption(&self) -> &str {
        match &self.content {
            Content::Text { text } => text,
            Content::Media { caption, .. } => caption,
            _ => "",
        }
    }

    /// The text of the message, or a description of what it carries, after where
    /// it was forwarded from and what it answers.
    pub fn summary(&self, t: &Texts) -> String {
        let mut out = String::new();
        if let Some(from) = &self.forwarded_from {
            out.push_str(&format!("[{} {from}]\n", t.forwarded_from));
        }
        if let Some(quote) = self.reply_to.as_ref().and_then(|r| r.quote.as_deref()) {
            for line in quote.lines() {
                out.push_str(&format!("> {line}\n"));
            }
        }
        out + &self.content_summary(t)
    }

    /// What the message carries, without its context.
    pub fn content_summary(&self, t: &Texts) -> String {
        match &self.content {
            Content::Text { text } => text.clone(),
            Content::Media { media, caption } => {
                let what = format!("[{}: {}, {} {}]", media.kind, media.file_name, media.size, t.bytes);
                if caption.is_empty() { what } else { format!("{what} {caption}") }
            }
            Content::Location { latitude, longitude } => {
                format!(
                    "[{}: {latitude:.6}, {longitude:.6} https://maps.google.com/?q={latitude},{longitude}]",
                    t.location
                )
            }
            Content::Contact { name, phone } => format!("[{}: {name}, {phone}]", t.contact),
        }
    }
}

/// An event from the messenger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A new (or edited) message.
    Message(Box<Message>),
    /// A message was deleted.
    Deleted {
        /// Chat id; empty when the messenger did not say (Telegram's deletions in
        /// private chats and groups): the bridge finds it from the stored message.
        chat_id: String,
        /// Message id.
        message_id: String,
    },
    /// A message we sent was delivered or read.
    Status {
        /// Chat id.
        chat_id: String,
        /// The messenger's id of our message.
        message_id: String,
        /// `delivered` or `read`.
        status: String,
    },
    /// The customer read the chat up to this message of ours, and every earlier
    /// one (Telegram reports reads this way: there is no per-message receipt).
    ReadUpTo {
        /// Chat id.
        chat_id: String,
        /// The newest message of ours that was read (Telegram: the chat's `max_id`).
        message_id: String,
    },
}

impl Event {
    /// The chat the event belongs to.
    pub fn chat_id(&self) -> &str {
        match self {
            Event::Message(m) => &m.chat_id,
            Event::Deleted { chat_id, .. } | Event::Status { chat_id, .. } | Event::ReadUpTo { chat_id, .. } => chat_id,
        }
    }

    /// Id of the event within its chat (with the chat, the idempotency key).
    pub fn key(&self) -> String {
        match self {
            Event::Message(m) if m.edited => format!("{}#edit@{}", m.message_id, m.sent_at_ms),
            Event::Message(m) => m.message_id.clone(),
            Event::Deleted { message_id, .. } => format!("{message_id}#deleted"),
            Event::Status { message_id, status, .. } => format!("{message_id}#{status}"),
            Event::ReadUpTo { message_id, .. } => format!("{message_id}#read-up-to"),
        }
    }
}

/// A page of events and the cursor after them.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Events, oldest first.
    pub events: Vec<Event>,
    /// Where to continue from: store it with the events.
    pub cursor: String,
}

/// Login progress, shown on the login page and in the account's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LoginState {
    /// Show this QR code; scan it with the phone before it expires.
    Qr {
        /// The QR code's content.
        code: String,
        /// Expiry, Unix milliseconds.
        expires_at_ms: i64,
    },
    /// Type the code the messenger sent.
    CodeRequired,
    /// Type the two-factor password.
    PasswordRequired,
    /// Logged in.
    LoggedIn {
        /// Who.
        identity: Identity,
    },
    /// The session ended (logged out from the phone, or revoked).
    LoggedOut {
        /// Why.
        reason: String,
    },
}

/// A file to send, fetched by the adapter from where the CRM keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct OutgoingMedia {
    /// `picture`, `video`, `voice`, `audio` or `file`.
    pub kind: String,
    /// Where to download it.
    pub url: String,
    /// File name shown to the customer.
    pub file_name: String,
    /// A file in the CRM's own storage (a manager's attachment): the bridge
    /// fetches it with the CRM's credentials instead of from `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crm_file: Option<crmessenger_crm::StoredFile>,
    /// Its bytes, once the bridge fetched them (never stored).
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
}

impl OutgoingMedia {
    /// A manager's attachment: sent as its name says (`picture`, `voice`, `video`,
    /// `audio`, otherwise a document).
    pub fn crm_file(file: &crmessenger_crm::StoredFile) -> Self {
        let ext = file.file_name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        let kind = match ext.as_str() {
            "jpg" | "jpeg" | "png" | "webp" | "gif" => "picture",
            "ogg" | "oga" | "opus" => "voice",
            "mp4" | "mov" | "m4v" => "video",
            "mp3" | "m4a" | "aac" | "wav" | "flac" => "audio",
            _ => "file",
        };
        Self { kind: kind.into(), file_name: file.file_name.clone(), crm_file: Some(file.clone()), ..Self::default() }
    }
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Chat id.
    pub chat_id: String,
    /// Text (a file's caption when there is a file).
    pub text: String,
    /// Idempotency key, stored before the first attempt.
    pub random_id: i64,
    /// A file, when the reply carries one.
    pub media: Option<OutgoingMedia>,
}

/// Downloads a reply's file from where the CRM keeps it, within `max_bytes`
/// (checked against the announced length, then as it streams): a 4xx is final,
/// any other failure is worth another attempt.
pub async fn download_reply_file(
    http: &reqwest::Client,
    media: &OutgoingMedia,
    max_bytes: u64,
) -> Result<Vec<u8>, MessengerError> {
    let too_big = || {
        MessengerError::Rejected(format!(
            "the file {} is over the policy's media limit of {max_bytes} bytes",
            media.file_name
        ))
    };
    if let Some(body) = &media.body {
        return if body.len() as u64 > max_bytes { Err(too_big()) } else { Ok(body.clone()) };
    }
    let failed = |e: String| MessengerError::Unavailable(format!("download {}: {e}", media.file_name));
    let mut resp = http.get(&media.url).send().await.map_err(|e| failed(e.to_string()))?;
    let status = resp.status();
    if status.is_client_error() {
        return Err(MessengerError::Rejected(format!(
            "the file {} is not available from the CRM ({status})",
            media.file_name
        )));
    }
    if !status.is_success() {
        return Err(failed(status.to_string()));
    }
    if resp.content_length().is_some_and(|n| n > max_bytes) {
        return Err(too_big());
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| failed(e.to_string()))? {
        body.extend_from_slice(&chunk);
        if body.len() as u64 > max_bytes {
            return Err(too_big());
        }
    }
    Ok(body)
}

/// A sent message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRef {
    /// The messenger's id of it.
    pub message_id: String,
}

/// Why a messenger call failed.
#[derive(Debug, thiserror::Error)]
pub enum MessengerError {
    /// Sent too much: wait this long (Telegram FLOOD_WAIT, WhatsApp 131056).
    #[error("flood wait: retry after {0:?}")]
    FloodWait(Duration),
    /// A transient failure: retry later.
    #[error("messenger unavailable: {0}")]
    Unavailable(String),
    /// The request may or may not have taken effect.
    #[error("in doubt: {0}")]
    InDoubt(String),
    /// Can never succeed (blocked by the user, chat gone, invalid content).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The session is not (or no longer) logged in.
    #[error("not logged in: {0}")]
    LoggedOut(String),
    /// The messenger restricted the whole account (Telegram's spam limits): no
    /// send can succeed until the owner resolves it; the text says how.
    #[error("account restricted: {0}")]
    Restricted(String),
}

/// A messenger account.
#[async_trait]
pub trait Messenger: Send + Sync {
    /// Where login stands (and the next step: a QR code, a code, a password).
    async fn login_state(&self) -> Result<LoginState, MessengerError>;
    /// Submits a login code or password typed by a person.
    async fn submit_login(&self, code: Option<&str>, password: Option<&str>) -> Result<(), MessengerError>;
    /// Events after `cursor` (from the start when `None`), waiting up to `wait`
    /// for the first one.
    async fn updates(&self, cursor: Option<&str>, wait: Duration) -> Result<Batch, MessengerError>;
    /// Sends a text. Sending the same `random_id` twice delivers once.
    async fn send(&self, message: &Outgoing) -> Result<SentRef, MessengerError>;
    /// Finds a message sent with `random_id` (resolving an in-doubt send).
    async fn find_sent(&self, chat_id: &str, random_id: i64) -> Result<Option<SentRef>, MessengerError>;
    /// Marks the chat read up to `message_id`.
    async fn mark_read(&self, chat_id: &str, message_id: &str) -> Result<(), MessengerError>;
    /// Changes the text of a message the account sent (a manager's edit of a
    /// reply). Editing to the same text again succeeds. A messenger that cannot
    /// edit refuses.
    async fn edit(&self, _chat_id: &str, _message_id: &str, _text: &str) -> Result<(), MessengerError> {
        Err(MessengerError::Rejected("this messenger cannot edit a sent message".into()))
    }
    /// Downloads an attachment.
    async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, MessengerError>;
    /// Messages of a chat before `before` (newest first), for history backfill. A
    /// messenger that keeps no history to read back has none.
    async fn backfill(&self, chat_id: &str, before: Option<&str>, limit: u32) -> Result<Vec<Message>, MessengerError> {
        let _ = (chat_id, before, limit);
        Ok(Vec::new())
    }
    /// Chats active since `since_ms`, most recent first, at most `limit` (what a
    /// backfill imports). A messenger without history has none.
    async fn recent_chats(&self, since_ms: i64, limit: u32) -> Result<Vec<String>, MessengerError> {
        let _ = (since_ms, limit);
        Ok(Vec::new())
    }
    /// Ends the session on the messenger's side (account deletion).
    async fn logout(&self) -> Result<(), MessengerError>;
    /// Drops the connection to the messenger at once, without ending the session
    /// (the account lock was lost: another connector may take the account over,
    /// and two live connections would make the messenger revoke the session). The
    /// next call connects again.
    async fn disconnect(&self) {}
}
