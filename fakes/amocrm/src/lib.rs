//! A protocol-faithful fake of amoCRM: REST API v4 (`/api/v4/...`), its OAuth
//! endpoint (`/oauth2/access_token`) and the Chats API (`/v2/origin/custom/...`),
//! all on one HTTP or HTTPS listener, enforcing the documented contract (rate
//! limits, validation errors, single-use tokens, signed chat requests, webhook
//! retry schedules) so that a real client can be tested against it.
//!
//! Tests drive it in-process through [`FakeAmo`]; the `fake-amocrm` binary serves
//! it for demos, with a `/_fake/...` control API.

// Handlers return ready-made error responses in `Err`; they are not on a hot path.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

mod account;
mod chats;
mod control;
mod drive;
mod hooks;
mod limits;
mod model;
mod oauth;
mod page;
mod respond;
mod rest;
mod server;
mod state;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use account::{
    FIRST_STAGE_ID, LOST_STATUS_ID, MAIN_PIPELINE_ID, SECOND_STAGE_ID, TOKEN_USER_ID, UNSORTED_STATUS_ID, WON_STATUS_ID,
};
pub use limits::{Fault, FaultKind};
pub use model::{
    Chat, ChatMessage, Contact, Direction, HookDelivery, Lead, Note, RequestRecord, Snapshot, Source, Task, TokenPair,
    Unsorted, WebhookDelivery, WebhookSubscription,
};

use crmessenger_testkit::TestClock;
use state::Shared;

/// A TLS serving identity (PEM).
#[derive(Clone, Debug)]
pub struct TlsIdentity {
    /// Certificate chain, leaf first.
    pub cert_pem: String,
    /// PKCS#8 (or PKCS#1/SEC1) private key.
    pub key_pem: String,
}

/// A Chats API channel, as support would register it.
#[derive(Clone, Debug)]
pub struct ChatsChannel {
    /// Channel UUID (the `{channel_id}` of `/connect`).
    pub channel_id: String,
    /// Channel secret: the HMAC-SHA1 key for requests and hooks.
    pub secret: String,
    /// Outgoing hook URL; ":scope_id" is replaced with the scope ID.
    pub hook_url: Option<String>,
    /// The channel bot's amojo ID.
    pub bot_id: String,
}

impl Default for ChatsChannel {
    fn default() -> Self {
        Self {
            channel_id: uuid::Uuid::new_v4().to_string(),
            secret: format!("{}{}", uuid::Uuid::new_v4().simple(), &uuid::Uuid::new_v4().simple().to_string()[..8]),
            hook_url: None,
            bot_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// How the fake account and server behave.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// `None`: plain HTTP; `Some`: HTTPS with this identity.
    pub tls: Option<TlsIdentity>,
    /// Account subdomain.
    pub subdomain: String,
    /// Account ID.
    pub account_id: i64,
    /// The account's Chats API ID (a uuid).
    pub amojo_id: String,
    /// The integration's client ID.
    pub client_id: String,
    /// The integration's secret.
    pub client_secret: String,
    /// The integration's redirect URI (must match exactly).
    pub redirect_uri: String,
    /// Access token lifetime (fake clock).
    pub access_token_ttl_secs: i64,
    /// REST requests admitted per second of the fake's clock.
    pub rate_limit_per_sec: u32,
    /// After this many 429s within 60 s (fake clock), every REST call gets 403 until reset.
    pub abuse_threshold: u32,
    /// The Chats API channel; `None` disables the Chats API.
    pub chats: Option<ChatsChannel>,
    /// De-duplicate inbound chat messages by msgid (amoCRM documents none).
    pub dedupe_chat_msgid: bool,
    /// A chat's customer message also makes an incoming (Unsorted) lead when the
    /// chat is linked to a contact that has no open lead, as accounts set to open
    /// a lead for every new conversation do. Off: only a chat without a contact
    /// gets one (amoCRM's documented behaviour).
    pub incoming_leads_for_contacts: bool,
    /// The account has text fields 201..203 for messenger identities, as if an
    /// administrator made them by hand. Off: only PHONE and EMAIL, until the
    /// custom fields API creates more.
    pub identity_fields: bool,
    /// The tokens belong to an administrator (the token user 1001 is one); off,
    /// the calls only an administrator may make (creating custom fields) get 403.
    pub token_is_admin: bool,
    /// The integration has an uploaded widget whose manifest lists the
    /// `lead_sources` location, which the Sources API requires. Off (the default,
    /// as for an integration without a widget): creating a source is refused.
    pub sources_widget: bool,
    /// Duplicate control on `/leads/complex` (reuses contacts, `merged: true`).
    pub duplicate_control: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        Self {
            tls: None,
            subdomain: "example".into(),
            account_id: 31_000_001,
            amojo_id: uuid::Uuid::new_v4().to_string(),
            client_id: "fake-client".into(),
            client_secret: "fake-secret".into(),
            redirect_uri: "https://example.test/oauth".into(),
            access_token_ttl_secs: 86_400,
            rate_limit_per_sec: 7,
            abuse_threshold: 20,
            chats: Some(ChatsChannel::default()),
            dedupe_chat_msgid: false,
            incoming_leads_for_contacts: false,
            identity_fields: true,
            token_is_admin: true,
            sources_widget: false,
            duplicate_control: false,
        }
    }
}

/// Where and how to start beyond [`FakeConfig`].
#[derive(Clone, Debug)]
pub struct StartOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Extra CA certificates (PEM) trusted when sending hooks to HTTPS receivers.
    pub hook_roots_pem: Vec<String>,
}

impl Default for StartOptions {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 0)), hook_roots_pem: Vec::new() }
    }
}

/// A running fake amoCRM. Dropping it stops the server and its background tasks.
pub struct FakeAmo {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeAmo {
    /// Starts on 127.0.0.1 with an OS-chosen port.
    pub async fn start(config: FakeConfig) -> anyhow::Result<FakeAmo> {
        Self::start_with(config, StartOptions::default()).await
    }

    /// Starts with explicit [`StartOptions`].
    pub async fn start_with(config: FakeConfig, options: StartOptions) -> anyhow::Result<FakeAmo> {
        let listener =
            TcpListener::bind(options.listen).await.with_context(|| format!("binding {}", options.listen))?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        let acceptor = match &config.tls {
            Some(identity) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(identity)?))),
            None => None,
        };
        let scheme = if acceptor.is_some() { "https" } else { "http" };
        let base_url = format!("{scheme}://{addr}");
        let http = tls::hook_client(&options.hook_roots_pem)?;
        let users = account::users(std::array::from_fn(|_| uuid::Uuid::new_v4().to_string()));
        let shared = Arc::new(Shared::new(config, TestClock::new(), base_url, users, http));
        let tasks = vec![
            tokio::spawn(server::serve(listener, acceptor, shared.clone())),
            tokio::spawn(hooks::run_webhooks(shared.clone())),
        ];
        Ok(FakeAmo { shared, addr, tasks })
    }

    /// `https://127.0.0.1:PORT` or `http://...`: REST, OAuth and the Chats API.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it runs with (including generated IDs and secrets).
    pub fn config(&self) -> &FakeConfig {
        &self.shared.config
    }

    /// The Chats API scope ID (`{channel_id}_{amojo_id}`), if a channel is configured.
    pub fn scope_id(&self) -> Option<String> {
        let cfg = &self.shared.config;
        cfg.chats.as_ref().map(|c| chats::scope_id(c, &cfg.amojo_id))
    }

    /// The amojo IDs of users 1001..=1003, in order.
    pub fn user_amojo_ids(&self) -> Vec<(i64, String)> {
        self.shared.users.iter().map(|u| (u.id, u.amojo_id.clone())).collect()
    }

    /// The injectable clock (clones share state).
    pub fn clock(&self) -> TestClock {
        self.shared.clock.clone()
    }

    /// An authorization code as if a user granted access: single use, 20 min (fake clock).
    pub fn issue_authorization_code(&self) -> String {
        oauth::issue_code(&self.shared, &mut self.shared.state())
    }

    /// A valid access + refresh pair without going through OAuth.
    pub fn issue_token_pair(&self) -> TokenPair {
        oauth::issue_pair(&self.shared, &mut self.shared.state())
    }

    /// The instant the fake started: what `Note::written_us` and
    /// `RequestRecord::real_ms` count from.
    pub fn started_at(&self) -> std::time::Instant {
        self.shared.started
    }

    /// Everything that exists, for assertions.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.state().snapshot()
    }

    /// Waits until the webhook scheduler has swept at or past the fake clock's
    /// current time with nothing due and nothing in flight: every REST webhook due
    /// by now has been delivered (and recorded), and none is late. The positive
    /// signal that "no retry came" can be judged on. Panics after 10 s (real time).
    pub async fn webhooks_settled(&self) {
        let now = self.shared.clock.now_ms();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.shared.state().webhooks_idle_ms < now {
            assert!(std::time::Instant::now() < deadline, "the webhook scheduler never settled");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Injects a fault.
    pub fn inject(&self, fault: Fault) {
        self.shared.faults().push(fault);
    }

    /// Ends every injected fault (an outage injected with a large `times`).
    pub fn clear_faults(&self) {
        self.shared.faults().clear();
    }

    /// A manager writes a common note on a lead (fires `note_lead` REST webhooks).
    pub fn add_manager_note(&self, lead_id: i64, user_id: i64, text: &str) -> i64 {
        control::add_manager_note(&self.shared, lead_id, user_id, text)
    }

    /// A manager changes a note's text, as amoCRM's editor does (`updated_at`
    /// moves); false when there is no such note.
    pub fn edit_note(&self, note_id: i64, text: &str) -> bool {
        control::edit_note(&self.shared, note_id, text)
    }

    /// A manager attaches a file to a lead (the file service, the lead's files and
    /// an attachment note by `user_id`); returns the note's ID and the file's UUID.
    pub fn add_manager_attachment(
        &self,
        lead_id: i64,
        user_id: i64,
        file_name: &str,
        mime_type: &str,
        bytes: &[u8],
    ) -> (i64, String) {
        control::add_manager_attachment(&self.shared, lead_id, user_id, file_name, mime_type, bytes)
    }

    /// A manager replies in a Chats conversation: stored in history and sent once
    /// as a signed outgoing hook; returns the amojo message ID. Hook failures are
    /// recorded in the snapshot, not returned; an unknown conversation or user is an error.
    pub async fn manager_chat_reply(&self, conversation_id: &str, user_id: i64, text: &str) -> anyhow::Result<String> {
        chats::manager_reply(&self.shared, conversation_id, user_id, text).await
    }

    /// What another channel of the account does for a customer who writes there
    /// first: a contact (with `phone`) and an incoming lead in Unsorted. Returns
    /// the contact's and the lead's ids.
    pub fn add_incoming_lead(&self, name: &str, phone: &str) -> (i64, i64) {
        control::add_incoming_lead(&self.shared, name, phone)
    }

    /// The contact custom fields with a code: (id, code).
    pub fn snapshot_contact_fields(&self) -> Vec<(i64, String)> {
        self.shared.contact_fields().iter().filter_map(|f| Some((f.id, f.code?.to_string()))).collect()
    }

    /// An administrator adds a lead source for the integration (as the Sources
    /// API does with the widget); returns its ID.
    pub fn add_source(&self, external_id: &str, name: &str) -> i64 {
        let mut state = self.shared.state();
        let id = state.next_id();
        let pipeline_id = MAIN_PIPELINE_ID;
        state.sources.push(Source {
            id,
            name: name.into(),
            external_id: external_id.into(),
            pipeline_id,
            default: false,
        });
        id
    }

    /// A manager writes a note on a contact; returns its ID.
    pub fn add_manager_contact_note(&self, contact_id: i64, user_id: i64, text: &str) -> i64 {
        control::add_manager_contact_note(&self.shared, contact_id, user_id, text)
    }

    /// Deactivates a user, as an admin does when someone leaves: the user list
    /// says `is_active: false` and leads can no longer be given to them.
    pub fn deactivate_user(&self, id: i64) {
        self.shared.deactivate_user(id);
    }

    /// Moves a lead to `status_id`, as a manager would.
    pub fn set_lead_status(&self, lead_id: i64, status_id: i64) {
        control::set_lead_status(&self.shared, lead_id, status_id);
    }

    /// Seeds a contact as a manager would type it; `custom_fields_values` is in
    /// request form (`field_code`/`field_id`, `enum_code`), values kept verbatim.
    pub fn add_contact(&self, name: &str, custom_fields_values: serde_json::Value) -> i64 {
        control::add_contact(&self.shared, name, &custom_fields_values)
    }

    /// Clears the 403 block and the 429 windows.
    pub fn reset_limits(&self) {
        self.shared.limits().reset();
    }
}

impl Drop for FakeAmo {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
