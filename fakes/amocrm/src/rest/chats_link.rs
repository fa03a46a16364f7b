//! `/api/v4/contacts/chats`: linking Chats API conversations to contacts.

use http::StatusCode;
use serde_json::{Value, json};

use super::query::{Query, opt_int, opt_str, parse_batch, request_id};
use crate::respond::{self, FieldError, Resp, Validation};
use crate::state::Shared;

/// `POST /api/v4/contacts/chats`: one contact per chat; relinking replaces the link.
pub(crate) fn link(shared: &Shared, body: &[u8]) -> Resp {
    let items = match parse_batch(body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut state = shared.state();
    let mut validation = Validation::default();
    let mut links = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errors = Vec::new();
        let chat_id = opt_str(item, "chat_id", &mut errors);
        let contact_id = opt_int(item, "contact_id", &mut errors);
        match &chat_id {
            None => errors.push(FieldError::new(
                "NotBlank",
                "chat_id",
                "chat_id is required",
            )),
            Some(c) if !state.chats.iter().any(|chat| &chat.id == c) => errors.push(
                FieldError::new("NotFound", "chat_id", format!("Chat {c} not found")),
            ),
            _ => {}
        }
        match contact_id {
            None => errors.push(FieldError::new(
                "NotBlank",
                "contact_id",
                "contact_id is required",
            )),
            Some(c) if !state.contacts.contains_key(&c) => errors.push(FieldError::new(
                "NotFound",
                "contact_id",
                format!("Contact {c} not found"),
            )),
            _ => {}
        }
        if errors.is_empty()
            && let (Some(chat_id), Some(contact_id)) = (chat_id, contact_id)
        {
            links.push((rid, chat_id, contact_id));
        } else {
            validation.add(&rid, errors);
        }
    }
    if !validation.is_empty() {
        return validation.into_response();
    }
    let mut out = Vec::new();
    for (rid, chat_id, contact_id) in links {
        let link_id = state.next_id();
        if let Some(chat) = state.chats.iter_mut().find(|c| c.id == chat_id) {
            chat.contact_id = Some(contact_id);
            chat.link_id = Some(link_id);
        }
        out.push(
            json!({"chat_id": chat_id, "contact_id": contact_id, "id": link_id, "request_id": rid}),
        );
    }
    respond::hal(
        StatusCode::OK,
        &json!({"_total_items": out.len(), "_embedded": {"chats": out}}),
    )
}

/// `GET /api/v4/contacts/chats?chat_id[]=..&contact_id[]=..`.
pub(crate) fn list(shared: &Shared, q: &Query) -> Resp {
    let chat_ids = q.all("chat_id");
    let contact_ids = match q.ids("contact_id") {
        Ok(i) => i,
        Err(r) => return r,
    };
    if chat_ids.is_empty() && contact_ids.is_empty() {
        return respond::invalid(
            "0",
            vec![FieldError::new(
                "NotBlank",
                "chat_id",
                "chat_id or contact_id is required",
            )],
        );
    }
    let state = shared.state();
    let found: Vec<Value> = state
        .chats
        .iter()
        .filter_map(|c| Some((c, c.contact_id?, c.link_id?)))
        .filter(|(c, contact, _)| {
            chat_ids.contains(&c.id.as_str()) || contact_ids.contains(contact)
        })
        .map(|(c, contact, link)| json!({"chat_id": c.id, "contact_id": contact, "id": link}))
        .collect();
    if found.is_empty() {
        return respond::empty(StatusCode::NO_CONTENT);
    }
    respond::hal(
        StatusCode::OK,
        &json!({"_total_items": found.len(), "_embedded": {"chats": found}}),
    )
}
