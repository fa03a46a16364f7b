//! `/api/v4/{leads|contacts}/notes` and `/api/v4/{leads|contacts}/{id}/notes`.

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::query::{self, Query, opt_int, parse_batch};
use super::{batch, self_links};
use crate::account::TOKEN_USER_ID;
use crate::model::Note;
use crate::respond::{self, FieldError, Reply, Resp};
use crate::state::{Shared, State};

/// Note types and the params each requires.
const NOTE_TYPES: [(&str, &[&str]); 10] = [
    ("common", &["text"]),
    ("call_in", &["uniq", "duration", "source", "phone"]),
    ("call_out", &["uniq", "duration", "source", "phone"]),
    ("service_message", &["service", "text"]),
    ("extended_service_message", &["service", "text"]),
    ("message_cashier", &["status", "text"]),
    ("geolocation", &["text", "address", "longitude", "latitude"]),
    ("sms_in", &["text", "phone"]),
    ("sms_out", &["text", "phone"]),
    ("attachment", &["file_uuid", "file_name"]),
];

/// Renders a note as amoCRM does.
pub(crate) fn note_json(shared: &Shared, n: &Note) -> Value {
    json!({
        "id": n.id,
        "entity_id": n.entity_id,
        "created_by": n.created_by,
        "updated_by": n.created_by,
        "created_at": n.created_at,
        "updated_at": n.updated_at,
        "responsible_user_id": n.responsible_user_id,
        "group_id": 0,
        "note_type": n.note_type,
        "params": n.params,
        "account_id": shared.config.account_id,
        "_links": {"self": {"href": shared.url(&format!("/api/v4/{}/{}/notes/{}", n.entity_type, n.entity_id, n.id))}},
    })
}

/// Stores a note.
pub(crate) fn insert_note(
    shared: &Shared,
    state: &mut State,
    entity_type: &str,
    entity_id: i64,
    note_type: &str,
    params: Value,
    created_by: i64,
) -> i64 {
    let id = state.next_id();
    let now = shared.now();
    state.notes.insert(
        id,
        Note {
            id,
            entity_type: entity_type.to_string(),
            entity_id,
            note_type: note_type.to_string(),
            params,
            created_by,
            responsible_user_id: created_by,
            created_at: now,
            updated_at: now,
            written_us: u64::try_from(shared.started.elapsed().as_micros()).unwrap_or(u64::MAX),
        },
    );
    id
}

fn entity_exists(state: &State, entity_type: &str, id: i64) -> bool {
    match entity_type {
        "leads" => state.leads.contains_key(&id),
        _ => state.contacts.contains_key(&id),
    }
}

fn validate_type(item: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Option<String> {
    let note_type = match item.get("note_type") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            errors.push(FieldError::new("InvalidType", "note_type", "note_type must be a string"));
            return None;
        }
        None => {
            errors.push(FieldError::new("NotBlank", "note_type", "note_type is required"));
            return None;
        }
    };
    let Some((_, required)) = NOTE_TYPES.iter().find(|(t, _)| *t == note_type) else {
        errors.push(FieldError::new(
            "NotSupportedChoice",
            "note_type",
            format!("Note type {note_type} is not supported"),
        ));
        return None;
    };
    let params = item.get("params");
    if params.is_some_and(|p| !p.is_object() && !p.is_null()) {
        errors.push(FieldError::new("InvalidType", "params", "params must be an object"));
        return None;
    }
    for key in *required {
        let present = params.and_then(|p| p.get(*key)).is_some_and(|v| match v {
            Value::String(s) => !s.trim().is_empty(),
            Value::Null => false,
            _ => true,
        });
        if !present {
            errors.push(FieldError::new(
                "NotBlank",
                format!("params.{key}"),
                format!("params.{key} is required for {note_type} notes"),
            ));
        }
    }
    Some(note_type)
}

/// Routes notes paths under `/api/v4/{entity_type}`; `rest` starts after the type.
pub(crate) fn route(
    shared: &Shared,
    method: &Method,
    entity_type: &str,
    rest: &str,
    q: &Query,
    body: &[u8],
) -> Option<Reply> {
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    Some(match (method.as_str(), parts.as_slice()) {
        ("POST", ["notes"]) => create(shared, entity_type, None, body),
        ("GET", ["notes"]) => list(shared, entity_type, None, q),
        ("GET", ["notes", id]) => Ok(get(shared, entity_type, id.parse().ok()?)),
        ("POST", [id, "notes"]) => create(shared, entity_type, Some(id.parse().ok()?), body),
        ("GET", [id, "notes"]) => list(shared, entity_type, Some(id.parse().ok()?), q),
        ("GET", [id, "notes", note]) => {
            let _: i64 = id.parse().ok()?;
            Ok(get(shared, entity_type, note.parse().ok()?))
        }
        _ => return None,
    })
}

fn create(shared: &Shared, entity_type: &str, path_entity: Option<i64>, body: &[u8]) -> Reply {
    let items = parse_batch(body)?;
    let mut state = shared.state();
    if let Some(id) = path_entity
        && !entity_exists(&state, entity_type, id)
    {
        return Err(respond::problem(StatusCode::NOT_FOUND, "Entity not found"));
    }
    let plans = batch::validate(&items, |item, errors| {
        let entity_id = match path_entity {
            Some(id) => Some(id),
            None => {
                let id = opt_int(item, "entity_id", errors);
                match id {
                    None => errors.push(FieldError::new("NotBlank", "entity_id", "entity_id is required")),
                    Some(e) if !entity_exists(&state, entity_type, e) => {
                        errors.push(FieldError::new("NotFound", "entity_id", format!("Entity {e} not found")))
                    }
                    _ => {}
                }
                id
            }
        };
        let note_type = validate_type(item, errors);
        if note_type.as_deref() == Some("attachment")
            && let Some(uuid) = item.get("params").and_then(|p| p.get("file_uuid")).and_then(Value::as_str)
            && !state.files.contains_key(uuid)
        {
            errors.push(FieldError::new("NotFound", "params.file_uuid", format!("File {uuid} not found")));
        }
        let created_by = opt_int(item, "created_by", errors).unwrap_or(TOKEN_USER_ID);
        let params = item.get("params").cloned().unwrap_or(json!({}));
        Some((entity_id?, note_type?, params, created_by))
    })?;
    let created = plans
        .into_iter()
        .filter_map(|(rid, plan)| plan.map(|plan| (rid, plan)))
        .map(|(rid, (entity_id, note_type, params, created_by))| {
            let id = insert_note(shared, &mut state, entity_type, entity_id, &note_type, params, created_by);
            let links = self_links(shared, &format!("/api/v4/{entity_type}/{entity_id}/notes/{id}"));
            json!({"id": id, "entity_id": entity_id, "request_id": rid, "_links": links})
        })
        .collect();
    let path = format!("/api/v4/{entity_type}/notes");
    Ok(batch::reply(shared, &path, "notes", created))
}

/// `filter[updated_at]` (strictly after) and `filter[updated_at][from|to]` (inclusive).
struct UpdatedAt {
    after: Option<i64>,
    from: Option<i64>,
    to: Option<i64>,
}

fn updated_at_filter(q: &Query) -> Result<UpdatedAt, Resp> {
    let parse = |key: &str| -> Result<Option<i64>, Resp> {
        match q.get(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                respond::invalid("0", vec![FieldError::new("InvalidType", key, format!("{key} must be an integer"))])
            }),
        }
    };
    Ok(UpdatedAt {
        after: parse("filter[updated_at]")?,
        from: parse("filter[updated_at][from]")?,
        to: parse("filter[updated_at][to]")?,
    })
}

fn list(shared: &Shared, entity_type: &str, path_entity: Option<i64>, q: &Query) -> Reply {
    let paging = q.paging()?;
    let ids = q.ids("filter[id]")?;
    let entity_ids = q.ids("filter[entity_id]")?;
    let UpdatedAt { after, from, to } = updated_at_filter(q)?;
    let types = q.all("filter[note_type]");
    let state = shared.state();
    let mut found: Vec<&Note> = state
        .notes
        .values()
        .filter(|n| n.entity_type == entity_type)
        .filter(|n| path_entity.is_none_or(|e| n.entity_id == e))
        .filter(|n| entity_ids.is_empty() || entity_ids.contains(&n.entity_id))
        .filter(|n| ids.is_empty() || ids.contains(&n.id))
        .filter(|n| types.is_empty() || types.contains(&n.note_type.as_str()))
        .filter(|n| after.is_none_or(|a| n.updated_at > a))
        .filter(|n| from.is_none_or(|f| n.updated_at >= f))
        .filter(|n| to.is_none_or(|t| n.updated_at <= t))
        .collect();
    if let Some(dir) = q.get("order[updated_at]") {
        found.sort_by_key(|n| (n.updated_at, n.id));
        if dir == "desc" {
            found.reverse();
        }
    } else if q.get("order[id]") == Some("desc") {
        found.reverse();
    }
    let path = match path_entity {
        Some(e) => format!("/api/v4/{entity_type}/{e}/notes"),
        None => format!("/api/v4/{entity_type}/notes"),
    };
    Ok(query::list_reply(shared, &path, q, "notes", paging, found, |n| note_json(shared, n)))
}

fn get(shared: &Shared, entity_type: &str, id: i64) -> Resp {
    let state = shared.state();
    let note = state.notes.get(&id).filter(|n| n.entity_type == entity_type);
    respond::found(note.map(|n| note_json(shared, n)))
}
