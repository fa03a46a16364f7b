//! `/api/v4/contacts`: create, update, search, read, and chat links.

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::batch::{self, Entity};
use super::query::{self, Query, opt_int, opt_str, parse_batch, parse_object, request_id};
use super::{Op, add_tags, embedded, fields, self_links, set_if_some, tags_of, user_known};
use crate::account::TOKEN_USER_ID;
use crate::model::Contact;
use crate::respond::{self, FieldError, Reply, Resp};
use crate::state::{Shared, State};

const CONTACTS: Entity =
    Entity { noun: "Contact", key: "contacts", exists: |state, id| state.contacts.contains_key(&id) };

/// Renders a contact as amoCRM does.
pub(crate) fn contact_json(shared: &Shared, state: &State, c: &Contact, with_leads: bool) -> Value {
    let leads = with_leads.then(|| {
        let links = |id| self_links(shared, &format!("/api/v4/leads/{id}"));
        ("leads", c.lead_ids.iter().map(|id| json!({"id": id, "_links": links(id)})).collect())
    });
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
        "_links": links(shared, c.id),
        "_embedded": embedded(state, &c.tags, leads),
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
        errors.push(FieldError::new("NotSupportedChoice", "responsible_user_id", format!("User {id} not found")));
    }
    let cfv = item.get("custom_fields_values").cloned().unwrap_or(Value::Null);
    Input {
        name: opt_str(item, "name", errors),
        first_name: opt_str(item, "first_name", errors),
        last_name: opt_str(item, "last_name", errors),
        responsible_user_id,
        created_by: opt_int(item, "created_by", errors),
        fields: fields::parse(&shared.contact_fields(), &cfv, errors),
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
    let name = input.name.unwrap_or_else(|| format!("{first} {last}").trim().to_string());
    let cfv = fields::apply(&Value::Null, input.fields);
    let id = insert_contact(shared, state, &name, input.created_by.unwrap_or(TOKEN_USER_ID), cfv);
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
        set_if_some(&mut c.name, input.name);
        set_if_some(&mut c.first_name, input.first_name);
        set_if_some(&mut c.last_name, input.last_name);
        set_if_some(&mut c.responsible_user_id, input.responsible_user_id);
        c.custom_fields_values = fields::apply(&c.custom_fields_values, input.fields);
        add_tags(&mut c.tags, input.tags);
        c.updated_at = now;
    }
}

fn links(shared: &Shared, id: i64) -> Value {
    self_links(shared, &format!("/api/v4/contacts/{id}"))
}

/// Routes `/api/v4/contacts...`; `rest` is the path after `/api/v4/contacts`.
pub(crate) fn route(shared: &Shared, method: &Method, rest: &str, q: &Query, body: &[u8]) -> Option<Reply> {
    if let Some(id) = rest.strip_prefix('/').and_then(|r| r.strip_suffix("/files")) {
        let id: i64 = id.parse().ok()?;
        return match *method {
            Method::PUT => Some(super::leads::link_files(shared, "contacts", id, body)),
            Method::GET => Some(Ok(super::leads::files(shared, "contacts", id))),
            _ => None,
        };
    }
    match (method.as_str(), rest) {
        ("POST", "/chats") => return Some(super::chats_link::link(shared, body)),
        ("GET", "/chats") => return Some(super::chats_link::list(shared, q)),
        _ => {}
    }
    Some(match Op::of(method, rest)? {
        Op::Create => batch::create(
            shared,
            &CONTACTS,
            body,
            |shared, _, item, errors| parse_input(shared, item, errors),
            create_from,
        ),
        Op::Update(None) => update_batch(shared, body),
        Op::Update(Some(id)) => update_one(shared, id, body),
        Op::List => list(shared, q),
        Op::Get(id) => Ok(get(shared, q, id)),
    })
}

fn update_batch(shared: &Shared, body: &[u8]) -> Reply {
    let items = parse_batch(body)?;
    let inputs = {
        let state = shared.state();
        batch::validate(&items, |item, errors| {
            let id = opt_int(item, "id", errors);
            match id {
                None if errors.is_empty() => errors.push(FieldError::new("NotBlank", "id", "id is required")),
                Some(id) if !state.contacts.contains_key(&id) => {
                    errors.push(FieldError::new("NotFound", "id", format!("Contact {id} not found")))
                }
                _ => {}
            }
            (id.unwrap_or_default(), parse_input(shared, item, errors))
        })?
    };
    let mut state = shared.state();
    let updated = inputs
        .into_iter()
        .map(|(rid, (id, input))| {
            update_from(shared, &mut state, id, input);
            let (name, updated_at) =
                state.contacts.get(&id).map(|c| (c.name.clone(), c.updated_at)).unwrap_or_default();
            json!({"id": id, "name": name, "updated_at": updated_at, "request_id": rid,
                   "_links": links(shared, id)})
        })
        .collect();
    Ok(batch::reply(shared, "/api/v4/contacts", "contacts", updated))
}

fn update_one(shared: &Shared, id: i64, body: &[u8]) -> Reply {
    let item = parse_object(body)?;
    let not_found = || respond::problem(StatusCode::NOT_FOUND, "Contact not found");
    if !shared.state().contacts.contains_key(&id) {
        return Err(not_found());
    }
    let mut errors = Vec::new();
    let input = parse_input(shared, &item, &mut errors);
    if !errors.is_empty() {
        return Err(respond::invalid(&request_id(&item, 0), errors));
    }
    let mut state = shared.state();
    update_from(shared, &mut state, id, input);
    let c = state.contacts.get(&id).ok_or_else(not_found)?;
    Ok(respond::hal(
        StatusCode::OK,
        &json!({"id": id, "name": c.name, "updated_at": c.updated_at, "_links": links(shared, id)}),
    ))
}

/// Case-insensitive substring match against the name and every stored value, verbatim.
fn matches(c: &Contact, needle: &str) -> bool {
    let needle = needle.to_lowercase();
    [c.name.as_str(), c.first_name.as_str(), c.last_name.as_str()]
        .into_iter()
        .chain(fields::value_strings(&c.custom_fields_values))
        .any(|s| s.to_lowercase().contains(&needle))
}

fn list(shared: &Shared, q: &Query) -> Reply {
    let paging = q.paging()?;
    let ids = q.ids("filter[id]")?;
    let needle = q.get("query").map(str::trim).filter(|s| !s.is_empty());
    let state = shared.state();
    let mut found: Vec<&Contact> = state
        .contacts
        .values()
        .filter(|c| !c.is_deleted)
        .filter(|c| ids.is_empty() || ids.contains(&c.id))
        .filter(|c| needle.is_none_or(|n| matches(c, n)))
        .collect();
    if q.descending() {
        found.reverse();
    }
    let with_leads = q.with("leads");
    let path = "/api/v4/contacts";
    Ok(query::list_reply(shared, path, q, "contacts", paging, found, |c| contact_json(shared, &state, c, with_leads)))
}

fn get(shared: &Shared, q: &Query, id: i64) -> Resp {
    let state = shared.state();
    let contact = state.contacts.get(&id).filter(|c| !c.is_deleted);
    respond::found(contact.map(|c| contact_json(shared, &state, c, q.with("leads"))))
}
