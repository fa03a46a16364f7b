//! The amoCRM / Kommo adapter: REST API v4 (contacts, leads, notes, tasks, reply
//! polling), OAuth, and the Chats API. Everything amoCRM-specific is in here.

pub mod chats;
mod contacts;
mod files;
pub mod grant;
pub mod identity;
mod leads;
mod notes;
pub mod oauth;
mod replies;
pub mod sources;
mod tasks;
mod transport;
pub mod webhook;

pub use chats::{ChatsChannel, connect, sign_request, verify_hook_signature};
pub use oauth::{OAuthClient, TokenPair};
pub use transport::{Payload, StaticToken, TokenSource, Transport};

use crate::clock::Clock;
use crate::model::*;
use crate::{Crm, CrmChat, CrmError};
use async_trait::async_trait;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lead statuses amoCRM uses for closed leads in every pipeline.
pub const STATUS_WON: i64 = 142;
/// See [`STATUS_WON`].
pub const STATUS_LOST: i64 = 143;

/// Custom fields of contacts that hold messenger identities (from the binding).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityFields {
    /// Field id for the Telegram user id.
    pub telegram_user_id: Option<i64>,
    /// Field id for the Telegram username.
    pub telegram_username: Option<i64>,
    /// Field id for the WhatsApp id.
    pub whatsapp_id: Option<i64>,
}

/// Identity of an amoCRM account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// Account id.
    pub id: i64,
    /// Account name.
    pub name: String,
    /// Subdomain.
    pub subdomain: String,
    /// Chat-service id (for the Chats API).
    pub amojo_id: Option<String>,
}

/// How the adapter talks to one amoCRM account.
#[derive(Debug, Clone)]
pub struct AmoConfig {
    /// `https://SUBDOMAIN.amocrm.ru` or `https://SUBDOMAIN.kommo.com`.
    pub base_url: String,
    /// Extra CA certificate (PEM) to trust.
    pub ca_pem: Option<String>,
    /// Identity fields of contacts.
    pub identity_fields: IdentityFields,
    /// A note starting with this is a reply to send.
    pub reply_prefix: String,
    /// Per-request timeout; past it a write is in doubt.
    pub request_timeout: Duration,
    /// The Chats API channel, when messages go to the CRM's chat.
    pub chats: Option<ChatsChannel>,
    /// The region phone numbers without a country code are read in (the
    /// binding's `phoneRegion`, such as `RU`).
    pub phone_region: String,
    /// Where a conversation's notes, files, tasks and replies live: its lead, or
    /// its contact when the policy creates no leads. The "lead" ids of the
    /// notes, files, tasks and replies calls are then contact ids.
    pub records: RecordKind,
}

/// The kind of CRM record a conversation is kept on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordKind {
    /// Its lead (the default).
    #[default]
    Leads,
    /// Its contact (`leads.create: false`).
    Contacts,
}

impl RecordKind {
    /// The REST path segment and entity type: `leads` or `contacts`.
    pub fn plural(self) -> &'static str {
        match self {
            RecordKind::Leads => "leads",
            RecordKind::Contacts => "contacts",
        }
    }
}

/// The amoCRM adapter.
#[derive(Debug)]
pub struct AmoCrm {
    rest: Transport,
    config: AmoConfig,
    clock: Arc<dyn Clock>,
    chats: std::sync::OnceLock<chats::ChatsClient>,
    /// Chats already linked to a contact (chat id → contact id), to skip the lookup.
    linked_chats: Mutex<HashMap<String, (String, i64)>>,
    /// The file service's address (`with=drive_url`), once read.
    drive_url: tokio::sync::OnceCell<String>,
    /// The account's Unsorted stages (status type 1, one per pipeline), once read.
    incoming_stages: tokio::sync::OnceCell<Vec<i64>>,
}

/// What amoCRM support issues for an installation's Chats API channel.
#[derive(Clone, Copy)]
pub struct ChannelKeys<'a> {
    /// The amojo host, e.g. `https://amojo.amocrm.ru`.
    pub base_url: &'a str,
    /// Channel id.
    pub channel_id: &'a str,
    /// Channel secret (signs requests and hooks).
    pub secret: &'a str,
    /// The channel bot's amojo id.
    pub bot_id: &'a str,
}

impl AmoCrm {
    /// An adapter over `rest` (which carries the budget and the token source).
    pub fn new(config: AmoConfig, rest: Transport, clock: Arc<dyn Clock>) -> Result<Self, CrmError> {
        let chats = std::sync::OnceLock::new();
        if let Some(channel) = &config.chats {
            let client = chats::ChatsClient::new(
                channel.clone(),
                clock.clone(),
                config.ca_pem.as_deref(),
                config.request_timeout,
            )?;
            let _ = chats.set(client);
        }
        Ok(Self {
            rest,
            config,
            clock,
            chats,
            linked_chats: Mutex::new(HashMap::new()),
            drive_url: tokio::sync::OnceCell::new(),
            incoming_stages: tokio::sync::OnceCell::new(),
        })
    }

    /// Connects the installation's Chats API channel to this account (its
    /// `amojo_id`, read over REST) and uses it from now on. Idempotent.
    pub async fn attach_chats(&self, channel: &ChannelKeys<'_>, title: &str) -> Result<(), CrmError> {
        let ChannelKeys { base_url: amojo_base_url, channel_id, secret, bot_id } = *channel;
        if self.chats.get().is_some() {
            return Ok(());
        }
        let amojo_id =
            self.account().await?.amojo_id.ok_or_else(|| {
                CrmError::Protocol("the account has no amojo_id: the Chats API is not available".into())
            })?;
        let scope_id = chats::connect(
            amojo_base_url,
            channel_id,
            secret,
            &amojo_id,
            title,
            self.config.ca_pem.as_deref(),
            self.clock.clone(),
        )
        .await?;
        let channel = ChatsChannel {
            base_url: amojo_base_url.to_string(),
            channel_id: channel_id.to_string(),
            secret: secret.to_string(),
            scope_id,
            bot_id: bot_id.to_string(),
            limit: crate::budget::Limit { rate: 10.0, burst: 1 },
        };
        let client = chats::ChatsClient::new(
            channel,
            self.clock.clone(),
            self.config.ca_pem.as_deref(),
            self.config.request_timeout,
        )?;
        let _ = self.chats.set(client);
        Ok(())
    }

    /// The REST transport (for calls outside the [`Crm`] trait, e.g. account info).
    pub fn rest(&self) -> &Transport {
        &self.rest
    }

    /// The CRM account behind the token: id, name, subdomain and chat-service id.
    pub async fn account(&self) -> Result<AccountInfo, CrmError> {
        let v = self
            .rest
            .get("/api/v4/account", &[("with", "amojo_id".into())])
            .await?
            .ok_or_else(|| CrmError::Protocol("account: empty answer".into()))?;
        Ok(AccountInfo {
            id: v
                .get("id")
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| CrmError::Protocol("account without id".into()))?,
            name: v.get("name").and_then(serde_json::Value::as_str).unwrap_or_default().to_string(),
            subdomain: v.get("subdomain").and_then(serde_json::Value::as_str).unwrap_or_default().to_string(),
            amojo_id: v.get("amojo_id").and_then(serde_json::Value::as_str).map(str::to_string),
        })
    }

    /// Subscribes `destination` (the gateway's URL for this binding, with its secret
    /// token) to amoCRM REST webhooks for `events` (e.g. `note_lead`). Needs the
    /// Extended or Professional plan; the same destination updates the subscription.
    pub async fn subscribe_webhook(&self, destination: &str, events: &[&str]) -> Result<(), CrmError> {
        let body = serde_json::json!({ "destination": destination, "settings": events, "sort": 10 });
        self.rest.post("/api/v4/webhooks", &body).await?;
        Ok(())
    }

    fn chats(&self) -> Result<&chats::ChatsClient, CrmError> {
        self.chats.get().ok_or_else(|| CrmError::Config("no Chats API channel is configured for this binding".into()))
    }
}

#[async_trait]
impl Crm for AmoCrm {
    async fn subscribe_reply_webhook(&self, destination: &str) -> Result<(), CrmError> {
        let event = match self.config.records {
            RecordKind::Leads => "note_lead",
            RecordKind::Contacts => "note_contact",
        };
        self.subscribe_webhook(destination, &[event]).await
    }

    async fn find_or_create_contact(&self, person: &Person, dedup: &[DedupKey]) -> Result<ContactRef, CrmError> {
        contacts::find_or_create(self, person, dedup).await
    }

    async fn open_lead(&self, contact: &ContactRef, request: &LeadRequest) -> Result<Option<LeadRef>, CrmError> {
        leads::reusable(self, contact.id, request).await
    }

    async fn active_users(&self) -> Result<Vec<i64>, CrmError> {
        let mut active = Vec::new();
        for page in 1..=20 {
            let query = [("limit", "250".to_string()), ("page", page.to_string())];
            let Some(found) = self.rest.get("/api/v4/users", &query).await? else { break };
            let users = transport::embedded(&found, "users");
            active.extend(users.iter().filter_map(|u| {
                let on = u.pointer("/rights/is_active").and_then(Value::as_bool).unwrap_or(true);
                u.get("id").and_then(Value::as_i64).filter(|_| on)
            }));
            if users.len() < 250 {
                break;
            }
        }
        Ok(active)
    }

    async fn adopt_lead(&self, lead: &LeadRef, request: &LeadRequest) -> Result<(), CrmError> {
        leads::adopt(self, lead, request).await
    }

    async fn find_or_create_lead(&self, contact: &ContactRef, request: &LeadRequest) -> Result<LeadRef, CrmError> {
        leads::find_or_create(self, contact.id, request).await
    }

    async fn link_contacts(&self, lead_id: i64, contact_ids: &[i64]) -> Result<(), CrmError> {
        leads::link_contacts(self, lead_id, contact_ids).await
    }

    async fn upload_file(&self, file: &FileUpload) -> Result<StoredFile, CrmError> {
        files::upload(self, file).await
    }

    async fn link_files(&self, lead_id: i64, stored: &[StoredFile]) -> Result<(), CrmError> {
        files::link(self, lead_id, stored).await
    }

    async fn download_file(&self, file: &StoredFile, max_bytes: u64) -> Result<(String, Vec<u8>), CrmError> {
        files::download(self, file, max_bytes).await
    }

    async fn add_notes(&self, lead_id: i64, notes: &[NoteRequest]) -> Result<Vec<NoteRef>, CrmError> {
        notes::add(self, lead_id, notes).await
    }

    async fn ready(&self) -> bool {
        self.rest.budget().ready().await.unwrap_or(false)
    }

    async fn add_lead_notes(&self, notes: &[(i64, NoteRequest)]) -> Result<Vec<NoteRef>, CrmError> {
        notes::add_many(self, notes).await
    }

    async fn find_notes(&self, lead_id: i64, since: i64, markers: &[String]) -> Result<Vec<NoteRef>, CrmError> {
        notes::find(self, lead_id, since, markers).await
    }

    async fn add_task(&self, task: &TaskRequest) -> Result<TaskRef, CrmError> {
        tasks::add(self, task).await
    }

    async fn complete_task(&self, task_id: i64, result: &str) -> Result<(), CrmError> {
        tasks::complete(self, task_id, result).await
    }

    async fn poll_replies(&self, cursor: &ReplyCursor) -> Result<(Vec<Reply>, ReplyCursor), CrmError> {
        replies::poll(self, cursor).await
    }

    async fn read_reply(&self, lead_id: i64, note_id: i64) -> Result<Option<Reply>, CrmError> {
        replies::read(self, lead_id, note_id).await
    }
}

#[async_trait]
impl CrmChat for AmoCrm {
    async fn post_chat_message(&self, message: &ChatPost) -> Result<ChatPostRef, CrmError> {
        chats::post(self, message).await
    }

    async fn edit_chat_message(&self, conversation_id: &str, msgid: &str, text: &str) -> Result<(), CrmError> {
        self.chats()?.edit(conversation_id, msgid, text).await
    }

    async fn set_delivery_status(&self, crm_message_id: &str, status: DeliveryStatus) -> Result<(), CrmError> {
        self.chats()?.delivery_status(crm_message_id, &status).await
    }

    async fn chat_history(
        &self,
        conversation_id: &str,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<ChatHistoryEntry>, CrmError> {
        self.chats()?.history(conversation_id, offset, limit).await
    }
}
