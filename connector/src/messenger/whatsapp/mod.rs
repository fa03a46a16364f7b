//! The WhatsApp Business Cloud API adapter.
//!
//! Meta delivers messages and statuses as webhooks; the gateway checks their
//! signature, routes them by phone number id and stores each once. This adapter
//! streams them to the bridge from the store (the cursor is the last webhook row,
//! committed with the inbox), and sends through the Graph API: text, files
//! (uploaded, then sent by id) and templates, each carrying its `random_id` as
//! callback data that Meta echoes in the status webhooks — so an in-doubt send is
//! recognised before it is repeated. Outside the 24-hour customer-service window
//! a free-form reply goes as the policy's template, or is refused with the reason.

use super::*;
use crate::store::Store;
use crmessenger_api::policy::TemplateRef;
use crmessenger_crm::clock::Clock;
use serde_json::{Value, json};
use std::sync::Arc;

mod webhook;

/// Webhook rows: a customer's message.
pub const EVENT_MESSAGE: &str = "wa-message";
/// Webhook rows: a status of a sent message.
pub const EVENT_STATUS: &str = "wa-status";
/// The customer-service window.
pub const WINDOW_MS: i64 = 24 * 3600 * 1000;
/// How long an in-doubt send waits for its status webhook before it is repeated.
const IN_DOUBT_MS: i64 = 60_000;
/// The Graph API.
pub const GRAPH_URL: &str = "https://graph.facebook.com/v21.0";

/// The adapter's settings.
#[derive(Clone)]
pub struct Settings {
    /// `namespace/name` of the account.
    pub account: String,
    /// Graph API base, with the version (`https://graph.facebook.com/v21.0`).
    pub graph_url: String,
    /// The business number's id.
    pub phone_number_id: String,
    /// System-user access token.
    pub access_token: String,
    /// Sent instead of a free-form reply outside the window.
    pub template: Option<TemplateRef>,
    /// Larger media are neither downloaded nor sent.
    pub max_media_bytes: u64,
    /// An extra CA trusted for the Graph API and file downloads (tests).
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("account", &self.account)
            .field("phone_number_id", &self.phone_number_id)
            .finish_non_exhaustive()
    }
}

/// A WhatsApp Cloud API number.
pub struct WhatsApp {
    s: Settings,
    store: Store,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
}

/// A Graph API error: code and text.
struct GraphError {
    status: u16,
    code: i64,
    text: String,
}

impl WhatsApp {
    /// An adapter for the number in `settings`.
    pub fn new(settings: Settings, store: Store, clock: Arc<dyn Clock>) -> Result<Self, MessengerError> {
        let http = crmessenger_crm::tls::client_builder(settings.ca_pem.as_deref())
            .and_then(|b| b.timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string()))
            .map_err(MessengerError::Unavailable)?;
        Ok(Self { s: settings, store, clock, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.s.graph_url.trim_end_matches('/'))
    }

    async fn mark(&self, name: &str, value: &str) -> Result<(), MessengerError> {
        self.store
            .set_cursor(&self.s.account, name, value)
            .await
            .map_err(|e| MessengerError::Unavailable(e.to_string()))
    }

    async fn read(&self, name: &str) -> Result<Option<String>, MessengerError> {
        self.store.cursor(&self.s.account, name).await.map_err(|e| MessengerError::Unavailable(e.to_string()))
    }

    /// Reads a Graph API answer: the JSON body, or its error.
    async fn answer(
        resp: Result<reqwest::Response, reqwest::Error>,
        sent: bool,
    ) -> Result<Result<Value, GraphError>, MessengerError> {
        let resp = match resp {
            Ok(r) => r,
            Err(e) if sent && !e.is_connect() => return Err(MessengerError::InDoubt(e.to_string())),
            Err(e) => return Err(MessengerError::Unavailable(e.to_string())),
        };
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or_default();
        if (200..300).contains(&status) {
            return Ok(Ok(body));
        }
        let e = &body["error"];
        let details = e["error_data"]["details"].as_str().unwrap_or_default();
        let text = format!(
            "(#{}) {}{}",
            e["code"],
            e["message"].as_str().unwrap_or("error"),
            if details.is_empty() { String::new() } else { format!(": {details}") }
        );
        Ok(Err(GraphError { status, code: e["code"].as_i64().unwrap_or(0), text }))
    }

    /// What a Graph API error means to the bridge.
    fn meaning(e: GraphError) -> MessengerError {
        match e.code {
            190 => MessengerError::LoggedOut(format!("the access token was refused {}", e.text)),
            130429 => MessengerError::FloodWait(Duration::from_secs(1)),
            131056 => MessengerError::FloodWait(Duration::from_secs(6)),
            4 | 80007 | 131048 => MessengerError::FloodWait(Duration::from_secs(60)),
            131000 | 131049 => MessengerError::Unavailable(e.text),
            _ if e.status >= 500 => MessengerError::Unavailable(e.text),
            _ => MessengerError::Rejected(format!("WhatsApp refused the message {}", e.text)),
        }
    }

    async fn post(&self, body: &Value) -> Result<Result<Value, GraphError>, MessengerError> {
        let path = format!("{}/messages", self.s.phone_number_id);
        Self::answer(self.http.post(self.url(&path)).bearer_auth(&self.s.access_token).json(body).send().await, true)
            .await
    }

    /// Whether a free-form message may go to `chat` now.
    async fn window_open(&self, chat: &str) -> Result<bool, MessengerError> {
        let now = self.clock.now_ms();
        let inbound = self.read(&format!("wa-inbound:{chat}")).await?.and_then(|v| v.parse::<i64>().ok());
        let closed = self.read(&format!("wa-closed:{chat}")).await?.and_then(|v| v.parse::<i64>().ok());
        Ok(inbound.is_some_and(|t| now - t < WINDOW_MS && closed.is_none_or(|c| c < t)))
    }

    fn template_body(&self, to: &str, t: &TemplateRef, text: &str, random_id: i64) -> Value {
        json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "template",
            "template": { "name": t.name, "language": { "code": t.language },
                "components": [{ "type": "body", "parameters": [{ "type": "text", "text": text }] }] },
            "biz_opaque_callback_data": format!("rid:{random_id}"),
        })
    }

    async fn free_form(&self, m: &Outgoing) -> Result<Value, MessengerError> {
        let mut body = json!({ "messaging_product": "whatsapp", "recipient_type": "individual", "to": m.chat_id,
            "biz_opaque_callback_data": format!("rid:{}", m.random_id) });
        match &m.media {
            None => {
                body["type"] = json!("text");
                body["text"] = json!({ "body": m.text });
            }
            Some(media) => {
                let (kind, mime) = match media.kind.as_str() {
                    "picture" => ("image", "image/jpeg"),
                    "video" => ("video", "video/mp4"),
                    "voice" | "audio" => ("audio", "audio/ogg; codecs=opus"),
                    _ => ("document", "application/octet-stream"),
                };
                let id = self.upload(media, mime).await?;
                let mut part = json!({ "id": id });
                if kind != "audio" && !m.text.is_empty() {
                    part["caption"] = json!(m.text);
                }
                if kind == "document" {
                    part["filename"] = json!(media.file_name);
                }
                body["type"] = json!(kind);
                body[kind] = part;
            }
        }
        Ok(body)
    }

    /// Downloads a reply's file from the CRM and uploads it to WhatsApp.
    async fn upload(&self, media: &OutgoingMedia, mime: &str) -> Result<String, MessengerError> {
        let bytes = download_reply_file(&self.http, media, self.s.max_media_bytes).await?;
        // WhatsApp's own caps per type: refused here with the reason rather than by Meta.
        let cap: usize = match mime.split('/').next().unwrap_or_default() {
            "image" => 5 << 20,
            "audio" | "video" => 16 << 20,
            _ => 100 << 20,
        };
        if bytes.len() > cap {
            return Err(MessengerError::Rejected(format!(
                "the file {} ({} bytes) is over WhatsApp's limit of {cap} bytes for {mime}",
                media.file_name,
                bytes.len()
            )));
        }
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(media.file_name.clone())
            .mime_str(mime)
            .map_err(|e| MessengerError::Rejected(e.to_string()))?;
        let form = reqwest::multipart::Form::new()
            .text("messaging_product", "whatsapp")
            .text("type", mime.to_string())
            .part("file", part);
        let path = format!("{}/media", self.s.phone_number_id);
        let sent = self.http.post(self.url(&path)).bearer_auth(&self.s.access_token).multipart(form).send().await;
        match Self::answer(sent, false).await? {
            Ok(v) => v["id"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| MessengerError::Unavailable("no media id in the answer".into())),
            Err(e) => Err(Self::meaning(e)),
        }
    }
}

#[async_trait]
impl Messenger for WhatsApp {
    async fn login_state(&self) -> Result<LoginState, MessengerError> {
        let url = format!("{}?fields=display_phone_number,verified_name", self.url(&self.s.phone_number_id));
        match Self::answer(self.http.get(url).bearer_auth(&self.s.access_token).send().await, false).await? {
            Ok(v) => Ok(LoginState::LoggedIn {
                identity: Identity {
                    id: self.s.phone_number_id.clone(),
                    name: v["verified_name"].as_str().unwrap_or_default().to_string(),
                    phone: v["display_phone_number"].as_str().map(str::to_string),
                    username: None,
                },
            }),
            Err(e) if e.code == 190 || e.status == 401 => {
                Ok(LoginState::LoggedOut { reason: format!("the Cloud API access token was refused {}", e.text) })
            }
            Err(e) => Err(MessengerError::Unavailable(e.text)),
        }
    }

    async fn submit_login(&self, _code: Option<&str>, _password: Option<&str>) -> Result<(), MessengerError> {
        Err(MessengerError::Rejected("a Cloud API number has no login step".into()))
    }

    async fn updates(&self, cursor: Option<&str>, wait: Duration) -> Result<Batch, MessengerError> {
        let db = |e: crate::store::StoreError| MessengerError::Unavailable(e.to_string());
        let after = cursor.and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
        if after > 0 {
            // Committed with the inbox: those webhooks are done.
            self.store.stream_consumed(&self.s.account, after).await.map_err(db)?;
        }
        let wake = self.store.wakeups().of(&self.s.account);
        let mut rows = self.store.stream_events(&self.s.account, after, 500).await.map_err(db)?;
        if rows.is_empty() {
            let _ = tokio::time::timeout(wait, wake.notified()).await;
            rows = self.store.stream_events(&self.s.account, after, 500).await.map_err(db)?;
        }
        let mut events = Vec::new();
        for row in &rows {
            let payload: Value = serde_json::from_str(&row.payload).unwrap_or_default();
            let event = match row.kind.as_str() {
                EVENT_MESSAGE => self.message_event(&payload).await?,
                EVENT_STATUS => self.status_event(&payload).await?,
                _ => None,
            };
            events.extend(event);
        }
        let next = rows.last().map(|r| r.id).unwrap_or(after);
        Ok(Batch { events, cursor: next.to_string() })
    }

    async fn send(&self, m: &Outgoing) -> Result<SentRef, MessengerError> {
        self.mark(&format!("wa-attempt:{}", m.random_id), &self.clock.now_ms().to_string()).await?;
        let outside = |why: &str| {
            MessengerError::Rejected(format!(
                "{why}; WhatsApp allows free-form replies only within 24 hours of the customer's last message, and the policy names no template (spec.whatsapp.outsideWindowTemplate)"
            ))
        };
        let body = if self.window_open(&m.chat_id).await? {
            self.free_form(m).await?
        } else if let Some(t) = &self.s.template {
            self.template_body(&m.chat_id, t, &m.text, m.random_id)
        } else {
            return Err(outside("the customer's 24-hour window is closed"));
        };
        let answer = match self.post(&body).await? {
            Err(e) if e.code == 131047 => {
                // Our idea of the window was stale: WhatsApp says it is closed.
                self.mark(&format!("wa-closed:{}", m.chat_id), &self.clock.now_ms().to_string()).await?;
                match &self.s.template {
                    Some(t) if body["type"] != "template" => {
                        self.post(&self.template_body(&m.chat_id, t, &m.text, m.random_id)).await?
                    }
                    _ => return Err(outside(&format!("WhatsApp refused the message {}", e.text))),
                }
            }
            other => other,
        };
        let v = match answer {
            Ok(v) => v,
            Err(e) => {
                if (400..500).contains(&e.status) {
                    // Refused (a limit, a bad request): nothing went out, so the
                    // retry is not in doubt and need not wait for a status webhook.
                    self.mark(&format!("wa-attempt:{}", m.random_id), "").await?;
                }
                return Err(Self::meaning(e));
            }
        };
        let id = v["messages"][0]["id"]
            .as_str()
            .ok_or_else(|| MessengerError::InDoubt("the Cloud API answer names no message".into()))?;
        self.mark(&format!("wa-sent:{}", m.random_id), id).await?;
        Ok(SentRef { message_id: id.to_string() })
    }

    async fn find_sent(&self, _chat_id: &str, random_id: i64) -> Result<Option<SentRef>, MessengerError> {
        if let Some(id) = self.read(&format!("wa-sent:{random_id}")).await?.filter(|v| !v.is_empty()) {
            return Ok(Some(SentRef { message_id: id }));
        }
        let attempt = self.read(&format!("wa-attempt:{random_id}")).await?.and_then(|v| v.parse::<i64>().ok());
        if attempt.is_some_and(|t| self.clock.now_ms() - t < IN_DOUBT_MS) {
            // Meta echoes the callback data in the status webhooks within seconds:
            // wait for them rather than risk a second message.
            return Err(MessengerError::InDoubt(
                "waiting for WhatsApp's status webhook to say whether the message went out".into(),
            ));
        }
        Ok(None)
    }

    async fn mark_read(&self, chat_id: &str, _message_id: &str) -> Result<(), MessengerError> {
        let Some(last) = self.read(&format!("wa-last-in:{chat_id}")).await? else { return Ok(()) };
        let body = json!({ "messaging_product": "whatsapp", "status": "read", "message_id": last });
        self.post(&body).await?.map(drop).map_err(Self::meaning)
    }

    async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, MessengerError> {
        let id = media
            .id
            .strip_prefix("wa:")
            .ok_or_else(|| MessengerError::Rejected(format!("not a WhatsApp media id: {}", media.id)))?;
        // The URL lives five minutes: fetch it right before the download.
        let meta = match Self::answer(self.http.get(self.url(id)).bearer_auth(&self.s.access_token).send().await, false)
            .await?
        {
            Ok(v) => v,
            Err(e) => return Err(Self::meaning(e)),
        };
        if meta["file_size"].as_u64().unwrap_or(0) > self.s.max_media_bytes {
            return Err(MessengerError::Rejected(format!("{} is over the policy's media limit", media.file_name)));
        }
        let url =
            meta["url"].as_str().ok_or_else(|| MessengerError::Unavailable("no media URL in the answer".into()))?;
        let resp = self
            .http
            .get(url)
            .bearer_auth(&self.s.access_token)
            .send()
            .await
            .map_err(|e| MessengerError::Unavailable(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(MessengerError::Unavailable(format!("media download: {}", resp.status())));
        }
        let bytes = resp.bytes().await.map_err(|e| MessengerError::Unavailable(e.to_string()))?;
        if bytes.len() as u64 > self.s.max_media_bytes {
            return Err(MessengerError::Rejected(format!("{} is over the policy's media limit", media.file_name)));
        }
        Ok(bytes.to_vec())
    }

    async fn logout(&self) -> Result<(), MessengerError> {
        // Nothing to end: the number stays registered with the Meta app.
        Ok(())
    }
}
