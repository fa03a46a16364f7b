//! Intake: the messenger's events into the inbox, with the cursor committed in
//! the same transaction; statuses of our sends; deletions matched to their chat.

use super::*;

impl Bridge {
    pub(super) async fn ingest_loop(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        while !*stop.borrow() {
            let pause = match self.ingest_once().await {
                Ok(()) => {
                    failures = 0;
                    None
                }
                Err(MessengerError::FloodWait(d)) => Some(d),
                Err(e) => {
                    failures += 1;
                    self.state.update(|s| {
                        s.messenger_connected = false;
                        s.messenger_error = Some(e.to_string());
                    });
                    self.metrics.connected.get_or_create(&Metrics::label(self.account())).set(0);
                    Some(backoff(failures.min(6), Duration::from_millis(500), Duration::from_secs(30)))
                }
            };
            if let Some(d) = pause {
                tokio::time::sleep(d).await;
            }
        }
    }

    /// Checks the login, then stores one page of events.
    pub(super) async fn ingest_once(&self) -> Result<(), MessengerError> {
        let logged_in = matches!(self.state.get().login, Some(crate::messenger::LoginState::LoggedIn { .. }));
        if !logged_in {
            let login = self.messenger.login_state().await?;
            let now_in = matches!(login, crate::messenger::LoginState::LoggedIn { .. });
            self.state.update(|s| {
                match &login {
                    crate::messenger::LoginState::LoggedOut { reason } => s.logout_reason = Some(reason.clone()),
                    crate::messenger::LoginState::LoggedIn { .. } => s.logout_reason = None,
                    _ => {}
                }
                s.login = Some(login);
                s.messenger_connected = true;
                s.messenger_error = None;
            });
            self.metrics.logged_in.get_or_create(&Metrics::label(self.account())).set(i64::from(now_in));
            if !now_in {
                tokio::time::sleep(IDLE).await;
                return Ok(());
            }
        }
        let cursor = self.store.cursor(self.account(), "messenger").await.map_err(store_err)?;
        let batch = match self.messenger.updates(cursor.as_deref(), Duration::from_secs(10)).await {
            Err(MessengerError::LoggedOut(reason)) => {
                self.state.update(|s| {
                    s.logout_reason = Some(reason.clone());
                    s.login = Some(crate::messenger::LoginState::LoggedOut { reason });
                });
                self.metrics.logged_in.get_or_create(&Metrics::label(self.account())).set(0);
                return Ok(());
            }
            other => other?,
        };
        self.state.update(|s| {
            s.messenger_connected = true;
            s.messenger_error = None;
        });
        self.metrics.connected.get_or_create(&Metrics::label(self.account())).set(1);
        for e in &batch.events {
            match e {
                Event::Status { chat_id, message_id, status } => self.on_status(chat_id, message_id, status).await?,
                Event::ReadUpTo { chat_id, message_id } => self.on_read_up_to(chat_id, message_id).await?,
                _ => {}
            }
        }
        let events = self.attribute_deletions(batch.events).await.map_err(store_err)?;
        let rows = self.rows_of(&events);
        if cursor.as_deref() == Some(batch.cursor.as_str()) && rows.is_empty() {
            return Ok(());
        }
        let new = self
            .store
            .ingest(self.account(), &rows, "messenger", &batch.cursor, self.clock.now_ms(), false)
            .await
            .map_err(store_err)?;
        if new > 0 {
            self.store.wakeups().wake(self.account());
        }
        Ok(())
    }

    /// Gives each deletion that came without its chat the chat of the message it
    /// deletes (from the inbox); a deletion of a message never stored here is not
    /// ours to report and is dropped.
    pub(super) async fn attribute_deletions(&self, events: Vec<Event>) -> Result<Vec<Event>, crate::store::StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for e in events {
            match e {
                Event::Deleted { chat_id, message_id } if chat_id.is_empty() => {
                    match self.store.chat_of_message(self.account(), &message_id).await? {
                        Some(chat_id) => out.push(Event::Deleted { chat_id, message_id }),
                        None => tracing::debug!(account = self.account(), message_id, "deletion of an unknown message"),
                    }
                }
                e => out.push(e),
            }
        }
        Ok(out)
    }

    /// What the messenger says of a sent reply: recorded forward only (sent →
    /// delivered → read; failed ends it and dead-letters the reply with the
    /// reason), and reported to the CRM's chat when the reply came from there.
    pub(super) async fn on_status(&self, chat: &str, message_id: &str, status: &str) -> Result<(), MessengerError> {
        let update = self.store.outbox_delivery(self.account(), message_id, status).await.map_err(store_err)?;
        let (seq, crm_id) = match update {
            DeliveryUpdate::Moved { seq, crm_message_id } => (seq, crm_message_id),
            DeliveryUpdate::Unchanged => return Ok(()),
            DeliveryUpdate::UnknownMessage => {
                // It may have overtaken the record of its send (or not be ours):
                // kept until the send is recorded (the outbound pass takes it).
                tracing::debug!(account = self.account(), chat, message_id, status, "status before its send");
                let now = self.clock.now_ms();
                self.store.park_early_status(self.account(), message_id, status, now).await.map_err(store_err)?;
                // The send may have been recorded (and found nothing kept) between
                // the lookup and the keeping: look again. Applying a status twice
                // moves it once (forward only).
                match self.store.outbox_delivery(self.account(), message_id, status).await.map_err(store_err)? {
                    DeliveryUpdate::UnknownMessage => return Ok(()),
                    DeliveryUpdate::Unchanged => {
                        self.store.take_early_status(self.account(), message_id).await.map_err(store_err)?;
                        return Ok(());
                    }
                    DeliveryUpdate::Moved { seq, crm_message_id } => {
                        self.store.take_early_status(self.account(), message_id).await.map_err(store_err)?;
                        (seq, crm_message_id)
                    }
                }
            }
        };
        self.metrics.reply_statuses.get_or_create(&Metrics::status_label(self.account(), status)).inc();
        if let Some(detail) = status.strip_prefix("failed") {
            let reason = format!("the messenger did not deliver the reply{detail}");
            tracing::warn!(account = self.account(), chat, message_id, "{reason}");
            self.store.outbox_dead(seq, &reason).await.map_err(store_err)?;
            if let Some(id) = crm_id {
                self.report_delivery(&id, Some(&reason)).await;
            }
        } else if let Some(id) = crm_id {
            let st = match status {
                "delivered" => Some(crmessenger_crm::DeliveryStatus::Delivered),
                "read" => Some(crmessenger_crm::DeliveryStatus::Read),
                _ => None,
            };
            if let Some(st) = st
                && let Err(e) = self.crm.set_delivery_status(&id, st).await
            {
                tracing::warn!(account = self.account(), id, "could not report the delivery status: {e}");
            }
        }
        Ok(())
    }

    /// The customer read the chat up to `max_id`: every reply of ours there up to
    /// it is read (Telegram's message ids grow within a chat).
    pub(super) async fn on_read_up_to(&self, chat: &str, max_id: &str) -> Result<(), MessengerError> {
        let Ok(max) = max_id.parse::<i64>() else { return Ok(()) };
        let unread = self.store.outbox_unread(self.account(), chat).await.map_err(store_err)?;
        for id in unread.iter().filter(|id| id.parse::<i64>().is_ok_and(|n| n <= max)) {
            self.on_status(chat, id, "read").await?;
        }
        Ok(())
    }

    /// Inbox rows (chat, key, event) of the events the policy lets through
    /// (statuses of our own messages are not inbox work).
    pub(super) fn rows_of(&self, events: &[Event]) -> Vec<(String, String, String)> {
        events
            .iter()
            .filter(|e| !matches!(e, Event::Status { .. } | Event::ReadUpTo { .. }) && self.wanted(e))
            .filter_map(|e| {
                let mut e = e.clone();
                if let Event::Message(m) = &mut e {
                    plan::phones_in_e164(m, &self.s.phone_region);
                }
                Some((e.chat_id().to_string(), e.key(), serde_json::to_string(&e).ok()?))
            })
            .collect()
    }

    /// Whether the policy lets this event's chat through.
    pub(super) fn wanted(&self, event: &Event) -> bool {
        match event {
            Event::Message(m) => plan::chat_allowed(&self.s.policy.chats, m, &self.s.phone_region),
            _ => true,
        }
    }
}
