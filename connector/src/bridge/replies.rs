//! Replies from the CRM: webhook rows and polled notes become outbox rows; the
//! binding's polling and webhook duties.

use super::*;

impl Bridge {
    /// Turns webhook rows from the gateway into outbox rows.
    pub(super) async fn events_pass(&self) -> Result<bool, PassError> {
        let rows = self.store.events_pending(self.account(), 100).await?;
        let worked = !rows.is_empty();
        for row in rows {
            let outcome = match row.kind.as_str() {
                "amocrm-note" => self.handle_note_event(&row.payload).await,
                chats::EVENT_CHAT => self.handle_chat_event(&row.payload).await,
                other => Err(CrmError::Protocol(format!("unknown event kind {other}"))),
            };
            match outcome {
                Ok(()) => self.store.event_done(row.id, "done").await?,
                Err(e) if e.class() == ErrorClass::Retryable => {
                    tracing::warn!(account = self.account(), "webhook {} will be retried: {e}", row.id);
                    return Ok(worked);
                }
                Err(e) => {
                    tracing::warn!(account = self.account(), "webhook {} ignored: {e}", row.id);
                    self.store.event_done(row.id, "ignored").await?;
                }
            }
        }
        Ok(worked)
    }

    pub(super) async fn handle_note_event(&self, payload: &str) -> Result<(), CrmError> {
        let v: serde_json::Value = serde_json::from_str(payload).map_err(|e| CrmError::Protocol(e.to_string()))?;
        let (Some(lead_id), Some(note_id)) =
            (v.get("lead_id").and_then(|x| x.as_i64()), v.get("note_id").and_then(|x| x.as_i64()))
        else {
            return Err(CrmError::Protocol("webhook row without lead_id and note_id".into()));
        };
        // Never trust the webhook's text: read the note again.
        if let Some(reply) = self.crm.read_reply(lead_id, note_id).await? {
            self.queue_reply(&reply).await.map_err(db)?;
        }
        Ok(())
    }

    /// Puts a reply in the outbox of the account whose chat the lead belongs to.
    pub(super) async fn queue_reply(&self, reply: &crmessenger_crm::Reply) -> Result<bool, crate::store::StoreError> {
        let Some((account, chat)) = self.store.chat_of_lead(&self.s.crm_key, reply.lead_id).await? else {
            return Ok(false);
        };
        let new = NewReply { source_id: &reply.source_id, chat_id: &chat, text: &reply.text, ..Default::default() };
        let mut added = self.queue_parts(&account, &new).await?;
        if !added {
            added = self.queue_edit(&account, reply).await?;
        }
        // The files the manager attached for it, after the text, each once.
        for f in &reply.files {
            let source = format!("{}#{}", reply.source_id, f.source_id);
            let media = serde_json::to_string(&crate::messenger::OutgoingMedia::crm_file(&f.file))
                .map_err(|e| crate::store::StoreError::Data(e.to_string()))?;
            let file =
                NewReply { source_id: &source, chat_id: &chat, text: "", media: Some(&media), ..Default::default() };
            added |= self.queue_parts(&account, &file).await?;
        }
        if added {
            self.store.notify(&account).await?;
        }
        Ok(added)
    }

    /// A manager changed a reply already queued (a note's text changed): one not
    /// yet tried goes out as edited; one sent is edited in the messenger, by a row
    /// keyed by the new text's hash, so each distinct edit goes once. A reply that
    /// went as several parts, or whose edit would not fit one message, is left as
    /// it was (logged).
    async fn queue_edit(&self, account: &str, reply: &crmessenger_crm::Reply) -> Result<bool, StoreError> {
        let Some(queued) = self.store.outbox_of_source(account, &reply.source_id).await? else { return Ok(false) };
        if queued.text == reply.text {
            return Ok(false);
        }
        let split = self.store.outbox_of_source(account, &format!("{}#2", reply.source_id)).await?.is_some();
        if split || plan::split_text(&reply.text, plan::MESSAGE_LIMIT).len() > 1 {
            tracing::info!(account, source = reply.source_id, "an edit of a reply of several parts is not mirrored");
            return Ok(false);
        }
        match (queued.state.as_str(), queued.message_id) {
            ("pending", _) => self.store.outbox_retext_unsent(account, &reply.source_id, &reply.text).await,
            ("sent", Some(message_id)) => {
                use sha2::Digest;
                let digest = sha2::Sha256::digest(reply.text.as_bytes());
                let source = format!("{}@edit:{}", reply.source_id, hex::encode(&digest[..8]));
                let edit = NewReply {
                    source_id: &source,
                    chat_id: &queued.chat_id,
                    text: &reply.text,
                    edit_of: Some(&message_id),
                    ..Default::default()
                };
                self.store.outbox_add(account, &edit, self.clock.now_ms()).await
            }
            _ => Ok(false),
        }
    }

    /// Queues a reply as messages the messenger accepts: a text over its limit as
    /// ordered parts, each queued once under its own source id (`<source>`, then
    /// `<source>#2`, …), so a crash between them queues the rest again and a part
    /// already queued never twice. A file's caption is not cut.
    pub(super) async fn queue_parts(&self, account: &str, reply: &NewReply<'_>) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        if reply.media.is_some() {
            return self.store.outbox_add(account, reply, now).await;
        }
        let mut added = false;
        for (i, part) in plan::split_text(reply.text, plan::MESSAGE_LIMIT).iter().enumerate() {
            let source = if i == 0 { reply.source_id.to_string() } else { format!("{}#{}", reply.source_id, i + 1) };
            let part = NewReply { source_id: &source, text: part, ..*reply };
            added |= self.store.outbox_add(account, &part, now).await?;
        }
        Ok(added)
    }

    /// Polls the binding's notes for replies while this connector holds the
    /// binding's polling duty; tries to take the duty every interval, so another
    /// connector's stop hands polling over within one interval.
    pub(super) async fn poll_loop(self: Arc<Self>, duties: Duties, every: Duration, stop: watch::Receiver<bool>) {
        let duty = format!("poll:{}", self.s.binding);
        let mut holding = false;
        while !*stop.borrow() {
            let holds = duties.try_hold(&duty).await;
            if holds != holding {
                tracing::info!(account = self.account(), binding = self.s.binding, holds, "reply polling duty");
                holding = holds;
            }
            if holding {
                self.poll_once().await;
            }
            self.clock.sleep(every).await;
        }
    }

    /// One poll of the binding's notes: replies are queued, then the cursor moves.
    pub(super) async fn poll_once(&self) {
        let scope = format!("binding:{}", self.s.binding);
        let cursor: ReplyCursor = match self.store.cursor(&scope, "replies").await {
            Ok(Some(text)) => serde_json::from_str(&text).unwrap_or_default(),
            Ok(None) => ReplyCursor { updated_since: self.clock.now_secs() - 60, seen_at_cursor: vec![] },
            Err(e) => {
                tracing::warn!(account = self.account(), "reply cursor: {e}");
                return;
            }
        };
        match self.crm.poll_replies(&cursor).await {
            Ok((replies, next)) => {
                for r in &replies {
                    if let Err(e) = self.queue_reply(r).await {
                        // The cursor stays: the next poll brings this reply again.
                        self.store_failed(&format!("queueing reply {}", r.source_id), &e);
                        return;
                    }
                }
                if let Ok(text) = serde_json::to_string(&next)
                    && let Err(e) = self.store.set_cursor(&scope, "replies", &text).await
                {
                    self.store_failed("moving the reply cursor", &e);
                }
            }
            Err(e) => tracing::warn!(binding = self.s.binding, "reply polling failed: {e}"),
        }
    }

    /// Keeps the binding's reply webhook subscribed while this connector holds
    /// the binding's webhook duty.
    pub(super) async fn webhook_loop(self: Arc<Self>, duties: Duties, stop: watch::Receiver<bool>) {
        let duty = format!("webhook:{}", self.s.binding);
        let mut subscribed_at: Option<i64> = None;
        while !*stop.borrow() {
            let now = self.clock.now_ms();
            if let Some(url) = self.webhook_url.get() {
                match subscribed_at {
                    // The URL is set once `register_routes` subscribed it: that counts.
                    None => subscribed_at = Some(now),
                    Some(t) if now - t >= RESUBSCRIBE_EVERY.as_millis() as i64 && duties.try_hold(&duty).await => {
                        match self.crm.subscribe_reply_webhook(url).await {
                            Ok(()) => subscribed_at = Some(now),
                            Err(e) => tracing::warn!(binding = self.s.binding, "subscribing the reply webhook: {e}"),
                        }
                    }
                    Some(_) => {}
                }
            }
            self.clock.sleep(WEBHOOK_DUTY_EVERY).await;
        }
    }
}
