//! The Chats API path: when the binding has `chatsChannel: true` and the
//! installation has a channel, customers' messages go into amoCRM's chat (one call
//! per message, in order per chat) instead of lead notes; managers' answers come as
//! signed hooks through the gateway, and — because amoCRM sends each hook once and
//! never retries — are also recovered from each chat's history after any gap.

use super::{Bridge, db, plan, short};
use crate::messenger::{Event, OutgoingMedia};
use crate::store::media::MEDIA_TTL_MS;
use crate::store::{Conversation, InboxRow};
use crmessenger_crm::{ChatAuthor, ChatMedia, ChatPost, CrmError, DeliveryStatus};
use std::time::Duration;

/// Route kind: our Chats API conversation id → the account it belongs to.
pub const ROUTE_CHATS_CONVERSATION: &str = "chats-conversation";
/// Event kind the gateway stores for a manager's chat message.
pub const EVENT_CHAT: &str = "amocrm-chat";
/// Cursor (per account) of the history recovery: the time from which a manager
/// message found in a chat's history is sent if no hook brought it.
const HISTORY_CURSOR: &str = "chats-history-since";
/// How often the history is read for missed answers.
const HISTORY_EVERY: Duration = Duration::from_secs(60);
/// How far back, before the cursor, a recovery pass looks (hooks in flight).
const HISTORY_OVERLAP_MS: i64 = 60_000;
/// Chats read per recovery pass (the most recently active).
const HISTORY_CHATS: i64 = 200;

impl Bridge {
    /// Our conversation id for `chat`: unique per account, stable, ≤ 40 characters
    /// for ordinary chat ids.
    pub(super) fn conversation_id(&self, chat: &str) -> String {
        format!("{}:{chat}", short(self.account()))
    }

    /// Posts one chat's due rows to the CRM's chat, in order. A row whose post may
    /// already have happened is looked up in the chat's history first.
    pub(super) async fn post_chat(
        &self,
        chat: &str,
        rows: &[InboxRow],
        mut conv: Conversation,
    ) -> Result<(), CrmError> {
        let conversation_id = self.conversation_id(chat);
        for row in rows {
            let now = self.clock.now_ms();
            let mut event: Event = serde_json::from_str(&row.payload)
                .map_err(|e| CrmError::Rejected { status: 0, detail: format!("stored event does not parse: {e}") })?;
            if let Event::Message(m) = &mut event {
                self.quote(chat, m).await.map_err(db)?;
            }
            // An edit or a deletion changes the message posted before, in place.
            if let Some(done) = self.edit_in_chat(&conversation_id, &event).await? {
                self.store.inbox_done(&[(row.seq, done)], now).await.map_err(db)?;
                continue;
            }
            let Event::Message(m) = &event else {
                // Statuses of customer messages have no place in the CRM's chat.
                self.store.inbox_done(&[(row.seq, "skipped".into())], now).await.map_err(db)?;
                continue;
            };
            let message_id = format!("{conversation_id}:{}", row.event_key);
            if row.attempts > 0 {
                let history = self.crm.chat_history(&conversation_id, 0, 50).await.unwrap_or_default();
                if let Some(h) = history.iter().find(|h| h.client_message_id.as_deref() == Some(message_id.as_str())) {
                    self.store.inbox_done(&[(row.seq, format!("chat:{}", h.crm_message_id))], now).await.map_err(db)?;
                    continue;
                }
            }
            self.store.inbox_started(&[row.seq], now).await.map_err(db)?;
            let media = self.chat_media(m).await?;
            // The owner's own message goes to the customer in the same chat.
            let author = m
                .outgoing
                .then(|| ChatAuthor { id: format!("{}:owner", short(self.account())), name: m.sender.name.clone() });
            let person = plan::customer(self.s.channel, chat, [m.as_ref()]).unwrap_or_default();
            if conv.lead_id.is_none() {
                // The lead first, as in notes mode: a chat linked to a contact with an
                // open lead makes amoCRM create no incoming lead of its own.
                self.chat_lead(chat, m, &person, &mut conv).await?;
            }
            let group = m.chat_kind == crate::messenger::ChatKind::Group && self.s.policy.leads.create;
            if let (Some(lead_id), true) = (conv.lead_id, group) {
                // Every sender of a group on the group's lead, as in notes mode.
                self.link_members(chat, lead_id, &[m.as_ref()]).await?;
            }
            let post = ChatPost {
                contact_id: conv.contact_id,
                person,
                author,
                dedup: self.s.policy.leads.deduplicate_by.clone(),
                conversation_id: conversation_id.clone(),
                // The customer's id in the chat service (the chat itself when the
                // owner wrote to someone the messenger did not describe).
                user_id: match (&m.customer, m.outgoing) {
                    (Some(c), true) => c.id.clone(),
                    (None, true) => chat.to_string(),
                    (_, false) => m.sender.id.clone(),
                },
                message_id,
                sent_at_ms: m.sent_at_ms,
                text: if media.is_some() { m.caption().to_string() } else { m.summary(self.s.texts) },
                media,
                // History is recorded without notifying managers.
                silent: m.history,
            };
            let posted = self.crm.post_chat_message(&post).await?;
            if conv.crm_chat_id.as_deref() != Some(posted.chat_id.as_str()) {
                // Route the chat's hooks here before a manager can answer.
                self.store.put_route(ROUTE_CHATS_CONVERSATION, &conversation_id, self.account()).await.map_err(db)?;
                conv.crm_chat_id = Some(posted.chat_id.clone());
                conv.contact_id = Some(posted.contact_id);
            }
            let written = self.clock.now_ms();
            let crm_ref = format!("chat:{}", posted.crm_message_id);
            self.store.inbox_done(&[(row.seq, crm_ref.clone())], written).await.map_err(db)?;
            self.store.put_conversation(self.account(), chat, &self.s.crm_key, &conv, written).await.map_err(db)?;
            let turn = plan::Turn { sent_at_ms: m.sent_at_ms, outgoing: m.outgoing, history: m.history };
            let (waiting, answered) = plan::after_turns(conv.unanswered_since_ms, &[turn], written);
            if answered {
                self.answered(chat).await;
            }
            if let Some(since) = waiting {
                self.store.start_waiting(self.account(), chat, since).await.map_err(db)?;
            }
            conv.unanswered_since_ms = waiting;
            let label = crate::metrics::Metrics::label(self.account());
            self.metrics.messages_in.get_or_create(&label).inc();
            self.metrics.lag_seconds.get_or_create(&label).observe((written - m.sent_at_ms).max(0) as f64 / 1000.0);
            self.trace_message(chat, row, m.sent_at_ms, &crm_ref, written);
        }
        Ok(())
    }

    /// Gives the conversation its contact and its one lead, exactly as notes mode
    /// does (a returning customer's open lead, the incoming lead amoCRM made, or a
    /// new lead per the policy), and records them before the first post.
    async fn chat_lead(
        &self,
        chat: &str,
        m: &crate::messenger::Message,
        person: &crmessenger_crm::Person,
        conv: &mut Conversation,
    ) -> Result<(), CrmError> {
        let group = plan::group(chat, [m]);
        let first = (!m.outgoing).then_some(m);
        self.give_lead(chat, person, conv.contact_id, group.as_ref(), first, conv).await
    }

    /// A customer's edit or deletion of a message already in the CRM's chat, made
    /// there with `edit_message` (amoCRM has no deletion event: the message then
    /// says it was deleted). `Some(what was done)` when the event was handled; an
    /// edit of a message the chat never got is posted as a message of its own.
    async fn edit_in_chat(&self, conversation_id: &str, event: &Event) -> Result<Option<String>, CrmError> {
        let (original, text) = match event {
            Event::Message(m) if m.edited && !m.outgoing => (&m.message_id, m.summary(self.s.texts)),
            Event::Deleted { message_id, .. } => (message_id, self.s.texts.deleted_in_chat.to_string()),
            _ => return Ok(None),
        };
        let msgid = format!("{conversation_id}:{original}");
        match self.crm.edit_chat_message(conversation_id, &msgid, &text).await {
            Ok(()) => Ok(Some(format!("chat-edit:{msgid}"))),
            Err(CrmError::Rejected { .. }) if matches!(event, Event::Deleted { .. }) => Ok(Some("skipped".into())),
            Err(CrmError::Rejected { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An attachment for the CRM's chat: fetched from the messenger, stored, and
    /// offered under a signed URL that expires (`None` without a public gateway URL
    /// or for a message without one).
    async fn chat_media(&self, m: &crate::messenger::Message) -> Result<Option<ChatMedia>, CrmError> {
        let (crate::messenger::Content::Media { media, .. }, Some(base)) = (&m.content, &self.s.media_url) else {
            return Ok(None);
        };
        if self.s.policy.media.mode == crmessenger_api::policy::MediaMode::Skip
            || media.size > self.s.policy.media.max_bytes()
        {
            // The message goes as its text and a description of the file.
            return Ok(None);
        }
        let body = match self.messenger.fetch_media(media).await {
            Ok(b) => b,
            // The file can never be fetched (gone, too large): describe it instead.
            Err(crate::messenger::MessengerError::Rejected(why)) => {
                tracing::info!(account = self.account(), file = media.file_name, "attachment not offered: {why}");
                return Ok(None);
            }
            Err(e) => return Err(CrmError::Unavailable(format!("fetch media: {e}"))),
        };
        let now = self.clock.now_ms();
        let exp = now + MEDIA_TTL_MS;
        let id = self
            .store
            .put_media(self.account(), &media.mime_type, &media.file_name, &body, now, exp)
            .await
            .map_err(db)?;
        let key = self.store.media_key().await.map_err(db)?;
        let sig = crate::store::media::sign(&key, &id, exp);
        let kind = match media.kind.as_str() {
            "photo" => "picture",
            "video" => "video",
            "voice" => "voice",
            "audio" => "audio",
            _ => "file",
        };
        Ok(Some(ChatMedia {
            kind: kind.into(),
            url: format!("{}/media/{id}?exp={exp}&sig={sig}", base.trim_end_matches('/')),
            file_name: media.file_name.clone(),
            file_size: body.len() as u64,
        }))
    }

    /// A manager's chat message stored by the gateway: into the outbox, keyed by
    /// the CRM's message id (a hook and a history recovery of it give one send).
    pub(super) async fn handle_chat_event(&self, payload: &str) -> Result<(), CrmError> {
        let v: serde_json::Value = serde_json::from_str(payload).map_err(|e| CrmError::Protocol(e.to_string()))?;
        let (Some(conversation), Some(id), Some(text)) = (
            v.get("conversation_id").and_then(|x| x.as_str()),
            v.get("message_id").and_then(|x| x.as_str()),
            v.get("text").and_then(|x| x.as_str()),
        ) else {
            return Err(CrmError::Protocol("chat event without conversation_id, message_id and text".into()));
        };
        let media: Option<OutgoingMedia> = v.get("media").and_then(|m| serde_json::from_value(m.clone()).ok());
        self.queue_chat_answer(conversation, id, text, media).await.map(drop)
    }

    async fn queue_chat_answer(
        &self,
        conversation_id: &str,
        crm_message_id: &str,
        text: &str,
        media: Option<OutgoingMedia>,
    ) -> Result<bool, CrmError> {
        let prefix = format!("{}:", short(self.account()));
        let Some(chat) = conversation_id.strip_prefix(&prefix) else {
            return Err(CrmError::Protocol(format!("conversation {conversation_id} is not this account's")));
        };
        if text.trim().is_empty() && media.is_none() {
            return Ok(false);
        }
        let source = format!("chat:{crm_message_id}");
        let media = media.map(|m| serde_json::to_string(&m).unwrap_or_default());
        let reply = crate::store::NewReply {
            source_id: &source,
            chat_id: chat,
            text,
            crm_message_id: Some(crm_message_id),
            media: media.as_deref(),
            edit_of: None,
        };
        let added = self.queue_parts(self.account(), &reply).await.map_err(db)?;
        Ok(added)
    }

    /// Reports a manager's chat message as delivered, or as failed with the reason.
    pub(super) async fn report_delivery(&self, crm_message_id: &str, failure: Option<&str>) {
        let status = match failure {
            None => DeliveryStatus::Delivered,
            Some(reason) => DeliveryStatus::Failed { code: 905, reason: reason.chars().take(200).collect() },
        };
        if let Err(e) = self.crm.set_delivery_status(crm_message_id, status).await {
            tracing::warn!(account = self.account(), crm_message_id, "could not report the delivery status: {e}");
        }
    }

    /// Reads the recently active chats' history for managers' messages no hook
    /// brought (the gateway was down, or the hook was lost: amoCRM never retries).
    pub(super) async fn history_loop(self: std::sync::Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        while !*stop.borrow() {
            if let Err(e) = self.recover_history().await {
                tracing::warn!(account = self.account(), "chat history recovery: {e}");
            }
            self.clock.sleep(HISTORY_EVERY).await;
        }
    }

    /// One recovery pass; returns how many answers it queued.
    pub async fn recover_history(&self) -> Result<usize, CrmError> {
        let started = self.clock.now_ms();
        let since = match self.store.cursor(self.account(), HISTORY_CURSOR).await.map_err(db)? {
            Some(s) => s.parse::<i64>().unwrap_or(started) - HISTORY_OVERLAP_MS,
            None => {
                // First run: nothing before now is "missed".
                self.store.set_cursor(self.account(), HISTORY_CURSOR, &started.to_string()).await.map_err(db)?;
                return Ok(0);
            }
        };
        let chats = self.store.chat_conversations(self.account(), HISTORY_CHATS).await.map_err(db)?;
        let mut queued = 0;
        for chat in chats {
            let conversation_id = self.conversation_id(&chat);
            let history = self.crm.chat_history(&conversation_id, 0, 50).await?;
            // A message we posted ourselves (the owner's, sent with our msgid) is no answer.
            let answers = history.iter().filter(|h| h.from_manager && h.client_message_id.is_none());
            for h in answers.filter(|h| h.timestamp * 1000 >= since) {
                if self
                    .queue_chat_answer(
                        &conversation_id,
                        &h.crm_message_id,
                        &h.text,
                        h.media.as_ref().map(outgoing_media),
                    )
                    .await?
                {
                    tracing::info!(
                        account = self.account(),
                        chat,
                        "recovered a manager's answer from the chat history"
                    );
                    queued += 1;
                }
            }
        }
        self.store.set_cursor(self.account(), HISTORY_CURSOR, &started.to_string()).await.map_err(db)?;
        if queued > 0 {
            self.store.wakeups().wake(self.account());
        }
        Ok(queued)
    }
}

/// A file the CRM's chat carries, as the messenger adapters send it.
pub fn outgoing_media(m: &crmessenger_crm::ChatMedia) -> OutgoingMedia {
    OutgoingMedia { kind: m.kind.clone(), url: m.url.clone(), file_name: m.file_name.clone(), ..Default::default() }
}
