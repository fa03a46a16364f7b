//! Chats API messages: new/edit, delivery status, history, and manager replies.

use anyhow::{Context, anyhow};
use http::StatusCode;
use serde_json::{Value, json};

use super::payload::{self, NewMessage, Participant};
use super::{bad_request, ensure_chat, scope_id};
use crate::account::{MAIN_PIPELINE_ID, UNSORTED_STATUS_ID};
use crate::hooks::send_chat_hook;
use crate::model::{ChatMessage, Direction, Lead, Unsorted};
use crate::respond::{self, Resp};
use crate::rest::contacts::insert_contact;
use crate::state::{Shared, State};

/// `POST /v2/origin/custom/{scope_id}` with `new_message` or `edit_message`.
pub(crate) fn event(shared: &Shared, body: &Value) -> Resp {
    let Some(payload) = body.get("payload") else {
        return bad_request("payload is required");
    };
    match body.get("event_type").and_then(Value::as_str) {
        Some("new_message") => match payload::new_message(payload).and_then(|m| outbound_author(shared, m)) {
            Ok(m) => new_message(shared, m),
            Err(e) => bad_request(&e),
        },
        Some("edit_message") => edit_message(shared, payload),
        Some(other) => bad_request(&format!("event_type {other} is not supported")),
        None => bad_request("event_type is required and must be a string"),
    }
}

/// A message to the client (one with a `receiver`) is written by an amoCRM user
/// or by the channel's bot: its `sender.ref_id` must be one of their amojo ids.
fn outbound_author(shared: &Shared, m: NewMessage) -> Result<NewMessage, String> {
    if m.receiver.is_none() {
        return Ok(m);
    }
    let Some(ref_id) = m.sender.ref_id.as_deref() else {
        return Err("payload.sender.ref_id is required for a message with a receiver".into());
    };
    let bot = shared.config.chats.as_ref().is_some_and(|c| c.bot_id == ref_id);
    if bot || shared.users.iter().any(|u| u.amojo_id == ref_id) {
        Ok(m)
    } else {
        Err(format!("payload.sender.ref_id {ref_id} is neither a user of the account nor the channel's bot"))
    }
}

fn profile_fields(user: &Participant) -> Value {
    let mut fields = Vec::new();
    if let Some(p) = user.phone.as_ref().filter(|p| !p.is_empty()) {
        fields.push(json!({"field_id": 100, "field_name": "Телефон", "field_code": "PHONE", "field_type": "multitext",
            "values": [{"value": p, "enum_id": 10001, "enum_code": "WORK", "enum": "WORK"}]}));
    }
    if let Some(e) = user.email.as_ref().filter(|e| !e.is_empty()) {
        fields.push(json!({"field_id": 101, "field_name": "Email", "field_code": "EMAIL", "field_type": "multitext",
            "values": [{"value": e, "enum_id": 10011, "enum_code": "WORK", "enum": "WORK"}]}));
    }
    if fields.is_empty() { Value::Null } else { Value::Array(fields) }
}

/// What amoCRM does with an unsilent inbound message in a chat with no contact:
/// a contact from the sender's profile and an Unsorted lead in the chats category.
fn create_unsorted(shared: &Shared, state: &mut State, chat_idx: usize, sender: &Participant) {
    let contact_id = insert_contact(shared, state, &sender.name, 0, profile_fields(sender));
    let conversation_id = state.chats[chat_idx].conversation_id.clone();
    incoming_lead(shared, state, &sender.name, contact_id, &conversation_id);
    let link_id = state.next_id();
    state.chats[chat_idx].contact_id = Some(contact_id);
    state.chats[chat_idx].link_id = Some(link_id);
}

/// An incoming lead of `contact_id` in the Unsorted stage of the main pipeline,
/// with its Unsorted entry (chats category); returns the lead's id.
pub(crate) fn incoming_lead(
    shared: &Shared,
    state: &mut State,
    name: &str,
    contact_id: i64,
    conversation_id: &str,
) -> i64 {
    let lead_id = state.next_id();
    let now = shared.now();
    state.leads.insert(
        lead_id,
        Lead {
            id: lead_id,
            name: format!("Новое обращение: {name}"),
            price: 0,
            status_id: UNSORTED_STATUS_ID,
            pipeline_id: MAIN_PIPELINE_ID,
            responsible_user_id: crate::account::TOKEN_USER_ID,
            contact_ids: Vec::new(),
            tags: Vec::new(),
            custom_fields_values: Value::Null,
            created_at: now,
            updated_at: now,
            created_by: 0,
            closed_at: None,
            is_deleted: false,
            source_id: None,
        },
    );
    state.link(lead_id, contact_id);
    state.unsorted.push(Unsorted {
        uid: uuid::Uuid::new_v4().to_string(),
        lead_id,
        contact_id,
        category: "chats".into(),
        conversation_id: conversation_id.to_string(),
        pipeline_id: MAIN_PIPELINE_ID,
        created_at: now,
    });
    lead_id
}

/// Whether the contact has a lead that is neither won, lost nor deleted.
fn has_open_lead(state: &State, contact_id: i64) -> bool {
    state.leads.values().any(|l| !l.is_deleted && l.closed_at.is_none() && l.contact_ids.contains(&contact_id))
}

fn new_message(shared: &Shared, m: NewMessage) -> Resp {
    let mut state = shared.state();
    let direction = if m.receiver.is_some() { Direction::Outbound } else { Direction::Inbound };
    let client = m.receiver.clone().unwrap_or_else(|| m.sender.clone());
    let chat_idx = ensure_chat(shared, &mut state, &m.conversation_id, m.source.clone(), &client);
    let sender_id = m.sender.ref_id.clone().unwrap_or_else(|| state.chat_user_id(&m.sender.id));
    let receiver_id = m.receiver.as_ref().map(|r| state.chat_user_id(&r.id));
    let reply = |id: &str| {
        json!({"new_message": {"conversation_id": m.conversation_id, "sender_id": sender_id,
            "receiver_id": receiver_id, "msgid": id, "ref_id": m.msgid}})
    };
    if shared.config.dedupe_chat_msgid
        && let Some(existing) =
            state.messages.iter().find(|x| x.msgid == m.msgid && x.conversation_id == m.conversation_id)
    {
        return respond::json(StatusCode::OK, &reply(&existing.id));
    }
    let id = uuid::Uuid::new_v4().to_string();
    if direction == Direction::Inbound && !m.silent {
        state.notifications += 1;
        match state.chats[chat_idx].contact_id {
            None => create_unsorted(shared, &mut state, chat_idx, &m.sender),
            Some(contact) if shared.config.incoming_leads_for_contacts && !has_open_lead(&state, contact) => {
                let conversation_id = m.conversation_id.clone();
                incoming_lead(shared, &mut state, &m.sender.name, contact, &conversation_id);
            }
            Some(_) => {}
        }
    }
    state.messages.push(ChatMessage {
        id: id.clone(),
        msgid: m.msgid.clone(),
        conversation_id: m.conversation_id.clone(),
        direction,
        message_type: m.body.kind.clone(),
        text: m.body.text.clone(),
        media: m.body.media.clone(),
        file_name: m.body.file_name.clone(),
        file_size: m.body.file_size,
        silent: m.silent,
        timestamp: m.timestamp,
        msec_timestamp: m.msec_timestamp,
        sender: m.raw_sender.clone(),
        receiver: m.raw_receiver.clone(),
        delivery_status: None,
        delivery_error_code: None,
        delivery_error: None,
        edits: 0,
    });
    respond::json(StatusCode::OK, &reply(&id))
}

fn edit_message(shared: &Shared, p: &Value) -> Resp {
    let id = p.get("id").and_then(Value::as_str);
    let msgid = p.get("msgid").and_then(Value::as_str);
    if id.is_none() && msgid.is_none() {
        return bad_request("payload.msgid or payload.id is required");
    }
    let conversation = p.get("conversation_id").and_then(Value::as_str);
    let body = match p.get("message") {
        Some(m) => match payload::message(m, true) {
            Ok(b) => b,
            Err(e) => return bad_request(&e),
        },
        None => return bad_request("payload.message is required"),
    };
    let mut state = shared.state();
    let found = state.messages.iter_mut().find(|x| match id {
        Some(id) => x.id == id,
        None => Some(x.msgid.as_str()) == msgid && conversation.is_none_or(|c| c == x.conversation_id),
    });
    let Some(msg) = found else {
        return bad_request("message not found");
    };
    if let (Some(_), Some(new_msgid)) = (id, msgid) {
        msg.msgid = new_msgid.to_string();
    }
    msg.message_type = body.kind;
    msg.text = body.text;
    if body.media.is_some() {
        msg.media = body.media;
        msg.file_name = body.file_name;
        msg.file_size = body.file_size;
    }
    msg.edits += 1;
    respond::json(
        StatusCode::OK,
        &json!({"edit_message": {"conversation_id": msg.conversation_id, "msgid": msg.id, "ref_id": msg.msgid}}),
    )
}

/// `POST /v2/origin/custom/{scope_id}/{msgid}/delivery_status`.
pub(crate) fn delivery_status(shared: &Shared, msgid: &str, body: &Value) -> Resp {
    let mut state = shared.state();
    let Some(msg) = state.messages.iter_mut().find(|m| m.id == msgid) else {
        return respond::chats_error(StatusCode::NOT_FOUND, "NOT_FOUND", "message not found");
    };
    match body.get("msgid") {
        None => {}
        Some(Value::String(s)) if s == msgid => {}
        Some(_) => return bad_request("msgid in the body does not match the path"),
    }
    let status = body.get("delivery_status").or_else(|| body.get("status_code"));
    let Some(status) = status.and_then(Value::as_i64) else {
        return bad_request("delivery_status is required and must be an integer");
    };
    if ![1, 2, -1].contains(&status) {
        return bad_request("delivery_status must be 1, 2 or -1");
    }
    let (code, text) = if status == -1 {
        let Some(code) = body.get("error_code").and_then(Value::as_i64) else {
            return bad_request("error_code is required with delivery_status -1");
        };
        if !(901..=905).contains(&code) {
            return bad_request("error_code must be 901..905");
        }
        let text = body.get("error").and_then(Value::as_str).map(str::to_string);
        if code == 905 && text.as_deref().is_none_or(str::is_empty) {
            return bad_request("error text is required with error_code 905");
        }
        (Some(code), text)
    } else {
        (None, None)
    };
    msg.delivery_status = Some(status);
    msg.delivery_error_code = code;
    msg.delivery_error = text;
    respond::empty(StatusCode::OK)
}

/// `GET /v2/origin/custom/{scope_id}/chats/{conversation_id}/history`, newest first.
pub(crate) fn history(shared: &Shared, conversation_id: &str, raw_query: Option<&str>) -> Resp {
    let mut offset = 0usize;
    let mut limit = 50usize;
    for (k, v) in url::form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        let n: Option<usize> = v.parse().ok();
        match (k.as_ref(), n) {
            ("offset", Some(n)) => offset = n,
            ("limit", Some(n)) if (1..=50).contains(&n) => limit = n,
            ("offset" | "limit", _) => {
                return bad_request("offset/limit must be integers, limit at most 50");
            }
            _ => {}
        }
    }
    let state = shared.state();
    let Some(chat) = state.chats.iter().find(|c| c.conversation_id == conversation_id) else {
        return respond::empty(StatusCode::NO_CONTENT);
    };
    let mut msgs: Vec<&ChatMessage> = state.messages.iter().filter(|m| m.conversation_id == conversation_id).collect();
    msgs.sort_by_key(|m| std::cmp::Reverse((m.timestamp, m.msec_timestamp)));
    let items: Vec<Value> = msgs
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(|m| {
            let author = match m.direction {
                Direction::Inbound => chat.user.clone(),
                Direction::Outbound => json!({"id": m.sender.get("ref_id").cloned().unwrap_or(Value::Null),
                                               "name": m.sender.get("name").cloned().unwrap_or(Value::Null)}),
            };
            let mut doc = json!({
                "timestamp": m.timestamp,
                "msec_timestamp": m.msec_timestamp.unwrap_or(m.timestamp * 1000),
                "sender": author,
                "message": {"id": m.id, "client_id": m.msgid, "type": m.message_type, "text": m.text,
                    "media": m.media.clone().unwrap_or_default(), "thumbnail": "",
                    "file_name": m.file_name.clone().unwrap_or_default(), "file_size": m.file_size.unwrap_or(0)},
            });
            if m.direction == Direction::Outbound {
                doc["receiver"] = chat.user.clone();
            }
            doc
        })
        .collect();
    if items.is_empty() {
        return respond::empty(StatusCode::NO_CONTENT);
    }
    respond::json(StatusCode::OK, &json!({"messages": items}))
}

/// A manager writes in a conversation: stored in history and sent once as a signed hook.
pub(crate) async fn manager_reply(
    shared: &Shared,
    conversation_id: &str,
    user_id: i64,
    text: &str,
) -> anyhow::Result<String> {
    let channel = shared.config.chats.clone().context("no Chats API channel is configured")?;
    let user = shared.users.iter().find(|u| u.id == user_id).ok_or_else(|| anyhow!("unknown user {user_id}"))?;
    let now_ms = shared.clock.now_ms();
    let id = uuid::Uuid::new_v4().to_string();
    let body = {
        let mut state = shared.state();
        let chat = state
            .chats
            .iter()
            .find(|c| c.conversation_id == conversation_id)
            .cloned()
            .ok_or_else(|| anyhow!("unknown conversation {conversation_id}"))?;
        state.messages.push(ChatMessage {
            id: id.clone(),
            msgid: String::new(),
            conversation_id: conversation_id.to_string(),
            direction: Direction::Outbound,
            message_type: "text".into(),
            text: text.to_string(),
            media: None,
            file_name: None,
            file_size: None,
            silent: false,
            timestamp: now_ms / 1000,
            msec_timestamp: Some(now_ms),
            sender: json!({"id": user.amojo_id, "ref_id": user.amojo_id, "name": user.name}),
            receiver: Some(chat.user.clone()),
            delivery_status: None,
            delivery_error_code: None,
            delivery_error: None,
            edits: 0,
        });
        let mut message = json!({
            "receiver": {"id": chat.user["id"], "phone": chat.user.get("phone").cloned().unwrap_or(json!("")),
                "email": chat.user.get("email").cloned().unwrap_or(json!("")), "client_id": chat.user["client_id"]},
            "sender": {"id": user.amojo_id},
            "conversation": {"id": chat.id, "client_id": conversation_id},
            "timestamp": now_ms / 1000,
            "msec_timestamp": now_ms,
            "message": {"id": id, "type": "text", "text": text, "tag": "", "media": "", "thumbnail": "",
                "file_name": "", "file_size": 0},
        });
        if let Some(src) = &chat.source_external_id {
            message["source"] = json!({"external_id": src});
        }
        json!({"account_id": shared.config.amojo_id, "time": now_ms / 1000, "message": message}).to_string()
    };
    let scope = scope_id(&channel, &shared.config.amojo_id);
    let url = channel.hook_url.as_ref().map(|u| u.replace(":scope_id", &scope));
    send_chat_hook(shared, url, &channel.secret, body, &id, conversation_id).await;
    Ok(id)
}
