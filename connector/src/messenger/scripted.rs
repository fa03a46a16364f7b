//! The adapter for the scripted messenger (`crmessenger-fake-messenger`), used by
//! the tests and for demos. It speaks that messenger's HTTP API and maps it onto
//! the [`Messenger`] trait exactly as a real adapter would: long-polled updates
//! after a cursor, idempotent sends by `random_id`, QR login. Like an MTProto
//! session it holds one connection (`/v1/connect`), opened by the first call and
//! dropped by [`Messenger::disconnect`].

use super::*;
use crmessenger_scripted_wire as wire;
use reqwest::StatusCode;
use std::sync::Arc;

/// A scripted messenger reached at a base URL.
#[derive(Debug, Clone)]
pub struct Scripted {
    http: reqwest::Client,
    /// For the held connection (no overall timeout: it stays open).
    stream: reqwest::Client,
    base: String,
    connection: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Scripted {
    /// An adapter for the messenger at `base_url`.
    pub fn new(base_url: &str) -> Result<Self, MessengerError> {
        let http = crmessenger_crm::tls::client_builder(None)
            .and_then(|b| b.timeout(Duration::from_secs(40)).build().map_err(|e| e.to_string()))
            .map_err(MessengerError::Unavailable)?;
        let stream = crmessenger_crm::tls::client_builder(None)
            .and_then(|b| b.connect_timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string()))
            .map_err(MessengerError::Unavailable)?;
        Ok(Self { http, stream, base: base_url.trim_end_matches('/').to_string(), connection: Arc::default() })
    }

    /// Opens the connection unless it is open.
    async fn connected(&self) -> Result<(), MessengerError> {
        let mut held = self.connection.lock().await;
        if held.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let resp = self
            .stream
            .get(format!("{}/v1/connect", self.base))
            .query(&[("id", &id)])
            .send()
            .await
            .map_err(|e| MessengerError::Unavailable(format!("connect: {e}")))?;
        if !resp.status().is_success() {
            return Err(MessengerError::Unavailable(format!("connect: {}", resp.status())));
        }
        let mut resp = resp;
        *held = Some(tokio::spawn(async move { while let Ok(Some(_)) = resp.chunk().await {} }));
        Ok(())
    }

    async fn check(resp: Result<reqwest::Response, reqwest::Error>) -> Result<reqwest::Response, MessengerError> {
        let resp = resp.map_err(|e| {
            if e.is_connect() {
                MessengerError::Unavailable(format!("connect: {e}"))
            } else {
                MessengerError::InDoubt(e.to_string())
            }
        })?;
        let status = resp.status();
        if status.is_success() || status == StatusCode::NOT_FOUND {
            return Ok(resp);
        }
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        let error = body.get("error").and_then(|e| e.as_str()).unwrap_or("").to_string();
        Err(match status {
            StatusCode::TOO_MANY_REQUESTS => MessengerError::FloodWait(Duration::from_secs(
                body.get("flood_wait_secs").and_then(|v| v.as_u64()).unwrap_or(1),
            )),
            StatusCode::UNAUTHORIZED => MessengerError::LoggedOut(error),
            s if s.is_client_error() => MessengerError::Rejected(format!("{s}: {error}")),
            s => MessengerError::Unavailable(format!("{s}: {error}")),
        })
    }
}

/// A read that may not have been answered is simply read again.
fn read_again(e: MessengerError) -> MessengerError {
    match e {
        MessengerError::InDoubt(m) => MessengerError::Unavailable(m),
        e => e,
    }
}

fn to_message(u: wire::Update) -> Message {
    let content = if let Some(m) = u.media {
        Content::Media {
            media: MediaRef { id: m.id, kind: m.kind, file_name: m.file_name, mime_type: m.mime_type, size: m.size },
            caption: u.text,
        }
    } else if let Some((latitude, longitude)) = u.location {
        Content::Location { latitude, longitude }
    } else if let Some((name, phone)) = u.contact {
        Content::Contact { name, phone }
    } else {
        Content::Text { text: u.text }
    };
    Message {
        chat_id: u.chat_id,
        chat_kind: match u.chat_kind {
            wire::ChatKind::Private => ChatKind::Private,
            wire::ChatKind::Group => ChatKind::Group,
            wire::ChatKind::Channel => ChatKind::Channel,
        },
        chat_title: u.chat_title,
        chat_members: u.members,
        message_id: u.message_id,
        sender: Identity { id: u.sender.id, name: u.sender.name, phone: u.sender.phone, username: u.sender.username },
        content,
        sent_at_ms: u.sent_at_ms,
        edited: u.kind == "edit",
        history: false,
        outgoing: u.outgoing,
        customer: u.customer.map(|c| Identity { id: c.id, name: c.name, phone: c.phone, username: c.username }),
        forwarded_from: None,
        reply_to: None,
    }
}

#[async_trait]
impl Messenger for Scripted {
    async fn login_state(&self) -> Result<LoginState, MessengerError> {
        self.connected().await?;
        let resp = Self::check(self.http.get(format!("{}/v1/session", self.base)).send().await).await?;
        let s: wire::Session = resp.json().await.map_err(|e| MessengerError::Unavailable(e.to_string()))?;
        Ok(match s.state.as_str() {
            "logged_in" => LoginState::LoggedIn {
                identity: Identity {
                    id: s.user_id.unwrap_or_default(),
                    name: s.username.clone().unwrap_or_default(),
                    phone: s.phone,
                    username: s.username,
                },
            },
            "qr" => LoginState::Qr { code: s.qr.unwrap_or_default(), expires_at_ms: s.qr_expires_at_ms.unwrap_or(0) },
            "code" => LoginState::CodeRequired,
            "password" => LoginState::PasswordRequired,
            other => LoginState::LoggedOut { reason: other.to_string() },
        })
    }

    async fn submit_login(&self, code: Option<&str>, password: Option<&str>) -> Result<(), MessengerError> {
        self.connected().await?;
        let body = serde_json::json!({ "code": code, "password": password });
        Self::check(self.http.post(format!("{}/v1/login", self.base)).json(&body).send().await).await.map(drop)
    }

    async fn updates(&self, cursor: Option<&str>, wait: Duration) -> Result<Batch, MessengerError> {
        self.connected().await?;
        let after: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let url = format!("{}/v1/updates?after={after}&timeout_ms={}", self.base, wait.as_millis());
        let resp = Self::check(self.http.get(url).send().await).await.map_err(read_again)?;
        let page: wire::Updates = resp.json().await.map_err(|e| MessengerError::Unavailable(e.to_string()))?;
        let cursor = page.updates.last().map(|u| u.seq).unwrap_or(after).to_string();
        let events = page
            .updates
            .into_iter()
            .map(|u| match u.kind.as_str() {
                "delete" => Event::Deleted { chat_id: u.chat_id, message_id: u.message_id },
                // A receipt for a message the account sent.
                "delivered" | "read" => Event::Status { chat_id: u.chat_id, message_id: u.message_id, status: u.kind },
                _ => Event::Message(Box::new(to_message(u))),
            })
            .collect();
        Ok(Batch { events, cursor })
    }

    async fn recent_chats(&self, since_ms: i64, limit: u32) -> Result<Vec<String>, MessengerError> {
        self.connected().await?;
        let url = format!("{}/v1/dialogs?since_ms={since_ms}&limit={limit}", self.base);
        let resp = Self::check(self.http.get(url).send().await).await.map_err(read_again)?;
        resp.json().await.map_err(|e| MessengerError::Unavailable(e.to_string()))
    }

    async fn backfill(&self, chat_id: &str, before: Option<&str>, limit: u32) -> Result<Vec<Message>, MessengerError> {
        self.connected().await?;
        let mut query = vec![("chat_id", chat_id.to_string()), ("limit", limit.to_string())];
        query.extend(before.map(|b| ("before", b.to_string())));
        let resp = Self::check(self.http.get(format!("{}/v1/history", self.base)).query(&query).send().await)
            .await
            .map_err(read_again)?;
        let page: wire::Updates = resp.json().await.map_err(|e| MessengerError::Unavailable(e.to_string()))?;
        Ok(page.updates.into_iter().map(|u| Message { history: true, ..to_message(u) }).collect())
    }

    async fn send(&self, message: &Outgoing) -> Result<SentRef, MessengerError> {
        self.connected().await?;
        use base64::Engine;
        let body = wire::SendRequest {
            chat_id: message.chat_id.clone(),
            // A file the bridge fetched goes as its bytes; one the scripted
            // messenger would have to fetch itself goes as its link.
            text: match &message.media {
                Some(m) if m.body.is_none() => {
                    format!("{}\n[{}: {}] {}", message.text, m.kind, m.file_name, m.url).trim().to_string()
                }
                _ => message.text.clone(),
            },
            file: message.media.as_ref().and_then(|m| {
                let data = base64::engine::general_purpose::STANDARD.encode(m.body.as_ref()?);
                Some(wire::SentFile { kind: m.kind.clone(), file_name: m.file_name.clone(), data })
            }),
            random_id: message.random_id,
        };
        let resp = Self::check(self.http.post(format!("{}/v1/send", self.base)).json(&body).send().await).await?;
        let sent: wire::SendResponse = resp.json().await.map_err(|e| MessengerError::InDoubt(e.to_string()))?;
        Ok(SentRef { message_id: sent.message_id })
    }

    async fn edit(&self, chat_id: &str, message_id: &str, text: &str) -> Result<(), MessengerError> {
        self.connected().await?;
        let body = wire::EditRequest { chat_id: chat_id.into(), message_id: message_id.into(), text: text.into() };
        match Self::check(self.http.post(format!("{}/v1/edit", self.base)).json(&body).send().await).await {
            // Already that text (an edit repeated after a lost answer).
            Err(MessengerError::Rejected(e)) if e.contains("MESSAGE_NOT_MODIFIED") => Ok(()),
            other => other.map(drop),
        }
    }

    async fn find_sent(&self, chat_id: &str, random_id: i64) -> Result<Option<SentRef>, MessengerError> {
        self.connected().await?;
        let url = format!("{}/v1/sent", self.base);
        let resp = Self::check(
            self.http.get(url).query(&[("chat_id", chat_id), ("random_id", &random_id.to_string())]).send().await,
        )
        .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let sent: wire::Sent = resp.json().await.map_err(|e| MessengerError::Unavailable(e.to_string()))?;
        Ok(Some(SentRef { message_id: sent.message_id }))
    }

    async fn mark_read(&self, _chat_id: &str, _message_id: &str) -> Result<(), MessengerError> {
        Ok(())
    }

    async fn disconnect(&self) {
        if let Some(task) = self.connection.lock().await.take() {
            task.abort();
        }
    }

    async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, MessengerError> {
        self.connected().await?;
        let resp = Self::check(self.http.get(format!("{}/v1/media/{}", self.base, media.id)).send().await).await?;
        Ok(resp.bytes().await.map_err(|e| MessengerError::Unavailable(e.to_string()))?.to_vec())
    }

    async fn logout(&self) -> Result<(), MessengerError> {
        self.connected().await?;
        Self::check(self.http.post(format!("{}/v1/logout", self.base)).send().await).await.map(drop)
    }
}
