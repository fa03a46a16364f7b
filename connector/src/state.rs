//! What a connector knows about its account right now: login progress, the
//! messenger connection, the CRM's health. The bridge writes it; the status
//! reporter, the admin endpoints and the metrics read it.

use crate::messenger::LoginState;
use serde::Serialize;
use std::sync::Mutex;
use tokio::sync::watch;

/// A snapshot of an account's state.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountState {
    /// `namespace/name`.
    pub account: String,
    /// Login progress (`None` until first asked).
    pub login: Option<LoginState>,
    /// Whether the messenger connection works.
    pub messenger_connected: bool,
    /// Why it does not, when it does not.
    pub messenger_error: Option<String>,
    /// Whether the last CRM call succeeded.
    pub crm_ok: bool,
    /// The last CRM error.
    pub crm_error: Option<String>,
    /// Whether this connector holds the account's lock (only then does it work).
    pub holds_lock: bool,
    /// Why it is waiting, while it is.
    pub waiting: Option<String>,
    /// Why the last session ended, until the account signs in again.
    pub logout_reason: Option<String>,
    /// The messenger asked to wait (flood wait): no sends before this (Unix ms).
    pub sending_paused_until_ms: Option<i64>,
    /// The messenger restricted the account (spam limits): why, and what the
    /// owner can do. Replies are held until a later probe send succeeds.
    pub sending_restricted: Option<String>,
    /// Settings of the policy that cannot apply to this account, each with why
    /// (`backfill: …` for a Telegram bot, which has no history to import).
    pub not_applied: Vec<String>,
    /// The queues, as last counted (`None` until the bridge has counted them).
    pub queues: Option<Queues>,
}

/// The account's queues for its status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Queues {
    /// Customer messages not yet in the CRM.
    pub inbound_pending: i64,
    /// Replies not yet sent.
    pub outbound_pending: i64,
    /// Dead letters.
    pub dead_letters: i64,
    /// Why the oldest dead letter failed.
    pub oldest_dead_letter_reason: Option<String>,
    /// When the last customer message reached the CRM (Unix ms).
    pub last_inbound_ms: Option<i64>,
    /// When the last reply was sent (Unix ms).
    pub last_outbound_ms: Option<i64>,
}

/// Shared, observable account state.
#[derive(Debug)]
pub struct StateCell {
    tx: watch::Sender<AccountState>,
    lock: Mutex<()>,
}

impl StateCell {
    /// A fresh state for `account`.
    pub fn new(account: &str) -> Self {
        let (tx, _) = watch::channel(AccountState {
            account: account.to_string(),
            login: None,
            messenger_connected: false,
            messenger_error: None,
            crm_ok: true,
            crm_error: None,
            holds_lock: false,
            waiting: None,
            logout_reason: None,
            sending_paused_until_ms: None,
            sending_restricted: None,
            not_applied: Vec::new(),
            queues: None,
        });
        Self { tx, lock: Mutex::new(()) }
    }

    /// The current state.
    pub fn get(&self) -> AccountState {
        self.tx.borrow().clone()
    }

    /// Changes the state (watchers are woken only on a real change).
    pub fn update(&self, f: impl FnOnce(&mut AccountState)) {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.tx.send_if_modified(|s| {
            let before = s.clone();
            f(s);
            *s != before
        });
    }

    /// A receiver woken on every change.
    pub fn subscribe(&self) -> watch::Receiver<AccountState> {
        self.tx.subscribe()
    }
}
