//! A fake of the WhatsApp Business Cloud API (Graph API) that enforces its
//! documented contract: Bearer auth, `messaging_product`, text length, unique
//! wamids, the 24-hour customer-service window (error 131047, synchronous or as a
//! failed status), throughput (130429) and pair rate (131056) limits, media
//! upload and download under expiring URLs, and webhooks signed with the app
//! secret (`X-Hub-Signature-256`), retried with backoff until answered 200, with
//! switches to skip, reorder and duplicate statuses. Served over TLS when given
//! an identity.

mod hooks;
mod media;
mod messages;

use hooks::{serve, webhooks};
use media::{download, node, upload};
use messages::{base64_sha, envelope, messages};

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use crmessenger_fake_amocrm::TlsIdentity;
use crmessenger_testkit::TestClock;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The API version in paths.
pub const VERSION: &str = "v21.0";
/// How long a media download URL lives.
pub const MEDIA_URL_TTL_MS: i64 = 5 * 60 * 1000;
const WINDOW_MS: i64 = 24 * 3600 * 1000;

/// How a free-form message outside the 24-hour window is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WindowError {
    /// The send call fails with 131047.
    #[default]
    Sync,
    /// The send is accepted; a `failed` status with 131047 follows.
    Status,
}

/// How the fake behaves.
#[derive(Debug, Clone)]
pub struct GraphConfig {
    /// The system-user token it accepts.
    pub access_token: String,
    /// The app secret webhooks are signed with.
    pub app_secret: String,
    /// The business number.
    pub phone_number_id: String,
    /// Its display number.
    pub display_phone_number: String,
    /// Where webhooks go (the gateway's `/whatsapp/webhook`).
    pub webhook_url: Option<String>,
    /// Extra roots trusted for the webhook URL.
    pub webhook_roots_pem: Vec<String>,
    /// Serve over TLS.
    pub tls: Option<TlsIdentity>,
    /// How the 24-hour window is enforced.
    pub window_error: WindowError,
    /// Messages per second per number (inbound and outbound).
    pub throughput_per_sec: usize,
    /// Least time between two messages to one recipient.
    pub pair_interval_ms: i64,
    /// Address to listen on (default: 127.0.0.1, an OS-chosen port).
    pub listen: SocketAddr,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            access_token: "EAAG-test-token".into(),
            app_secret: "meta-app-secret".into(),
            phone_number_id: "106540352242922".into(),
            display_phone_number: "+1 555 0100".into(),
            webhook_url: None,
            webhook_roots_pem: Vec::new(),
            tls: None,
            window_error: WindowError::Sync,
            throughput_per_sec: 80,
            pair_interval_ms: 6_000,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Status webhook switches.
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusScript {
    /// Leave `delivered` out (it may be skipped).
    pub skip_delivered: bool,
    /// Send them newest first.
    pub reverse: bool,
    /// Send each twice.
    pub duplicate: bool,
    /// Stop after `sent` (the customer has not read it yet).
    pub only_sent: bool,
    /// Deliver them before answering the send (waiting until the receiver has
    /// accepted them): the statuses overtake the send's answer.
    pub before_answer: bool,
}

/// A message the business sent.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// wamid.
    pub id: String,
    /// Recipient.
    pub to: String,
    /// `text`, `template`, `image`, `document`, …
    pub kind: String,
    /// The request body.
    pub body: Value,
}

/// A webhook delivery attempt.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The body.
    pub body: String,
    /// What the receiver answered (0: no answer).
    pub status: u16,
}

/// A send the fake refused for a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// Recipient.
    pub to: String,
    /// The Graph API error code (130429 throughput, 131056 pair rate).
    pub code: u32,
}

#[derive(Default)]
struct World {
    last_inbound: HashMap<String, i64>,
    last_sent_to: HashMap<String, i64>,
    recent: VecDeque<i64>,
    sent: Vec<SentMessage>,
    refused: Vec<Refusal>,
    reads: Vec<String>,
    media: HashMap<String, (String, Vec<u8>)>,
    urls: HashMap<String, (String, i64)>,
    hooks: VecDeque<(String, u32)>,
    deliveries: Vec<Delivery>,
    statuses: StatusScript,
    bad_signatures: u32,
    next_in: u64,
}

struct Shared {
    config: GraphConfig,
    clock: TestClock,
    base_url: String,
    world: Mutex<World>,
    http: reqwest::Client,
    kick: tokio::sync::Notify,
}

/// A running fake Graph API.
pub struct FakeGraph {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for FakeGraph {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn error(status: StatusCode, code: u32, message: &str, details: &str) -> Response {
    let body = json!({ "error": {
        "message": message, "type": "OAuthException", "code": code,
        "error_data": { "messaging_product": "whatsapp", "details": details },
        "fbtrace_id": "AbCdEfGh"
    }});
    (status, axum::Json(body)).into_response()
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl FakeGraph {
    /// Starts on `config.listen`.
    pub async fn start(config: GraphConfig) -> anyhow::Result<FakeGraph> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let acceptor = match &config.tls {
            Some(id) => {
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(crmessenger_fake_amocrm::tls::server_config(id)?)))
            }
            None => None,
        };
        let base_url = format!("{}://{addr}", if acceptor.is_some() { "https" } else { "http" });
        let http = crmessenger_fake_amocrm::tls::hook_client(&config.webhook_roots_pem)?;
        let shared = Arc::new(Shared {
            config,
            clock: TestClock::new(),
            base_url,
            world: Mutex::new(World::default()),
            http,
            kick: tokio::sync::Notify::new(),
        });
        let router = Router::new()
            .route("/{version}/{node}/messages", post(messages))
            .route("/{version}/{node}/media", post(upload))
            .route("/{version}/{node}", get(node))
            .route("/download/{token}", get(download))
            .with_state(shared.clone());
        let tasks = vec![tokio::spawn(serve(listener, acceptor, router)), tokio::spawn(webhooks(shared.clone()))];
        Ok(FakeGraph { shared, tasks })
    }

    /// `https://127.0.0.1:PORT/v21.0`: the Graph API base the adapter is given.
    pub fn graph_url(&self) -> String {
        format!("{}/{VERSION}", self.shared.base_url)
    }

    /// The configuration.
    pub fn config(&self) -> &GraphConfig {
        &self.shared.config
    }

    /// The fake's clock (the 24-hour window, URL expiry).
    pub fn clock(&self) -> TestClock {
        self.shared.clock.clone()
    }

    /// Sets how status webhooks go out from now on.
    pub fn set_statuses(&self, script: StatusScript) {
        self.world().statuses = script;
    }

    /// Signs the next `n` webhooks with a wrong key.
    pub fn sign_badly(&self, n: u32) {
        self.world().bad_signatures = n;
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.shared.world.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Messages the business sent.
    pub fn sent(&self) -> Vec<SentMessage> {
        self.world().sent.clone()
    }

    /// Customer messages marked read.
    pub fn reads(&self) -> Vec<String> {
        self.world().reads.clone()
    }

    /// Webhook delivery attempts.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.world().deliveries.clone()
    }

    /// Sends refused for the throughput or pair-rate limit, in order.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.world().refused.clone()
    }

    /// Webhooks not yet answered 200.
    pub fn pending_webhooks(&self) -> usize {
        self.world().hooks.len()
    }

    /// A customer writes. `wa_id` (phone) and `user_id` (BSUID) as Meta sends them:
    /// since 2026 a user with a username may come with the BSUID only. Returns the wamid.
    pub fn customer_says(&self, wa_id: Option<&str>, user_id: Option<&str>, name: &str, text: &str) -> String {
        self.inbound(wa_id, user_id, name, json!({ "type": "text", "text": { "body": text } }))
    }

    /// A customer sends a picture; its media id is valid for download.
    pub fn customer_sends_image(&self, wa_id: &str, name: &str, mime: &str, bytes: Vec<u8>, caption: &str) -> String {
        let media_id = format!("{}", 900_000 + self.world().media.len());
        let sha = base64_sha(&bytes);
        self.world().media.insert(media_id.clone(), (mime.into(), bytes));
        self.inbound(
            Some(wa_id),
            None,
            name,
            json!({ "type": "image", "image": { "id": media_id, "mime_type": mime, "sha256": sha, "caption": caption } }),
        )
    }

    /// On a coexistence number, the owner writes to `wa_id` from the WhatsApp
    /// Business app: Meta reports it as an `smb_message_echoes` webhook. Returns
    /// the wamid.
    pub fn owner_says_from_the_app(&self, wa_id: &str, text: &str) -> String {
        let c = &self.shared.config;
        let now = self.shared.clock.now_ms();
        let mut w = self.world();
        w.next_in += 1;
        let id = format!("wamid.ECHO{}{}", w.next_in, uuid::Uuid::new_v4().simple());
        let echo = json!({ "from": c.display_phone_number, "to": wa_id, "id": id,
            "timestamp": (now / 1000).to_string(), "type": "text", "text": { "body": text } });
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": c.display_phone_number, "phone_number_id": c.phone_number_id },
            "message_echoes": [echo],
        });
        let body = json!({ "object": "whatsapp_business_account", "entry": [{ "id": "102290129340398",
            "changes": [{ "field": "smb_message_echoes", "value": value }] }] });
        w.hooks.push_back((body.to_string(), 0));
        drop(w);
        self.shared.kick.notify_one();
        id
    }

    fn inbound(&self, wa_id: Option<&str>, user_id: Option<&str>, name: &str, content: Value) -> String {
        let c = &self.shared.config;
        let now = self.shared.clock.now_ms();
        let mut w = self.world();
        w.next_in += 1;
        let id = format!("wamid.IN{}{}", w.next_in, uuid::Uuid::new_v4().simple());
        let key = wa_id.or(user_id).unwrap_or_default().to_string();
        w.last_inbound.insert(key.clone(), now);
        let mut contact = json!({ "profile": { "name": name } });
        let mut message = json!({ "id": id, "timestamp": (now / 1000).to_string() });
        if let Some(wa) = wa_id {
            contact["wa_id"] = json!(wa);
            message["from"] = json!(wa);
        }
        if let Some(u) = user_id {
            contact["user_id"] = json!(u);
            message["from_user_id"] = json!(u);
        }
        for (k, v) in content.as_object().into_iter().flatten() {
            message[k] = v.clone();
        }
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": c.display_phone_number, "phone_number_id": c.phone_number_id },
            "contacts": [contact],
            "messages": [message],
        });
        w.hooks.push_back((envelope(value), 0));
        drop(w);
        self.shared.kick.notify_one();
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
