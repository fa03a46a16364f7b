//! `/api/v4/contacts/chats`: linking Chats API conversations to contacts.

use http::StatusCode;
use serde_json::{Value, json};

use super::batch;
use super::query::{Query, opt_int, opt_str, parse_batch};
use crate::respond::{self, FieldError, Reply};
use crate::state::Shared;

/// `POST /api/v4/contacts/chats`: one contact per chat; relinking replaces the link.
pub(crate) fn link(shared: &Shared, body: &[u8]) -> Reply {
    let items = parse_batch(body)?;
    let mut state = shared.state();
    let links = batch::validate(&items, |item, errors| {
        let chat_id = opt_str(item, "chat_id", errors);
        let contact_id = opt_int(item, "contact_id", errors);
        match &chat_id {
            None => errors.push(FieldError::new("NotBlank", "chat_id", "chat_id is required")),
            Some(c) if !state.chats.iter().any(|chat| &chat.id == c) => {
                errors.push(FieldError::new("NotFound", "chat_id", format!("Chat {c} not found")))
            }
            _ => {}
        }
        match contact_id {
            None => errors.push(FieldError::new("NotBlank", "contact_id", "contact_id is required")),
            Some(c) if !state.contacts.contains_key(&c) => {
                errors.push(FieldError::new("NotFound", "contact_id", format!("Contact {c} not found")))
            }
            _ => {}
        }
        Some((chat_id?, contact_id?))
    })?;
    let mut out = Vec::new();
    for (rid, (chat_id, contact_id)) in links.into_iter().filter_map(|(rid, link)| link.map(|link| (rid, link))) {
        let link_id = state.next_id();
        if let Some(chat) = state.chats.iter_mut().find(|c| c.id == chat_id) {
            chat.contact_id = Some(contact_id);
            chat.link_id = Some(link_id);
        }
        out.push(json!({"chat_id": chat_id, "contact_id": contact_id, "id": link_id, "request_id": rid}));
    }
    Ok(respond::hal(StatusCode::OK, &json!({"_total_items": out.len(), "_embedded": {"chats": out}})))
}

/// `GET /api/v4/contacts/chats?chat_id[]=..&contact_id[]=..`.
pub(crate) fn list(shared: &Shared, q: &Query) -> Reply {
    let chat_ids = q.all("chat_id");
    let contact_ids = q.ids("contact_id")?;
    if chat_ids.is_empty() && contact_ids.is_empty() {
        return Err(respond::invalid(
            "0",
            vec![FieldError::new("NotBlank", "chat_id", "chat_id or contact_id is required")],
        ));
    }
    let state = shared.state();
    let found: Vec<Value> = state
        .chats
        .iter()
        .filter_map(|c| Some((c, c.contact_id?, c.link_id?)))
        .filter(|(c, contact, _)| chat_ids.contains(&c.id.as_str()) || contact_ids.contains(contact))
        .map(|(c, contact, link)| json!({"chat_id": c.id, "contact_id": contact, "id": link}))
        .collect();
    if found.is_empty() {
        return Ok(respond::empty(StatusCode::NO_CONTENT));
    }
    Ok(respond::hal(StatusCode::OK, &json!({"_total_items": found.len(), "_embedded": {"chats": found}})))
}
