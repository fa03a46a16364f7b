//! The Telegram adapter: a user account (QR or phone-code login, two-step
//! verification) or a bot, over MTProto, behind the [`Messenger`] trait.
//!
//! Everything goes through the raw-RPC seam [`rpc::TgRpc`]: grammers' sender pool
//! in production, a scripted Telegram in the tests. Updates are drained at once
//! from the connection into the adapter's own bounded queue; gaps (a reconnect,
//! downtime, a full queue) are filled with `updates.getDifference` through
//! grammers' message boxes, from the update state the bridge committed together
//! with the inbox — so the state never runs ahead of what is stored.

pub mod map;
pub mod rpc;
pub mod session;

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

impl Inner {
    // ---- calls -------------------------------------------------------------

    /// Invokes `req` (in the home datacenter unless `dc` says otherwise), following
    /// migrations and sleeping through one short flood wait.
    async fn call<R: RemoteCall>(&self, dc: Option<i32>, req: &R) -> Result<R::Return, RpcFailure> {
        let body = req.to_bytes();
        let mut dc = dc;
        let mut migrated = false;
        let mut slept = false;
        loop {
            let target = match dc {
                Some(d) => d,
                None => self.session.home_dc_id().unwrap_or(2),
            };
            match self.rpc.invoke(target, body.clone()).await {
                Ok(bytes) => {
                    return R::Return::from_bytes(&bytes)
                        .map_err(|e| RpcFailure::Io(format!("unreadable answer from Telegram: {e}")));
                }
                Err(RpcFailure::Rpc { code: 303, name, value: Some(to) }) if !migrated => {
                    migrated = true;
                    if name == "FILE_MIGRATE" {
                        dc = Some(to as i32);
                    } else {
                        tracing::info!(
                            account = self.s.account,
                            dc = to,
                            "{name}: the account lives in another datacenter"
                        );
                        let _ = self.session.set_home_dc_id(to as i32).await;
                        dc = None;
                    }
                }
                Err(RpcFailure::Rpc { code: 420, name, value: Some(secs) })
                    if !slept && Duration::from_secs(secs.into()) <= self.s.flood_sleep_max =>
                {
                    slept = true;
                    tracing::info!(account = self.s.account, secs, "{name}: waiting as Telegram asks");
                    tokio::time::sleep(Duration::from_secs(secs.into())).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What a failed call means to the bridge; a logged-out session is wiped.
    async fn classify(&self, e: RpcFailure) -> MessengerError {
        match &e {
            // Before the 420 arm: a frozen account answers 420 FROZEN_METHOD_INVALID.
            RpcFailure::Rpc { name, .. } if RESTRICTED.iter().any(|(n, _)| n == name) => {
                let why = RESTRICTED.iter().find(|(n, _)| n == name).map(|(_, why)| *why).unwrap_or_default();
                tracing::error!(account = self.s.account, "{why}");
                MessengerError::Restricted(why.to_string())
            }
            RpcFailure::Rpc { code: 420, value, name } => {
                let secs = value.unwrap_or(1).max(1);
                let until = now_ms() + i64::from(secs) * 1000;
                self.flood_until_ms.fetch_max(until, Ordering::Relaxed);
                tracing::warn!(account = self.s.account, secs, "{name}: Telegram asks to wait before sending again");
                MessengerError::FloodWait(Duration::from_secs(secs.into()))
            }
            RpcFailure::Rpc { name, .. } if LOGGED_OUT.contains(&name.as_str()) => {
                self.logged_out(format!("Telegram ended the session ({name}); sign in again")).await
            }
            RpcFailure::Rpc { name, .. } if name == "AUTH_KEY_DUPLICATED" => {
                self.logged_out(
                    "duplicate session (AUTH_KEY_DUPLICATED): the session was used from two places at once and Telegram invalidated it; sign in again".into(),
                )
                .await
            }
            RpcFailure::Rpc { name, .. } if UNDELIVERABLE.contains(&name.as_str()) => {
                MessengerError::Rejected(e.to_string())
            }
            RpcFailure::Rpc { code: 400 | 403 | 406, .. } => MessengerError::Rejected(e.to_string()),
            RpcFailure::Rpc { .. } => MessengerError::Unavailable(e.to_string()),
            RpcFailure::Io(_) => MessengerError::Unavailable(e.to_string()),
        }
    }

    /// The session ended: wipe it, tell the bridge, offer a new login.
    async fn logged_out(&self, reason: String) -> MessengerError {
        tracing::warn!(account = self.s.account, "{reason}");
        if let Err(e) = self.session.wipe().await {
            tracing::error!(account = self.s.account, "could not wipe the session: {e}");
        }
        *self.phase.lock().await = Phase::LoggedOut(reason.clone());
        {
            let mut f = lock(&self.feed);
            let generation = f.generation + 1;
            *f = Feed { generation, logged_out: Some(reason.clone()), ..Feed::default() };
        }
        self.fed.notify_one();
        MessengerError::LoggedOut(reason)
    }

    fn input_peer(&self, chat_id: &str) -> Result<(PeerRef, tl::enums::InputPeer), MessengerError> {
        let id = map::peer_of(chat_id)
            .ok_or_else(|| MessengerError::Rejected(format!("not a Telegram chat id: {chat_id}")))?;
        let info = self
            .session
            .cached(id)
            .ok_or_else(|| MessengerError::Rejected(format!("chat {chat_id} is unknown to this session")))?;
        let auth = info.auth().unwrap_or_default();
        let r = PeerRef { id, auth };
        Ok((r, tl::enums::InputPeer::from(&r)))
    }

    fn flood_gate(&self) -> Result<(), MessengerError> {
        let until = self.flood_until_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if until > now { Err(MessengerError::FloodWait(Duration::from_millis((until - now) as u64))) } else { Ok(()) }
    }

    async fn cache(&self, users: &[tl::enums::User], chats: &[tl::enums::Chat]) {
        let peers: Vec<PeerInfo> = users.iter().map(PeerInfo::from).chain(chats.iter().map(PeerInfo::from)).collect();
        if !peers.is_empty()
            && let Err(e) = self.session.cache_peers(peers).await
        {
            tracing::warn!(account = self.s.account, "could not cache peers: {e}");
        }
    }

    // ---- login -------------------------------------------------------------

    async fn login_state(&self) -> Result<LoginState, MessengerError> {
        let mut phase = self.phase.lock().await;
        if let Some(identity) = self.session.identity() {
            *phase = Phase::LoggedIn;
            return Ok(LoginState::LoggedIn { identity });
        }
        match phase.clone() {
            Phase::LoggedOut(reason) => {
                // Said once; the next look offers a new login.
                *phase = Phase::Start;
                return Ok(LoginState::LoggedOut { reason });
            }
            Phase::Password { tried_configured: false } if self.s.password.is_some() => {
                *phase = Phase::Password { tried_configured: true };
                let pw = self.s.password.clone().unwrap_or_default();
                return self.check_password(&mut phase, &pw).await;
            }
            Phase::Password { .. } => return Ok(LoginState::PasswordRequired),
            Phase::CodeSent { .. } => return Ok(LoginState::CodeRequired),
            Phase::Qr { token, expires_ms }
                if now_ms() < expires_ms - QR_MARGIN_MS && !self.token_updated.load(Ordering::SeqCst) =>
            {
                return Ok(LoginState::Qr { code: map::login_url(&token), expires_at_ms: expires_ms });
            }
            _ => {}
        }
        match self.s.login.clone() {
            LoginMethod::Qr => self.export_token(&mut phase).await,
            LoginMethod::PhoneCode { phone } => {
                let req = tl::functions::auth::SendCode {
                    phone_number: phone,
                    api_id: self.s.api_id,
                    api_hash: self.s.api_hash.clone(),
                    settings: tl::enums::CodeSettings::Settings(tl::types::CodeSettings {
                        allow_flashcall: false,
                        current_number: false,
                        allow_app_hash: false,
                        allow_missed_call: false,
                        allow_firebase: false,
                        unknown_number: false,
                        logout_tokens: None,
                        token: None,
                        app_sandbox: None,
                    }),
                };
                match self.call(None, &req).await {
                    Ok(tl::enums::auth::SentCode::Code(c)) => {
                        *phase = Phase::CodeSent { hash: c.phone_code_hash };
                        Ok(LoginState::CodeRequired)
                    }
                    Ok(tl::enums::auth::SentCode::Success(s)) => self.complete(&mut phase, s.authorization).await,
                    Ok(other) => Err(MessengerError::Unavailable(format!("Telegram cannot send a code: {other:?}"))),
                    Err(e) => Err(self.classify(e).await),
                }
            }
            LoginMethod::Bot { token } => {
                let req = tl::functions::auth::ImportBotAuthorization {
                    flags: 0,
                    api_id: self.s.api_id,
                    api_hash: self.s.api_hash.clone(),
                    bot_auth_token: token,
                };
                match self.call(None, &req).await {
                    Ok(a) => self.complete(&mut phase, a).await,
                    Err(e) if e.is("ACCESS_TOKEN_INVALID") || e.is("ACCESS_TOKEN_EXPIRED") => {
                        Ok(LoginState::LoggedOut { reason: format!("the bot token was refused ({e})") })
                    }
                    Err(e) => Err(self.classify(e).await),
                }
            }
        }
    }

    async fn export_token(&self, phase: &mut Phase) -> Result<LoginState, MessengerError> {
        self.token_updated.store(false, Ordering::SeqCst);
        let req = tl::functions::auth::ExportLoginToken {
            api_id: self.s.api_id,
            api_hash: self.s.api_hash.clone(),
            except_ids: Vec::new(),
        };
        let answer = self.call(None, &req).await;
        self.on_token(phase, answer).await
    }

    async fn on_token(
        &self,
        phase: &mut Phase,
        answer: Result<tl::enums::auth::LoginToken, RpcFailure>,
    ) -> Result<LoginState, MessengerError> {
        use tl::enums::auth::LoginToken as T;
        match answer {
            Ok(T::Token(t)) => {
                let expires_ms = i64::from(t.expires) * 1000;
                let code = map::login_url(&t.token);
                *phase = Phase::Qr { token: t.token, expires_ms };
                Ok(LoginState::Qr { code, expires_at_ms: expires_ms })
            }
            Ok(T::MigrateTo(m)) => {
                // Scanned by an account that lives in another datacenter: import the
                // token there, which becomes home.
                tracing::info!(
                    account = self.s.account,
                    dc = m.dc_id,
                    "QR accepted; the account lives in datacenter {}",
                    m.dc_id
                );
                self.session.set_home_dc_id(m.dc_id).await.map_err(storage)?;
                let answer = self.call(Some(m.dc_id), &tl::functions::auth::ImportLoginToken { token: m.token }).await;
                match answer {
                    Ok(T::MigrateTo(_)) => Err(MessengerError::Unavailable("Telegram asked to migrate twice".into())),
                    other => Box::pin(self.on_token(phase, other)).await,
                }
            }
            Ok(T::Success(s)) => self.complete(phase, s.authorization).await,
            Err(e) if e.is("SESSION_PASSWORD_NEEDED") => {
                *phase = Phase::Password { tried_configured: false };
                if let Some(pw) = self.s.password.clone() {
                    *phase = Phase::Password { tried_configured: true };
                    return self.check_password(phase, &pw).await;
                }
                Ok(LoginState::PasswordRequired)
            }
            Err(e) => Err(self.classify(e).await),
        }
    }

    async fn check_password(&self, phase: &mut Phase, password: &str) -> Result<LoginState, MessengerError> {
        let info = match self.call(None, &tl::functions::account::GetPassword {}).await {
            Ok(tl::enums::account::Password::Password(p)) => p,
            Err(e) => return Err(self.classify(e).await),
        };
        let Some(tl::enums::PasswordKdfAlgo::Sha256Sha256Pbkdf2Hmacsha512iter100000Sha256ModPow(algo)) =
            &info.current_algo
        else {
            return Err(MessengerError::Rejected(
                "the account's password uses an algorithm this connector does not know".into(),
            ));
        };
        let (Some(srp_b), Some(srp_id)) = (info.srp_b.clone(), info.srp_id) else {
            return Err(MessengerError::Rejected("Telegram says the account has no password".into()));
        };
        if !check_p_and_g(&algo.p, &algo.g) {
            return Err(MessengerError::Unavailable("Telegram sent unusable password parameters".into()));
        }
        let (m1, g_a) =
            calculate_2fa(&algo.salt1, &algo.salt2, &algo.p, &algo.g, srp_b, info.secure_random.clone(), password);
        let req = tl::functions::auth::CheckPassword {
            password: tl::enums::InputCheckPasswordSrp::Srp(tl::types::InputCheckPasswordSrp {
                srp_id,
                a: g_a.to_vec(),
                m1: m1.to_vec(),
            }),
        };
        match self.call(None, &req).await {
            Ok(a) => self.complete(phase, a).await,
            Err(e) if e.is("PASSWORD_HASH_INVALID") => {
                *phase = Phase::Password { tried_configured: true };
                Err(MessengerError::Rejected("the two-step verification password is wrong".into()))
            }
            Err(e) => Err(self.classify(e).await),
        }
    }

    async fn complete(
        &self,
        phase: &mut Phase,
        authorization: tl::enums::auth::Authorization,
    ) -> Result<LoginState, MessengerError> {
        let user = match authorization {
            tl::enums::auth::Authorization::Authorization(a) => a.user,
            tl::enums::auth::Authorization::SignUpRequired(_) => {
                let reason = "this phone number has no Telegram account; sign up in a Telegram app first".to_string();
                *phase = Phase::LoggedOut(reason.clone());
                return Ok(LoginState::LoggedOut { reason });
            }
        };
        let tl::enums::User::User(u) = &user else {
            return Err(MessengerError::Unavailable("Telegram returned an empty user at login".into()));
        };
        let identity = map::identity_of(u);
        let me = PeerInfo::User {
            id: u.id,
            auth: Some(PeerAuth::from_hash(u.access_hash.unwrap_or(0))),
            bot: Some(u.bot),
            is_self: Some(true),
        };
        self.session.set_identity(identity.clone(), me).await.map_err(storage)?;
        tracing::info!(account = self.s.account, user = identity.id, bot = u.bot, "signed in to Telegram");
        *phase = Phase::LoggedIn;
        Ok(LoginState::LoggedIn { identity })
    }

    async fn submit(&self, code: Option<&str>, password: Option<&str>) -> Result<(), MessengerError> {
        let mut phase = self.phase.lock().await;
        match (phase.clone(), code, password) {
            (Phase::Password { .. }, _, Some(pw)) => self.check_password(&mut phase, pw).await.map(|_| ()),
            (Phase::CodeSent { hash }, Some(code), _) => {
                let LoginMethod::PhoneCode { phone } = &self.s.login else {
                    return Err(MessengerError::Rejected("this account does not sign in with a code".into()));
                };
                let req = tl::functions::auth::SignIn {
                    phone_number: phone.clone(),
                    phone_code_hash: hash,
                    phone_code: Some(code.trim().to_string()),
                    email_verification: None,
                };
                match self.call(None, &req).await {
                    Ok(a) => self.complete(&mut phase, a).await.map(|_| ()),
                    Err(e) if e.is("SESSION_PASSWORD_NEEDED") => {
                        *phase = Phase::Password { tried_configured: false };
                        if let (Some(pw), None) = (self.s.password.clone(), password) {
                            *phase = Phase::Password { tried_configured: true };
                            return self.check_password(&mut phase, &pw).await.map(|_| ());
                        }
                        match password {
                            Some(pw) => self.check_password(&mut phase, pw).await.map(|_| ()),
                            None => Ok(()),
                        }
                    }
                    Err(e) if e.is("PHONE_CODE_INVALID") => Err(MessengerError::Rejected("the code is wrong".into())),
                    Err(e) if e.is("PHONE_CODE_EXPIRED") => {
                        *phase = Phase::Start;
                        Err(MessengerError::Rejected("the code expired; a new one will be sent".into()))
                    }
                    Err(e) => Err(self.classify(e).await),
                }
            }
            (Phase::LoggedIn, _, _) => Ok(()),
            _ => Err(MessengerError::Rejected("nothing to submit at this step of the login".into())),
        }
    }

    // ---- updates -----------------------------------------------------------

    async fn pump(self: Arc<Self>, mut local: mpsc::UnboundedReceiver<UpdatesLike>) {
        let mut boxes: Option<MessageBoxes> = None;
        let mut generation = 0;
        let mut failures = 0u32;
        loop {
            {
                let f = lock(&self.feed);
                if f.generation != generation {
                    generation = f.generation;
                    boxes = None;
                }
            }
            let Some(b) = boxes.as_mut() else {
                let start = lock(&self.feed).start.take();
                match start {
                    Some(cursor) => match self.open(cursor.clone()).await {
                        Ok(b) => {
                            boxes = Some(b);
                            failures = 0;
                        }
                        Err(e) => {
                            lock(&self.feed).start = Some(cursor);
                            failures += 1;
                            if self.failed(e, failures).await {
                                return;
                            }
                        }
                    },
                    // Not streaming yet: only a login token update matters.
                    None => tokio::select! {
                        u = self.rpc.next_updates() => match u {
                            Some(u) => self.before_login(u),
                            None => return,
                        },
                        _ = local.recv() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    },
                }
                continue;
            };
            {
                let mut f = lock(&self.feed);
                if f.overflowed && f.queue.len() <= self.s.queue_capacity / 2 {
                    // Room again: fetch what was skipped from the last queued state.
                    f.overflowed = false;
                    if let Some(state) = f.running.clone() {
                        *b = MessageBoxes::load(state);
                    }
                }
            }
            let deadline = b.check_deadlines();
            if let Some(req) = b.get_difference() {
                match self.call(None, &req).await {
                    Ok(tl::enums::updates::Difference::TooLong(d)) => {
                        // Too far behind for getDifference: what happened meanwhile is
                        // refetched from the chats' history, and only then does the
                        // state move past the gap (a failure asks again, and refetches).
                        match self.recover_gap(d.pts).await {
                            Ok(()) => {
                                failures = 0;
                                b.apply_difference(tl::enums::updates::Difference::TooLong(d));
                            }
                            Err(e) => {
                                failures += 1;
                                tracing::warn!(account = self.s.account, "refetching a long gap failed: {e}");
                                tokio::time::sleep(Duration::from_millis(500) * failures.min(20)).await;
                            }
                        }
                    }
                    Ok(diff) => {
                        failures = 0;
                        let got = b.apply_difference(diff);
                        self.enqueue(got).await;
                    }
                    Err(e) => {
                        failures += 1;
                        if self.failed(e, failures).await {
                            return;
                        }
                    }
                }
                continue;
            }
            if let Some(mut req) = b.get_channel_difference() {
                let tl::enums::InputChannel::Channel(c) = &req.channel else {
                    b.end_channel_difference(PrematureEndReason::Banned);
                    continue;
                };
                let id = PeerId::channel_unchecked(c.channel_id);
                let Some(auth) = self.session.cached(id).and_then(|p| p.auth()) else {
                    b.end_channel_difference(PrematureEndReason::Banned);
                    continue;
                };
                req.channel = tl::enums::InputChannel::Channel(tl::types::InputChannel {
                    channel_id: c.channel_id,
                    access_hash: auth.hash(),
                });
                req.limit = 100;
                match self.call(None, &req).await {
                    Ok(diff) => {
                        failures = 0;
                        let got = b.apply_channel_difference(diff);
                        self.enqueue(got).await;
                    }
                    Err(e)
                        if e.is("PERSISTENT_TIMESTAMP_OUTDATED") || matches!(e, RpcFailure::Rpc { code: 500, .. }) =>
                    {
                        b.end_channel_difference(PrematureEndReason::TemporaryServerIssues);
                    }
                    Err(e) if e.is("CHANNEL_PRIVATE") || e.is("CHANNEL_INVALID") => {
                        b.end_channel_difference(PrematureEndReason::Banned);
                    }
                    Err(e) => {
                        failures += 1;
                        if self.failed(e, failures).await {
                            return;
                        }
                    }
                }
                continue;
            }
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let got = tokio::select! {
                u = self.rpc.next_updates() => match u {
                    Some(u) => b.process_updates(u).ok(),
                    None => return,
                },
                Some(u) = local.recv() => b.process_updates(u).ok(),
                _ = self.drained.notified() => None,
                _ = tokio::time::sleep(wait) => None,
            };
            if let Some(got) = got {
                self.enqueue(got).await;
            }
        }
    }

    /// A failed call in the pump: logged out stops the stream (the pump waits for
    /// a new start), anything else waits a little. Returns whether to stop for good.
    async fn failed(&self, e: RpcFailure, failures: u32) -> bool {
        let err = self.classify(e).await;
        match err {
            MessengerError::LoggedOut(_) => false,
            MessengerError::FloodWait(d) => {
                tokio::time::sleep(d).await;
                false
            }
            other => {
                tracing::warn!(account = self.s.account, "fetching updates failed: {other}");
                tokio::time::sleep(crate::bridge::retry::backoff(
                    failures.min(6),
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                ))
                .await;
                false
            }
        }
    }

    fn before_login(&self, u: UpdatesLike) {
        if let UpdatesLike::Updates(tl::enums::Updates::UpdateShort(s)) = &u
            && matches!(s.update, tl::enums::Update::LoginToken)
        {
            // Scanned: the next export returns the authorization.
            self.token_updated.store(true, Ordering::SeqCst);
        }
    }

    /// The message boxes to stream from: the committed state (catching up on
    /// what happened since), or the account's current state on a first start.
    async fn open(&self, cursor: Option<String>) -> Result<MessageBoxes, RpcFailure> {
        if let Some(state) = cursor.as_deref().and_then(map::state_of) {
            lock(&self.feed).running = Some(state.clone());
            return Ok(MessageBoxes::load(state));
        }
        let tl::enums::updates::State::State(s) = self.call(None, &tl::functions::updates::GetState {}).await?;
        let state = UpdatesState { pts: s.pts, qts: s.qts, date: s.date, seq: s.seq, channels: Vec::new() };
        let mut b = MessageBoxes::new();
        b.set_state(s);
        let mut f = lock(&self.feed);
        // Nothing to deliver, but the bridge records where the stream starts.
        f.queue.push_back(Item { event: None, cursor: map::cursor_of(&state) });
        f.running = Some(state);
        drop(f);
        self.fed.notify_one();
        Ok(b)
    }

    /// Refetches a gap Telegram called too long for getDifference: every chat with a
    /// message since the last state's date, its messages since then from the
    /// history, oldest first, queued under one cursor that moves the state to
    /// `pts` (so they are committed together; a crash before that refetches them,
    /// and the inbox keeps each message once). Edits and deletions inside such a
    /// gap are not in any history and stay unknown.
    async fn recover_gap(&self, pts: i32) -> Result<(), MessengerError> {
        let since = lock(&self.feed).running.as_ref().map_or(0, |s| s.date);
        tracing::warn!(
            account = self.s.account,
            since,
            "the update gap is too long for getDifference: refetching the chats' history since then"
        );
        let chat_ids = self.recent_chats(i64::from(since) * 1000, GAP_CHATS).await?;
        let (mut found, mut users, mut chats) = (Vec::new(), Vec::new(), Vec::new());
        for chat in &chat_ids {
            let (_, peer) = self.input_peer(chat)?;
            let mut offset_id = 0;
            loop {
                let (msgs, u, c) = match self.history(peer.clone(), offset_id, 100).await {
                    Ok(page) => page,
                    Err(e) => return Err(self.classify(e).await),
                };
                users.extend(u);
                chats.extend(c);
                let (mut reached, mut lowest, n) = (false, i32::MAX, msgs.len());
                for m in msgs {
                    let (id, date) = match &m {
                        tl::enums::Message::Message(x) => (x.id, x.date),
                        tl::enums::Message::Service(x) => (x.id, x.date),
                        tl::enums::Message::Empty(_) => continue,
                    };
                    lowest = lowest.min(id);
                    if date < since {
                        reached = true;
                    } else {
                        found.push((date, id, m));
                    }
                }
                if reached || n < 100 || lowest <= 1 {
                    break;
                }
                offset_id = lowest;
            }
        }
        found.sort_by_key(|(date, id, _)| (*date, *id));
        self.cache(&users, &chats).await;
        let peers = map::Peers::new(&users, &chats);
        let mut f = lock(&self.feed);
        let Some(running) = f.running.as_mut() else { return Ok(()) };
        let date = running.date.max(found.last().map_or(0, |(d, _, _)| *d));
        map::advance(running, &State { date, seq: 0, message_box: Some(MessageBox::Common { pts }) });
        let cursor = map::cursor_of(running);
        let mut recent = lock(&self.recent);
        let recovered = found.len();
        for (_, id, m) in found {
            let channel =
                matches!(&m, tl::enums::Message::Message(x) if matches!(x.peer_id, tl::enums::Peer::Channel(_)));
            if let tl::enums::Message::Message(x) = &m {
                recent.remember(id, map::chat_id_of(&x.peer_id));
            }
            let update = if channel {
                tl::enums::Update::NewChannelMessage(tl::types::UpdateNewChannelMessage {
                    message: m,
                    pts: 0,
                    pts_count: 0,
                })
            } else {
                tl::enums::Update::NewMessage(tl::types::UpdateNewMessage { message: m, pts: 0, pts_count: 0 })
            };
            for event in map::event(&update, &peers, |id| recent.chat_of.get(&id).cloned()) {
                f.queue.push_back(Item { event: Some(event), cursor: cursor.clone() });
            }
        }
        f.queue.push_back(Item { event: None, cursor });
        drop(recent);
        drop(f);
        self.fed.notify_one();
        tracing::info!(account = self.s.account, chats = chat_ids.len(), recovered, "long gap refetched from history");
        Ok(())
    }

    async fn enqueue(&self, (updates, users, chats): UpdateAndPeers) {
        if updates.is_empty() {
            return;
        }
        self.cache(&users, &chats).await;
        let peers = map::Peers::new(&users, &chats);
        let mut f = lock(&self.feed);
        for (update, _) in &updates {
            if let tl::enums::Update::MessageId(m) = update {
                lock(&self.sent).insert(m.random_id, m.id);
            }
        }
        // A batch is taken whole or not at all: the updates of a difference share
        // its final state, so a part of one cannot be committed safely.
        if f.overflowed || f.queue.len() >= self.s.queue_capacity {
            if !f.overflowed {
                tracing::warn!(
                    account = self.s.account,
                    capacity = self.s.queue_capacity,
                    "update queue full: pausing intake, will catch up with getDifference"
                );
            }
            // Skipped without moving the state: getDifference brings them back
            // once the bridge has caught up.
            f.overflowed = true;
            f.skipped += updates.len() as u64;
            return;
        }
        let mut recent = lock(&self.recent);
        for (update, state) in updates {
            let Some(running) = f.running.as_mut() else { continue };
            map::advance(running, &state);
            let cursor = map::cursor_of(running);
            if let tl::enums::Update::NewMessage(u) = &update
                && let tl::enums::Message::Message(m) = &u.message
            {
                recent.remember(m.id, map::chat_id_of(&m.peer_id));
            }
            let events = map::event(&update, &peers, |id| recent.chat_of.get(&id).cloned());
            if events.is_empty() {
                f.queue.push_back(Item { event: None, cursor });
            } else {
                for event in events {
                    f.queue.push_back(Item { event: Some(event), cursor: cursor.clone() });
                }
            }
        }
        drop(recent);
        drop(f);
        self.fed.notify_one();
    }

    async fn updates(&self, cursor: Option<&str>, wait: Duration) -> Result<Batch, MessengerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let mut f = lock(&self.feed);
                if let Some(reason) = f.logged_out.take() {
                    return Err(MessengerError::LoggedOut(reason));
                }
                if !f.started {
                    f.started = true;
                    f.start = Some(cursor.map(str::to_string));
                }
                if let Some((handed, n)) = f.inflight.take()
                    && cursor == Some(handed.as_str())
                {
                    // Committed: drop what it covered.
                    let n = n.min(f.queue.len());
                    f.queue.drain(..n);
                    if f.overflowed && f.queue.len() <= self.s.queue_capacity / 2 {
                        self.drained.notify_one();
                    }
                }
                if !f.queue.is_empty() {
                    let mut n = f.queue.len().min(PAGE);
                    // Never split items that share a state (one difference).
                    while n < f.queue.len() && f.queue[n].cursor == f.queue[n - 1].cursor {
                        n += 1;
                    }
                    let events: Vec<Event> = f.queue.iter().take(n).filter_map(|i| i.event.clone()).collect();
                    let next = f.queue[n - 1].cursor.clone();
                    f.inflight = Some((next.clone(), n));
                    return Ok(Batch { events, cursor: next });
                }
            }
            if tokio::time::timeout_at(deadline, self.fed.notified()).await.is_err() {
                let same = cursor.map(str::to_string).or_else(|| lock(&self.feed).running.as_ref().map(map::cursor_of));
                return Ok(Batch { events: Vec::new(), cursor: same.unwrap_or_default() });
            }
        }
    }

    // ---- sending and the rest ----------------------------------------------

    /// Uploads a reply's file in parts and says how to attach it.
    async fn upload(&self, media: &OutgoingMedia) -> Result<tl::enums::InputMedia, MessengerError> {
        let body = download_reply_file(&self.http, media, self.s.max_media_bytes).await?;
        let file_id = crate::store::random_i64();
        let chunks: Vec<&[u8]> = if body.is_empty() { vec![&[][..]] } else { body.chunks(CHUNK as usize).collect() };
        let parts = chunks.len() as i32;
        let big = body.len() > BIG_FILE;
        for (i, bytes) in chunks.into_iter().enumerate() {
            let (file_part, bytes) = (i as i32, bytes.to_vec());
            let saved = if big {
                let req = tl::functions::upload::SaveBigFilePart { file_id, file_part, file_total_parts: parts, bytes };
                self.call(None, &req).await
            } else {
                self.call(None, &tl::functions::upload::SaveFilePart { file_id, file_part, bytes }).await
            };
            match saved {
                Ok(true) => {}
                Ok(false) => {
                    return Err(MessengerError::Unavailable("Telegram did not save a file part".into()));
                }
                Err(e) => return Err(self.classify(e).await),
            }
        }
        let name = media.file_name.clone();
        let file = if big {
            tl::enums::InputFile::Big(tl::types::InputFileBig { id: file_id, parts, name: name.clone() })
        } else {
            tl::enums::InputFile::File(tl::types::InputFile {
                id: file_id,
                parts,
                name: name.clone(),
                md5_checksum: String::new(),
            })
        };
        if media.kind == "picture" {
            return Ok(tl::enums::InputMedia::UploadedPhoto(tl::types::InputMediaUploadedPhoto {
                spoiler: false,
                live_photo: false,
                file,
                stickers: None,
                ttl_seconds: None,
                video: None,
            }));
        }
        let mut attributes = vec![tl::enums::DocumentAttribute::Filename(tl::types::DocumentAttributeFilename {
            file_name: name.clone(),
        })];
        if media.kind == "voice" {
            attributes.push(tl::enums::DocumentAttribute::Audio(tl::types::DocumentAttributeAudio {
                voice: true,
                duration: 0,
                title: None,
                performer: None,
                waveform: None,
            }));
        }
        Ok(tl::enums::InputMedia::UploadedDocument(tl::types::InputMediaUploadedDocument {
            nosound_video: false,
            force_file: media.kind == "file",
            spoiler: false,
            file,
            thumb: None,
            mime_type: mime_of(&name).into(),
            attributes,
            stickers: None,
            video_cover: None,
            video_timestamp: None,
            ttl_seconds: None,
        }))
    }

    async fn send(&self, m: &Outgoing) -> Result<SentRef, MessengerError> {
        self.flood_gate()?;
        let (_, peer) = self.input_peer(&m.chat_id)?;
        if let Some(media) = &m.media {
            let input = self.upload(media).await?;
            let req = tl::functions::messages::SendMedia {
                silent: false,
                background: false,
                clear_draft: false,
                noforwards: false,
                update_stickersets_order: false,
                invert_media: false,
                allow_paid_floodskip: false,
                peer: peer.clone(),
                reply_to: None,
                media: input,
                message: m.text.clone(),
                random_id: m.random_id,
                reply_markup: None,
                entities: None,
                schedule_date: None,
                schedule_repeat_period: None,
                send_as: None,
                quick_reply_shortcut: None,
                effect: None,
                allow_paid_stars: None,
                suggested_post: None,
            };
            let answer = self.call(None, &req).await.map(UpdatesLike::Updates);
            return self.sent(m, &peer, answer).await;
        }
        let req = tl::functions::messages::SendMessage {
            no_webpage: false,
            silent: false,
            background: false,
            clear_draft: false,
            noforwards: false,
            update_stickersets_order: false,
            invert_media: false,
            allow_paid_floodskip: false,
            peer: peer.clone(),
            reply_to: None,
            message: m.text.clone(),
            random_id: m.random_id,
            reply_markup: None,
            entities: None,
            schedule_date: None,
            schedule_repeat_period: None,
            send_as: None,
            quick_reply_shortcut: None,
            effect: None,
            allow_paid_stars: None,
            suggested_post: None,
            rich_message: None,
        };
        let answer = self.call(None, &req).await.map(|updates| match updates {
            tl::enums::Updates::UpdateShortSentMessage(update) => {
                UpdatesLike::ShortSentMessage { request: req.clone(), update }
            }
            other => UpdatesLike::Updates(other),
        });
        self.sent(m, &peer, answer).await
    }

    /// What Telegram's answer to a send means; its updates go to the message box.
    async fn sent(
        &self,
        m: &Outgoing,
        peer: &tl::enums::InputPeer,
        answer: Result<UpdatesLike, RpcFailure>,
    ) -> Result<SentRef, MessengerError> {
        let created = |updates: &[tl::enums::Update]| {
            updates.iter().find_map(|x| match x {
                tl::enums::Update::MessageId(i) if i.random_id == m.random_id => Some(i.id),
                _ => None,
            })
        };
        match answer {
            Ok(like) => {
                let id = match &like {
                    UpdatesLike::ShortSentMessage { update, .. } => Some(update.id),
                    UpdatesLike::Updates(tl::enums::Updates::Updates(u)) => created(&u.updates),
                    UpdatesLike::Updates(tl::enums::Updates::Combined(u)) => created(&u.updates),
                    _ => None,
                };
                let _ = self.local.send(like);
                let id =
                    id.ok_or_else(|| MessengerError::InDoubt("Telegram did not say which message it created".into()))?;
                lock(&self.sent).insert(m.random_id, id);
                Ok(SentRef { message_id: id.to_string() })
            }
            Err(e) if e.is("RANDOM_ID_DUPLICATE") => {
                // Sent before (an in-doubt attempt went through): the same message.
                if let Some(id) = lock(&self.sent).get(&m.random_id) {
                    return Ok(SentRef { message_id: id.to_string() });
                }
                tracing::info!(
                    account = self.s.account,
                    chat = m.chat_id,
                    "the reply was already delivered by an earlier attempt"
                );
                Ok(SentRef {
                    message_id: self.find_own(peer, &m.text).await.unwrap_or_else(|| format!("random:{}", m.random_id)),
                })
            }
            Err(RpcFailure::Io(e)) => Err(MessengerError::InDoubt(e)),
            Err(e) => Err(self.classify(e).await),
        }
    }

    /// Our latest outgoing message with this text in the chat's recent history.
    async fn find_own(&self, peer: &tl::enums::InputPeer, text: &str) -> Option<String> {
        let (msgs, _, _) = self.history(peer.clone(), 0, 20).await.ok()?;
        msgs.iter().find_map(|m| match m {
            tl::enums::Message::Message(m) if m.out && m.message == text => Some(m.id.to_string()),
            _ => None,
        })
    }

    /// Waits until a history request may go (backfill never floods).
    async fn history_turn(&self) {
        let mut last = self.history_at.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + self.s.history_interval).await;
        }
        *last = Some(tokio::time::Instant::now());
    }

    /// Chats whose last message is newer than `since_ms`, most recent first.
    async fn recent_chats(&self, since_ms: i64, limit: u32) -> Result<Vec<String>, MessengerError> {
        let mut out: Vec<String> = Vec::new();
        let (mut offset_date, mut offset_id, mut offset_peer) = (0, 0, tl::enums::InputPeer::Empty);
        loop {
            self.history_turn().await;
            let req = tl::functions::messages::GetDialogs {
                exclude_pinned: false,
                folder_id: None,
                offset_date,
                offset_id,
                offset_peer: offset_peer.clone(),
                limit: 100,
                hash: 0,
            };
            let (dialogs, messages, users, chats) = match self.call(None, &req).await {
                Ok(tl::enums::messages::Dialogs::Dialogs(d)) => (d.dialogs, d.messages, d.users, d.chats),
                Ok(tl::enums::messages::Dialogs::Slice(d)) => (d.dialogs, d.messages, d.users, d.chats),
                Ok(tl::enums::messages::Dialogs::NotModified(_)) => return Ok(out),
                Err(e) => return Err(self.classify(e).await),
            };
            self.cache(&users, &chats).await;
            let date_of = |peer: &tl::enums::Peer, id: i32| {
                messages.iter().find_map(|m| match m {
                    tl::enums::Message::Message(m) if m.id == id && &m.peer_id == peer => Some(m.date),
                    tl::enums::Message::Service(m) if m.id == id && &m.peer_id == peer => Some(m.date),
                    _ => None,
                })
            };
            let mut last = None;
            for d in &dialogs {
                let tl::enums::Dialog::Dialog(d) = d else { continue };
                let date = date_of(&d.peer, d.top_message).unwrap_or(0);
                if i64::from(date) * 1000 < since_ms && !d.pinned {
                    return Ok(out);
                }
                if out.len() as u32 >= limit {
                    return Ok(out);
                }
                out.push(map::chat_id_of(&d.peer));
                last = Some((date, d.top_message, d.peer.clone()));
            }
            let Some((date, id, peer)) = last else { return Ok(out) };
            if dialogs.len() < 100 {
                return Ok(out);
            }
            offset_date = date;
            offset_id = id;
            offset_peer = self
                .session
                .cached(PeerId::from(&peer))
                .map(|p| tl::enums::InputPeer::from(&PeerRef { id: p.id(), auth: p.auth().unwrap_or_default() }))
                .unwrap_or(tl::enums::InputPeer::Empty);
        }
    }

    /// One page of a chat's history (messages, users, chats), never faster than the
    /// history interval.
    async fn history(&self, peer: tl::enums::InputPeer, offset_id: i32, limit: i32) -> Result<HistoryPage, RpcFailure> {
        self.history_turn().await;
        let req = tl::functions::messages::GetHistory {
            peer,
            offset_id,
            offset_date: 0,
            add_offset: 0,
            limit,
            max_id: 0,
            min_id: 0,
            hash: 0,
        };
        Ok(match self.call(None, &req).await? {
            tl::enums::messages::Messages::Messages(m) => (m.messages, m.users, m.chats),
            tl::enums::messages::Messages::Slice(m) => (m.messages, m.users, m.chats),
            tl::enums::messages::Messages::ChannelMessages(m) => (m.messages, m.users, m.chats),
            tl::enums::messages::Messages::NotModified(_) => Default::default(),
        })
    }

    async fn mark_read(&self, chat_id: &str, message_id: &str) -> Result<(), MessengerError> {
        let Ok(max_id) = message_id.parse::<i32>() else { return Ok(()) };
        let (r, peer) = self.input_peer(chat_id)?;
        let result = if r.id.kind() == PeerKind::Channel {
            let req = tl::functions::channels::ReadHistory { channel: tl::enums::InputChannel::from(&r), max_id };
            self.call(None, &req).await.map(|_| ())
        } else {
            let req = tl::functions::messages::ReadHistory { peer, max_id };
            self.call(None, &req).await.map(|tl::enums::messages::AffectedMessages::Messages(a)| {
                let _ = self.local.send(UpdatesLike::AffectedMessages(a));
            })
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.classify(e).await),
        }
    }

    async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, MessengerError> {
        if media.size > self.s.max_media_bytes {
            return Err(MessengerError::Rejected(format!(
                "{} is {} bytes, over the policy's limit of {} bytes",
                media.file_name, media.size, self.s.max_media_bytes
            )));
        }
        let (dc, location) = map::decode_location(&media.id)
            .ok_or_else(|| MessengerError::Rejected(format!("not a Telegram media id: {}", media.id)))?;
        let home = self.session.home_dc_id().map_err(storage)?;
        if dc != home && !self.session.authorized_in(dc) {
            // Files live in their own datacenter: carry the authorization there.
            let exported = match self.call(None, &tl::functions::auth::ExportAuthorization { dc_id: dc }).await {
                Ok(tl::enums::auth::ExportedAuthorization::Authorization(x)) => x,
                Err(e) => return Err(self.classify(e).await),
            };
            let req = tl::functions::auth::ImportAuthorization { id: exported.id, bytes: exported.bytes };
            if let Err(e) = self.call(Some(dc), &req).await {
                return Err(self.classify(e).await);
            }
            self.session.set_authorized_in(dc).await.map_err(storage)?;
        }
        let mut out = Vec::new();
        loop {
            let req = tl::functions::upload::GetFile {
                precise: false,
                cdn_supported: false,
                location: location.clone(),
                offset: out.len() as i64,
                limit: CHUNK,
            };
            let target = if dc == home { None } else { Some(dc) };
            let chunk = match self.call(target, &req).await {
                Ok(tl::enums::upload::File::File(f)) => f.bytes,
                Ok(tl::enums::upload::File::CdnRedirect(_)) => {
                    return Err(MessengerError::Unavailable("Telegram redirected the download to a CDN".into()));
                }
                Err(e) if e.is("FILE_REFERENCE_EXPIRED") => {
                    return Err(MessengerError::Rejected(
                        "the file reference expired; the file is no longer available".into(),
                    ));
                }
                Err(e) => return Err(self.classify(e).await),
            };
            let last = chunk.len() < CHUNK as usize;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > self.s.max_media_bytes {
                return Err(MessengerError::Rejected(format!("{} is over the policy's media limit", media.file_name)));
            }
            if last {
                return Ok(out);
            }
        }
    }

    async fn backfill(&self, chat_id: &str, before: Option<&str>, limit: u32) -> Result<Vec<Message>, MessengerError> {
        let (_, peer) = self.input_peer(chat_id)?;
        let offset_id = before.and_then(|b| b.parse().ok()).unwrap_or(0);
        let (msgs, users, chats) = match self.history(peer, offset_id, limit.min(100) as i32).await {
            Ok(p) => p,
            Err(e) => return Err(self.classify(e).await),
        };
        self.cache(&users, &chats).await;
        let peers = map::Peers::new(&users, &chats);
        Ok(msgs.iter().filter_map(|m| map::message(m, &peers, false)).collect())
    }

    async fn logout(&self) -> Result<(), MessengerError> {
        if self.session.identity().is_some()
            && let Err(e) = self.call(None, &tl::functions::auth::LogOut {}).await
        {
            tracing::warn!(account = self.s.account, "Telegram log-out call failed (the session is wiped anyway): {e}");
        }
        self.session.wipe().await.map_err(storage)?;
        *self.phase.lock().await = Phase::Start;
        Ok(())
    }
}

/// A MIME type from a file name's extension.
fn mime_of(name: &str) -> &'static str {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "mp3" => "audio/mpeg",
        "ogg" | "oga" => "audio/ogg",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => "application/octet-stream",
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
