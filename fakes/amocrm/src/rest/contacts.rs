//! `/api/v4/contacts`: create, update, search, read, and chat links.

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::query::{self, Query, opt_int, opt_str, parse_batch, parse_object, request_id};
use super::{fields, tags_json, tags_of, user_known};
use crate::account::{CONTACT_FIELDS, TOKEN_USER_ID};
use crate::model::Contact;
use crate::respond::{self, FieldError, Resp, Validation};
use crate::state::{Shared, State};

/// Renders a contact as amoCRM does.
pub(crate) fn contact_json(shared: &Shared, state: &State, c: &Contact, with_leads: bool) -> Value {
    let mut embedded = Map::new();
    embedded.insert("tags".into(), tags_json(state, &c.tags));
    embedded.insert("companies".into(), json!([]));
    if with_leads {
        let leads: Vec<Value> = c
            .lead_ids
            .iter()
            .map(|id| json!({"id": id, "_links": {"self": {"href": shared.url(&format!("/api/v4/leads/{id}"))}}}))
            .collect();
        embedded.insert("leads".into(), Value::Array(leads));
    }
    json!({
        "id": c.id,
        "name": c.name,
        "first_name": c.first_name,
        "last_name": c.last_name,
        "responsible_user_id": c.responsible_user_id,
        "group_id": 0,
        "created_by": c.created_by,
        "updated_by": c.created_by,
        "created_at": c.created_at,
        "updated_at": c.updated_at,
        "closest_task_at": null,
        "is_deleted": c.is_deleted,
        "custom_fields_values": c.custom_fields_values,
        "account_id": shared.config.account_id,
        "_links": {"self": {"href": shared.url(&format!("/api/v4/contacts/{}", c.id))}},
        "_embedded": embedded,
    })
}

/// A validated contact create/update item.
struct Input {
    name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    responsible_user_id: Option<i64>,
    created_by: Option<i64>,
    fields: Vec<fields::FieldUpdate>,
    tags: Vec<String>,
}

fn parse_input(shared: &Shared, item: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Input {
    let responsible_user_id = opt_int(item, "responsible_user_id", errors);
    if let Some(id) = responsible_user_id
        && !user_known(shared, id)
    {
        errors.push(FieldError::new(
            "NotSupportedChoice",
            "responsible_user_id",
            format!("User {id} not found"),
        ));
    }
    let cfv = item
        .get("custom_fields_values")
        .cloned()
        .unwrap_or(Value::Null);
    Input {
        name: opt_str(item, "name", errors),
        first_name: opt_str(item, "first_name", errors),
        last_name: opt_str(item, "last_name", errors),
        responsible_user_id,
        created_by: opt_int(item, "created_by", errors),
        fields: fields::parse(&CONTACT_FIELDS, &cfv, errors),
        tags: tags_of(item, errors),
    }
}

/// Creates a contact (also used by the Chats API and the test hooks).
pub(crate) fn insert_contact(
    shared: &Shared,
    state: &mut State,
    name: &str,
    created_by: i64,
    custom_fields_values: Value,
) -> i64 {
    let id = state.next_id();
    let now = shared.now();
    state.contacts.insert(
        id,
        Contact {
            id,
            name: name.to_string(),
            first_name: String::new(),
            last_name: String::new(),
            responsible_user_id: TOKEN_USER_ID,
            created_by,
            custom_fields_values,
            created_at: now,
            updated_at: now,
            lead_ids: Vec::new(),
            tags: Vec::new(),
            is_deleted: false,
        },
    );
    id
}

fn create_from(shared: &Shared, state: &mut State, input: Input) -> i64 {
    let first = input.first_name.unwrap_or_default();
    let last = input.last_name.unwrap_or_default();
    let name = input
        .name
        .unwrap_or_else(|| format!("{first} {last}").trim().to_string());
    let cfv = fields::apply(&Value::Null, input.fields);
    let id = insert_contact(
        shared,
        state,
        &name,
        input.created_by.unwrap_or(TOKEN_USER_ID),
        cfv,
    );
    for tag in &input.tags {
        state.tag_id(tag);
    }
    if let Some(c) = state.contacts.get_mut(&id) {
        c.first_name = first;
        c.last_name = last;
        c.tags = input.tags;
        if let Some(r) = input.responsible_user_id {
            c.responsible_user_id = r;
        }
    }
    id
}

fn update_from(shared: &Shared, state: &mut State, id: i64, input: Input) {
    for tag in &input.tags {
        state.tag_id(tag);
    }
    let now = shared.now();
    if let Some(c) = state.contacts.get_mut(&id) {
        if let Some(n) = input.name {
            c.name = n;
        }
        if let Some(n) = input.first_name {
            c.first_name = n;
        }
        if let Some(n) = input.last_name {
            c.last_name = n;
        }
        if let Some(r) = input.responsible_user_id {
            c.responsible_user_id = r;
        }
        c.custom_fields_values = fields::apply(&c.custom_fields_values, input.fields);
        for t in input.tags {
            if !c.tags.contains(&t) {
                c.tags.push(t);
            }
        }
        c.updated_at = now;
    }
}

fn link(shared: &Shared, path: &str, id: i64) -> Value {
    json!({"self": {"href": shared.url(&format!("{path}/{id}"))}})
}

/// Routes `/api/v4/contacts...`; `rest` is the path after `/api/v4/contacts`.
pub(crate) fn route(
    shared: &Shared,
    method: &Method,
    rest: &str,
    q: &Query,
    body: &[u8],
) -> Option<Resp> {
    let base = "/api/v4/contacts";
    Some(match (method.as_str(), rest) {
        ("POST", "") => create(shared, body),
        ("PATCH", "") => update_batch(shared, body),
        ("GET", "") => list(shared, q),
        ("POST", "/chats") => super::chats_link::link(shared, body),
        ("GET", "/chats") => super::chats_link::list(shared, q),
        (m, r) => {
            let id: i64 = r.strip_prefix('/')?.parse().ok()?;
            match m {
                "GET" => get(shared, q, id),
                "PATCH" => update_one(shared, id, body, base),
                _ => return None,
            }
        }
    })
}

fn create(shared: &Shared, body: &[u8]) -> Resp {
    let items = match parse_batch(body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut validation = Validation::default();
    let mut inputs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errors = Vec::new();
        let input = parse_input(shared, item, &mut errors);
        validation.add(&rid, errors);
        inputs.push((rid, input));
    }
    if !validation.is_empty() {
        return validation.into_response();
    }
    let mut state = shared.state();
    let created: Vec<Value> = inputs
        .into_iter()
        .map(|(rid, input)| {
            let id = create_from(shared, &mut state, input);
            json!({"id": id, "request_id": rid, "_links": link(shared, "/api/v4/contacts", id)})
        })
        .collect();
    respond::hal(
        StatusCode::OK,
        &json!({"_links": {"self": {"href": shared.url("/api/v4/contacts")}}, "_embedded": {"contacts": created}}),
    )
}

fn update_batch(shared: &Shared, body: &[u8]) -> Resp {
    let items = match parse_batch(body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut validation = Validation::default();
    let mut inputs = Vec::new();
    {
        let state = shared.state();
        for (i, item) in items.iter().enumerate() {
            let rid = request_id(item, i);
            let mut errors = Vec::new();
            let id = opt_int(item, "id", &mut errors);
            match id {
                None if errors.is_empty() => {
                    errors.push(FieldError::new("NotBlank", "id", "id is required"))
                }
                Some(id) if !state.contacts.contains_key(&id) => errors.push(FieldError::new(
                    "NotFound",
                    "id",
                    format!("Contact {id} not found"),
                )),
                _ => {}
            }
            let input = parse_input(shared, item, &mut errors);
            validation.add(&rid, errors);
            inputs.push((rid, id.unwrap_or_default(), input));
        }
    }
    if !validation.is_empty() {
        return validation.into_response();
    }
    let mut state = shared.state();
    let updated: Vec<Value> = inputs
        .into_iter()
        .map(|(rid, id, input)| {
            update_from(shared, &mut state, id, input);
            let (name, updated_at) = state
                .contacts
                .get(&id)
                .map(|c| (c.name.clone(), c.updated_at))
                .unwrap_or_default();
            json!({"id": id, "name": name, "updated_at": updated_at, "request_id": rid,
                   "_links": link(shared, "/api/v4/contacts", id)})
        })
        .collect();
    respond::hal(
        StatusCode::OK,
        &json!({"_links": {"self": {"href": shared.url("/api/v4/contacts")}}, "_embedded": {"contacts": updated}}),
    )
}

fn update_one(shared: &Shared, id: i64, body: &[u8], base: &str) -> Resp {
    let item = match parse_object(body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    if !shared.state().contacts.contains_key(&id) {
        return respond::problem(StatusCode::NOT_FOUND, "Contact not found");
    }
    let mut errors = Vec::new();
    let input = parse_input(shared, &item, &mut errors);
    if !errors.is_empty() {
        return respond::invalid(&request_id(&item, 0), errors);
    }
    let mut state = shared.state();
    update_from(shared, &mut state, id, input);
    let Some(c) = state.contacts.get(&id) else {
        return respond::problem(StatusCode::NOT_FOUND, "Contact not found");
    };
    respond::hal(
        StatusCode::OK,
        &json!({"id": id, "name": c.name, "updated_at": c.updated_at, "_links": link(shared, base, id)}),
    )
}

/// Case-insensitive substring match against the name and every stored value, verbatim.
fn matches(c: &Contact, needle: &str) -> bool {
    let needle = needle.to_lowercase();
    [c.name.as_str(), c.first_name.as_str(), c.last_name.as_str()]
        .into_iter()
        .chain(fields::value_strings(&c.custom_fields_values))
        .any(|s| s.to_lowercase().contains(&needle))
}

fn list(shared: &Shared, q: &Query) -> Resp {
    let (page, limit) = match q.paging() {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ids = match q.ids("filter[id]") {
        Ok(i) => i,
        Err(r) => return r,
    };
    let needle = q.get("query").map(str::trim).filter(|s| !s.is_empty());
    let state = shared.state();
    let mut found: Vec<&Contact> = state
        .contacts
        .values()
        .filter(|c| !c.is_deleted)
        .filter(|c| ids.is_empty() || ids.contains(&c.id))
        .filter(|c| needle.is_none_or(|n| matches(c, n)))
        .collect();
    if q.get("order[id]") == Some("desc") || q.get("order[updated_at]") == Some("desc") {
        found.reverse();
    }
    let (items, info) = query::paginate(found, page, limit);
    let with_leads = q.with("leads");
    let items = items
        .into_iter()
        .map(|c| contact_json(shared, &state, c, with_leads))
        .collect();
    query::list_reply(shared, "/api/v4/contacts", q, "contacts", items, info)
}

fn get(shared: &Shared, q: &Query, id: i64) -> Resp {
    let state = shared.state();
    match state.contacts.get(&id).filter(|c| !c.is_deleted) {
        Some(c) => respond::hal(
            StatusCode::OK,
            &contact_json(shared, &state, c, q.with("leads")),
        ),
        None => respond::empty(StatusCode::NO_CONTENT),
    }
}
