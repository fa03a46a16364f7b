//! A scripted messenger: what a test (or a demo) says customers write is appended to
//! a durable log and served to the connector as updates after a cursor, the way
//! Telegram serves updates after a `pts`; what the connector sends is recorded,
//! idempotent by `random_id` per chat (as Telegram's `messages.sendMessage` is). It
//! runs in-process ([`ScriptedMessenger::start`]) or as its own process
//! (`fake-messenger`), so crash tests can restart the connector and have everything
//! after the last committed cursor delivered again.
//!
//! HTTP API (the connector's side under `/v1`, the script's under `/_script`):
//! - `GET /v1/connect?id=ID` — opens the connection `ID` and holds it open (a
//!   streamed response) until the client goes away, the way an MTProto session
//!   holds one TCP connection; every opening and closing is logged
//!   ([`ScriptedMessenger::connections`]), so a test can check that an account
//!   never had two live connections at once;
//! - `GET /v1/updates?after=N&timeout_ms=T` — events with `seq > N` (long poll);
//! - `POST /v1/send` `{chat_id, text, random_id, file?}` — `{message_id, duplicate}`
//!   (a file is `{kind, file_name, data}`, its bytes in base64);
//! - `POST /v1/edit` `{chat_id, message_id, text}` — 204, or `MESSAGE_ID_INVALID`,
//!   `MESSAGE_NOT_MODIFIED` (400);
//! - `GET /v1/sent?chat_id=C&random_id=R` — the message sent with that id, or 404;
//! - `GET /v1/session`, `POST /v1/logout` — login state (QR, or code then password);
//! - `POST /v1/login` `{code?, password?}` — a typed code or password;
//! - `GET /v1/media/{id}` — an attachment's bytes ([`media_bytes`]);
//! - `POST /_script/inbound` (one message or a list), `GET /_script/sent`,
//!   `POST /_script/scan` (the phone scans the QR code), `POST /_script/fault`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

pub use crmessenger_scripted_wire::*;

/// A fault to inject into the connector's side of the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    /// `send` or `updates`.
    pub op: String,
    /// HTTP status to answer with (429 carries `flood_wait_secs`).
    pub status: u16,
    /// How many calls fail.
    pub times: u32,
    /// For 429: seconds the client must wait (Telegram's FLOOD_WAIT_X).
    #[serde(default)]
    pub flood_wait_secs: u64,
    /// How many matching calls pass before the first one fails.
    #[serde(default)]
    pub skip: u32,
}

/// How to start a scripted messenger.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the durable logs (`updates.jsonl`, `sent.jsonl`); in memory
    /// when unset.
    pub dir: Option<PathBuf>,
    /// Start logged in (no QR scan needed).
    pub logged_in: bool,
    /// How long a QR code lives.
    pub qr_ttl: Duration,
    /// Log in by a code sent to the phone (instead of a QR code): the code to type.
    pub login_code: Option<String>,
    /// Then ask for this two-factor password.
    pub password: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            listen: ([127, 0, 0, 1], 0).into(),
            dir: None,
            logged_in: true,
            qr_ttl: Duration::from_secs(30),
            login_code: None,
            password: None,
        }
    }
}

/// One connection the connector held (`GET /v1/connect`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The id the client chose.
    pub id: String,
    /// When it opened (Unix ms).
    pub opened_ms: i64,
    /// When it closed (Unix ms), or `None` while it is open.
    pub closed_ms: Option<i64>,
}

/// Logs the connection closed when the streamed response is dropped (the client
/// went away or the server stopped).
struct ConnectionGuard {
    shared: Arc<Shared>,
    index: usize,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if let Ok(mut i) = self.shared.inner.lock()
            && let Some(c) = i.connections.get_mut(self.index)
        {
            c.closed_ms = Some(now_ms());
        }
    }
}

#[derive(Default)]
struct Inner {
    connections: Vec<Connection>,
    updates: Vec<Update>,
    sent: Vec<Sent>,
    faults: Vec<Fault>,
    logged_in: bool,
    qr: Option<(String, i64)>,
    send_calls: u64,
    /// The code was typed; the password (if any) is next.
    code_ok: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    notify: Notify,
    dir: Option<PathBuf>,
    qr_ttl: Duration,
    login_code: Option<String>,
    password: Option<String>,
}

/// A running scripted messenger.
#[derive(Clone)]
pub struct ScriptedMessenger {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

fn load<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> anyhow::Result<Vec<T>> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(Vec::new()) };
    // A torn last line (a crash while appending) is dropped.
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

impl ScriptedMessenger {
    /// Starts the messenger, reloading its logs from `options.dir`.
    pub async fn start(options: Options) -> anyhow::Result<Self> {
        let mut inner = Inner { logged_in: options.logged_in, ..Inner::default() };
        if let Some(dir) = &options.dir {
            std::fs::create_dir_all(dir)?;
            inner.updates = load(&dir.join("updates.jsonl"))?;
            inner.sent = load(&dir.join("sent.jsonl"))?;
            if dir.join("logged_in").exists() {
                inner.logged_in = true;
            }
        }
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            notify: Notify::new(),
            dir: options.dir.clone(),
            qr_ttl: options.qr_ttl,
            login_code: options.login_code.clone(),
            password: options.password.clone(),
        });
        let listener = tokio::net::TcpListener::bind(options.listen).await?;
        let addr = listener.local_addr()?;
        let app = router(shared.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { shared, addr })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Appends customer messages to the log; returns their `seq`s.
    pub fn push(&self, updates: Vec<Update>) -> Vec<u64> {
        push(&self.shared, updates)
    }

    /// Everything the connector sent, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.shared.inner.lock().map(|i| i.sent.clone()).unwrap_or_default()
    }

    /// Every connection the connector opened, in order of opening.
    pub fn connections(&self) -> Vec<Connection> {
        self.shared.inner.lock().map(|i| i.connections.clone()).unwrap_or_default()
    }

    /// How many send calls were made (including duplicates and failures).
    pub fn send_calls(&self) -> u64 {
        self.shared.inner.lock().map(|i| i.send_calls).unwrap_or_default()
    }

    /// Makes the next calls of an operation fail.
    pub fn inject(&self, fault: Fault) {
        if let Ok(mut i) = self.shared.inner.lock() {
            i.faults.push(fault);
        }
    }

    /// The phone scans the current QR code.
    pub fn scan(&self) {
        scan(&self.shared);
    }
}

fn append<T: Serialize>(dir: &Option<PathBuf>, file: &str, items: &[T]) {
    let Some(dir) = dir else { return };
    let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(file)) else { return };
    let mut buf = Vec::new();
    for item in items {
        if let Ok(line) = serde_json::to_string(item) {
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
        }
    }
    let _ = f.write_all(&buf);
}

fn push(shared: &Shared, mut updates: Vec<Update>) -> Vec<u64> {
    let Ok(mut inner) = shared.inner.lock() else { return Vec::new() };
    let mut seq = inner.updates.last().map(|u| u.seq).unwrap_or(0);
    for u in &mut updates {
        seq += 1;
        u.seq = seq;
        if u.sent_at_ms == 0 {
            u.sent_at_ms = now_ms();
        }
    }
    append(&shared.dir, "updates.jsonl", &updates);
    let seqs = updates.iter().map(|u| u.seq).collect();
    inner.updates.extend(updates);
    drop(inner);
    shared.notify.notify_waiters();
    seqs
}

fn scan(shared: &Shared) {
    if let Ok(mut i) = shared.inner.lock() {
        i.logged_in = true;
        i.qr = None;
    }
    if let Some(dir) = &shared.dir {
        let _ = std::fs::write(dir.join("logged_in"), b"1");
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/connect", get(connect))
        .route("/v1/updates", get(updates))
        .route("/v1/send", post(send))
        .route("/v1/edit", post(edit))
        .route("/v1/sent", get(find_sent))
        .route("/v1/session", get(session))
        .route("/v1/logout", post(logout))
        .route("/v1/login", post(login))
        .route("/v1/media/{id}", get(media))
        .route("/_script/inbound", post(inbound))
        .route("/_script/sent", get(script_sent))
        .route("/_script/scan", post(script_scan))
        .route("/_script/fault", post(script_fault))
        .with_state(shared)
}

#[derive(Deserialize)]
struct ConnectQuery {
    id: String,
}

/// Opens a connection and holds it: a newline every second until the client
/// goes away (then the guard logs it closed).
async fn connect(State(shared): State<Arc<Shared>>, Query(q): Query<ConnectQuery>) -> Response {
    let index = {
        let Ok(mut i) = shared.inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        i.connections.push(Connection { id: q.id, opened_ms: now_ms(), closed_ms: None });
        i.connections.len() - 1
    };
    let guard = ConnectionGuard { shared, index };
    let beats = futures::stream::unfold((guard, true), |(guard, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"\n")), (guard, false)))
    });
    axum::body::Body::from_stream(beats).into_response()
}

/// Takes one matching fault, if any.
fn fault(shared: &Shared, op: &str) -> Option<Response> {
    let mut inner = shared.inner.lock().ok()?;
    let f = inner.faults.iter_mut().find(|f| f.op == op && f.times > 0)?;
    if f.skip > 0 {
        f.skip -= 1;
        return None;
    }
    f.times -= 1;
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": format!("injected {}", f.status), "flood_wait_secs": f.flood_wait_secs });
    Some((status, Json(body)).into_response())
}

fn not_logged_in() -> Response {
    (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": "AUTH_KEY_UNREGISTERED" }))).into_response()
}

#[derive(Deserialize)]
struct UpdatesQuery {
    after: u64,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn updates(State(s): State<Arc<Shared>>, Query(q): Query<UpdatesQuery>) -> Response {
    if let Some(r) = fault(&s, "updates") {
        return r;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.timeout_ms.min(30_000));
    loop {
        let notified = s.notify.notified();
        {
            let Ok(inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
            if !inner.logged_in {
                return not_logged_in();
            }
            let last_seq = inner.updates.last().map(|u| u.seq).unwrap_or(0);
            let start = inner.updates.partition_point(|u| u.seq <= q.after);
            let end = (start + q.limit.unwrap_or(500).clamp(1, 1000)).min(inner.updates.len());
            if start < end || tokio::time::Instant::now() >= deadline {
                return Json(Updates { updates: inner.updates[start..end].to_vec(), last_seq }).into_response();
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn send(State(s): State<Arc<Shared>>, Json(req): Json<SendRequest>) -> Response {
    if let Ok(mut i) = s.inner.lock() {
        i.send_calls += 1;
    }
    if let Some(r) = fault(&s, "send") {
        return r;
    }
    let Ok(mut inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    if !inner.logged_in {
        return not_logged_in();
    }
    if req.text.trim().is_empty() && req.file.is_none() {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "MESSAGE_EMPTY" }))).into_response();
    }
    // Like Telegram: at most 4,096 UTF-16 units in one message.
    if req.text.encode_utf16().count() > 4096 {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "MESSAGE_TOO_LONG" }))).into_response();
    }
    if let Some(prev) = inner.sent.iter().find(|m| m.chat_id == req.chat_id && m.random_id == req.random_id) {
        return Json(SendResponse { message_id: prev.message_id.clone(), duplicate: true }).into_response();
    }
    let sent = Sent {
        chat_id: req.chat_id,
        text: req.text,
        file: req.file,
        edits: Vec::new(),
        random_id: req.random_id,
        message_id: format!("out-{}", inner.sent.len() + 1),
        at_ms: now_ms(),
    };
    append(&s.dir, "sent.jsonl", std::slice::from_ref(&sent));
    let message_id = sent.message_id.clone();
    // Like every messenger, the account's update stream reports what it sent.
    let echo = Update { message_id: message_id.clone(), ..from_owner(&sent.chat_id, "", &sent.text) };
    inner.sent.push(sent);
    drop(inner);
    push(&s, vec![echo]);
    Json(SendResponse { message_id, duplicate: false }).into_response()
}

/// Edits a message the account sent, like Telegram's `messages.editMessage`: an
/// unknown message is `MESSAGE_ID_INVALID`, the same text `MESSAGE_NOT_MODIFIED`;
/// the account's update stream reports the edit.
async fn edit(State(s): State<Arc<Shared>>, Json(req): Json<EditRequest>) -> Response {
    let bad = |e: &str| (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e }))).into_response();
    let Ok(mut inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    if !inner.logged_in {
        return not_logged_in();
    }
    if req.text.trim().is_empty() {
        return bad("MESSAGE_EMPTY");
    }
    if req.text.encode_utf16().count() > 4096 {
        return bad("MESSAGE_TOO_LONG");
    }
    let Some(m) = inner.sent.iter_mut().find(|m| m.chat_id == req.chat_id && m.message_id == req.message_id) else {
        return bad("MESSAGE_ID_INVALID");
    };
    if m.text == req.text {
        return bad("MESSAGE_NOT_MODIFIED");
    }
    let before = std::mem::replace(&mut m.text, req.text.clone());
    m.edits.push(before);
    drop(inner);
    let echo =
        Update { kind: "edit".into(), message_id: req.message_id.clone(), ..from_owner(&req.chat_id, "", &req.text) };
    push(&s, vec![echo]);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct SentQuery {
    chat_id: String,
    random_id: i64,
}

async fn find_sent(State(s): State<Arc<Shared>>, Query(q): Query<SentQuery>) -> Response {
    let Ok(inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    match inner.sent.iter().find(|m| m.chat_id == q.chat_id && m.random_id == q.random_id) {
        Some(m) => Json(m.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn session(State(s): State<Arc<Shared>>) -> Json<Session> {
    let mut inner = s.inner.lock().unwrap_or_else(|e| e.into_inner());
    if inner.logged_in {
        return Json(Session {
            state: "logged_in".into(),
            qr: None,
            qr_expires_at_ms: None,
            user_id: Some("777000".into()),
            username: Some("scripted_shop".into()),
            phone: Some("+15550001122".into()),
        });
    }
    if s.login_code.is_some() {
        let state = if inner.code_ok { "password" } else { "code" };
        return Json(Session {
            state: state.into(),
            qr: None,
            qr_expires_at_ms: None,
            user_id: None,
            username: None,
            phone: None,
        });
    }
    let now = now_ms();
    if inner.qr.as_ref().is_none_or(|(_, exp)| *exp <= now) {
        let code = format!("scripted://login?token={}", uuid::Uuid::new_v4().simple());
        inner.qr = Some((code, now + s.qr_ttl.as_millis() as i64));
    }
    let (qr, exp) = inner.qr.clone().unwrap_or_default();
    Json(Session {
        state: "qr".into(),
        qr: Some(qr),
        qr_expires_at_ms: Some(exp),
        user_id: None,
        username: None,
        phone: None,
    })
}

/// A typed login code or password.
#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `POST /v1/login`: the code, then (if one is set) the password; a wrong one is
/// 400 with Telegram's error name.
async fn login(State(s): State<Arc<Shared>>, Json(f): Json<LoginForm>) -> Response {
    let Ok(mut inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let Some(expected) = &s.login_code else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "this messenger logs in by QR code" })))
            .into_response();
    };
    if !inner.code_ok {
        if f.code.as_deref() != Some(expected.as_str()) {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "PHONE_CODE_INVALID" })))
                .into_response();
        }
        inner.code_ok = true;
    }
    if let Some(pw) = &s.password
        && !inner.logged_in
    {
        match f.password.as_deref() {
            None => return StatusCode::NO_CONTENT.into_response(),
            Some(p) if p == pw.as_str() => {}
            Some(_) => {
                return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "PASSWORD_HASH_INVALID" })))
                    .into_response();
            }
        }
    }
    inner.logged_in = true;
    if let Some(dir) = &s.dir {
        let _ = std::fs::write(dir.join("logged_in"), b"");
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn logout(State(s): State<Arc<Shared>>) -> StatusCode {
    if let Ok(mut i) = s.inner.lock() {
        i.logged_in = false;
    }
    if let Some(dir) = &s.dir {
        let _ = std::fs::remove_file(dir.join("logged_in"));
    }
    StatusCode::NO_CONTENT
}

async fn media(Path(id): Path<String>) -> Response {
    // Deterministic content, so a test can check what arrived: `media_bytes(id)`.
    let body = media_bytes(&id);
    ([("content-type", "application/octet-stream")], body).into_response()
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Update>),
    One(Box<Update>),
}

async fn inbound(State(s): State<Arc<Shared>>, Json(body): Json<OneOrMany>) -> Json<Vec<u64>> {
    let updates = match body {
        OneOrMany::Many(v) => v,
        OneOrMany::One(u) => vec![*u],
    };
    Json(push(&s, updates))
}

async fn script_sent(State(s): State<Arc<Shared>>) -> Json<Vec<Sent>> {
    Json(s.inner.lock().map(|i| i.sent.clone()).unwrap_or_default())
}

async fn script_scan(State(s): State<Arc<Shared>>) -> StatusCode {
    scan(&s);
    StatusCode::NO_CONTENT
}

async fn script_fault(State(s): State<Arc<Shared>>, Json(f): Json<Fault>) -> StatusCode {
    if let Ok(mut i) = s.inner.lock() {
        i.faults.push(f);
    }
    StatusCode::NO_CONTENT
}

/// The bytes `GET /v1/media/{id}` serves: the id repeated, 1,024 bytes long, or
/// `n` bytes for an id ending in `*<n>`.
pub fn media_bytes(id: &str) -> Vec<u8> {
    let len = id.rsplit_once('*').and_then(|(_, n)| n.parse().ok()).unwrap_or(1024);
    id.bytes().cycle().take(len).collect()
}

/// A customer's text message in a private chat (the common case in tests).
pub fn text(chat: &str, message_id: &str, name: &str, text: &str) -> Update {
    Update {
        seq: 0,
        kind: "message".into(),
        chat_id: chat.into(),
        chat_kind: ChatKind::Private,
        chat_title: None,
        members: None,
        message_id: message_id.into(),
        sender: Sender { id: chat.into(), name: name.into(), phone: None, username: None },
        text: text.into(),
        media: None,
        location: None,
        contact: None,
        sent_at_ms: 0,
        outgoing: false,
        customer: None,
    }
}

/// What `sender` (`(id, name)`) writes in the group `chat` titled `title`, of
/// `members` members.
pub fn group_text(
    chat: &str,
    title: &str,
    members: u32,
    message_id: &str,
    sender: (&str, &str),
    text_: &str,
) -> Update {
    Update {
        chat_kind: ChatKind::Group,
        chat_title: Some(title.into()),
        members: Some(members),
        sender: Sender { id: sender.0.into(), name: sender.1.into(), phone: None, username: None },
        ..text(chat, message_id, sender.1, text_)
    }
}

/// The customer's receipt for message `message_id` the account sent to `chat`:
/// `delivered` or `read`.
pub fn receipt(chat: &str, message_id: &str, status: &str) -> Update {
    Update { kind: status.into(), ..text(chat, message_id, "", "") }
}

/// What the account's owner writes to `chat` from their own phone.
pub fn from_owner(chat: &str, message_id: &str, text_: &str) -> Update {
    Update {
        sender: Sender { id: OWNER_ID.into(), name: OWNER_NAME.into(), phone: None, username: None },
        outgoing: true,
        customer: Some(Sender { id: chat.into(), ..Sender::default() }),
        ..text(chat, message_id, OWNER_NAME, text_)
    }
}

/// The scripted account's own user id and name (the sender of its outgoing messages).
pub const OWNER_ID: &str = "me";
/// See [`OWNER_ID`].
pub const OWNER_NAME: &str = "Shop Owner";
