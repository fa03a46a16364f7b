//! Outbound delivery: due outbox rows go to the messenger once each (in-doubt
//! sends looked up first), at the policy's pace, with flood waits and
//! restrictions honoured.

use super::*;

impl Bridge {
    /// Sends what is due in the outbox. Returns whether anything was done.
    pub(super) async fn outbound_pass(&self) -> Result<bool, PassError> {
        let now = self.clock.now_ms();
        // A restricted account sends nothing until the next probe.
        if self.restricted_until_ms.load(std::sync::atomic::Ordering::Relaxed) > now {
            return Ok(false);
        }
        let rows = self.store.outbox_pending(self.account(), 100).await?;
        let mut blocked: HashSet<String> = HashSet::new();
        let mut worked = false;
        for row in rows {
            if blocked.contains(&row.chat_id) {
                continue;
            }
            if row.next_attempt_ms > now {
                blocked.insert(row.chat_id.clone());
                continue;
            }
            // Never faster than the policy allows (a held reply is not an attempt).
            if self.send_rate.lock().map(|mut r| r.next_slot(&row.chat_id, now) > now).unwrap_or(false) {
                blocked.insert(row.chat_id.clone());
                continue;
            }
            worked = true;
            if let Some(original) = &row.edit_of {
                if !self.send_edit(&row, original).await? {
                    blocked.insert(row.chat_id.clone());
                }
                continue;
            }
            let outgoing = Outgoing {
                chat_id: row.chat_id.clone(),
                text: row.text.clone(),
                random_id: row.random_id,
                media: row.media.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            };
            // Whether this turn's send was tried (a refusal of it undoes the attempt;
            // a failure to look up an earlier attempt leaves that one in doubt).
            let mut tried = false;
            let result = async {
                if row.attempts > 0
                    && let Some(sent) = self.messenger.find_sent(&row.chat_id, row.random_id).await?
                {
                    return Ok(sent);
                }
                let outgoing = self.with_crm_file(&outgoing).await?;
                self.store.outbox_started(row.seq).await.map_err(|e| MessengerError::Unavailable(e.to_string()))?;
                tried = true;
                if let Ok(mut r) = self.send_rate.lock() {
                    r.record(&row.chat_id, now);
                }
                self.messenger.send(&outgoing).await
            }
            .await;
            match result {
                Ok(sent) => {
                    self.store.outbox_sent(row.seq, &sent.message_id, self.clock.now_ms()).await?;
                    // A status that came before this record applies now.
                    if let Some(status) = self.store.take_early_status(self.account(), &sent.message_id).await?
                        && let Err(e) = self.on_status(&row.chat_id, &sent.message_id, &status).await
                    {
                        tracing::warn!(account = self.account(), chat = row.chat_id, "early status: {e}");
                    }
                    self.metrics.messages_out.get_or_create(&Metrics::label(self.account())).inc();
                    self.restricted_until_ms.store(0, std::sync::atomic::Ordering::Relaxed);
                    self.state.update(|s| {
                        s.sending_paused_until_ms = None;
                        s.sending_restricted = None;
                    });
                    // The manager answered: the customer's messages are read.
                    if let Err(e) = self.messenger.mark_read(&row.chat_id, &sent.message_id).await {
                        tracing::debug!(account = self.account(), chat = row.chat_id, "mark read: {e}");
                    }
                    self.answered(&row.chat_id).await;
                    if let Some(id) = &row.crm_message_id {
                        self.report_delivery(id, None).await;
                    }
                }
                Err(MessengerError::Rejected(reason)) => {
                    tracing::warn!(account = self.account(), chat = row.chat_id, "reply dead-lettered: {reason}");
                    self.store.outbox_dead(row.seq, &reason).await?;
                    if let Some(id) = &row.crm_message_id {
                        self.report_delivery(id, Some(&reason)).await;
                    }
                }
                Err(MessengerError::Restricted(why)) => {
                    // The whole account is held (not dead-lettered); one probe later.
                    let until = now + RESTRICTED_PROBE_EVERY.as_millis() as i64;
                    self.restricted_until_ms.store(until, std::sync::atomic::Ordering::Relaxed);
                    self.state.update(|s| s.sending_restricted = Some(why.clone()));
                    self.store.outbox_retry(row.seq, until, &format!("account restricted: {why}"), tried).await?;
                    return Ok(worked);
                }
                Err(e) => {
                    let wait = plan::send_retry_wait(&e, row.attempts);
                    let at = now + wait.as_millis() as i64;
                    let flood = matches!(e, MessengerError::FloodWait(_));
                    if flood {
                        self.state.update(|s| s.sending_paused_until_ms = Some(at));
                    }
                    tracing::warn!(account = self.account(), chat = row.chat_id, ?wait, "send failed, retrying: {e}");
                    // A flood wait refuses the send: nothing went out.
                    self.store.outbox_retry(row.seq, at, &e.to_string(), tried && flood).await?;
                    blocked.insert(row.chat_id.clone());
                }
            }
        }
        Ok(worked)
    }

    /// A manager's edit of a sent reply: the message's text changes in the
    /// messenger (a messenger that cannot edit dead-letters it, saying so).
    /// Returns false when it waits for a retry.
    async fn send_edit(&self, row: &crate::store::OutboxRow, original: &str) -> Result<bool, PassError> {
        let now = self.clock.now_ms();
        self.store.outbox_started(row.seq).await?;
        match self.messenger.edit(&row.chat_id, original, &row.text).await {
            Ok(()) => self.store.outbox_sent(row.seq, original, now).await?,
            Err(MessengerError::Rejected(reason)) => {
                tracing::warn!(account = self.account(), chat = row.chat_id, "an edit was not mirrored: {reason}");
                self.store.outbox_dead(row.seq, &reason).await?;
            }
            Err(e) => {
                let at = now + plan::send_retry_wait(&e, row.attempts).as_millis() as i64;
                self.store.outbox_retry(row.seq, at, &e.to_string(), false).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A reply carrying a file from the CRM's storage gets its bytes, fetched with
    /// the CRM's credentials within the policy's media limit (a file the CRM
    /// refuses or that is too large is a refusal, dead-lettered with the reason).
    async fn with_crm_file(&self, outgoing: &Outgoing) -> Result<Outgoing, MessengerError> {
        let mut outgoing = outgoing.clone();
        if let Some(media) = &mut outgoing.media
            && let Some(file) = &media.crm_file
        {
            let (_, body) =
                self.crm.download_file(file, self.s.policy.media.max_bytes()).await.map_err(|e| match e.class() {
                    ErrorClass::Permanent => MessengerError::Rejected(format!("the file {}: {e}", file.file_name)),
                    _ => MessengerError::Unavailable(format!("fetching {} from the CRM: {e}", file.file_name)),
                })?;
            media.body = Some(body);
        }
        Ok(outgoing)
    }

    /// The conversation was answered (a reply went out, or the owner answered
    /// from their own app): nobody waits, and its escalation task is completed (or
    /// kept for the next answer when the CRM cannot be told now).
    pub(super) async fn answered(&self, chat: &str) {
        let task = match self.store.take_answered(self.account(), chat).await {
            Ok((task, since)) => {
                if let Some(since) = since {
                    let waited = (self.clock.now_ms() - since).max(0) as f64 / 1000.0;
                    self.metrics.first_answer_seconds.get_or_create(&Metrics::label(self.account())).observe(waited);
                }
                task
            }
            Err(e) => return self.store_failed("recording an answered conversation", &e),
        };
        if let Some(task) = task
            && let Err(e) = self.crm.complete_task(task, "answered").await
        {
            tracing::warn!(account = self.account(), task, "could not complete the escalation task: {e}");
            if let Err(e) = self.store.replace_task(self.account(), chat, None, Some(task)).await {
                self.store_failed("keeping an escalation task", &e);
            }
        }
    }
}
