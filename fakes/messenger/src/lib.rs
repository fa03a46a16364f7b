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
//! - `GET /v1/dialogs?since_ms=T&limit=N`, `GET /v1/history?chat_id=C&before=M&limit=N`
//!   — chats with history and a chat's messages before `M`, newest first;
//! - `POST /_script/inbound` (one message or a list), `POST /_script/history`
//!   (messages from before the connection), `GET /_script/sent`,
//!   `POST /_script/scan` (the phone scans the QR code), `POST /_script/fault`.

mod api;
mod history;
mod script;
mod updates;

pub use updates::*;

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
    /// Messages from before the account was connected (not in the stream).
    history: Vec<Update>,
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
        let app = api::router(shared.clone());
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

    /// Adds messages from before the account was connected (oldest first): the
    /// connector's history import reads them; the update stream never carries them.
    pub fn push_history(&self, updates: Vec<Update>) {
        if let Ok(mut i) = self.shared.inner.lock() {
            i.history.extend(updates);
        }
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
