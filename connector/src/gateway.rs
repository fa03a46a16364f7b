//! The gateway: the shared, stateless webhook receiver (two or more replicas in a
//! cluster; in-process in standalone mode). It authenticates each hook, routes it
//! by the keys connectors registered, writes it into the database for that
//! account, and answers 200 only after the write; the connector picks the row up
//! (LISTEN/NOTIFY, or a poll as fallback), so a connector that is down loses
//! nothing.
//!
//! Routes:
//! - `POST /amocrm/webhook/{token}`: amoCRM REST webhooks (unsigned; the secret
//!   token in each binding's URL authenticates them). Routed by the binding's CRM
//!   and the lead id; the note is re-read over REST by the connector before it is
//!   acted on, so a forged body can at most cause a read.
//! - `POST /amocrm/chats/{scope_id}`: amoCRM Chats API hooks (a manager wrote in a
//!   chat), signed with HMAC-SHA1 of the raw body under the installation's channel
//!   secret (`X-Signature`; a bad or missing signature is 401). Routed by the
//!   conversation id the connector registered when it first posted in that chat.
//!   amoCRM sends each hook once; connectors also read chat history for any they
//!   missed.
//! - `GET /media/{id}?exp=…&sig=…`: an attachment for amoCRM to download, under a
//!   URL signed (HMAC-SHA256 with the installation's key kept in the database) and
//!   expiring after a day; a bad signature is 403, an expired URL 410.
//! - `GET /healthz`, `/readyz`.
//!
//! Bad input never has a side effect: an unknown token is 404, a malformed body 400,
//! a replayed hook is stored once, a media URL with a bad signature writes nothing.
//! A write that cannot finish within the sender's deadline is answered 503, so the
//! sender (amoCRM retries REST webhooks) tries again.
//!
//! Load: at most [`MAX_IN_FLIGHT`] requests at a time on the routes whose senders
//! retry (REST webhooks, WhatsApp webhooks, media); beyond that they are shed at
//! once with 503 instead of queueing. Chats API hooks are never shed: amoCRM sends
//! each one once. Slow clients are cut by the deadlines of [`crate::http`].

use crate::messenger::OutgoingMedia;
use crate::store::Store;
use axum::Router;
use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use crmessenger_crm::clock::{Clock, SystemClock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;

/// Route kind: binding → the CRM key its leads are routed by.
pub const ROUTE_BINDING_CRM: &str = "binding-crm";
/// The longest the gateway takes before answering (amoCRM waits about 2 s).
pub const DEADLINE: Duration = Duration::from_millis(1500);
/// The largest body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Requests in progress at once on the routes whose senders retry (per replica);
/// more are answered 503 at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Route kind: WhatsApp phone number id → account.
pub const ROUTE_WA_NUMBER: &str = "wa-number";

/// The installation's Meta app: its secret signs WhatsApp webhooks, the verify
/// token answers Meta's subscription handshake.
#[derive(Clone)]
pub struct WhatsAppApp {
    /// App secret.
    pub app_secret: String,
    /// Verify token.
    pub verify_token: String,
}

impl std::fmt::Debug for WhatsAppApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WhatsAppApp(<redacted>)")
    }
}

/// The gateway's state.
#[derive(Clone)]
pub struct Gateway {
    store: Store,
    chats_secret: Option<std::sync::Arc<str>>,
    whatsapp: Option<std::sync::Arc<WhatsAppApp>>,
}

impl Gateway {
    /// A gateway writing into `store`.
    pub fn new(store: Store) -> Self {
        Self { store, chats_secret: None, whatsapp: None }
    }

    /// Accepts WhatsApp webhooks of this Meta app (none: the route answers 404).
    pub fn with_whatsapp(mut self, app: Option<WhatsAppApp>) -> Self {
        self.whatsapp = app.filter(|a| !a.app_secret.is_empty()).map(std::sync::Arc::new);
        self
    }

    /// Accepts Chats API hooks signed with `secret` (none: the route answers 404).
    pub fn with_chats_secret(mut self, secret: Option<String>) -> Self {
        self.chats_secret = secret.filter(|s| !s.is_empty()).map(Into::into);
        self
    }

    /// The router (serve it with [`crate::http::serve`] for the deadlines).
    pub fn router(self) -> Router {
        // One budget shared by these routes: their senders retry a 503.
        let shed = tower::ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "busy; try again\n")
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(MAX_IN_FLIGHT));
        let retried = Router::new()
            .route("/amocrm/webhook/{token}", post(amocrm_rest))
            .route("/whatsapp/webhook", get(whatsapp_verify).post(whatsapp_webhook))
            .route("/media/{id}", get(media))
            .route_layer(shed);
        // Chats API hooks come once and are never retried: never shed.
        Router::new()
            .route("/amocrm/chats/{scope_id}", post(amocrm_chats))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .merge(retried)
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }
}

async fn ready(State(g): State<Gateway>) -> Response {
    match sqlx::query("SELECT 1").execute(g.store.pool()).await {
        Ok(_) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

async fn amocrm_rest(State(g): State<Gateway>, Path(token): Path<String>, body: Bytes) -> Response {
    let work = async {
        let Some(binding) = g.store.binding_of_token(&token).await? else {
            return Ok((StatusCode::NOT_FOUND, "unknown webhook URL\n").into_response());
        };
        let hook = match crmessenger_crm::amocrm::webhook::parse(&body) {
            Ok(h) => h,
            Err(e) => return Ok((StatusCode::BAD_REQUEST, format!("malformed webhook: {e}\n")).into_response()),
        };
        let Some(crm) = g.store.route(ROUTE_BINDING_CRM, &binding).await? else {
            return Ok((StatusCode::NOT_FOUND, "the binding has no connector yet\n").into_response());
        };
        let mut stored = 0;
        for (lead_id, note_id) in &hook.lead_notes {
            let Some((account, _chat)) = g.store.chat_of_lead(&crm, *lead_id).await? else {
                // A lead no connector knows (not ours): accepted, nothing to do.
                continue;
            };
            let payload = serde_json::json!({ "lead_id": lead_id, "note_id": note_id }).to_string();
            if g.store
                .put_event(&account, "amocrm-note", &format!("note:{note_id}"), &payload, SystemClock.now_ms())
                .await?
            {
                stored += 1;
            }
        }
        tracing::debug!(binding, notes = hook.lead_notes.len(), stored, "amoCRM webhook accepted");
        Ok::<_, crate::store::StoreError>((StatusCode::OK, "ok\n").into_response())
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("webhook not stored: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "not stored; try again\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not stored in time; try again\n").into_response(),
    }
}

/// The parts of a Chats hook the connector needs.
fn parse_chat_hook(body: &[u8]) -> Result<(String, String, String, Option<OutgoingMedia>), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let m = v.get("message").ok_or("no message")?;
    let conversation = m
        .get("conversation")
        .and_then(|c| c.get("client_id"))
        .and_then(|x| x.as_str())
        .ok_or("no message.conversation.client_id")?;
    let inner = m.get("message").ok_or("no message.message")?;
    let id = inner.get("id").and_then(|x| x.as_str()).ok_or("no message.message.id")?;
    let text = inner.get("text").and_then(|x| x.as_str()).unwrap_or_default();
    let media = crmessenger_crm::amocrm::chats::attachment(inner).map(|m| crate::bridge::chats::outgoing_media(&m));
    Ok((conversation.to_string(), id.to_string(), text.to_string(), media))
}

async fn amocrm_chats(
    State(g): State<Gateway>,
    Path(scope_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = g.chats_secret.clone() else {
        return (StatusCode::NOT_FOUND, "the Chats API is not configured on this gateway\n").into_response();
    };
    let signature = headers.get("x-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !crmessenger_crm::amocrm::verify_hook_signature(&secret, &body, signature) {
        return (StatusCode::UNAUTHORIZED, "bad or missing X-Signature\n").into_response();
    }
    let (conversation, message_id, text, media) = match parse_chat_hook(&body) {
        Ok(parts) => parts,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("malformed Chats hook: {e}\n")).into_response(),
    };
    let work = async {
        let Some(account) = g.store.route(crate::bridge::chats::ROUTE_CHATS_CONVERSATION, &conversation).await? else {
            // A chat no connector posted in (not ours): accepted, nothing to do.
            tracing::debug!(scope_id, "Chats hook for an unknown conversation ignored");
            return Ok((StatusCode::OK, "ok\n").into_response());
        };
        let payload =
            serde_json::json!({ "conversation_id": conversation, "message_id": message_id, "text": text, "media": media })
                .to_string();
        g.store
            .put_event(&account, crate::bridge::chats::EVENT_CHAT, &message_id, &payload, SystemClock.now_ms())
            .await?;
        Ok::<_, crate::store::StoreError>((StatusCode::OK, "ok\n").into_response())
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("Chats hook not stored: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "not stored\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not stored in time\n").into_response(),
    }
}

/// Meta's subscription handshake: the challenge back only for our verify token.
async fn whatsapp_verify(
    State(g): State<Gateway>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(app) = g.whatsapp.clone() else {
        return (StatusCode::NOT_FOUND, "WhatsApp is not configured on this gateway\n").into_response();
    };
    let token = q.get("hub.verify_token").map(String::as_str).unwrap_or_default();
    // No verify token configured: no handshake can succeed (an empty guess must not).
    let matches: bool = !app.verify_token.is_empty() && bool::from(token.as_bytes().ct_eq(app.verify_token.as_bytes()));
    match (q.get("hub.mode").map(String::as_str), q.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if matches => challenge.clone().into_response(),
        _ => (StatusCode::FORBIDDEN, "verification failed\n").into_response(),
    }
}

/// Whether `header` is `sha256=` and the HMAC-SHA256 of `body` under `secret`
/// (compared in constant time).
pub fn verify_hub_signature(secret: &str, body: &[u8], header: &str) -> bool {
    use hmac::Mac;
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// WhatsApp webhooks: the signature is checked before the body is read; each
/// message and status is stored once for the account that owns the number
/// (a replay changes nothing); 200 only after the write, so Meta retries otherwise.
async fn whatsapp_webhook(State(g): State<Gateway>, headers: axum::http::HeaderMap, body: Bytes) -> Response {
    let Some(app) = g.whatsapp.clone() else {
        return (StatusCode::NOT_FOUND, "WhatsApp is not configured on this gateway\n").into_response();
    };
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !verify_hub_signature(&app.app_secret, &body, signature) {
        return (StatusCode::UNAUTHORIZED, "bad or missing X-Hub-Signature-256\n").into_response();
    }
    let items = match parse_whatsapp(&body) {
        Ok(items) => items,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("malformed WhatsApp webhook: {e}\n")).into_response(),
    };
    let work = async {
        let now = SystemClock.now_ms();
        let mut woken = std::collections::HashSet::new();
        for (number, kind, key, payload) in items {
            let Some(account) = g.store.route(ROUTE_WA_NUMBER, &number).await? else {
                tracing::debug!(number, "WhatsApp webhook for a number no account serves ignored");
                continue;
            };
            if g.store.put_stream_event(&account, kind, &key, &payload, now).await? {
                woken.insert(account);
            }
        }
        for account in woken {
            g.store.notify(&account).await?;
        }
        Ok::<_, crate::store::StoreError>((StatusCode::OK, "ok\n").into_response())
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("WhatsApp webhook not stored: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "not stored; try again\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not stored in time; try again\n").into_response(),
    }
}

/// (phone number id, kind, dedup key, payload) of each message and status.
type WhatsAppItem = (String, &'static str, String, String);

fn parse_whatsapp(body: &[u8]) -> Result<Vec<WhatsAppItem>, String> {
    use crate::messenger::whatsapp::{EVENT_MESSAGE, EVENT_STATUS};
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let entries = v.get("entry").and_then(|e| e.as_array()).ok_or("no entry array")?;
    let mut out = Vec::new();
    for change in entries.iter().filter_map(|e| e.get("changes")?.as_array()).flatten() {
        let value = change.get("value").ok_or("a change without value")?;
        let Some(number) = value["metadata"]["phone_number_id"].as_str() else { continue };
        let contacts = value["contacts"].as_array().cloned().unwrap_or_default();
        for m in value["messages"].as_array().into_iter().flatten() {
            let id = m["id"].as_str().ok_or("a message without id")?;
            let from = m["from"].as_str().or(m["from_user_id"].as_str());
            let contact = contacts
                .iter()
                .find(|c| from.is_some() && (c["wa_id"].as_str() == from || c["user_id"].as_str() == from))
                .or(contacts.first())
                .cloned()
                .unwrap_or_default();
            let payload = serde_json::json!({ "message": m, "contact": contact }).to_string();
            out.push((number.to_string(), EVENT_MESSAGE, id.to_string(), payload));
        }
        for s in value["statuses"].as_array().into_iter().flatten() {
            let (Some(id), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else {
                return Err("a status without id or status".into());
            };
            out.push((number.to_string(), EVENT_STATUS, format!("{id}:{status}"), s.to_string()));
        }
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct MediaQuery {
    exp: i64,
    sig: String,
}

async fn media(
    State(g): State<Gateway>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<MediaQuery>,
) -> Response {
    let work = async {
        // Read only: with no key yet, no URL was ever signed.
        let key = g.store.existing_media_key().await?;
        if !key.is_some_and(|key| crate::store::media::verify(&key, &id, q.exp, &q.sig)) {
            return Ok((StatusCode::FORBIDDEN, "bad signature\n").into_response());
        }
        if q.exp < SystemClock.now_ms() {
            return Ok((StatusCode::GONE, "this link has expired\n").into_response());
        }
        let Some(m) = g.store.media(&id).await? else {
            return Ok((StatusCode::GONE, "no longer available\n").into_response());
        };
        let disposition = format!("attachment; filename=\"{}\"", m.file_name.replace(['"', '\\', '\r', '\n'], "_"));
        Ok::<_, crate::store::StoreError>(
            (
                [
                    (axum::http::header::CONTENT_TYPE, m.content_type),
                    (axum::http::header::CONTENT_DISPOSITION, disposition),
                ],
                m.body,
            )
                .into_response(),
        )
    };
    match work.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("media: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response()
        }
    }
}

#[cfg(test)]
mod whatsapp_tests {
    use super::*;

    #[tokio::test]
    async fn without_a_verify_token_no_handshake_succeeds() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("g.db").display()), 1).await.unwrap();
        let app = WhatsAppApp { app_secret: "app-secret".into(), verify_token: String::new() };
        for token in ["", "guess"] {
            let router = Gateway::new(store.clone()).with_whatsapp(Some(app.clone())).router();
            let uri = format!("/whatsapp/webhook?hub.mode=subscribe&hub.challenge=7&hub.verify_token={token}");
            let req = axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
            let resp = router.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "token {token:?}");
        }
    }

    #[test]
    fn hub_signatures_are_checked_exactly() {
        // HMAC-SHA256 of "what do ya want for nothing?" under "Jefe" (RFC 4231, case 2).
        let good = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(verify_hub_signature("Jefe", b"what do ya want for nothing?", good));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing!", good));
        assert!(!verify_hub_signature("jefe", b"what do ya want for nothing?", good));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing?", &good[7..]));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing?", "sha256=zz"));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing?", ""));
    }

    #[test]
    fn webhooks_split_into_messages_and_statuses_per_number() {
        let body = serde_json::json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [
            { "field": "messages", "value": { "metadata": { "phone_number_id": "111" },
                "contacts": [{ "profile": { "name": "A" }, "user_id": "US.1" }, { "profile": { "name": "B" }, "wa_id": "155" }],
                "messages": [{ "from_user_id": "US.1", "id": "wamid.1", "type": "text", "text": { "body": "x" } },
                             { "from": "155", "id": "wamid.2", "type": "text", "text": { "body": "y" } }] } },
            { "field": "messages", "value": { "metadata": { "phone_number_id": "222" },
                "statuses": [{ "id": "wamid.9", "status": "read", "recipient_id": "155" }] } }
        ] }] });
        let items = parse_whatsapp(body.to_string().as_bytes()).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!((items[0].0.as_str(), items[0].1, items[0].2.as_str()), ("111", "wa-message", "wamid.1"));
        // Each message goes with its own sender's contact (a BSUID-only user included).
        assert!(items[0].3.contains("US.1") && items[0].3.contains("\"A\""), "{}", items[0].3);
        assert!(items[1].3.contains("\"B\""), "{}", items[1].3);
        assert_eq!((items[2].0.as_str(), items[2].1, items[2].2.as_str()), ("222", "wa-status", "wamid.9:read"));
        assert!(parse_whatsapp(b"{}").is_err());
        assert!(
            parse_whatsapp(
                br#"{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"1"},"statuses":[{"id":"x"}]}}]}]}"#
            )
            .is_err()
        );
    }
}
