//! A fake of the WhatsApp Business Cloud API (Graph API) that enforces its
//! documented contract: Bearer auth, `messaging_product`, text length, unique
//! wamids, the 24-hour customer-service window (error 131047, synchronous or as a
//! failed status), throughput (130429) and pair rate (131056) limits, media
//! upload and download under expiring URLs, and webhooks signed with the app
//! secret (`X-Hub-Signature-256`), retried with backoff until answered 200, with
//! switches to skip, reorder and duplicate statuses. Served over TLS when given
//! an identity.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
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

fn base64_sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn envelope(value: Value) -> String {
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": value }] }] })
        .to_string()
}

fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", shared.config.access_token))
}

fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token - Cannot parse access token", "")
}

async fn messages(
    State(s): State<Arc<Shared>>,
    Path((_, node)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let before_answer = s.world.lock().unwrap().statuses.before_answer;
    let response = accept_message(&s, &node, &headers, &body);
    if before_answer && response.status().is_success() {
        // The statuses go out first: the answer waits until they are accepted.
        let pending = || !s.world.lock().unwrap().hooks.is_empty();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pending() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    response
}

fn accept_message(s: &Arc<Shared>, node: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    if !authorized(s, headers) {
        return unauthorized();
    }
    if node != s.config.phone_number_id {
        return error(StatusCode::BAD_REQUEST, 100, "Unsupported post request", "unknown phone number id");
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "the body is not JSON");
    };
    if req["messaging_product"] != "whatsapp" {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "messaging_product is required");
    }
    if req["status"] == "read" {
        let Some(id) = req["message_id"].as_str() else {
            return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "message_id is required");
        };
        s.world.lock().unwrap().reads.push(id.to_string());
        return axum::Json(json!({ "success": true })).into_response();
    }
    let Some(to) = req["to"].as_str().map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "to is required");
    };
    let kind = req["type"].as_str().unwrap_or("text").to_string();
    match kind.as_str() {
        "text" => {
            let text = req["text"]["body"].as_str().unwrap_or_default();
            if text.is_empty() || text.chars().count() > 4096 {
                return error(
                    StatusCode::BAD_REQUEST,
                    100,
                    "Invalid parameter",
                    "text.body must have 1 to 4096 characters",
                );
            }
        }
        "template" => {
            if req["template"]["name"].as_str().is_none() || req["template"]["language"]["code"].as_str().is_none() {
                return error(StatusCode::BAD_REQUEST, 132001, "Template name does not exist in the translation", "");
            }
        }
        "image" | "document" | "audio" | "video" => {
            let id = req[&kind]["id"].as_str().unwrap_or_default();
            if !s.world.lock().unwrap().media.contains_key(id) && req[&kind]["link"].as_str().is_none() {
                return error(StatusCode::BAD_REQUEST, 131053, "Media upload error", "unknown media id");
            }
        }
        _ => return error(StatusCode::BAD_REQUEST, 131051, "Message type unknown", ""),
    }
    let now = s.clock.now_ms();
    let mut w = s.world.lock().unwrap();
    while w.recent.front().is_some_and(|t| *t <= now - 1000) {
        w.recent.pop_front();
    }
    if w.recent.len() >= s.config.throughput_per_sec {
        w.refused.push(Refusal { to: to.clone(), code: 130429 });
        return error(
            StatusCode::BAD_REQUEST,
            130429,
            "Rate limit hit",
            "Cloud API message throughput has been reached",
        );
    }
    if w.last_sent_to.get(&to).is_some_and(|t| now - t < s.config.pair_interval_ms) {
        w.refused.push(Refusal { to: to.clone(), code: 131056 });
        return error(StatusCode::BAD_REQUEST, 131056, "(Business Account, Consumer Account) pair rate limit hit", "");
    }
    let outside = kind != "template" && w.last_inbound.get(&to).is_none_or(|t| now - t > WINDOW_MS);
    if outside && s.config.window_error == WindowError::Sync {
        return error(
            StatusCode::BAD_REQUEST,
            131047,
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        );
    }
    w.recent.push_back(now);
    w.last_sent_to.insert(to.clone(), now);
    let id = format!("wamid.OUT{}", uuid::Uuid::new_v4().simple());
    w.sent.push(SentMessage { id: id.clone(), to: to.clone(), kind, body: req.clone() });
    let callback = req["biz_opaque_callback_data"].as_str().map(str::to_string);
    let script = w.statuses;
    let mut steps: Vec<&str> = if outside {
        vec!["failed"]
    } else if script.only_sent {
        vec!["sent"]
    } else if script.skip_delivered {
        vec!["sent", "read"]
    } else {
        vec!["sent", "delivered", "read"]
    };
    if script.reverse {
        steps.reverse();
    }
    for step in steps {
        let mut status = json!({ "id": id, "status": step, "timestamp": (now / 1000).to_string(), "recipient_id": to });
        if let Some(cb) = &callback {
            status["biz_opaque_callback_data"] = json!(cb);
        }
        if step == "failed" {
            status["errors"] = json!([{ "code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
                "error_data": { "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number." } }]);
        }
        let value = json!({ "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": s.config.display_phone_number, "phone_number_id": s.config.phone_number_id },
            "statuses": [status] });
        let body = envelope(value);
        if script.duplicate {
            w.hooks.push_back((body.clone(), 0));
        }
        w.hooks.push_back((body, 0));
    }
    drop(w);
    s.kick.notify_one();
    axum::Json(json!({ "messaging_product": "whatsapp", "contacts": [{ "input": to, "wa_id": to }], "messages": [{ "id": id }] }))
        .into_response()
}

async fn upload(State(s): State<Arc<Shared>>, headers: HeaderMap, mut form: Multipart) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let (mut file, mut mime, mut product) = (None, None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("file") => {
                let ct = field.content_type().map(str::to_string);
                file = field.bytes().await.ok().map(|b| (ct, b.to_vec()));
            }
            Some("type") => mime = field.text().await.ok(),
            Some("messaging_product") => product = field.text().await.ok(),
            _ => {}
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "messaging_product is required");
    }
    let (Some((_, bytes)), Some(mime)) = (file, mime) else {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "file and type are required");
    };
    let cap = match mime.split('/').next().unwrap_or_default() {
        "image" => 5 << 20,
        "audio" | "video" => 16 << 20,
        _ => 100 << 20,
    };
    if bytes.len() > cap || mime == "audio/ogg; codecs=vorbis" {
        return error(StatusCode::BAD_REQUEST, 131053, "Media upload error", "file too large or unsupported type");
    }
    let mut w = s.world.lock().unwrap();
    let id = format!("{}", 800_000 + w.media.len());
    w.media.insert(id.clone(), (mime, bytes));
    axum::Json(json!({ "id": id })).into_response()
}

async fn node(State(s): State<Arc<Shared>>, Path((_, node)): Path<(String, String)>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    if node == s.config.phone_number_id {
        return axum::Json(
            json!({ "id": node, "display_phone_number": s.config.display_phone_number, "verified_name": "Shop" }),
        )
        .into_response();
    }
    let mut w = s.world.lock().unwrap();
    let Some((mime, bytes)) = w.media.get(&node).cloned() else {
        return error(StatusCode::NOT_FOUND, 100, "Unsupported get request", "unknown object");
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    w.urls.insert(token.clone(), (node.clone(), s.clock.now_ms() + MEDIA_URL_TTL_MS));
    axum::Json(json!({ "messaging_product": "whatsapp", "url": format!("{}/download/{token}", s.base_url),
        "mime_type": mime, "sha256": base64_sha(&bytes), "file_size": bytes.len(), "id": node }))
    .into_response()
}

async fn download(State(s): State<Arc<Shared>>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let w = s.world.lock().unwrap();
    match w.urls.get(&token) {
        Some((id, exp)) if *exp > s.clock.now_ms() => {
            let (mime, bytes) = w.media[id].clone();
            ([("content-type", mime)], bytes).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Delivers queued webhooks in order; a webhook not answered 200 is retried with
/// backoff (as Meta does, for up to 7 days) and holds the ones behind it.
async fn webhooks(s: Arc<Shared>) {
    loop {
        let next = s.world.lock().unwrap().hooks.front().cloned();
        let Some((body, attempts)) = next else {
            s.kick.notified().await;
            continue;
        };
        let Some(url) = s.config.webhook_url.clone() else {
            s.kick.notified().await;
            continue;
        };
        let key = {
            let mut w = s.world.lock().unwrap();
            if w.bad_signatures > 0 {
                w.bad_signatures -= 1;
                "not-the-app-secret".to_string()
            } else {
                s.config.app_secret.clone()
            }
        };
        let sig = signature(&key, body.as_bytes());
        let answer = s
            .http
            .post(&url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sig)
            .body(body.clone())
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        let status = answer.map(|r| r.status().as_u16()).unwrap_or(0);
        let retry = {
            let mut w = s.world.lock().unwrap();
            w.deliveries.push(Delivery { body: body.clone(), status });
            if status == 200 {
                w.hooks.pop_front();
                false
            } else {
                if let Some(front) = w.hooks.front_mut() {
                    front.1 = attempts + 1;
                }
                true
            }
        };
        if retry {
            tokio::time::sleep(Duration::from_millis(100u64 << attempts.min(6))).await;
        }
    }
}

async fn serve(listener: TcpListener, acceptor: Option<tokio_rustls::TlsAcceptor>, router: Router) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (router, acceptor) = (router.clone(), acceptor.clone());
        tokio::spawn(async move {
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let http = hyper::server::conn::http1::Builder::new();
            let _ = match acceptor {
                Some(a) => match a.accept(tcp).await {
                    Ok(tls) => http.serve_connection(hyper_util::rt::TokioIo::new(tls), svc).await,
                    Err(_) => return,
                },
                None => http.serve_connection(hyper_util::rt::TokioIo::new(tcp), svc).await,
            };
        });
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
