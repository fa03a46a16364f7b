//! The amoCRM Chats API (amojo), `/v2/origin/custom/...`: request signing,
//! channel connection, chats, messages, delivery status, history, typing.

mod messages;
mod payload;

pub(crate) use messages::{incoming_lead, manager_reply};

use http::{HeaderMap, Method, StatusCode, header};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::ChatsChannel;
use crate::hooks::hmac_sha1_hex;
use crate::model::Chat;
use crate::respond::{self, Resp};
use crate::state::{Shared, State};

/// The path prefix of every Chats API call.
pub(crate) const PREFIX: &str = "/v2/origin/custom/";
/// `Date` may be this far off the (fake) clock.
const DATE_SKEW_MS: i64 = 15 * 60 * 1000;

/// The scope ID of the channel in this account.
pub(crate) fn scope_id(channel: &ChatsChannel, amojo_id: &str) -> String {
    format!("{}_{}", channel.channel_id, amojo_id)
}

fn invalid_signature() -> Resp {
    respond::chats_error(StatusCode::FORBIDDEN, "ORIGIN_INVALID_SIGNATURE", "invalid signature")
}

fn not_registered() -> Resp {
    respond::chats_error(StatusCode::NOT_FOUND, "ORIGIN_NOT_REGISTERED", "origin not registered")
}

/// A 400 in the Chats API's error shape.
pub(crate) fn bad_request(description: &str) -> Resp {
    respond::chats_error(StatusCode::BAD_REQUEST, "BAD_REQUEST", description)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Checks Content-Type, Content-MD5, Date and X-Signature; `Err` is the 403.
fn verify(
    shared: &Shared,
    secret: &str,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), Resp> {
    let content_type = header_str(headers, header::CONTENT_TYPE.as_str());
    if content_type != "application/json" {
        return Err(invalid_signature());
    }
    let md5 = hex::encode(Md5::digest(body));
    if header_str(headers, "content-md5") != md5 {
        return Err(invalid_signature());
    }
    let date = header_str(headers, header::DATE.as_str());
    let parsed = jiff::fmt::rfc2822::DateTimeParser::new().parse_timestamp(date).map_err(|_| invalid_signature())?;
    if (parsed.as_millisecond() - shared.clock.now_ms()).abs() > DATE_SKEW_MS {
        return Err(invalid_signature());
    }
    let signed = format!("{}\n{md5}\n{content_type}\n{date}\n{path}", method.as_str());
    if header_str(headers, "x-signature") != hmac_sha1_hex(secret, signed.as_bytes()) {
        return Err(invalid_signature());
    }
    Ok(())
}

/// Handles a Chats API call; `path` starts with [`PREFIX`].
pub(crate) fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    raw_query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Resp {
    let Some(channel) = shared.config.chats.clone() else {
        return not_registered();
    };
    let rest = path.strip_prefix(PREFIX).unwrap_or("").trim_end_matches('/');
    let parts: Vec<&str> = rest.split('/').collect();
    let Some(first) = parts.first().copied() else {
        return not_registered();
    };
    let scope = scope_id(&channel, &shared.config.amojo_id);
    let is_channel_call = matches!(parts.as_slice(), [_, "connect"] | [_, "disconnect"]);
    let known = if is_channel_call { first == channel.channel_id } else { first == scope };
    if !known {
        return not_registered();
    }
    if let Err(r) = verify(shared, &channel.secret, method, path, headers, body) {
        return r;
    }
    if !is_channel_call && !shared.state().connected_scopes.contains(&scope) {
        return not_registered();
    }
    let parsed = if body.is_empty() { Ok(Value::Null) } else { serde_json::from_slice::<Value>(body) };
    let Ok(json_body) = parsed else {
        return bad_request("request body is not valid JSON");
    };
    match (method.as_str(), parts.as_slice()) {
        ("POST", [_, "connect"]) => connect(shared, &scope, &json_body),
        ("DELETE", [_, "disconnect"]) => disconnect(shared, &scope, &json_body),
        ("POST", [_]) => messages::event(shared, &json_body),
        ("POST", [_, "chats"]) => create_chat(shared, &json_body),
        ("POST", [_, "typing"]) => typing(&json_body),
        ("POST", [_, msgid, "delivery_status"]) => messages::delivery_status(shared, msgid, &json_body),
        ("GET", [_, "chats", conversation, "history"]) => messages::history(shared, conversation, raw_query),
        _ => respond::chats_error(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown method"),
    }
}

fn connect(shared: &Shared, scope: &str, body: &Value) -> Resp {
    let Some(account_id) = body.get("account_id").and_then(Value::as_str) else {
        return bad_request("account_id is required");
    };
    if account_id != shared.config.amojo_id {
        return bad_request("account_id is not allowed for this channel");
    }
    let hook_api_version = match body.get("hook_api_version") {
        None => "v1",
        Some(Value::String(v)) if v == "v1" || v == "v2" => v.as_str(),
        Some(_) => return bad_request("hook_api_version must be v1 or v2"),
    };
    let title = match body.get("title") {
        None => "CRMessenger".to_string(),
        Some(Value::String(t)) => t.clone(),
        Some(_) => return bad_request("title must be a string"),
    };
    let window_disabled = match body.get("is_time_window_disabled") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return bad_request("is_time_window_disabled must be a boolean"),
    };
    shared.state().connected_scopes.insert(scope.to_string());
    respond::json(
        StatusCode::OK,
        &json!({
            "account_id": account_id,
            "scope_id": scope,
            "title": title,
            "hook_api_version": hook_api_version,
            "is_time_window_disabled": window_disabled,
        }),
    )
}

fn disconnect(shared: &Shared, scope: &str, body: &Value) -> Resp {
    if body.get("account_id").and_then(Value::as_str) != Some(shared.config.amojo_id.as_str()) {
        return bad_request("account_id is required");
    }
    shared.state().connected_scopes.remove(scope);
    respond::empty(StatusCode::OK)
}

fn typing(body: &Value) -> Resp {
    if body.get("conversation_id").and_then(Value::as_str).is_none() {
        return bad_request("conversation_id is required");
    }
    if body.get("sender").and_then(|s| s.get("id")).and_then(Value::as_str).is_none() {
        return bad_request("sender.id is required");
    }
    respond::empty(StatusCode::NO_CONTENT)
}

/// The stored form of a chat participant, `{id, client_id, name, avatar, phone, email}`.
pub(crate) fn chat_user(state: &mut State, user: &payload::Participant) -> Value {
    let mut doc = json!({
        "id": state.chat_user_id(&user.id),
        "client_id": user.id,
        "name": user.name,
        "avatar": user.avatar.clone().unwrap_or_default(),
    });
    if let Some(p) = &user.phone {
        doc["phone"] = json!(p);
    }
    if let Some(e) = &user.email {
        doc["email"] = json!(e);
    }
    doc
}

/// Finds or creates the chat of `conversation_id`.
pub(crate) fn ensure_chat(
    shared: &Shared,
    state: &mut State,
    conversation_id: &str,
    source: Option<String>,
    user: &payload::Participant,
) -> usize {
    if let Some(i) = state.chats.iter().position(|c| c.conversation_id == conversation_id) {
        return i;
    }
    let user = chat_user(state, user);
    state.chats.push(Chat {
        id: uuid::Uuid::new_v4().to_string(),
        conversation_id: conversation_id.to_string(),
        contact_id: None,
        link_id: None,
        source_external_id: source,
        user,
        created_at: shared.now(),
    });
    state.chats.len() - 1
}

fn create_chat(shared: &Shared, body: &Value) -> Resp {
    let Some(conversation_id) = body.get("conversation_id").and_then(Value::as_str) else {
        return bad_request("conversation_id is required and must be a string");
    };
    let user = match body.get("user") {
        Some(u) => match payload::Participant::parse(u, "user") {
            Ok(p) => p,
            Err(e) => return bad_request(&e),
        },
        None => return bad_request("user is required"),
    };
    let source = match payload::source(body) {
        Ok(s) => s,
        Err(e) => return bad_request(&e),
    };
    let mut state = shared.state();
    let idx = ensure_chat(shared, &mut state, conversation_id, source, &user);
    let chat = &state.chats[idx];
    respond::json(StatusCode::OK, &json!({"id": chat.id, "user": chat.user}))
}
