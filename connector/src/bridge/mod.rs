//! The bridge: messenger events → inbox → CRM, and CRM replies → outbox →
//! messenger, for one account.
//!
//! - **Ingest** (`intake`): events are written to the inbox together with the messenger
//!   cursor after them, in one transaction.
//! - **Inbound** (`inbound`): pending inbox rows are grouped by chat, in arrival order; a chat
//!   whose head is waiting for a retry waits as a whole (order is kept per chat),
//!   other chats go on. Contact and lead are resolved once per chat and remembered;
//!   messages become lead notes, batched. A row whose write may have happened (a
//!   previous attempt started) is first looked up by its marker in the CRM.
//! - Errors: retryable ones back off per chat (exponential, jittered) and count
//!   towards the circuit breaker, which holds all CRM work back during an outage;
//!   permanent ones dead-letter the one message (a failing batch is retried
//!   message by message to find it); fatal ones (credentials) hold everything
//!   back and show in status.
//! - **Replies** (`replies`) and **Outbound** (`outbound`): replies (from the gateway's webhook rows or from polling) go
//!   to the outbox, keyed by their CRM id; each send's
//!   `random_id` is stored before the first attempt and an interrupted send is
//!   looked up before it is retried.
//! - **Escalation** (`escalation`): one CRM task per conversation unanswered for longer than the
//!   policy allows; completed when a reply goes out.
//! - **Per-binding duties** (reply polling, keeping the reply webhook
//!   subscribed): every connector of a binding runs the loop, and each interval
//!   only the holder of the duty's lock does the work
//!   ([`crate::store::lock::Duties`]); when the holder stops, another connector
//!   takes over within one interval.
//! - A storage write that fails is logged and counted
//!   (`crmessenger_connector_store_errors_total`); the work it recorded is
//!   retried, never dropped.
//! - History import (`backfill`), the Chats API path (`chats`), the retry and
//!   breaker arithmetic (`retry`). This module holds the bridge, its settings and
//!   the loop that runs the passes.

mod backfill;
pub mod chats;
mod context;
mod escalation;
mod inbound;
mod intake;
mod lead;
mod outbound;
mod own;
pub mod plan;
mod replies;
pub mod retry;

use crate::messenger::{Event, Message, Messenger, MessengerError, Outgoing};
use crate::metrics::{ChannelLabel, Metrics};
use crate::state::{Queues, StateCell};
use crate::store::lock::{AccountLock, Duties};
use crate::store::{Conversation, DeliveryUpdate, InboxRow, NewReply, Store, StoreError};
use crmessenger_api::policy::SyncPolicySpec;
use crmessenger_crm::assign::Assigner;
use crmessenger_crm::clock::Clock;
use crmessenger_crm::{Channel, Crm, CrmError, ErrorClass, NoteRequest, ReplyCursor, TaskRequest};
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
    /// Who gets new leads when every user they would go to is deactivated.
    pub fallback_user_id: Option<i64>,
    /// How replies are noticed.
    pub replies: ReplySource,
    /// Messages go to the CRM's chat (Chats API) instead of lead notes.
    pub chats: bool,
    /// The gateway's public URL, for attachments in the CRM's chat.
    pub media_url: Option<String>,
    /// The region phone numbers without a country code are read in (ISO 3166-1
    /// alpha-2, the binding's `phoneRegion`).
    pub phone_region: String,
    /// The words of the binding's language.
    pub texts: &'static crate::texts::Texts,
    /// The account's lead source (external id) new leads name, when the CRM has it.
    pub lead_source: Option<String>,
    /// Otherwise a tag new leads carry (the account's name), when sources are refused.
    pub source_tag: Option<String>,
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
    /// The CRM's active users and when they were read (Unix ms).
    active_users: tokio::sync::Mutex<Option<(i64, Vec<i64>)>>,
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
    /// The messages among the rows, in order (who waits for an answer, and which
    /// chat a manager's reply goes to).
    turns: Vec<plan::Turn>,
}

/// amoCRM's entity limit per request: the notes of one shared write.
const NOTES_PER_REQUEST: usize = 250;
/// How long a stopping connector waits for the CRM calls in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(15);
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
        let assigner =
            Assigner::new(&settings.policy.assignment, &settings.responsible_user_ids, settings.fallback_user_id);
        let limits = &settings.policy.rate_limits;
        let send_rate = Mutex::new(SendRate::new(limits.messages_per_minute, limits.per_chat_per_minute));
        let channel = match settings.channel {
            Channel::Telegram => "telegram",
            Channel::Whatsapp => "whatsapp",
        };
        metrics
            .account_info
            .get_or_create(&ChannelLabel { account: settings.account.clone(), channel: channel.into() })
            .set(1);
        // Every series of the account from the start (counters at 0), so rates and
        // alerts see it before its first event.
        let label = Metrics::label(&settings.account);
        for counter in [
            &metrics.messages_in,
            &metrics.messages_out,
            &metrics.crm_errors,
            &metrics.store_errors,
            &metrics.leads_created,
        ] {
            let _ = counter.get_or_create(&label);
        }
        for status in ["delivered", "read", "failed"] {
            let _ = metrics.reply_statuses.get_or_create(&Metrics::status_label(&settings.account, status));
        }
        let _ = metrics.lag_seconds.get_or_create(&label);
        let _ = metrics.first_answer_seconds.get_or_create(&label);
        Self {
            send_rate,
            backfilled: Default::default(),
            webhook_url: Default::default(),
            restricted_until_ms: Default::default(),
            active_users: Default::default(),
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
        if self.s.policy.backfill.days > 0 {
            others.push(tokio::spawn(self.clone().backfill_loop(stop.clone())));
        }
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
        self.metrics.conversations_waiting.get_or_create(&label).set(c.waiting_conversations);
        let dead = c.inbox_dead + c.outbox_dead;
        // The reason is read only while there are dead letters (and then kept
        // while their number holds): the common case costs no query.
        let known =
            self.state.get().queues.filter(|q| q.dead_letters == dead).and_then(|q| q.oldest_dead_letter_reason);
        let reason = match (dead, known) {
            (0, _) => None,
            (_, Some(r)) => Some(r),
            _ => self.store.oldest_dead_reason(self.account()).await.ok().flatten(),
        };
        let queues = Queues {
            inbound_pending: c.inbox_pending,
            outbound_pending: c.outbox_pending,
            dead_letters: dead,
            oldest_dead_letter_reason: reason.map(|r| r.chars().take(1000).collect()),
            last_inbound_ms: c.last_inbound_ms,
            last_outbound_ms: c.last_outbound_ms,
        };
        self.state.update(|s| s.queues = Some(queues));
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
