//! `/api/v4/leads`: create, read, list and update leads.

use http::Method;
use serde_json::{Map, Value, json};

use super::batch::{self, Entity};
use super::query::{self, Query, opt_int, opt_str};
use super::{Op, add_tags, embedded, fields, self_links, set_if_some, tags_of, user_known};
use crate::account::{self, FIRST_STAGE_ID, MAIN_PIPELINE_ID, TOKEN_USER_ID};
use crate::model::Lead;
use crate::respond::{self, FieldError, Reply, Resp};
use crate::state::{Shared, State};

const LEADS: Entity = Entity { noun: "Lead", key: "leads", exists: |state, id| state.leads.contains_key(&id) };

fn links(shared: &Shared, id: i64) -> Value {
    self_links(shared, &format!("/api/v4/leads/{id}"))
}

/// Renders a lead as amoCRM does.
pub(crate) fn lead_json(shared: &Shared, state: &State, l: &Lead, with_contacts: bool) -> Value {
    let contacts = with_contacts.then(|| {
        let links = |id| self_links(shared, &format!("/api/v4/contacts/{id}"));
        let contacts = l.contact_ids.iter().enumerate();
        ("contacts", contacts.map(|(i, id)| json!({"id": id, "is_main": i == 0, "_links": links(id)})).collect())
    });
    json!({
        "id": l.id,
        "name": l.name,
        "price": l.price,
        "responsible_user_id": l.responsible_user_id,
        "group_id": 0,
        "status_id": l.status_id,
        "pipeline_id": l.pipeline_id,
        "loss_reason_id": null,
        "created_by": l.created_by,
        "updated_by": l.created_by,
        "created_at": l.created_at,
        "updated_at": l.updated_at,
        "closed_at": l.closed_at,
        "closest_task_at": null,
        "is_deleted": l.is_deleted,
        "custom_fields_values": l.custom_fields_values,
        "score": null,
        "account_id": shared.config.account_id,
        "labor_cost": null,
        "source_id": l.source_id,
        "_links": links(shared, l.id),
        "_embedded": embedded(state, &l.tags, contacts),
    })
}

/// A validated lead item.
pub(crate) struct Input {
    pub name: Option<String>,
    pub price: Option<i64>,
    pub status_id: Option<i64>,
    pub responsible_user_id: Option<i64>,
    pub created_by: Option<i64>,
    pub contact_ids: Vec<i64>,
    pub tags: Vec<String>,
    pub source_id: Option<i64>,
}

/// Validates the lead fields shared by `/leads` and `/leads/complex`.
pub(crate) fn parse_input(
    shared: &Shared,
    state: &State,
    item: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Input {
    let pipeline_id = opt_int(item, "pipeline_id", errors);
    if let Some(p) = pipeline_id
        && p != MAIN_PIPELINE_ID
    {
        errors.push(FieldError::new("NotSupportedChoice", "pipeline_id", format!("Pipeline {p} not found")));
    }
    let status_id = opt_int(item, "status_id", errors);
    if let Some(s) = status_id {
        match account::status(s) {
            Some(st) if st.kind == 1 => errors.push(FieldError::new(
                "NotSupportedChoice",
                "status_id",
                "Leads cannot be put into the Unsorted stage over REST",
            )),
            Some(_) => {}
            None => errors.push(FieldError::new(
                "NotSupportedChoice",
                "status_id",
                format!("Status {s} not found in the pipeline"),
            )),
        }
    }
    let responsible_user_id = opt_int(item, "responsible_user_id", errors);
    if let Some(id) = responsible_user_id
        && !user_known(shared, id)
    {
        errors.push(FieldError::new("NotSupportedChoice", "responsible_user_id", format!("User {id} not found")));
    } else if let Some(id) = responsible_user_id
        && !shared.user_active(id)
    {
        errors.push(FieldError::new("NotSupportedChoice", "responsible_user_id", format!("User {id} is deactivated")));
    }
    let cfv = item.get("custom_fields_values").cloned().unwrap_or(Value::Null);
    let _ = fields::parse(&[], &cfv, errors);
    let mut contact_ids = Vec::new();
    if let Some(list) = item.get("_embedded").and_then(|e| e.get("contacts")).and_then(Value::as_array) {
        for (j, c) in list.iter().enumerate() {
            match c.get("id").and_then(Value::as_i64) {
                Some(id) if state.contacts.contains_key(&id) => contact_ids.push(id),
                Some(id) => errors.push(FieldError::new(
                    "NotFound",
                    format!("_embedded.contacts.{j}.id"),
                    format!("Contact {id} not found"),
                )),
                None => {
                    errors.push(FieldError::new("NotBlank", format!("_embedded.contacts.{j}.id"), "id is required"))
                }
            }
        }
    }
    let source_id = match item.get("_embedded").and_then(|e| e.get("source")) {
        None | Some(Value::Null) => None,
        Some(source) => {
            let external = source.get("external_id").and_then(Value::as_str).unwrap_or_default();
            let found = state.sources.iter().find(|s| s.external_id == external).map(|s| s.id);
            if found.is_none() {
                errors.push(FieldError::new(
                    "NotFound",
                    "_embedded.source.external_id",
                    format!("Source {external:?} not found"),
                ));
            }
            found
        }
    };
    Input {
        source_id,
        name: opt_str(item, "name", errors),
        price: opt_int(item, "price", errors),
        status_id,
        responsible_user_id,
        created_by: opt_int(item, "created_by", errors),
        contact_ids,
        tags: tags_of(item, errors),
    }
}

/// Creates a lead from a validated item.
pub(crate) fn insert(shared: &Shared, state: &mut State, input: Input) -> i64 {
    let id = state.next_id();
    let now = shared.now();
    for t in &input.tags {
        state.tag_id(t);
    }
    let status_id = input.status_id.unwrap_or(FIRST_STAGE_ID);
    state.leads.insert(
        id,
        Lead {
            id,
            name: input.name.unwrap_or_else(|| format!("Сделка #{id}")),
            price: input.price.unwrap_or(0),
            status_id,
            pipeline_id: MAIN_PIPELINE_ID,
            responsible_user_id: input.responsible_user_id.unwrap_or(TOKEN_USER_ID),
            contact_ids: Vec::new(),
            tags: input.tags,
            custom_fields_values: Value::Null,
            created_at: now,
            updated_at: now,
            created_by: input.created_by.unwrap_or(TOKEN_USER_ID),
            closed_at: closed_at(status_id, now),
            is_deleted: false,
            source_id: input.source_id,
        },
    );
    for c in input.contact_ids {
        state.link(id, c);
    }
    id
}

fn closed_at(status_id: i64, now: i64) -> Option<i64> {
    matches!(status_id, account::WON_STATUS_ID | account::LOST_STATUS_ID).then_some(now)
}

/// Sets a lead's status (REST PATCH and the test hook).
pub(crate) fn set_status(state: &mut State, id: i64, status_id: i64, now: i64) {
    if let Some(l) = state.leads.get_mut(&id) {
        l.status_id = status_id;
        l.closed_at = closed_at(status_id, now);
        l.updated_at = now;
    }
}

/// Writes a validated PATCH item; returns the lead's `updated_at`.
fn apply(shared: &Shared, state: &mut State, id: i64, input: Input) -> i64 {
    let now = shared.now();
    if let Some(s) = input.status_id {
        set_status(state, id, s, now);
    }
    for t in &input.tags {
        state.tag_id(t);
    }
    for c in &input.contact_ids {
        state.link(id, *c);
    }
    let Some(l) = state.leads.get_mut(&id) else {
        return 0;
    };
    set_if_some(&mut l.name, input.name);
    set_if_some(&mut l.price, input.price);
    set_if_some(&mut l.responsible_user_id, input.responsible_user_id);
    add_tags(&mut l.tags, input.tags);
    l.updated_at = now;
    now
}

/// Routes `/api/v4/leads...` except notes, pipelines and complex.
pub(crate) fn route(shared: &Shared, method: &Method, rest: &str, q: &Query, body: &[u8]) -> Option<Reply> {
    if let Some(id) = rest.strip_prefix('/').and_then(|r| r.strip_suffix("/files")) {
        let id: i64 = id.parse().ok()?;
        return match *method {
            Method::PUT => Some(link_files(shared, "leads", id, body)),
            Method::GET => Some(Ok(files(shared, "leads", id))),
            _ => None,
        };
    }
    if let Some(id) = rest.strip_prefix('/').and_then(|r| r.strip_suffix("/link")) {
        let id: i64 = id.parse().ok()?;
        return (method == Method::POST).then(|| link(shared, id, body));
    }
    Some(match Op::of(method, rest)? {
        Op::Create => batch::create(shared, &LEADS, body, parse_input, insert),
        Op::Update(single) => batch::update(shared, &LEADS, body, single, parse_input, apply),
        Op::List => list(shared, q),
        Op::Get(id) => Ok(get(shared, q, id)),
    })
}

fn list(shared: &Shared, q: &Query) -> Reply {
    let paging = q.paging()?;
    let ids = q.ids("filter[id]")?;
    let needle = q.get("query").map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty());
    let state = shared.state();
    let mut found: Vec<&Lead> = state
        .leads
        .values()
        .filter(|l| !l.is_deleted)
        .filter(|l| ids.is_empty() || ids.contains(&l.id))
        .filter(|l| needle.as_ref().is_none_or(|n| l.name.to_lowercase().contains(n) || l.id.to_string() == *n))
        .collect();
    if q.descending() {
        found.reverse();
    }
    let with_contacts = q.with("contacts");
    Ok(query::list_reply(shared, "/api/v4/leads", q, "leads", paging, found, |l| {
        lead_json(shared, &state, l, with_contacts)
    }))
}

fn get(shared: &Shared, q: &Query, id: i64) -> Resp {
    let state = shared.state();
    let lead = state.leads.get(&id).filter(|l| !l.is_deleted);
    respond::found(lead.map(|l| lead_json(shared, &state, l, q.with("contacts"))))
}

/// `POST /api/v4/leads/{id}/link`: links contacts (and what else a lead takes) to
/// the lead. Every item names an existing entity of a type a lead can be linked
/// to; a pair linked already stays one link.
fn link(shared: &Shared, id: i64, body: &[u8]) -> Reply {
    let items = query::parse_batch(body)?;
    let mut state = shared.state();
    if state.leads.get(&id).is_none_or(|l| l.is_deleted) {
        return Err(respond::problem(http::StatusCode::NOT_FOUND, "Lead not found"));
    }
    let mut v = respond::Validation::default();
    let mut contacts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let to_type = item.get("to_entity_type").and_then(Value::as_str).unwrap_or_default();
        let to_id = item.get("to_entity_id").and_then(Value::as_i64);
        let mut errors = Vec::new();
        match (to_type, to_id) {
            (_, None) => errors.push(FieldError::new("NotBlank", "to_entity_id", "This value should not be blank.")),
            ("contacts", Some(c)) if state.contacts.get(&c).is_some_and(|c| !c.is_deleted) => contacts.push(c),
            ("contacts", Some(c)) => {
                errors.push(FieldError::new("NotFound", "to_entity_id", format!("Contact {c} not found")))
            }
            ("companies" | "catalog_elements", Some(_)) => {
                errors.push(FieldError::new("NotSupported", "to_entity_type", "This fake links contacts only"))
            }
            (other, Some(_)) => errors.push(FieldError::new(
                "NotSupportedChoice",
                "to_entity_type",
                format!("A lead cannot be linked to {other:?}"),
            )),
        }
        v.add(&i.to_string(), errors);
    }
    if !v.is_empty() {
        return Err(v.into_response());
    }
    for c in &contacts {
        state.link(id, *c);
    }
    let main = state.leads.get(&id).and_then(|l| l.contact_ids.first().copied());
    let links: Vec<Value> = contacts
        .iter()
        .map(|c| {
            json!({
                "entity_id": id,
                "entity_type": "leads",
                "to_entity_id": c,
                "to_entity_type": "contacts",
                "metadata": {"main_contact": main == Some(*c)},
            })
        })
        .collect();
    Ok(respond::hal(
        http::StatusCode::OK,
        &json!({
            "_total_items": links.len(),
            "_links": links_of_link(shared, id),
            "_embedded": {"links": links},
        }),
    ))
}

fn links_of_link(shared: &Shared, id: i64) -> Value {
    self_links(shared, &format!("/api/v4/leads/{id}/links"))
}

/// `PUT /api/v4/leads/{id}/files`: links files of the file service to the lead
/// (`[{"file_uuid": …}]`); 202 with no body. Linking a linked file again changes
/// nothing.
/// `PUT /api/v4/{entity}/{id}/files` (leads or contacts).
pub(crate) fn link_files(shared: &Shared, entity: &str, id: i64, body: &[u8]) -> Reply {
    let items = query::parse_batch(body)?;
    let mut state = shared.state();
    let exists = match entity {
        "leads" => state.leads.get(&id).is_some_and(|l| !l.is_deleted),
        _ => state.contacts.get(&id).is_some_and(|c| !c.is_deleted),
    };
    if !exists {
        return Err(respond::problem(http::StatusCode::NOT_FOUND, "Entity not found"));
    }
    let mut v = respond::Validation::default();
    let mut uuids = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match item.get("file_uuid").and_then(Value::as_str) {
            Some(u) if state.files.contains_key(u) => uuids.push(u.to_string()),
            Some(u) => {
                v.add(&i.to_string(), vec![FieldError::new("NotFound", "file_uuid", format!("File {u} not found"))])
            }
            None => v.add(&i.to_string(), vec![FieldError::new("NotBlank", "file_uuid", "file_uuid is required")]),
        }
    }
    if !v.is_empty() {
        return Err(v.into_response());
    }
    for u in uuids {
        if let Some(f) = state.files.get_mut(&u) {
            let linked = if entity == "leads" { &mut f.leads } else { &mut f.contacts };
            if !linked.contains(&id) {
                linked.push(id);
            }
        }
    }
    Ok(respond::empty(http::StatusCode::ACCEPTED))
}

/// `GET /api/v4/leads/{id}/files`: the files linked to the lead (204 without any).
/// `GET /api/v4/{entity}/{id}/files`.
pub(crate) fn files(shared: &Shared, entity: &str, id: i64) -> Resp {
    let state = shared.state();
    let linked: Vec<Value> = state
        .files
        .values()
        .filter(|f| if entity == "leads" { f.leads.contains(&id) } else { f.contacts.contains(&id) })
        .enumerate()
        .map(|(i, f)| json!({"file_uuid": f.uuid, "id": i + 1}))
        .collect();
    respond::found((!linked.is_empty()).then(
        || json!({"_links": self_links(shared, &format!("/api/v4/{entity}/{id}/files")), "_embedded": {"files": linked}}),
    ))
}
