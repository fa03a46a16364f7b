//! Inbound delivery: due inbox rows become contacts, leads and notes (or Chats
//! API messages), batched under the CRM's budget, with the circuit breaker and
//! per-chat isolation of a refused message.

use super::*;

impl Bridge {
    /// Delivers what is due in the inbox. Returns whether anything was done.
    pub(super) async fn inbound_pass(&self) -> Result<bool, PassError> {
        let now = self.clock.now_ms();
        if !self.breaker.lock().unwrap_or_else(|p| p.into_inner()).allows(now) {
            return Ok(false);
        }
        let mut rows = self.store.inbox_pending(self.account(), BATCH).await?;
        // Wait for the budget before gathering: what arrives meanwhile goes out in
        // the same request instead of waiting for the next one.
        if rows.iter().any(|r| r.next_attempt_ms <= now) && self.crm.ready().await {
            rows = self.store.inbox_pending(self.account(), BATCH).await?;
        }
        let now = self.clock.now_ms();
        let grouped = plan::with_history_capped(plan::by_chat(rows), plan::HISTORY_CHATS_PER_PASS);
        let chats: Vec<String> = grouped.iter().map(|(chat, _)| chat.clone()).collect();
        let mut worked = false;
        let mut ready: Vec<Prepared> = Vec::new();
        let mut known = self.store.conversations(self.account(), &chats).await?;
        for (chat, rows) in grouped {
            if rows.first().is_none_or(|r| r.next_attempt_ms > now) {
                continue;
            }
            if !self.breaker.lock().unwrap_or_else(|p| p.into_inner()).allows(self.clock.now_ms()) {
                break;
            }
            let rows = match self.without_echoes(&chat, rows).await {
                Ok(rows) if rows.is_empty() => continue,
                Ok(rows) => rows,
                Err(e) => {
                    self.store_failed("telling echoes of our replies apart", &e);
                    continue;
                }
            };
            worked = true;
            let single = self.one_by_one.lock().map(|s| s.contains(&chat)).unwrap_or(false);
            let rows: Vec<InboxRow> = if single { rows.into_iter().take(1).collect() } else { rows };
            let conv = known.remove(&chat).unwrap_or_default();
            if self.s.chats {
                match self.post_chat(&chat, &rows, conv).await {
                    Ok(()) => self.chat_delivered(&chat, single),
                    Err(e) => {
                        self.breaker_failure(&e);
                        self.delivery_failed(&chat, &rows, &e).await
                    }
                }
                continue;
            }
            match self.prepare_chat(&chat, &rows, single, conv).await {
                Ok(Some(p)) if single => self.write_notes(vec![p]).await,
                Ok(Some(p)) => ready.push(p),
                Ok(None) => self.chat_delivered(&chat, single),
                Err(e) => {
                    self.breaker_failure(&e);
                    self.delivery_failed(&chat, &rows, &e).await
                }
            }
        }
        // The notes of many chats share requests (250 notes to a request); a chat
        // is split across requests only when it alone has more.
        let sizes: Vec<usize> = ready.iter().map(|p| p.todo.len()).collect();
        let mut ready = ready.into_iter();
        for request in plan::shared_requests(&sizes, NOTES_PER_REQUEST) {
            self.write_notes(ready.by_ref().take(request.len()).collect()).await;
        }
        Ok(worked)
    }

    /// A CRM call failed: retryable failures count toward the circuit breaker.
    pub(super) fn breaker_failure(&self, e: &CrmError) {
        if e.class() != ErrorClass::Permanent
            && let Ok(mut b) = self.breaker.lock()
        {
            b.failure(self.clock.now_ms());
        }
    }

    /// A chat's rows went through: its backoff and one-by-one mode end.
    pub(super) fn chat_delivered(&self, chat: &str, single: bool) {
        if let Ok(mut b) = self.breaker.lock() {
            b.success();
        }
        if let Ok(mut f) = self.chat_failures.lock() {
            f.remove(chat);
        }
        self.state.update(|s| {
            s.crm_ok = true;
            s.crm_error = None;
        });
        if single && let Ok(mut s) = self.one_by_one.lock() {
            // The dead letter (if any) is out; go back to batches.
            s.remove(chat);
        }
    }

    pub(super) async fn delivery_failed(&self, chat: &str, rows: &[InboxRow], e: &CrmError) {
        let now = self.clock.now_ms();
        self.metrics.crm_errors.get_or_create(&Metrics::label(self.account())).inc();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        let failures = if e.class() == ErrorClass::Permanent {
            0
        } else {
            let mut f = self.chat_failures.lock().unwrap_or_else(|p| p.into_inner());
            let n = f.entry(chat.to_string()).or_default();
            *n += 1;
            *n
        };
        match plan::after_failure(e.class(), rows.len(), failures, e.retry_after()) {
            plan::AfterFailure::DeadLetter => {
                tracing::warn!(account = self.account(), chat, seq = rows[0].seq, "dead letter: {e}");
                if let Err(err) = self.store.inbox_dead(rows[0].seq, &e.to_string(), now).await {
                    self.store_failed("dead-lettering a message", &err);
                }
                if let Ok(mut s) = self.one_by_one.lock() {
                    s.remove(chat);
                }
            }
            plan::AfterFailure::OneByOne => {
                tracing::info!(account = self.account(), chat, "a batch was refused; retrying message by message: {e}");
                if let Ok(mut s) = self.one_by_one.lock() {
                    s.insert(chat.to_string());
                }
            }
            plan::AfterFailure::Retry(wait) => {
                tracing::warn!(account = self.account(), chat, ?wait, "CRM delivery failed, retrying: {e}");
                if let Err(err) = self.store.inbox_retry(&seqs, now + wait.as_millis() as i64, &e.to_string()).await {
                    self.store_failed("scheduling a retry", &err);
                }
                self.state.update(|s| {
                    s.crm_ok = false;
                    s.crm_error = Some(e.to_string());
                });
            }
        }
    }

    /// Gets one chat's due rows ready to be written: the contact and lead exist
    /// (created once per chat), and rows whose write may already have happened are
    /// looked up by marker. `None` when nothing is left to write or record.
    pub(super) async fn prepare_chat(
        &self,
        chat: &str,
        rows: &[InboxRow],
        single: bool,
        mut conv: Conversation,
    ) -> Result<Option<Prepared>, CrmError> {
        let now = self.clock.now_ms();
        let mut events: Vec<(&InboxRow, Event)> = rows
            .iter()
            .map(|r| serde_json::from_str(&r.payload).map(|e| (r, e)))
            .collect::<Result<_, _>>()
            .map_err(|e| CrmError::Rejected { status: 0, detail: format!("stored event does not parse: {e}") })?;
        for (_, e) in &mut events {
            if let Event::Message(m) = e {
                self.quote(chat, m).await.map_err(db)?;
            }
        }
        let messages: Vec<&Message> = events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Message(m) => Some(m.as_ref()),
                _ => None,
            })
            .collect();
        let group = plan::group(chat, messages.iter().copied());
        if conv.lead_id.is_none() {
            let Some(person) = plan::customer(self.s.channel, chat, messages.iter().copied()) else {
                // Deletions or statuses of a chat the CRM never saw: nothing to write.
                let done: Vec<(i64, String)> = rows.iter().map(|r| (r.seq, "skipped".to_string())).collect();
                self.store.inbox_done(&done, now).await.map_err(db)?;
                return Ok(None);
            };
            let first = messages.iter().copied().find(|m| !m.outgoing);
            self.give_lead(chat, &person, None, group.as_ref(), first, &mut conv).await?;
        }
        let lead_id = conv.lead_id.unwrap_or_default();
        if group.is_some() && self.s.policy.leads.create {
            self.link_members(chat, lead_id, &messages).await?;
        }
        let files = self.customer_files(lead_id, &events).await?;
        let account = short(self.account());
        let notes: Vec<(i64, NoteRequest)> = events
            .iter()
            .map(|(r, e)| {
                let file = files.get(&r.seq).map(String::as_str);
                (r.seq, plan::note(self.s.texts, self.s.channel, &account, chat, &r.event_key, e, file))
            })
            .collect();
        // Rows whose write may already have happened: look for their markers first.
        let mut done: Vec<(i64, String)> = Vec::new();
        let in_doubt: Vec<&(i64, NoteRequest)> =
            notes.iter().filter(|(seq, _)| rows.iter().any(|r| r.seq == *seq && r.attempts > 0)).collect();
        if !in_doubt.is_empty() {
            let since = plan::in_doubt_since(rows, now);
            let markers: Vec<String> = in_doubt.iter().map(|(_, n)| n.marker.clone()).collect();
            let found = self.crm.find_notes(lead_id, since, &markers).await?;
            for f in found {
                if let Some((seq, _)) = notes.iter().find(|(_, n)| n.marker == f.marker) {
                    done.push((*seq, format!("note:{}", f.id)));
                }
            }
        }
        let todo: Vec<(i64, NoteRequest)> =
            notes.into_iter().filter(|(seq, _)| !done.iter().any(|(d, _)| d == seq)).collect();
        Ok(Some(Prepared {
            chat: chat.to_string(),
            single,
            rows: rows.to_vec(),
            sent_at: events.iter().map(|(r, e)| sent_at(e, r)).collect(),
            turns: events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::Message(m) => {
                        Some(plan::Turn { sent_at_ms: m.sent_at_ms, outgoing: m.outgoing, history: m.history })
                    }
                    _ => None,
                })
                .collect(),
            conv,
            lead_id,
            done,
            todo,
        }))
    }

    /// In notes mode a message's file goes to the CRM's file storage and is linked
    /// to the lead, within the policy's media limit; returns, per row with a file,
    /// the line its note gets (where the file is, or why it is not there). An
    /// upload is recorded by the message's key before it is linked, so a retry
    /// links the same file again instead of uploading it twice.
    async fn customer_files(
        &self,
        lead_id: i64,
        events: &[(&InboxRow, Event)],
    ) -> Result<HashMap<i64, String>, CrmError> {
        const NS: &str = "crm-files";
        let limit = self.s.policy.media.max_bytes();
        let mut lines = HashMap::new();
        let mut stored = Vec::new();
        let t = self.s.texts;
        for (row, e) in events {
            let Event::Message(m) = e else { continue };
            let crate::messenger::Content::Media { media, .. } = &m.content else { continue };
            if self.s.policy.media.mode == crmessenger_api::policy::MediaMode::Skip {
                lines.insert(row.seq, format!("{}: {}", t.not_attached, t.media_skipped));
                continue;
            }
            if media.size > limit {
                let mib = limit / (1024 * 1024);
                lines.insert(row.seq, format!("{}: {} {mib} MiB", t.not_attached, t.over_media_limit));
                continue;
            }
            let known = self.store.kv_get(self.account(), NS, &row.event_key).await.map_err(db)?;
            let file = match known.and_then(|v| serde_json::from_slice::<crmessenger_crm::StoredFile>(&v).ok()) {
                Some(f) => f,
                None => {
                    let bytes = match self.messenger.fetch_media(media).await {
                        Ok(b) => b,
                        Err(MessengerError::Rejected(why)) => {
                            lines.insert(row.seq, format!("{}: {why}", t.not_attached));
                            continue;
                        }
                        Err(e) => return Err(CrmError::Unavailable(format!("fetch media: {e}"))),
                    };
                    let upload = crmessenger_crm::FileUpload {
                        file_name: media.file_name.clone(),
                        mime_type: media.mime_type.clone(),
                        bytes,
                    };
                    let f = match self.crm.upload_file(&upload).await {
                        Ok(f) => f,
                        Err(e) if e.class() == ErrorClass::Permanent => {
                            lines.insert(row.seq, format!("{}: {}: {e}", t.not_attached, t.crm_refused_file));
                            continue;
                        }
                        Err(e) => return Err(e),
                    };
                    let value = serde_json::to_vec(&f).map_err(|e| CrmError::Protocol(e.to_string()))?;
                    self.store.kv_put(self.account(), NS, &row.event_key, &value).await.map_err(db)?;
                    f
                }
            };
            lines.insert(row.seq, format!("{}: {}", t.in_lead_files, file.file_name));
            stored.push(file);
        }
        self.crm.link_files(lead_id, &stored).await?;
        Ok(lines)
    }

    /// Each sender of a group chat is a contact linked to the group's lead: the
    /// senders the lead does not have yet are found or created and linked, then
    /// recorded (a crash in between links them again, which changes nothing).
    pub(super) async fn link_members(&self, chat: &str, lead_id: i64, messages: &[&Message]) -> Result<(), CrmError> {
        let known = self.store.chat_members(self.account(), chat).await.map_err(db)?;
        let senders = plan::new_members(messages.iter().copied(), &known);
        if senders.is_empty() {
            return Ok(());
        }
        let mut members = Vec::new();
        for who in senders {
            let person = plan::person(self.s.channel, who);
            let contact = self.crm.find_or_create_contact(&person, &self.s.policy.leads.deduplicate_by).await?;
            members.push((who.id.clone(), contact.id));
        }
        let ids: Vec<i64> = members.iter().map(|(_, c)| *c).collect();
        self.crm.link_contacts(lead_id, &ids).await?;
        self.store.add_chat_members(self.account(), chat, &members).await.map_err(db)
    }

    /// Writes the notes of prepared chats in one request (or as few as the CRM
    /// allows) and records the outcome per chat.
    pub(super) async fn write_notes(&self, chunk: Vec<Prepared>) {
        let now = self.clock.now_ms();
        let items: Vec<(i64, NoteRequest)> =
            chunk.iter().flat_map(|p| p.todo.iter().map(|(_, n)| (p.lead_id, n.clone()))).collect();
        let result = if items.is_empty() {
            Ok(Vec::new())
        } else {
            let seqs: Vec<i64> = chunk.iter().flat_map(|p| p.todo.iter().map(|(s, _)| *s)).collect();
            match self.store.inbox_started(&seqs, now).await {
                Ok(()) => self.crm.add_lead_notes(&items).await,
                Err(e) => Err(db(e)),
            }
        };
        match result {
            Ok(refs) => {
                let mut refs = refs.into_iter();
                let mut chunk = chunk;
                for p in &mut chunk {
                    for (seq, _) in &p.todo {
                        if let Some(r) = refs.next() {
                            p.done.push((*seq, format!("note:{}", r.id)));
                        }
                    }
                }
                // One transaction records the whole request (rows left unrecorded
                // by a crash are found by marker on the next attempt).
                let written = self.clock.now_ms();
                let done: Vec<(i64, String)> = chunk.iter().flat_map(|p| p.done.iter().cloned()).collect();
                if let Err(e) = self.store.inbox_done(&done, written).await {
                    tracing::warn!(account = self.account(), "recording a delivery: {e}");
                    return;
                }
                for p in chunk {
                    let (chat, single) = (p.chat.clone(), p.single);
                    match self.finish_chat(p, written).await {
                        Ok(()) => self.chat_delivered(&chat, single),
                        Err(e) => tracing::warn!(account = self.account(), chat, "recording a delivery: {e}"),
                    }
                }
            }
            Err(e) => {
                self.breaker_failure(&e);
                if chunk.len() > 1 && e.class() == ErrorClass::Permanent {
                    // Some chat's note was refused: each chat goes alone until the
                    // refused message is found and dead-lettered.
                    tracing::info!(account = self.account(), "a shared batch was refused; retrying chat by chat: {e}");
                    if let Ok(mut s) = self.one_by_one.lock() {
                        s.extend(chunk.iter().map(|p| p.chat.clone()));
                    }
                    return;
                }
                for p in &chunk {
                    self.delivery_failed(&p.chat, &p.rows, &e).await;
                }
            }
        }
    }

    /// After a chat's rows are recorded: its metrics, and that the customer waits.
    pub(super) async fn finish_chat(&self, p: Prepared, written: i64) -> Result<(), CrmError> {
        let label = Metrics::label(self.account());
        for (row, at) in p.rows.iter().zip(&p.sent_at) {
            self.metrics.messages_in.get_or_create(&label).inc();
            self.metrics.lag_seconds.get_or_create(&label).observe((written - at).max(0) as f64 / 1000.0);
            let crm_ref = p.done.iter().find(|(seq, _)| *seq == row.seq).map(|(_, r)| r.as_str()).unwrap_or_default();
            self.trace_message(&p.chat, row, *at, crm_ref, written);
        }
        // The customer now waits for an answer (from their first unanswered
        // message), unless the account's owner answered from their own app.
        let (waiting, answered) = plan::after_turns(p.conv.unanswered_since_ms, &p.turns, written);
        if answered {
            self.answered(&p.chat).await;
        }
        if let Some(since) = waiting {
            self.store.start_waiting(self.account(), &p.chat, since).await.map_err(db)?;
        }
        // A manager's reply on this lead goes to the chat whose customer wrote last.
        if let Some(at) = p.turns.iter().filter(|t| !t.outgoing).map(|t| t.sent_at_ms).max() {
            self.store.customer_wrote(self.account(), &p.chat, at).await.map_err(db)?;
        }
        Ok(())
    }

    /// One trace per message: a span from the messenger event to the CRM write,
    /// named by the message's correlation id (also in the CRM note's marker and in
    /// the logs). A no-op unless OTLP export is configured.
    pub(super) fn trace_message(&self, chat: &str, row: &InboxRow, event_ms: i64, crm_ref: &str, written_ms: i64) {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{Span, Tracer};
        let at = |ms: i64| std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
        let correlation = format!("{}:{chat}:{}", short(self.account()), row.event_key);
        tracing::debug!(account = self.account(), correlation, crm_ref, "delivered");
        let tracer = crmessenger_telemetry::tracer();
        let mut span = tracer
            .span_builder("message")
            .with_start_time(at(event_ms.min(row.received_ms)))
            .with_attributes([
                KeyValue::new("crmessenger.account", self.account().to_string()),
                KeyValue::new("crmessenger.chat", chat.to_string()),
                KeyValue::new("crmessenger.correlation_id", correlation),
                KeyValue::new("crmessenger.crm_ref", crm_ref.to_string()),
                KeyValue::new("crmessenger.received_ms", row.received_ms),
                KeyValue::new("crmessenger.attempts", row.attempts + 1),
            ])
            .start(&tracer);
        span.add_event_with_timestamp("stored in the inbox", at(row.received_ms), Vec::new());
        span.end_with_timestamp(at(written_ms));
    }
}
