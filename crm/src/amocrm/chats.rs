//! amoCRM's Chats API (amojo): signed requests, chats linked to contacts before the
//! first message, delivery statuses, history, and the signature of outgoing hooks.

use super::AmoCrm;
use super::contacts;
use super::transport::exchange;
use crate::CrmError;
use crate::budget::{Budget, Limit};
use crate::clock::Clock;
use crate::model::*;
use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use reqwest::Method;
use serde_json::{Value, json};
use sha1::Sha1;
use std::sync::Arc;
use std::time::Duration;

const CONTENT_TYPE: &str = "application/json";

/// An installation's Chats API channel, connected to one amoCRM account.
#[derive(Clone)]
pub struct ChatsChannel {
    /// The amojo host, e.g. `https://amojo.amocrm.ru`.
    pub base_url: String,
    /// Channel id from amoCRM support.
    pub channel_id: String,
    /// Channel secret (signs requests and hooks).
    pub secret: String,
    /// Scope of the connected account: `{channel_id}_{amojo_id}`.
    pub scope_id: String,
    /// The channel bot's amojo id (issued with the channel): the author of
    /// messages to the customer that no amoCRM user wrote.
    pub bot_id: String,
    /// Request budget of the channel.
    pub limit: Limit,
}

impl std::fmt::Debug for ChatsChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatsChannel")
            .field("base_url", &self.base_url)
            .field("channel_id", &self.channel_id)
            .field("scope_id", &self.scope_id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Headers of a signed Chats API request: `(Content-MD5, X-Signature)`.
/// The signed string is `METHOD\nContent-MD5\nContent-Type\nDate\npath`, the path
/// without host or query.
pub fn sign_request(secret: &str, method: &str, body: &[u8], date: &str, path: &str) -> (String, String) {
    let md5 = hex::encode(Md5::digest(body));
    let path = path.split('?').next().unwrap_or(path);
    let payload = format!("{}\n{md5}\n{CONTENT_TYPE}\n{date}\n{path}", method.to_uppercase());
    (md5, hmac_sha1_hex(secret, payload.as_bytes()))
}

/// Checks an outgoing hook's `X-Signature` (HMAC-SHA1 of the raw body) in constant time.
pub fn verify_hook_signature(secret: &str, body: &[u8], signature_hex: &str) -> bool {
    let Ok(expected) = hex::decode(signature_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn hmac_sha1_hex(secret: &str, data: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

/// RFC 2822 date as the Chats API wants it: `Mon, 03 Oct 2020 15:11:21 +0000`.
fn rfc2822(now_ms: i64) -> String {
    jiff::Timestamp::from_millisecond(now_ms)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .strftime("%a, %d %b %Y %H:%M:%S +0000")
        .to_string()
}

#[derive(Debug)]
pub(super) struct ChatsClient {
    http: reqwest::Client,
    channel: ChatsChannel,
    clock: Arc<dyn Clock>,
    budget: Budget,
    timeout: Duration,
}

impl ChatsClient {
    pub(super) fn new(
        channel: ChatsChannel,
        clock: Arc<dyn Clock>,
        ca_pem: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, CrmError> {
        let http = crate::tls::client_builder(ca_pem)
            .and_then(|b| b.build().map_err(|e| e.to_string()))
            .map_err(CrmError::Config)?;
        let budget = Budget::in_memory(clock.clone(), format!("amojo:{}", channel.scope_id), channel.limit);
        Ok(Self { http, channel, clock, budget, timeout })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Option<Value>, CrmError> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| CrmError::Protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let write = method != Method::GET;
        let build = || {
            let date = rfc2822(self.clock.now_ms());
            let (md5, signature) = sign_request(&self.channel.secret, method.as_str(), &bytes, &date, path);
            let base = self.channel.base_url.trim_end_matches('/');
            let req = self
                .http
                .request(method.clone(), format!("{base}{path}"))
                .header("Date", date)
                .header("Content-Type", CONTENT_TYPE)
                .header("Content-MD5", md5)
                .header("X-Signature", signature);
            let req = if query.is_empty() { req } else { req.query(query) };
            Ok(if write { req.body(bytes.clone()) } else { req })
        };
        let answer = exchange(&self.budget, self.timeout, write, path, build).await?;
        let detail = answer
            .body
            .as_ref()
            .and_then(|b| b.get("error_description").or_else(|| b.get("error_type")).and_then(Value::as_str))
            .map(str::to_string)
            .unwrap_or_else(|| answer.text.chars().take(200).collect());
        match answer.status {
            429 => Err(CrmError::RateLimited { retry_after: None }),
            // A bad signature is our configuration's fault (wrong secret or clock).
            403 => Err(CrmError::Config(format!("Chats API refused the signature: {detail}"))),
            _ => answer.common(path, detail),
        }
    }

    fn scope_path(&self, rest: &str) -> String {
        format!("/v2/origin/custom/{}{rest}", self.channel.scope_id)
    }

    /// Creates (or returns) the chat of `conversation_id`.
    async fn create_chat(&self, message: &ChatPost) -> Result<String, CrmError> {
        let body = json!({
            "conversation_id": message.conversation_id,
            "user": user_json(message),
        });
        let created = self.call(Method::POST, &self.scope_path("/chats"), &[], Some(&body)).await?;
        created
            .as_ref()
            .and_then(|c| c.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| CrmError::Protocol("create chat: no chat id".into()))
    }

    async fn send(&self, message: &ChatPost) -> Result<String, CrmError> {
        let mut msg = json!({ "type": "text", "text": message.text });
        if let Some(media) = &message.media {
            msg = json!({ "type": media.kind, "text": message.text, "media": media.url, "file_name": media.file_name, "file_size": media.file_size });
        }
        let body = json!({
            "event_type": "new_message",
            "payload": {
                "timestamp": message.sent_at_ms / 1000,
                "msec_timestamp": message.sent_at_ms,
                "msgid": message.message_id,
                "conversation_id": message.conversation_id,
                "silent": message.silent,
                "sender": user_json(message),
                "message": msg,
            }
        });
        let mut body = body;
        if let Some(author) = &message.author {
            // To the customer, from the account's side: the bot is its amoCRM author.
            let name = if author.name.is_empty() { "Account owner" } else { author.name.as_str() };
            body["payload"]["sender"] = json!({ "id": author.id, "ref_id": self.channel.bot_id, "name": name });
            body["payload"]["receiver"] = user_json(message);
        }
        let path = self.scope_path("");
        match self.call(Method::POST, &path, &[], Some(&body)).await {
            Ok(answer) => answer
                .as_ref()
                .and_then(|a| a.get("new_message"))
                .and_then(|m| m.get("msgid"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CrmError::Protocol("new_message: no msgid in the answer".into())),
            Err(e @ CrmError::InDoubt(_)) => {
                // msgid de-duplication is not documented: find the message in the
                // chat's history before anyone sends it again.
                let history = self.history(&message.conversation_id, 0, 50).await?;
                history
                    .into_iter()
                    .find(|h| h.client_message_id.as_deref() == Some(message.message_id.as_str()))
                    .map(|h| h.crm_message_id)
                    .ok_or(e)
            }
            Err(e) => Err(e),
        }
    }

    /// `edit_message`: the message we posted as `msgid` now says `text` (amoCRM has
    /// no deletion event; a deletion is shown by editing).
    pub(super) async fn edit(&self, conversation_id: &str, msgid: &str, text: &str) -> Result<(), CrmError> {
        let body = json!({
            "event_type": "edit_message",
            "payload": {
                "msgid": msgid,
                "conversation_id": conversation_id,
                "message": { "type": "text", "text": text },
            }
        });
        self.call(Method::POST, &self.scope_path(""), &[], Some(&body)).await?;
        Ok(())
    }

    pub(super) async fn delivery_status(&self, crm_message_id: &str, status: &DeliveryStatus) -> Result<(), CrmError> {
        let mut body = json!({ "msgid": crm_message_id });
        match status {
            DeliveryStatus::Delivered => body["delivery_status"] = json!(1),
            DeliveryStatus::Read => body["delivery_status"] = json!(2),
            DeliveryStatus::Failed { code, reason } => {
                body["delivery_status"] = json!(-1);
                body["error_code"] = json!(code);
                body["error"] = json!(reason);
            }
        }
        self.call(Method::POST, &self.scope_path(&format!("/{crm_message_id}/delivery_status")), &[], Some(&body))
            .await?;
        Ok(())
    }

    pub(super) async fn history(
        &self,
        conversation_id: &str,
        offset: u32,
        limit: u32,
    ) -> Result<Vec<ChatHistoryEntry>, CrmError> {
        let query = [("offset", offset.to_string()), ("limit", limit.clamp(1, 50).to_string())];
        let answer = self
            .call(Method::GET, &self.scope_path(&format!("/chats/{conversation_id}/history")), &query, None)
            .await?;
        let messages =
            answer.as_ref().and_then(|a| a.get("messages")).and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(messages
            .iter()
            .filter_map(|m| {
                let inner = m.get("message")?;
                Some(ChatHistoryEntry {
                    crm_message_id: inner.get("id")?.as_str()?.to_string(),
                    client_message_id: inner
                        .get("client_id")
                        .and_then(Value::as_str)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string),
                    from_manager: m
                        .get("receiver")
                        .and_then(|r| r.get("client_id"))
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty()),
                    text: inner.get("text").and_then(Value::as_str).unwrap_or("").to_string(),
                    media: attachment(inner),
                    timestamp: m.get("timestamp").and_then(Value::as_i64).unwrap_or(0),
                })
            })
            .collect())
    }
}

/// The file of a Chats API message (`type` other than `text`, with a `media` URL).
pub fn attachment(message: &Value) -> Option<ChatMedia> {
    let url = message.get("media").and_then(Value::as_str).filter(|u| !u.is_empty())?;
    let kind = message.get("type").and_then(Value::as_str).unwrap_or("file");
    Some(ChatMedia {
        kind: kind.to_string(),
        url: url.to_string(),
        file_name: message
            .get("file_name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| format!("{kind}.bin")),
        file_size: message.get("file_size").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// Connects the channel to an amoCRM account (by its `amojo_id`) and returns the
/// scope id that chat calls use. Needed once per account, and again after the
/// integration is reinstalled.
pub async fn connect(
    base_url: &str,
    channel_id: &str,
    secret: &str,
    amojo_id: &str,
    title: &str,
    ca_pem: Option<&str>,
    clock: Arc<dyn Clock>,
) -> Result<String, CrmError> {
    let channel = ChatsChannel {
        base_url: base_url.into(),
        channel_id: channel_id.into(),
        secret: secret.into(),
        scope_id: String::new(),
        bot_id: String::new(),
        limit: Limit { rate: 1.0, burst: 1 },
    };
    let client = ChatsClient::new(channel, clock, ca_pem, Duration::from_secs(20))?;
    let body =
        json!({ "account_id": amojo_id, "hook_api_version": "v2", "title": title, "is_time_window_disabled": false });
    let answer =
        client.call(Method::POST, &format!("/v2/origin/custom/{channel_id}/connect"), &[], Some(&body)).await?;
    answer
        .as_ref()
        .and_then(|a| a.get("scope_id"))
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| CrmError::Protocol("connect: no scope_id in the answer".into()))
}

fn user_json(message: &ChatPost) -> Value {
    let mut user = json!({ "id": message.user_id, "name": if message.person.name.is_empty() { "Customer" } else { &message.person.name } });
    if let Some(phone) = message.person.phone.as_deref().and_then(crate::phone::normalize) {
        user["profile"] = json!({ "phone": phone });
    }
    user
}

/// Posts a customer's message: contact first, then the chat, then the link between
/// them, then the message — in that order, because the first message of a chat that
/// has no contact makes amoCRM create its own contact and an unsorted lead.
pub(super) async fn post(amo: &AmoCrm, message: &ChatPost) -> Result<ChatPostRef, CrmError> {
    let chats = amo.chats()?;
    let contact = match message.contact_id {
        Some(id) => ContactRef { id, created: false },
        None => contacts::find_or_create(amo, &message.person, &message.dedup).await?,
    };
    let linked = amo.linked_chats.lock().ok().and_then(|m| m.get(&message.conversation_id).cloned());
    let chat_id = match linked {
        Some((chat_id, contact_id)) if contact_id == contact.id => chat_id,
        _ => {
            let chat_id = chats.create_chat(message).await?;
            link(amo, &chat_id, contact.id).await?;
            if let Ok(mut m) = amo.linked_chats.lock() {
                m.insert(message.conversation_id.clone(), (chat_id.clone(), contact.id));
            }
            chat_id
        }
    };
    let crm_message_id = chats.send(message).await?;
    Ok(ChatPostRef { crm_message_id, chat_id, contact_id: contact.id })
}

/// Links the chat to the contact unless it already is (one contact per chat).
async fn link(amo: &AmoCrm, chat_id: &str, contact_id: i64) -> Result<(), CrmError> {
    let existing = amo.rest.get("/api/v4/contacts/chats", &[("chat_id[]", chat_id.to_string())]).await?;
    let linked_to =
        existing.as_ref().map(|v| super::transport::embedded(v, "chats")).unwrap_or_default().iter().find_map(|c| {
            (c.get("chat_id").and_then(Value::as_str) == Some(chat_id))
                .then(|| c.get("contact_id").and_then(Value::as_i64))
                .flatten()
        });
    match linked_to {
        Some(id) if id == contact_id => Ok(()),
        Some(other) => {
            tracing::warn!(chat_id, contact_id, other, "chat already linked to another contact; keeping that link");
            Ok(())
        }
        None => {
            amo.rest.post("/api/v4/contacts/chats", &json!([{ "chat_id": chat_id, "contact_id": contact_id }])).await?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2822_dates_use_numeric_utc_offset() {
        assert_eq!(rfc2822(1_601_737_881_000), "Sat, 03 Oct 2020 15:11:21 +0000");
    }

    #[test]
    fn hook_signatures_verify_only_with_the_right_secret_and_body() {
        let sig = hmac_sha1_hex("s3cret", b"{\"a\":1}");
        assert!(verify_hook_signature("s3cret", b"{\"a\":1}", &sig));
        assert!(!verify_hook_signature("other", b"{\"a\":1}", &sig));
        assert!(!verify_hook_signature("s3cret", b"{\"a\":2}", &sig));
        assert!(!verify_hook_signature("s3cret", b"{\"a\":1}", "zz"));
    }
}
