//! The Telegram adapter: a user account (QR or phone-code login, two-step
//! verification) or a bot, over MTProto, behind the [`Messenger`] trait.
//!
//! Everything goes through the raw-RPC seam [`rpc::TgRpc`]: grammers' sender pool
//! in production, a scripted Telegram in the tests. Updates are drained at once
//! from the connection into the adapter's own bounded queue; gaps (a reconnect,
//! downtime, a full queue) are filled with `updates.getDifference` through
//! grammers' message boxes, from the update state the bridge committed together
//! with the inbox — so the state never runs ahead of what is stored.

mod calls;
mod history;
mod login;
pub mod map;
mod media;
pub mod rpc;
mod send;
pub mod session;
mod updates;

use super::*;
use grammers_crypto::two_factor_auth::{calculate_2fa, check_p_and_g};
use grammers_session::Session;
use grammers_session::types::{PeerAuth, PeerId, PeerInfo, PeerKind, PeerRef, UpdatesState};
use grammers_session::updates::{MessageBox, MessageBoxes, PrematureEndReason, State, UpdateAndPeers, UpdatesLike};
use grammers_tl_types::{self as tl, Deserializable, RemoteCall};
use rpc::{RpcFailure, TgRpc};
use session::DbSession;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, mpsc};

/// How the account signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginMethod {
    /// Scan a QR code with the Telegram app.
    Qr,
    /// Type the code Telegram sends to this phone number.
    PhoneCode {
        /// E.164 phone number.
        phone: String,
    },
    /// A bot, with its token from @BotFather.
    Bot {
        /// The bot token.
        token: String,
    },
}

/// The adapter's settings.
#[derive(Clone)]
pub struct Settings {
    /// `namespace/name` of the account (logs, and the session's row).
    pub account: String,
    /// api_id from my.telegram.org.
    pub api_id: i32,
    /// api_hash from my.telegram.org.
    pub api_hash: String,
    /// How it signs in.
    pub login: LoginMethod,
    /// Two-step verification password, when the account names one in a Secret.
    pub password: Option<String>,
    /// Events the adapter holds before it stops taking more from the connection
    /// (what it skips then is fetched again with getDifference once there is room).
    pub queue_capacity: usize,
    /// Larger media are not downloaded (the policy's `media.maxSizeMiB`).
    pub max_media_bytes: u64,
    /// Flood waits up to this long are slept through; longer ones are reported.
    pub flood_sleep_max: Duration,
    /// At least this long between two history requests (backfill never floods).
    pub history_interval: Duration,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings").field("account", &self.account).field("api_id", &self.api_id).finish_non_exhaustive()
    }
}

impl Settings {
    /// Settings with the defaults for everything but the credentials.
    pub fn new(account: &str, api_id: i32, api_hash: &str, login: LoginMethod) -> Self {
        Self {
            account: account.into(),
            api_id,
            api_hash: api_hash.into(),
            login,
            password: None,
            queue_capacity: 10_000,
            max_media_bytes: 20 * 1024 * 1024,
            flood_sleep_max: Duration::from_secs(30),
            history_interval: Duration::from_secs(1),
        }
    }
}

/// RPC errors that end the session: the account must sign in again.
const LOGGED_OUT: [&str; 7] = [
    "AUTH_KEY_UNREGISTERED",
    "AUTH_KEY_INVALID",
    "AUTH_KEY_PERM_EMPTY",
    "SESSION_REVOKED",
    "SESSION_EXPIRED",
    "USER_DEACTIVATED",
    "USER_DEACTIVATED_BAN",
];

/// RPC errors that restrict the whole account (Telegram's anti-spam): no send
/// can succeed until the owner resolves it, so none is retried in a loop and no
/// reply is dead-lettered for it.
const RESTRICTED: [(&str, &str); 2] = [
    (
        "PEER_FLOOD",
        "Telegram limited this account for spam (PEER_FLOOD): it cannot write to people who have not written to it first. Replies are held, not dropped; the owner can check the limit and appeal with @SpamBot in the Telegram app, and sending resumes by itself once the limit is lifted",
    ),
    (
        "FROZEN_METHOD_INVALID",
        "Telegram froze this account (FROZEN_METHOD_INVALID): it can read but not send. Replies are held, not dropped; the owner can appeal in the Telegram app (the banner at the top of the chat list, or @SpamBot), and sending resumes by itself once the account is unfrozen",
    ),
];

/// RPC errors that mean a send can never succeed.
const UNDELIVERABLE: [&str; 10] = [
    "USER_IS_BLOCKED",
    "PEER_ID_INVALID",
    "INPUT_USER_DEACTIVATED",
    "CHAT_WRITE_FORBIDDEN",
    "CHAT_ADMIN_REQUIRED",
    "CHANNEL_PRIVATE",
    "USER_BANNED_IN_CHANNEL",
    "MESSAGE_TOO_LONG",
    "MESSAGE_EMPTY",
    "YOU_BLOCKED_USER",
];

/// A page of history: its messages, and the users and chats they name.
type HistoryPage = (Vec<tl::enums::Message>, Vec<tl::enums::User>, Vec<tl::enums::Chat>);

/// Largest `upload.getFile` / `upload.saveFilePart` chunk.
const CHUNK: i32 = 512 * 1024;
/// Files larger than this are uploaded as big files.
const BIG_FILE: usize = 10 * 1024 * 1024;
/// Events handed to the bridge at once.
const PAGE: usize = 500;
/// At most this many chats are refetched after a gap too long for getDifference.
const GAP_CHATS: u32 = 1_000;
/// A QR token is exported again this long before it expires.
const QR_MARGIN_MS: i64 = 2_000;
/// Message ids remembered per account-wide box, to name the chat of a deletion.
const RECENT_IDS: usize = 50_000;

#[derive(Debug, Clone)]
enum Phase {
    Start,
    Qr { token: Vec<u8>, expires_ms: i64 },
    CodeSent { hash: String },
    Password { tried_configured: bool },
    LoggedIn,
    LoggedOut(String),
}

struct Item {
    event: Option<Event>,
    cursor: String,
}

#[derive(Default)]
struct Feed {
    /// The bridge's committed cursor, once it asked (`Some(None)`: never stored).
    start: Option<Option<String>>,
    started: bool,
    queue: VecDeque<Item>,
    /// The cursor last handed out and how many items it covers.
    inflight: Option<(String, usize)>,
    /// The state after the last queued update.
    running: Option<UpdatesState>,
    /// Updates were skipped for lack of room: fetch them again when there is room.
    overflowed: bool,
    skipped: u64,
    /// The session ended while streaming.
    logged_out: Option<String>,
    /// Bumped when the session is wiped: the pump starts over.
    generation: u64,
}

#[derive(Default)]
struct RecentIds {
    chat_of: HashMap<i32, String>,
    order: VecDeque<i32>,
}

struct Inner {
    s: Settings,
    rpc: Arc<dyn TgRpc>,
    session: Arc<DbSession>,
    phase: tokio::sync::Mutex<Phase>,
    feed: Mutex<Feed>,
    fed: Notify,
    /// The bridge took items while intake was paused: the pump may catch up.
    drained: Notify,
    token_updated: AtomicBool,
    sent: Mutex<HashMap<i64, i32>>,
    recent: Mutex<RecentIds>,
    flood_until_ms: AtomicI64,
    history_at: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    local: mpsc::UnboundedSender<UpdatesLike>,
    /// Downloads the files of replies from where the CRM keeps them.
    http: reqwest::Client,
}

/// A Telegram account.
pub struct Telegram {
    inner: Arc<Inner>,
    pump: tokio::task::JoinHandle<()>,
}

impl Drop for Telegram {
    fn drop(&mut self) {
        self.pump.abort();
        self.inner.rpc.close();
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn storage(e: session::SessionError) -> MessengerError {
    MessengerError::Unavailable(e.to_string())
}

impl Telegram {
    /// An adapter over `rpc` with the session `session` (already loaded).
    pub fn new(settings: Settings, rpc: Arc<dyn TgRpc>, session: Arc<DbSession>) -> Self {
        let (local, local_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            s: settings,
            rpc,
            session,
            phase: tokio::sync::Mutex::new(Phase::Start),
            feed: Mutex::new(Feed::default()),
            fed: Notify::new(),
            drained: Notify::new(),
            token_updated: AtomicBool::new(false),
            sent: Mutex::new(HashMap::new()),
            recent: Mutex::new(RecentIds::default()),
            flood_until_ms: AtomicI64::new(0),
            history_at: tokio::sync::Mutex::new(None),
            local,
            http: crmessenger_crm::tls::client_builder(None)
                .and_then(|b| b.timeout(Duration::from_secs(120)).build().map_err(|e| e.to_string()))
                .unwrap_or_default(),
        });
        let pump = tokio::spawn(inner.clone().pump(local_rx));
        Self { inner, pump }
    }

    /// Updates skipped for lack of room and fetched again (for tests and metrics).
    pub fn skipped_updates(&self) -> u64 {
        lock(&self.inner.feed).skipped
    }

    /// When sending may resume after a long flood wait (Unix ms; 0 when it may now).
    pub fn flood_until_ms(&self) -> i64 {
        let until = self.inner.flood_until_ms.load(Ordering::Relaxed);
        if until > now_ms() { until } else { 0 }
    }
}

impl RecentIds {
    fn remember(&mut self, id: i32, chat: String) {
        if self.chat_of.insert(id, chat).is_none() {
            self.order.push_back(id);
            if self.order.len() > RECENT_IDS
                && let Some(old) = self.order.pop_front()
            {
                self.chat_of.remove(&old);
            }
        }
    }
}

#[async_trait]
impl Messenger for Telegram {
    async fn login_state(&self) -> Result<LoginState, MessengerError> {
        self.inner.login_state().await
    }

    async fn submit_login(&self, code: Option<&str>, password: Option<&str>) -> Result<(), MessengerError> {
        self.inner.submit(code, password).await
    }

    async fn updates(&self, cursor: Option<&str>, wait: Duration) -> Result<Batch, MessengerError> {
        // A cursor that is not an update state (none stored yet) starts afresh.
        let cursor = cursor.filter(|c| map::state_of(c).is_some());
        self.inner.updates(cursor, wait).await
    }

    async fn send(&self, message: &Outgoing) -> Result<SentRef, MessengerError> {
        self.inner.send(message).await
    }

    async fn find_sent(&self, _chat_id: &str, random_id: i64) -> Result<Option<SentRef>, MessengerError> {
        // Known when Telegram's answer (or a later update) named the message; if
        // not, sending again with the same random_id is safe: Telegram refuses a
        // duplicate with RANDOM_ID_DUPLICATE.
        Ok(lock(&self.inner.sent).get(&random_id).map(|id| SentRef { message_id: id.to_string() }))
    }

    async fn mark_read(&self, chat_id: &str, message_id: &str) -> Result<(), MessengerError> {
        self.inner.mark_read(chat_id, message_id).await
    }

    async fn edit(&self, chat_id: &str, message_id: &str, text: &str) -> Result<(), MessengerError> {
        self.inner.edit(chat_id, message_id, text).await
    }

    async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, MessengerError> {
        self.inner.fetch_media(media).await
    }

    async fn backfill(&self, chat_id: &str, before: Option<&str>, limit: u32) -> Result<Vec<Message>, MessengerError> {
        self.inner.backfill(chat_id, before, limit).await
    }

    async fn recent_chats(&self, since_ms: i64, limit: u32) -> Result<Vec<String>, MessengerError> {
        self.inner.recent_chats(since_ms, limit).await
    }

    async fn logout(&self) -> Result<(), MessengerError> {
        self.inner.logout().await
    }
}
