//! Per-account Prometheus metrics of the connector.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// The account label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    /// `namespace/name`.
    pub account: String,
}

/// An account and what the messenger said of a reply.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// `namespace/name`.
    pub account: String,
    /// `delivered`, `read` or `failed`.
    pub status: String,
}

/// An account and its messenger, for joining per-account series by channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    /// `namespace/name`.
    pub account: String,
    /// `telegram` or `whatsapp`.
    pub channel: String,
}

/// The connector's metrics (one process may serve many accounts in standalone mode).
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Customer messages delivered to the CRM.
    pub messages_in: Family<AccountLabel, Counter>,
    /// Replies delivered to the messenger.
    pub messages_out: Family<AccountLabel, Counter>,
    /// Replies whose delivery moved forward (the messenger said delivered, read or
    /// failed), by status.
    pub reply_statuses: Family<StatusLabel, Counter>,
    /// Inbox and outbox rows not yet delivered.
    pub undelivered: Family<AccountLabel, Gauge>,
    /// Age in seconds of the oldest undelivered customer message.
    pub oldest_undelivered_seconds: Family<AccountLabel, Gauge<f64, AtomicU64>>,
    /// Dead letters waiting for `replay`.
    pub dead_letters: Family<AccountLabel, Gauge>,
    /// Seconds from the messenger event to the CRM write.
    pub lag_seconds: Family<AccountLabel, Histogram>,
    /// Age in seconds of the oldest unanswered customer message.
    pub unanswered_seconds: Family<AccountLabel, Gauge<f64, AtomicU64>>,
    /// 1 while logged in to the messenger.
    pub logged_in: Family<AccountLabel, Gauge>,
    /// 1 while the messenger connection works.
    pub connected: Family<AccountLabel, Gauge>,
    /// 1 while the CRM circuit breaker is open (deliveries held back).
    pub crm_circuit_open: Family<AccountLabel, Gauge>,
    /// CRM calls that failed, by account.
    pub crm_errors: Family<AccountLabel, Counter>,
    /// Storage writes that failed (the work is retried; a growing count needs a look).
    pub store_errors: Family<AccountLabel, Counter>,
    /// 1 per account, labelled with its channel (`telegram`, `whatsapp`): join
    /// other series on `account` to sum them by channel.
    pub account_info: Family<ChannelLabel, Gauge>,
    /// Leads this connector created (or adopted from amoCRM's Unsorted).
    pub leads_created: Family<AccountLabel, Counter>,
    /// Conversations whose customer waits for an answer.
    pub conversations_waiting: Family<AccountLabel, Gauge>,
    /// Seconds from a customer's first unanswered message to the answer.
    pub first_answer_seconds: Family<AccountLabel, Histogram>,
    /// Escalation checks completed (each looks for conversations past the
    /// policy's delay); a count that stops growing means escalation is stuck.
    pub escalation_checks: Family<AccountLabel, Counter>,
}

fn lag_histogram() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0])
}

fn answer_histogram() -> Histogram {
    Histogram::new([30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0])
}

impl Default for Metrics {
    fn default() -> Self {
        let mut r = Registry::with_prefix("crmessenger_connector");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            messages_in: Family::default(),
            messages_out: Family::default(),
            reply_statuses: Family::default(),
            undelivered: Family::default(),
            oldest_undelivered_seconds: Family::default(),
            dead_letters: Family::default(),
            lag_seconds: Family::new_with_constructor(lag_histogram),
            unanswered_seconds: Family::default(),
            logged_in: Family::default(),
            connected: Family::default(),
            crm_circuit_open: Family::default(),
            crm_errors: Family::default(),
            store_errors: Family::default(),
            escalation_checks: Family::default(),
            account_info: Family::default(),
            leads_created: Family::default(),
            conversations_waiting: Family::default(),
            first_answer_seconds: Family::new_with_constructor(answer_histogram),
        };
        r.register("messages_in", "Customer messages delivered to the CRM", m.messages_in.clone());
        r.register("messages_out", "Replies delivered to the messenger", m.messages_out.clone());
        r.register(
            "reply_statuses",
            "Replies the messenger reported delivered, read or failed",
            m.reply_statuses.clone(),
        );
        r.register("undelivered", "Inbox and outbox rows not yet delivered", m.undelivered.clone());
        r.register(
            "oldest_undelivered_seconds",
            "Age of the oldest undelivered customer message",
            m.oldest_undelivered_seconds.clone(),
        );
        r.register("dead_letters", "Dead letters waiting for replay", m.dead_letters.clone());
        r.register("lag_seconds", "Seconds from messenger event to CRM write", m.lag_seconds.clone());
        r.register("unanswered_seconds", "Age of the oldest unanswered customer message", m.unanswered_seconds.clone());
        r.register("logged_in", "1 while logged in to the messenger", m.logged_in.clone());
        r.register("messenger_connected", "1 while the messenger connection works", m.connected.clone());
        r.register("crm_circuit_open", "1 while CRM deliveries are held back", m.crm_circuit_open.clone());
        r.register("store_errors", "Storage writes that failed", m.store_errors.clone());
        r.register("crm_errors", "Failed CRM calls", m.crm_errors.clone());
        r.register("escalation_checks", "Escalation checks completed", m.escalation_checks.clone());
        r.register("account_info", "1 per account, labelled with its channel", m.account_info.clone());
        r.register("leads_created", "Leads created or adopted from Unsorted", m.leads_created.clone());
        r.register(
            "conversations_waiting",
            "Conversations whose customer waits for an answer",
            m.conversations_waiting.clone(),
        );
        r.register(
            "first_answer_seconds",
            "Seconds from a customer's first unanswered message to the answer",
            m.first_answer_seconds.clone(),
        );
        *m.registry.lock().unwrap_or_else(|e| e.into_inner()) = r;
        m
    }
}

impl Metrics {
    /// The label of `account`.
    pub fn label(account: &str) -> AccountLabel {
        AccountLabel { account: account.to_string() }
    }

    /// The label of `account` and a reply `status` (`failed…` counts as `failed`).
    pub fn status_label(account: &str, status: &str) -> StatusLabel {
        let status = if status.starts_with("failed") { "failed" } else { status };
        StatusLabel { account: account.to_string(), status: status.to_string() }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}
