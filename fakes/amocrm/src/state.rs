//! The fake's mutable state and the handle every request handler shares.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use crate::FakeConfig;
use crate::account::User;
use crate::limits::{Faults, Limits};
use crate::model::{
    Chat, ChatMessage, Contact, DriveFile, HookDelivery, Lead, Note, RequestRecord, Snapshot, Task, Unsorted,
    WebhookDelivery, WebhookSubscription,
};
use crmessenger_testkit::TestClock;

/// An issued access token.
#[derive(Clone, Debug)]
pub(crate) struct AccessToken {
    /// Fake-clock ms after which it is rejected.
    pub expires_at_ms: i64,
}

/// An issued refresh token.
#[derive(Clone, Debug)]
pub(crate) struct RefreshToken {
    /// Spent by a refresh.
    pub spent: bool,
    /// Fake-clock ms after which it is rejected (3 months).
    pub expires_at_ms: i64,
}

/// An issued authorization code.
#[derive(Clone, Debug)]
pub(crate) struct AuthCode {
    /// Exchanged already.
    pub used: bool,
    /// Fake-clock ms after which it is rejected (20 min).
    pub expires_at_ms: i64,
}

/// A REST webhook delivery waiting for its due time.
#[derive(Clone, Debug)]
pub(crate) struct PendingDelivery {
    /// Subscription ID.
    pub subscription_id: i64,
    /// Destination.
    pub destination: String,
    /// Event name.
    pub event: String,
    /// Form body.
    pub body: String,
    /// Attempt number it will be.
    pub attempt: u32,
    /// Fake-clock ms when due.
    pub due_ms: i64,
}

/// Everything that changes.
#[derive(Default)]
pub(crate) struct State {
    pub contacts: BTreeMap<i64, Contact>,
    pub leads: BTreeMap<i64, Lead>,
    pub notes: BTreeMap<i64, Note>,
    pub tasks: BTreeMap<i64, Task>,
    pub chats: Vec<Chat>,
    pub messages: Vec<ChatMessage>,
    pub unsorted: Vec<Unsorted>,
    pub sources: Vec<crate::model::Source>,
    pub notifications: u32,
    pub webhooks: Vec<WebhookSubscription>,
    /// Fake-clock ms of invalid replies, per subscription ID.
    pub webhook_invalid: HashMap<i64, Vec<i64>>,
    pub webhook_deliveries: Vec<WebhookDelivery>,
    pub pending_webhooks: Vec<PendingDelivery>,
    /// Fake-clock ms of the last sweep that found no webhook due and none in flight.
    pub webhooks_idle_ms: i64,
    pub chat_hook_deliveries: Vec<HookDelivery>,
    pub requests: Vec<RequestRecord>,
    pub refreshes: u32,
    pub access_tokens: HashMap<String, AccessToken>,
    pub refresh_tokens: HashMap<String, RefreshToken>,
    pub codes: HashMap<String, AuthCode>,
    pub connected_scopes: BTreeSet<String>,
    /// amojo user IDs of chat participants, by the integration's user ID.
    pub chat_users: HashMap<String, String>,
    pub tags: HashMap<String, i64>,
    /// The file service's files, by UUID.
    pub files: BTreeMap<String, DriveFile>,
    /// Open upload sessions, by ID.
    pub upload_sessions: BTreeMap<i64, crate::drive::Session>,
    next_id: i64,
}

impl State {
    /// A fresh ID, unique across entity kinds.
    pub fn next_id(&mut self) -> i64 {
        if self.next_id == 0 {
            self.next_id = 2_000_000;
        }
        self.next_id += 1;
        self.next_id
    }

    /// The ID of tag `name`, creating it.
    pub fn tag_id(&mut self, name: &str) -> i64 {
        if let Some(id) = self.tags.get(name) {
            return *id;
        }
        let id = self.next_id();
        self.tags.insert(name.to_string(), id);
        id
    }

    /// The amojo ID of the integration's chat user `client_id`, creating it.
    pub fn chat_user_id(&mut self, client_id: &str) -> String {
        self.chat_users.entry(client_id.to_string()).or_insert_with(|| uuid::Uuid::new_v4().to_string()).clone()
    }

    /// Links `contact_id` to `lead_id` both ways.
    pub fn link(&mut self, lead_id: i64, contact_id: i64) {
        if let Some(lead) = self.leads.get_mut(&lead_id)
            && !lead.contact_ids.contains(&contact_id)
        {
            lead.contact_ids.push(contact_id);
        }
        if let Some(contact) = self.contacts.get_mut(&contact_id)
            && !contact.lead_ids.contains(&lead_id)
        {
            contact.lead_ids.push(lead_id);
        }
    }

    /// Everything, cloned.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            contacts: self.contacts.values().cloned().collect(),
            files: self.files.values().cloned().collect(),
            leads: self.leads.values().cloned().collect(),
            notes: self.notes.values().cloned().collect(),
            tasks: self.tasks.values().cloned().collect(),
            chats: self.chats.clone(),
            chat_messages: self.messages.clone(),
            unsorted: self.unsorted.clone(),
            sources: self.sources.clone(),
            notifications: self.notifications,
            webhooks: self.webhooks.clone(),
            webhook_deliveries: self.webhook_deliveries.clone(),
            chat_hook_deliveries: self.chat_hook_deliveries.clone(),
            requests: self.requests.clone(),
            refreshes: self.refreshes,
            connected_scopes: self.connected_scopes.iter().cloned().collect(),
        }
    }
}

/// What every handler shares.
pub(crate) struct Shared {
    pub config: FakeConfig,
    pub clock: TestClock,
    pub started: Instant,
    pub base_url: String,
    pub users: Vec<User>,
    pub http: reqwest::Client,
    /// Users an admin deactivated (`rights.is_active: false`).
    inactive_users: Mutex<std::collections::HashSet<i64>>,
    /// The account's contact custom fields.
    contact_fields: Mutex<Vec<crate::account::Field>>,
    state: Mutex<State>,
    limits: Mutex<Limits>,
    faults: Mutex<Faults>,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Builds the shared handle.
    pub fn new(
        config: FakeConfig,
        clock: TestClock,
        base_url: String,
        users: Vec<User>,
        http: reqwest::Client,
    ) -> Self {
        let mut fields = crate::account::BUILT_IN_FIELDS.to_vec();
        if config.identity_fields {
            fields.extend(crate::account::IDENTITY_FIELDS);
        }
        Self {
            config,
            clock,
            started: Instant::now(),
            base_url,
            users,
            http,
            inactive_users: Mutex::default(),
            contact_fields: Mutex::new(fields),
            state: Mutex::new(State::default()),
            limits: Mutex::new(Limits::default()),
            faults: Mutex::new(Faults::default()),
        }
    }

    /// Whether user `id` is active (not deactivated).
    pub fn user_active(&self, id: i64) -> bool {
        !relock(&self.inactive_users).contains(&id)
    }

    /// The account's contact custom fields.
    pub fn contact_fields(&self) -> Vec<crate::account::Field> {
        relock(&self.contact_fields).clone()
    }

    /// Creates a text field of contacts; refused when one with `code` exists.
    pub fn create_contact_field(&self, name: &str, code: Option<&str>) -> Result<crate::account::Field, String> {
        let mut fields = relock(&self.contact_fields);
        if let Some(c) = code
            && fields.iter().any(|f| f.code == Some(c))
        {
            return Err(format!("A field with code {c} already exists"));
        }
        let id = crate::account::CREATED_FIELD_IDS
            + fields.iter().filter(|f| f.id >= crate::account::CREATED_FIELD_IDS).count() as i64;
        // The fake's field table is 'static; an account creates a handful of fields.
        let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
        let field = crate::account::Field { id, name: leak(name), code: code.map(leak), kind: "text", enums: &[] };
        fields.push(field);
        Ok(field)
    }

    /// Deactivates user `id`, as an admin does when someone leaves.
    pub fn deactivate_user(&self, id: i64) {
        relock(&self.inactive_users).insert(id);
    }

    /// The state, locked. Never hold it across an await.
    pub fn state(&self) -> MutexGuard<'_, State> {
        relock(&self.state)
    }

    /// The rate limiter, locked.
    pub fn limits(&self) -> MutexGuard<'_, Limits> {
        relock(&self.limits)
    }

    /// The injected faults, locked.
    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        relock(&self.faults)
    }

    /// The current time in Unix seconds on the fake clock.
    pub fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    /// An absolute URL on this server for `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }
}
