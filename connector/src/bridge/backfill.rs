//! The policy's history import, once per account, as its own task beside the live
//! stream: live messages never wait behind it.

use super::*;

impl Bridge {
    /// Runs the history import once the account is logged in and the stream's
    /// start is recorded (so nothing falls between history and the stream),
    /// retrying failures with a backoff. A messenger that has no history to give
    /// (a Telegram bot has no dialog list) refuses: the import is skipped, recorded
    /// with the reason, and not tried again.
    pub(super) async fn backfill_loop(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        while !*stop.borrow() && !self.backfilled.load(std::sync::atomic::Ordering::Relaxed) {
            let logged_in = matches!(self.state.get().login, Some(crate::messenger::LoginState::LoggedIn { .. }));
            let started = logged_in && matches!(self.store.cursor(self.account(), "messenger").await, Ok(Some(_)));
            if started {
                match self.backfill_once().await {
                    Ok(()) => failures = 0,
                    Err(MessengerError::Rejected(why)) => {
                        tracing::warn!(account = self.account(), "history import skipped: {why}");
                        self.backfill_not_applied(&why);
                        let note = format!("skipped: {why}");
                        if let Err(e) = self.store.set_cursor(self.account(), "backfill", &note).await {
                            self.store_failed("recording a skipped history import", &e);
                        }
                        self.backfilled.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(account = self.account(), "history import failed, retrying: {e}");
                    }
                }
            }
            let pause = if failures > 0 {
                backoff(failures.min(6), Duration::from_secs(1), Duration::from_secs(60))
            } else {
                Duration::from_millis(500)
            };
            tokio::time::sleep(pause).await;
        }
    }

    /// Shows on the account that its policy's history import cannot apply.
    fn backfill_not_applied(&self, why: &str) {
        let line = format!("backfill: {why}; history import skipped");
        self.state.update(|s| {
            if !s.not_applied.contains(&line) {
                s.not_applied.push(line);
            }
        });
    }

    /// Imports the policy's history once per account (`backfill.days` of the most
    /// recent `backfill.maxChats` chats), oldest first per chat, marked as history
    /// so nobody is notified. Messages the stream also brings are stored once.
    pub(super) async fn backfill_once(&self) -> Result<(), MessengerError> {
        let b = &self.s.policy.backfill;
        if b.days <= 0 || self.backfilled.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let recorded = self.store.cursor(self.account(), "backfill").await.map_err(store_err)?;
        if let Some(why) = recorded.as_deref().and_then(|c| c.strip_prefix("skipped: ")) {
            self.backfill_not_applied(why);
        }
        if recorded.as_deref().is_some_and(|c| c == "done" || c.starts_with("skipped")) {
            self.backfilled.store(true, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        }
        let since = self.clock.now_ms() - i64::from(b.days) * 86_400_000;
        let max_chats = if b.max_chats > 0 { b.max_chats as usize } else { usize::MAX };
        let chats = self.messenger.recent_chats(since, 10_000).await?;
        tracing::info!(account = self.account(), chats = chats.len(), days = b.days, "importing history");
        let mut imported = 0usize;
        for chat in chats {
            if imported >= max_chats {
                break;
            }
            let mut before: Option<String> = None;
            let mut messages = Vec::new();
            loop {
                let page = self.messenger.backfill(&chat, before.as_deref(), 100).await?;
                let Some(last) = page.last() else { break };
                before = Some(last.message_id.clone());
                let older = page.iter().any(|m| m.sent_at_ms < since);
                messages.extend(page.into_iter().filter(|m| m.sent_at_ms >= since));
                if older {
                    break;
                }
            }
            messages.reverse();
            let events: Vec<Event> = messages
                .into_iter()
                .map(|mut m| {
                    m.history = true;
                    Event::Message(Box::new(m))
                })
                .collect();
            let rows = self.rows_of(&events);
            if rows.is_empty() {
                continue;
            }
            imported += 1;
            self.store
                .ingest(self.account(), &rows, "backfill-chat", &chat, self.clock.now_ms(), true)
                .await
                .map_err(store_err)?;
            self.store.wakeups().wake(self.account());
        }
        self.store.set_cursor(self.account(), "backfill", "done").await.map_err(store_err)?;
        self.backfilled.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(account = self.account(), chats = imported, "history imported");
        Ok(())
    }
}
