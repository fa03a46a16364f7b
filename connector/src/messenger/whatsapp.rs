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

    /// A customer's message webhook as an event (and what the adapter learns from it).
    async fn message_event(&self, payload: &Value) -> Result<Option<Event>, MessengerError> {
        let m = &payload["message"];
        if payload["echo"].as_bool() == Some(true) {
            return Ok(echo_event(m));
        }
        let contact = &payload["contact"];
        let wa_id = m["from"].as_str().or(contact["wa_id"].as_str()).map(str::to_string);
        let user_id = m["from_user_id"].as_str().or(contact["user_id"].as_str()).map(str::to_string);
        let Some(chat) = wa_id.clone().or(user_id.clone()) else { return Ok(None) };
        let id = m["id"].as_str().unwrap_or_default().to_string();
        let at = m["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0) * 1000;
        let content = content_of(m);
        // The window opens with the customer's last message.
        let known = self.read(&format!("wa-inbound:{chat}")).await?.and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        if at >= known {
            self.mark(&format!("wa-inbound:{chat}"), &at.to_string()).await?;
            self.mark(&format!("wa-last-in:{chat}"), &id).await?;
        }
        Ok(Some(Event::Message(Box::new(Message {
            chat_id: chat,
            chat_kind: ChatKind::Private,
            chat_title: None,
            chat_members: None,
            message_id: id,
            sender: Identity {
                // Meta's business-scoped user id names the person; the phone, when shared, goes with it.
                id: user_id.or(wa_id.clone()).unwrap_or_default(),
                name: contact["profile"]["name"].as_str().unwrap_or_default().to_string(),
                phone: wa_id.map(|w| if w.starts_with('+') { w } else { format!("+{w}") }),
                username: None,
            },
            content,
            sent_at_ms: at,
            edited: false,
            history: false,
            outgoing: false,
            customer: None,
            forwarded_from: None,
            reply_to: None,
        }))))
    }

    /// A status webhook as an event; its callback data names the send it answers.
    async fn status_event(&self, s: &Value) -> Result<Option<Event>, MessengerError> {
        let (Some(id), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else { return Ok(None) };
        let chat = s["recipient_id"].as_str().or(s["recipient_user_id"].as_str()).unwrap_or_default().to_string();
        let rid = s["biz_opaque_callback_data"].as_str().and_then(|c| c.strip_prefix("rid:"));
        let mut shown = status.to_string();
        if status == "failed" {
            let e = &s["errors"][0];
            let code = e["code"].as_i64().unwrap_or(0);
            shown = format!("failed: (#{code}) {}", e["title"].as_str().or(e["message"].as_str()).unwrap_or("error"));
            if code == 131047 {
                self.mark(&format!("wa-closed:{chat}"), &self.clock.now_ms().to_string()).await?;
            }
            if let Some(rid) = rid {
                // Not delivered: a replay may send it again.
                self.mark(&format!("wa-sent:{rid}"), "").await?;
            }
        } else if let Some(rid) = rid {
            self.mark(&format!("wa-sent:{rid}"), id).await?;
        }
        Ok(Some(Event::Status { chat_id: chat, message_id: id.to_string(), status: shown }))
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

/// What the owner sent from the WhatsApp Business app on a coexistence number
/// (`smb_message_echoes`): the account's side of the chat with `to`. It opens
/// no customer-service window.
fn echo_event(m: &Value) -> Option<Event> {
    let to = m["to"].as_str()?.to_string();
    let phone = |n: &str| if n.starts_with('+') { n.to_string() } else { format!("+{n}") };
    let from = m["from"].as_str().unwrap_or_default();
    Some(Event::Message(Box::new(Message {
        chat_id: to.clone(),
        chat_kind: ChatKind::Private,
        chat_title: None,
        chat_members: None,
        message_id: m["id"].as_str().unwrap_or_default().to_string(),
        sender: Identity { id: from.to_string(), name: String::new(), phone: Some(phone(from)), username: None },
        content: content_of(m),
        sent_at_ms: m["timestamp"].as_str().and_then(|t| t.parse::<i64>().ok()).unwrap_or(0) * 1000,
        edited: false,
        history: false,
        outgoing: true,
        customer: Some(Identity { id: to.clone(), name: String::new(), phone: Some(phone(&to)), username: None }),
        forwarded_from: None,
        reply_to: None,
    })))
}

/// What a customer's WhatsApp message carries, from the webhook's `message`.
fn content_of(m: &Value) -> Content {
    let kind = m["type"].as_str().unwrap_or("text");
    let caption = |v: &Value| v["caption"].as_str().unwrap_or_default().to_string();
    match kind {
        "text" => Content::Text { text: m["text"]["body"].as_str().unwrap_or_default().to_string() },
        "image" | "document" | "audio" | "video" | "voice" | "sticker" => {
            let part = &m[kind];
            let mime = part["mime_type"].as_str().unwrap_or("application/octet-stream").to_string();
            let ext = mime.split(['/', ';']).nth(1).unwrap_or("bin").trim().to_string();
            let media_id = part["id"].as_str().unwrap_or_default();
            Content::Media {
                media: MediaRef {
                    id: format!("wa:{media_id}"),
                    kind: match kind {
                        "image" | "sticker" => "photo",
                        "audio" if part["voice"].as_bool() == Some(true) => "voice",
                        "voice" => "voice",
                        k => k,
                    }
                    .into(),
                    file_name: part["filename"]
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("{kind}_{media_id}.{ext}")),
                    mime_type: mime,
                    size: 0,
                },
                caption: caption(part),
            }
        }
        "location" => Content::Location {
            latitude: m["location"]["latitude"].as_f64().unwrap_or_default(),
            longitude: m["location"]["longitude"].as_f64().unwrap_or_default(),
        },
        "contacts" => Content::Contact {
            name: m["contacts"][0]["name"]["formatted_name"].as_str().unwrap_or_default().to_string(),
            phone: m["contacts"][0]["phones"][0]["phone"].as_str().unwrap_or_default().to_string(),
        },
        // A reply to a template's quick-reply button: its text and payload.
        "button" => {
            Content::Text { text: reply_text(m["button"]["text"].as_str(), m["button"]["payload"].as_str(), "button") }
        }
        // A reply to an interactive message: the button or list row chosen.
        "interactive" => {
            let i = &m["interactive"];
            let chosen = match i["type"].as_str() {
                Some("list_reply") => &i["list_reply"],
                _ => &i["button_reply"],
            };
            Content::Text { text: reply_text(chosen["title"].as_str(), chosen["id"].as_str(), "choice") }
        }
        other => Content::Text { text: format!("[{other} message]") },
    }
}

/// A pressed button or chosen row: its title, and the payload it carries.
fn reply_text(title: Option<&str>, payload: Option<&str>, what: &str) -> String {
    let title = title.unwrap_or_default();
    match payload.filter(|p| !p.is_empty() && *p != title) {
        Some(p) => format!("{title} [{what}: {p}]"),
        None => format!("{title} [{what}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn text_of(m: Value) -> String {
        match content_of(&m) {
            Content::Text { text } => text,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn button_and_interactive_replies_keep_their_titles_and_payloads() {
        let quick = json!({ "type": "button", "button": { "text": "Yes, book it", "payload": "CONFIRM_42" } });
        assert_eq!(text_of(quick), "Yes, book it [button: CONFIRM_42]");
        let button = json!({ "type": "interactive", "interactive": {
            "type": "button_reply", "button_reply": { "id": "slot-10am", "title": "10:00" } } });
        assert_eq!(text_of(button), "10:00 [choice: slot-10am]");
        let row = json!({ "type": "interactive", "interactive": {
            "type": "list_reply", "list_reply": { "id": "size-42", "title": "42", "description": "EU" } } });
        assert_eq!(text_of(row), "42 [choice: size-42]");
        // A payload that only repeats the title is not said twice.
        let same = json!({ "type": "button", "button": { "text": "Stop", "payload": "Stop" } });
        assert_eq!(text_of(same), "Stop [button]");
        assert_eq!(text_of(json!({ "type": "order" })), "[order message]");
    }
}
