//! The bridge: messenger events → inbox → CRM, and CRM replies → outbox →
//! messenger, for one account.
//!
//! - **Ingest**: events are written to the inbox together with the messenger
//!   cursor after them, in one transaction.
//! - **Inbound**: pending inbox rows are grouped by chat, in arrival order; a chat
//!   whose head is waiting for a retry waits as a whole (order is kept per chat),
//!   other chats go on. Contact and lead are resolved once per chat and remembered;
//!   messages become lead notes, batched. A row whose write may have happened (a
//!   previous attempt started) is first looked up by its marker in the CRM.
//! - Errors: retryable ones back off per chat (exponential, jittered) and count
//!   towards the circuit breaker, which holds all CRM work back during an outage;
//!   permanent ones dead-letter the one message (a failing batch is retried
//!   message by message to find it); fatal ones (credentials) hold everything
//!   back and show in status.
//! - **Outbound**: replies (from the gateway's webhook rows or from polling) go
//!   to the outbox, keyed by their CRM id; each send's
//!   `random_id` is stored before the first attempt and an interrupted send is
//!   looked up before it is retried.
//! - **Escalation**: one CRM task per conversation unanswered for longer than the
//!   policy allows; completed when a reply goes out.
//! - **Per-binding duties** (reply polling, keeping the reply webhook
//!   subscribed): every connector of a binding runs the loop, and each interval
//!   only the holder of the duty's lock does the work
//!   ([`crate::store::lock::Duties`]); when the holder stops, another connector
//!   takes over within one interval.
//! - A storage write that fails is logged and counted
//!   (`crmessenger_connector_store_errors_total`); the work it recorded is
//!   retried, never dropped.

pub mod chats;
pub mod retry;

use crate::messenger::{Event, Message, Messenger, MessengerError, Outgoing};
use crate::metrics::Metrics;
use crate::state::StateCell;
use crate::store::lock::{AccountLock, Duties};
use crate::store::{Conversation, DeliveryUpdate, InboxRow, NewReply, Store, StoreError};
use crmessenger_api::policy::{ChatFilter, SyncPolicySpec};
use crmessenger_crm::assign::Assigner;
use crmessenger_crm::clock::Clock;
use crmessenger_crm::{Channel, Crm, CrmError, ErrorClass, LeadRequest, NoteRequest, Person, ReplyCursor, TaskRequest};
use retry::{Breaker, SendRate, backoff};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How replies written in the CRM are noticed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplySource {
    /// Poll lead notes every interval (one poller per binding).
    Poll(Duration),
    /// amoCRM REST webhooks through the gateway.
    Webhook,
}

/// What a bridge needs to know besides its parts.
#[derive(Debug, Clone)]
pub struct BridgeSettings {
    /// `namespace/name` of the account.
    pub account: String,
    /// `namespace/name` of the binding.
    pub binding: String,
    /// Names the CRM account (its base URL): leads are routed by it.
    pub crm_key: String,
    /// The messenger, for tags and texts.
    pub channel: Channel,
    /// How messages flow.
    pub policy: SyncPolicySpec,
    /// Pipeline of new leads.
    pub pipeline_id: Option<i64>,
    /// Stage of new leads.
    pub status_id: Option<i64>,
    /// Users new leads may be assigned to.
    pub responsible_user_ids: Vec<i64>,
    /// How replies are noticed.
    pub replies: ReplySource,
    /// Messages go to the CRM's chat (Chats API) instead of lead notes.
    pub chats: bool,
    /// The gateway's public URL, for attachments in the CRM's chat.
    pub media_url: Option<String>,
}

/// Why a pass of the work loop stopped early (it runs again on the next turn).
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    /// Reading or writing the queues failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
}

/// The parts of a bridge.
pub struct Bridge {
    s: BridgeSettings,
    store: Store,
    crm: Arc<dyn Crm>,
    messenger: Arc<dyn Messenger>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    state: Arc<StateCell>,
    assigner: Assigner,
    breaker: Mutex<Breaker>,
    chat_failures: Mutex<HashMap<String, u32>>,
    one_by_one: Mutex<HashSet<String>>,
    send_rate: Mutex<SendRate>,
    backfilled: std::sync::atomic::AtomicBool,
    /// The gateway URL amoCRM's reply webhook posts to (set once routes are registered).
    webhook_url: std::sync::OnceLock<String>,
    /// While the messenger restricts the account: no send before this (Unix ms).
    restricted_until_ms: std::sync::atomic::AtomicI64,
}

const BATCH: i64 = 1000;
/// One chat's rows, ready to be written.
struct Prepared {
    chat: String,
    single: bool,
    rows: Vec<InboxRow>,
    conv: Conversation,
    lead_id: i64,
    /// Rows already in the CRM (found by marker), with what they became.
    done: Vec<(i64, String)>,
    /// Rows to write, in order.
    todo: Vec<(i64, NoteRequest)>,
    /// When each row's event happened (for the lag metric).
    sent_at: Vec<i64>,
    first_message_at: Option<i64>,
    /// When the newest customer message among the rows was sent (reply routing).
    last_message_at: Option<i64>,
}

/// amoCRM's entity limit per request: the notes of one shared write.
const NOTES_PER_REQUEST: usize = 250;
/// How long a stopping connector waits for the CRM calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(300);
const IDLE: Duration = Duration::from_secs(2);
/// While the messenger restricts the account, one reply is tried this often to
/// see whether the restriction was lifted (no retry loop against a ban).
const RESTRICTED_PROBE_EVERY: Duration = Duration::from_secs(3600);
/// How often the holder of a binding's webhook duty subscribes it again (amoCRM
/// turns off a webhook whose deliveries keep failing, and people delete them).
const RESUBSCRIBE_EVERY: Duration = Duration::from_secs(600);
/// How often the webhook duty loop looks whether a subscription is due.
const WEBHOOK_DUTY_EVERY: Duration = Duration::from_secs(10);

/// A short, stable id of an account for markers.
fn short(account: &str) -> String {
    format!("{:08x}", crate::store::lock::lock_key(account) as u64 >> 32)
}

impl Bridge {
    /// A bridge over its parts.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: BridgeSettings,
        store: Store,
        crm: Arc<dyn Crm>,
        messenger: Arc<dyn Messenger>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        state: Arc<StateCell>,
    ) -> Self {
        let assigner = Assigner::new(&settings.policy.assignment, &settings.responsible_user_ids, 0);
        let limits = &settings.policy.rate_limits;
        let send_rate = Mutex::new(SendRate::new(limits.messages_per_minute, limits.per_chat_per_minute));
        Self {
            send_rate,
            backfilled: Default::default(),
            webhook_url: Default::default(),
            restricted_until_ms: Default::default(),
            s: settings,
            store,
            crm,
            messenger,
            clock,
            metrics,
            state,
            assigner,
            breaker: Mutex::new(Breaker::new(5, Duration::from_secs(5), Duration::from_secs(60))),
            chat_failures: Mutex::default(),
            one_by_one: Mutex::default(),
        }
    }

    fn account(&self) -> &str {
        &self.s.account
    }

    /// The gateway URL of the binding's reply webhook (kept subscribed by the
    /// holder of the binding's webhook duty).
    pub fn set_webhook_url(&self, url: String) {
        let _ = self.webhook_url.set(url);
    }

    /// A storage write failed: logged and counted; what it recorded is retried.
    fn store_failed(&self, what: &str, e: &StoreError) {
        tracing::error!(account = self.account(), "storage write failed ({what}): {e}");
        self.metrics.store_errors.get_or_create(&Metrics::label(self.account())).inc();
    }

    /// Runs every loop until `stop` turns true or the lock is lost.
    pub async fn run(self: Arc<Self>, lock: &AccountLock, mut stop: watch::Receiver<bool>) {
        let wake = self.store.wakeups().of(self.account());
        let mut work = tokio::spawn(self.clone().work_loop(wake, stop.clone()));
        // Everything but the work loop stops at once on a stop.
        let mut others = vec![
            tokio::spawn(self.clone().ingest_loop(stop.clone())),
            tokio::spawn(self.clone().escalation_loop(stop.clone())),
        ];
        if self.s.chats {
            others.push(tokio::spawn(self.clone().history_loop(stop.clone())));
        }
        match self.s.replies {
            ReplySource::Poll(every) => {
                others.push(tokio::spawn(self.clone().poll_loop(lock.duties(), every, stop.clone())));
            }
            ReplySource::Webhook => {
                others.push(tokio::spawn(self.clone().webhook_loop(lock.duties(), stop.clone())));
            }
        }
        let lost = tokio::select! {
            _ = stop.wait_for(|s| *s) => false,
            _ = lock.lost() => {
                tracing::error!(account = self.account(), "account lock lost: dropping the messenger connection now");
                true
            }
        };
        for t in others {
            t.abort();
        }
        // A stop (SIGTERM) lets the work loop finish the calls in flight: it ends
        // after its current pass. A lost lock stops everything at once.
        if lost || tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await.is_err() {
            work.abort();
        }
    }

    // ---- ingest ------------------------------------------------------------

    async fn ingest_loop(self: Arc<Self>, stop: watch::Receiver<bool>) {
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
    async fn ingest_once(&self) -> Result<(), MessengerError> {
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
            if let Event::Status { chat_id, message_id, status } = e {
                self.on_status(chat_id, message_id, status).await?;
            }
        }
        let events = self.attribute_deletions(batch.events).await.map_err(store_err)?;
        let rows = self.rows_of(&events);
        if cursor.as_deref() == Some(batch.cursor.as_str()) && rows.is_empty() {
            return self.backfill_once().await;
        }
        let new = self
            .store
            .ingest(self.account(), &rows, "messenger", &batch.cursor, self.clock.now_ms())
            .await
            .map_err(store_err)?;
        if new > 0 {
            self.store.wakeups().wake(self.account());
        }
        // The stream's start is recorded: history from before it can be imported.
        self.backfill_once().await
    }

    /// Gives each deletion that came without its chat the chat of the message it
    /// deletes (from the inbox); a deletion of a message never stored here is not
    /// ours to report and is dropped.
    async fn attribute_deletions(&self, events: Vec<Event>) -> Result<Vec<Event>, crate::store::StoreError> {
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
    async fn on_status(&self, chat: &str, message_id: &str, status: &str) -> Result<(), MessengerError> {
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

    /// Inbox rows (chat, key, event) of the events the policy lets through
    /// (statuses of our own messages are not inbox work).
    fn rows_of(&self, events: &[Event]) -> Vec<(String, String, String)> {
        events
            .iter()
            .filter(|e| !matches!(e, Event::Status { .. }) && self.wanted(e))
            .filter_map(|e| Some((e.chat_id().to_string(), e.key(), serde_json::to_string(e).ok()?)))
            .collect()
    }

    /// Imports the policy's history once per account (`backfill.days` of the most
    /// recent `backfill.maxChats` chats), oldest first per chat, marked as history
    /// so nobody is notified. Messages the stream also brings are stored once.
    async fn backfill_once(&self) -> Result<(), MessengerError> {
        let b = &self.s.policy.backfill;
        if b.days <= 0 || self.backfilled.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        if self.store.cursor(self.account(), "backfill").await.map_err(store_err)?.as_deref() == Some("done") {
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
                .ingest(self.account(), &rows, "backfill-chat", &chat, self.clock.now_ms())
                .await
                .map_err(store_err)?;
            self.store.wakeups().wake(self.account());
        }
        self.store.set_cursor(self.account(), "backfill", "done").await.map_err(store_err)?;
        self.backfilled.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(account = self.account(), chats = imported, "history imported");
        Ok(())
    }

    /// Whether the policy lets this event's chat through.
    fn wanted(&self, event: &Event) -> bool {
        match event {
            Event::Message(m) => chat_allowed(&self.s.policy.chats, m),
            _ => true,
        }
    }

    // ---- inbound and outbound work ------------------------------------------

    async fn work_loop(self: Arc<Self>, wake: Arc<tokio::sync::Notify>, stop: watch::Receiver<bool>) {
        // Queue gauges are refreshed at most once a second, not on every busy pass.
        let mut published: Option<std::time::Instant> = None;
        while !*stop.borrow() {
            let mut busy = false;
            for (pass, result) in [
                ("inbound", self.inbound_pass().await),
                ("webhook", self.events_pass().await),
                ("outbound", self.outbound_pass().await),
            ] {
                match result {
                    Ok(b) => busy |= b,
                    Err(PassError::Store(e)) => self.store_failed(&format!("the {pass} pass"), &e),
                }
            }
            if published.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                self.publish_counts().await;
                published = Some(std::time::Instant::now());
            }
            if !busy {
                let _ = tokio::time::timeout(Duration::from_millis(500), wake.notified()).await;
            }
        }
    }

    async fn publish_counts(&self) {
        let Ok(c) = self.store.counts(self.account()).await else { return };
        let label = Metrics::label(self.account());
        self.metrics.undelivered.get_or_create(&label).set(c.inbox_pending + c.outbox_pending);
        self.metrics.dead_letters.get_or_create(&label).set(c.inbox_dead + c.outbox_dead);
        let now = self.clock.now_ms();
        let age = c.oldest_pending_ms.map(|t| (now - t).max(0) as f64 / 1000.0).unwrap_or(0.0);
        self.metrics.oldest_undelivered_seconds.get_or_create(&label).set(age);
        if let Ok(oldest) = self.store.oldest_unanswered_ms(self.account()).await {
            let age = oldest.map(|t| (now - t).max(0) as f64 / 1000.0).unwrap_or(0.0);
            self.metrics.unanswered_seconds.get_or_create(&label).set(age);
        }
        let open = self.breaker.lock().map(|b| b.is_open()).unwrap_or(false);
        self.metrics.crm_circuit_open.get_or_create(&label).set(i64::from(open));
    }

    /// Delivers what is due in the inbox. Returns whether anything was done.
    async fn inbound_pass(&self) -> Result<bool, PassError> {
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
        let mut order: Vec<String> = Vec::new();
        let mut by_chat: HashMap<String, Vec<InboxRow>> = HashMap::new();
        for r in rows {
            if !by_chat.contains_key(&r.chat_id) {
                order.push(r.chat_id.clone());
            }
            by_chat.entry(r.chat_id.clone()).or_default().push(r);
        }
        let mut worked = false;
        let mut ready: Vec<Prepared> = Vec::new();
        let mut known = self.store.conversations(self.account(), &order).await?;
        for chat in order {
            let rows = by_chat.remove(&chat).unwrap_or_default();
            if rows.first().is_none_or(|r| r.next_attempt_ms > now) {
                continue;
            }
            if !self.breaker.lock().unwrap_or_else(|p| p.into_inner()).allows(self.clock.now_ms()) {
                break;
            }
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
        let mut chunk: Vec<Prepared> = Vec::new();
        let mut size = 0;
        for p in ready {
            if !chunk.is_empty() && size + p.todo.len() > NOTES_PER_REQUEST {
                self.write_notes(std::mem::take(&mut chunk)).await;
                size = 0;
            }
            size += p.todo.len();
            chunk.push(p);
        }
        if !chunk.is_empty() {
            self.write_notes(chunk).await;
        }
        Ok(worked)
    }

    /// A CRM call failed: retryable failures count toward the circuit breaker.
    fn breaker_failure(&self, e: &CrmError) {
        if e.class() != ErrorClass::Permanent
            && let Ok(mut b) = self.breaker.lock()
        {
            b.failure(self.clock.now_ms());
        }
    }

    /// A chat's rows went through: its backoff and one-by-one mode end.
    fn chat_delivered(&self, chat: &str, single: bool) {
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

    async fn delivery_failed(&self, chat: &str, rows: &[InboxRow], e: &CrmError) {
        let now = self.clock.now_ms();
        self.metrics.crm_errors.get_or_create(&Metrics::label(self.account())).inc();
        let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
        match e.class() {
            ErrorClass::Permanent if rows.len() == 1 => {
                tracing::warn!(account = self.account(), chat, seq = rows[0].seq, "dead letter: {e}");
                if let Err(err) = self.store.inbox_dead(rows[0].seq, &e.to_string(), now).await {
                    self.store_failed("dead-lettering a message", &err);
                }
                if let Ok(mut s) = self.one_by_one.lock() {
                    s.remove(chat);
                }
            }
            ErrorClass::Permanent => {
                tracing::info!(account = self.account(), chat, "a batch was refused; retrying message by message: {e}");
                if let Ok(mut s) = self.one_by_one.lock() {
                    s.insert(chat.to_string());
                }
            }
            ErrorClass::Retryable | ErrorClass::Fatal => {
                let failures = {
                    let mut f = self.chat_failures.lock().unwrap_or_else(|p| p.into_inner());
                    let n = f.entry(chat.to_string()).or_default();
                    *n += 1;
                    *n
                };
                let mut wait = backoff(failures - 1, RETRY_BASE, RETRY_CAP);
                if let Some(ra) = e.retry_after() {
                    wait = wait.max(ra);
                }
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
    async fn prepare_chat(
        &self,
        chat: &str,
        rows: &[InboxRow],
        single: bool,
        mut conv: Conversation,
    ) -> Result<Option<Prepared>, CrmError> {
        let now = self.clock.now_ms();
        let events: Vec<(&InboxRow, Event)> = rows
            .iter()
            .map(|r| serde_json::from_str(&r.payload).map(|e| (r, e)))
            .collect::<Result<_, _>>()
            .map_err(|e| CrmError::Rejected { status: 0, detail: format!("stored event does not parse: {e}") })?;
        let first_message = events.iter().find_map(|(_, e)| match e {
            Event::Message(m) => Some(m),
            _ => None,
        });
        if conv.lead_id.is_none() {
            let Some(m) = first_message else {
                // Deletions or statuses of a chat the CRM never saw: nothing to write.
                let done: Vec<(i64, String)> = rows.iter().map(|r| (r.seq, "skipped".to_string())).collect();
                self.store.inbox_done(&done, now).await.map_err(db)?;
                return Ok(None);
            };
            let person = self.person(m);
            let contact = self.crm.find_or_create_contact(&person, &self.s.policy.leads.deduplicate_by).await?;
            let lead = self
                .crm
                .find_or_create_lead(
                    &contact,
                    &LeadRequest {
                        name: self
                            .s
                            .policy
                            .leads
                            .name_template
                            .replace("{name}", &person.name)
                            .replace("{channel}", self.s.channel.label()),
                        pipeline_id: self.s.pipeline_id,
                        status_id: self.s.status_id,
                        responsible_user_id: self.assigner.next(),
                        tags: std::iter::once(self.s.channel.label().to_string())
                            .chain(self.s.policy.leads.tags.iter().cloned())
                            .collect(),
                        reuse_open: self.s.policy.leads.reuse_open_lead,
                    },
                )
                .await?;
            conv.contact_id = Some(contact.id);
            conv.lead_id = Some(lead.id);
            self.store.put_conversation(self.account(), chat, &self.s.crm_key, &conv, now).await.map_err(db)?;
        }
        let lead_id = conv.lead_id.unwrap_or_default();
        let notes: Vec<(i64, NoteRequest)> =
            events.iter().map(|(r, e)| (r.seq, self.note(chat, &r.event_key, e))).collect();
        // Rows whose write may already have happened: look for their markers first.
        let mut done: Vec<(i64, String)> = Vec::new();
        let in_doubt: Vec<&(i64, NoteRequest)> =
            notes.iter().filter(|(seq, _)| rows.iter().any(|r| r.seq == *seq && r.attempts > 0)).collect();
        if !in_doubt.is_empty() {
            let since = rows.iter().filter_map(|r| r.attempt_started_ms).min().unwrap_or(now) / 1000 - 5;
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
            // Imported history leaves no one waiting for an answer.
            first_message_at: events.iter().find_map(|(_, e)| match e {
                Event::Message(m) if !m.history => Some(m.sent_at_ms),
                _ => None,
            }),
            last_message_at: events
                .iter()
                .filter_map(|(_, e)| match e {
                    Event::Message(m) => Some(m.sent_at_ms),
                    _ => None,
                })
                .max(),
            conv,
            lead_id,
            done,
            todo,
        }))
    }

    /// Writes the notes of prepared chats in one request (or as few as the CRM
    /// allows) and records the outcome per chat.
    async fn write_notes(&self, chunk: Vec<Prepared>) {
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
    async fn finish_chat(&self, mut p: Prepared, written: i64) -> Result<(), CrmError> {
        let label = Metrics::label(self.account());
        for (row, at) in p.rows.iter().zip(&p.sent_at) {
            self.metrics.messages_in.get_or_create(&label).inc();
            self.metrics.lag_seconds.get_or_create(&label).observe((written - at).max(0) as f64 / 1000.0);
            let crm_ref = p.done.iter().find(|(seq, _)| *seq == row.seq).map(|(_, r)| r.as_str()).unwrap_or_default();
            self.trace_message(&p.chat, row, *at, crm_ref, written);
        }
        // The customer now waits for an answer (from their first unanswered message).
        if p.conv.unanswered_since_ms.is_none()
            && let Some(first) = p.first_message_at
        {
            p.conv.unanswered_since_ms = Some(first.min(written));
            self.store
                .put_conversation(self.account(), &p.chat, &self.s.crm_key, &p.conv, written)
                .await
                .map_err(db)?;
        }
        // A manager's reply on this lead goes to the chat that wrote last.
        if let Some(at) = p.last_message_at {
            self.store.customer_wrote(self.account(), &p.chat, at).await.map_err(db)?;
        }
        Ok(())
    }

    /// One trace per message: a span from the messenger event to the CRM write,
    /// named by the message's correlation id (also in the CRM note's marker and in
    /// the logs). A no-op unless OTLP export is configured.
    fn trace_message(&self, chat: &str, row: &InboxRow, event_ms: i64, crm_ref: &str, written_ms: i64) {
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

    fn person(&self, m: &Message) -> Person {
        let mut p = Person { name: m.sender.name.clone(), phone: m.sender.phone.clone(), ..Person::default() };
        match self.s.channel {
            Channel::Telegram => {
                p.telegram_user_id = m.sender.id.parse().ok();
                p.telegram_username = m.sender.username.clone();
            }
            Channel::Whatsapp => p.whatsapp_id = Some(m.sender.id.clone()),
        }
        p
    }

    fn note(&self, chat: &str, key: &str, event: &Event) -> NoteRequest {
        let marker = format!("[ref {}:{chat}:{key}]", short(self.account()));
        let body = match event {
            Event::Message(m) => {
                let who = match &m.sender.username {
                    Some(u) => format!("{} (@{u})", m.sender.name),
                    None => m.sender.name.clone(),
                };
                let place = m.chat_title.as_ref().map(|t| format!(" in {t}")).unwrap_or_default();
                let edited = if m.edited { " (edited)" } else { "" };
                format!("{} · {who}{place}{edited}:\n{}", self.s.channel.label(), m.summary())
            }
            Event::Deleted { message_id, .. } => {
                format!("{} · the customer deleted message {message_id}", self.s.channel.label())
            }
            Event::Status { message_id, status, .. } => {
                format!("{} · message {message_id}: {status}", self.s.channel.label())
            }
        };
        NoteRequest { text: format!("{body}\n{marker}"), marker }
    }

    // ---- replies -----------------------------------------------------------

    /// Turns webhook rows from the gateway into outbox rows.
    async fn events_pass(&self) -> Result<bool, PassError> {
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

    async fn handle_note_event(&self, payload: &str) -> Result<(), CrmError> {
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
    async fn queue_reply(&self, reply: &crmessenger_crm::Reply) -> Result<bool, crate::store::StoreError> {
        let Some((account, chat)) = self.store.chat_of_lead(&self.s.crm_key, reply.lead_id).await? else {
            return Ok(false);
        };
        let new = NewReply { source_id: &reply.source_id, chat_id: &chat, text: &reply.text, ..Default::default() };
        let added = self.store.outbox_add(&account, &new, self.clock.now_ms()).await?;
        if added {
            self.store.notify(&account).await?;
        }
        Ok(added)
    }

    /// Polls the binding's notes for replies while this connector holds the
    /// binding's polling duty; tries to take the duty every interval, so another
    /// connector's stop hands polling over within one interval.
    async fn poll_loop(self: Arc<Self>, duties: Duties, every: Duration, stop: watch::Receiver<bool>) {
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
    async fn poll_once(&self) {
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
    async fn webhook_loop(self: Arc<Self>, duties: Duties, stop: watch::Receiver<bool>) {
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

    /// Sends what is due in the outbox. Returns whether anything was done.
    async fn outbound_pass(&self) -> Result<bool, PassError> {
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
            let outgoing = Outgoing {
                chat_id: row.chat_id.clone(),
                text: row.text.clone(),
                random_id: row.random_id,
                media: row.media.as_deref().and_then(|m| serde_json::from_str(m).ok()),
            };
            let result = async {
                if row.attempts > 0
                    && let Some(sent) = self.messenger.find_sent(&row.chat_id, row.random_id).await?
                {
                    return Ok(sent);
                }
                self.store.outbox_started(row.seq).await.map_err(|e| MessengerError::Unavailable(e.to_string()))?;
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
                    self.store.outbox_retry(row.seq, until, &format!("account restricted: {why}")).await?;
                    return Ok(worked);
                }
                Err(e) => {
                    let wait = match &e {
                        MessengerError::FloodWait(d) => {
                            let until = now + d.as_millis() as i64;
                            self.state.update(|s| s.sending_paused_until_ms = Some(until));
                            *d
                        }
                        _ => backoff(row.attempts.clamp(0, 10) as u32, RETRY_BASE, RETRY_CAP),
                    };
                    tracing::warn!(account = self.account(), chat = row.chat_id, ?wait, "send failed, retrying: {e}");
                    self.store.outbox_retry(row.seq, now + wait.as_millis() as i64, &e.to_string()).await?;
                    blocked.insert(row.chat_id.clone());
                }
            }
        }
        Ok(worked)
    }

    /// A reply went out: the conversation is answered; its escalation task is done.
    async fn answered(&self, chat: &str) {
        let Ok(Some(mut conv)) = self.store.conversation(self.account(), chat).await else { return };
        if let Some(task) = conv.task_id
            && let Err(e) = self.crm.complete_task(task, "answered").await
        {
            tracing::warn!(account = self.account(), task, "could not complete the escalation task: {e}");
            return;
        }
        conv.task_id = None;
        conv.unanswered_since_ms = None;
        if let Err(e) =
            self.store.put_conversation(self.account(), chat, &self.s.crm_key, &conv, self.clock.now_ms()).await
        {
            self.store_failed("recording an answered conversation", &e);
        }
    }

    // ---- escalation --------------------------------------------------------

    async fn escalation_loop(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let esc = self.s.policy.escalation.clone();
        let after = crmessenger_api::common::parse_duration(&esc.after);
        let deadline = crmessenger_api::common::parse_duration(&esc.deadline).unwrap_or(Duration::from_secs(3600));
        let (true, Some(after)) = (esc.enabled, after) else { return };
        while !*stop.borrow() {
            let now = self.clock.now_ms();
            match self.store.unanswered(self.account(), now - after.as_millis() as i64).await {
                Ok(list) => {
                    for (chat, mut conv) in list {
                        let Some(lead_id) = conv.lead_id else { continue };
                        let task = TaskRequest {
                            lead_id,
                            text: esc.task_text.clone(),
                            complete_till: (now + deadline.as_millis() as i64) / 1000,
                            responsible_user_id: None,
                        };
                        match self.crm.add_task(&task).await {
                            Ok(t) => {
                                conv.task_id = Some(t.id);
                                if let Err(e) = self
                                    .store
                                    .put_conversation(self.account(), &chat, &self.s.crm_key, &conv, now)
                                    .await
                                {
                                    self.store_failed("recording an escalation task", &e);
                                }
                            }
                            Err(e) => tracing::warn!(account = self.account(), chat, "escalation task failed: {e}"),
                        }
                    }
                }
                Err(e) => tracing::warn!("escalation: {e}"),
            }
            self.metrics.escalation_checks.get_or_create(&Metrics::label(self.account())).inc();
            self.clock.sleep(Duration::from_secs(5)).await;
        }
    }

    /// What the bridge was built with.
    pub fn settings(&self) -> &BridgeSettings {
        &self.s
    }
}

fn sent_at(e: &Event, r: &InboxRow) -> i64 {
    match e {
        Event::Message(m) if m.sent_at_ms > 0 => m.sent_at_ms,
        _ => r.received_ms,
    }
}

fn db(e: crate::store::StoreError) -> CrmError {
    CrmError::Unavailable(format!("local database: {e}"))
}

fn store_err(e: crate::store::StoreError) -> MessengerError {
    MessengerError::Unavailable(format!("local database: {e}"))
}

/// Whether the policy's chat filter lets `m` through: deny wins, then allow (when
/// set, only listed chats pass), then the chat kind.
pub fn chat_allowed(filter: &ChatFilter, m: &Message) -> bool {
    let names: Vec<String> =
        [Some(m.chat_id.clone()), m.sender.username.clone(), m.sender.username.as_ref().map(|u| format!("@{u}"))]
            .into_iter()
            .flatten()
            .collect();
    let listed = |list: &[String]| list.iter().any(|e| names.iter().any(|n| n.eq_ignore_ascii_case(e)));
    if listed(&filter.deny) {
        return false;
    }
    if !filter.allow.is_empty() {
        return listed(&filter.allow);
    }
    match m.chat_kind {
        crate::messenger::ChatKind::Private => filter.private,
        crate::messenger::ChatKind::Group => filter.groups,
        crate::messenger::ChatKind::Channel => filter.channels,
    }
}
