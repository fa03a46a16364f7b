//! `/api/v4/leads`: create, read, list and update leads.

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::query::{self, Query, opt_int, opt_str, parse_batch, parse_object, request_id};
use super::{fields, tags_json, tags_of, user_known};
use crate::account::{self, FIRST_STAGE_ID, MAIN_PIPELINE_ID, TOKEN_USER_ID};
use crate::model::Lead;
use crate::respond::{self, FieldError, Resp, Validation};
use crate::state::{Shared, State};

/// Renders a lead as amoCRM does.
pub(crate) fn lead_json(shared: &Shared, state: &State, l: &Lead, with_contacts: bool) -> Value {
    let mut embedded = Map::new();
    embedded.insert("tags".into(), tags_json(state, &l.tags));
    embedded.insert("companies".into(), json!([]));
    if with_contacts {
        let contacts: Vec<Value> = l
            .contact_ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                json!({"id": id, "is_main": i == 0,
                       "_links": {"self": {"href": shared.url(&format!("/api/v4/contacts/{id}"))}}})
            })
            .collect();
        embedded.insert("contacts".into(), Value::Array(contacts));
    }
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
        "_links": {"self": {"href": shared.url(&format!("/api/v4/leads/{}", l.id))}},
        "_embedded": embedded,
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
        errors.push(FieldError::new(
            "NotSupportedChoice",
            "pipeline_id",
            format!("Pipeline {p} not found"),
        ));
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
    let _ = fields::parse(&[], &cfv, errors);
    let mut contact_ids = Vec::new();
    if let Some(list) = item
        .get("_embedded")
        .and_then(|e| e.get("contacts"))
        .and_then(Value::as_array)
    {
        for (j, c) in list.iter().enumerate() {
            match c.get("id").and_then(Value::as_i64) {
                Some(id) if state.contacts.contains_key(&id) => contact_ids.push(id),
                Some(id) => errors.push(FieldError::new(
                    "NotFound",
                    format!("_embedded.contacts.{j}.id"),
                    format!("Contact {id} not found"),
                )),
                None => errors.push(FieldError::new(
                    "NotBlank",
                    format!("_embedded.contacts.{j}.id"),
                    "id is required",
                )),
            }
        }
    }
    Input {
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

fn apply(shared: &Shared, state: &mut State, id: i64, input: Input) {
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
    if let Some(l) = state.leads.get_mut(&id) {
        if let Some(n) = input.name {
            l.name = n;
        }
        if let Some(p) = input.price {
            l.price = p;
        }
        if let Some(r) = input.responsible_user_id {
            l.responsible_user_id = r;
        }
        for t in input.tags {
            if !l.tags.contains(&t) {
                l.tags.push(t);
            }
        }
        l.updated_at = now;
    }
}

/// Routes `/api/v4/leads...` except notes, pipelines and complex.
pub(crate) fn route(
    shared: &Shared,
    method: &Method,
    rest: &str,
    q: &Query,
    body: &[u8],
) -> Option<Resp> {
    Some(match (method.as_str(), rest) {
        ("POST", "") => create(shared, body),
        ("PATCH", "") => update(shared, body, None),
        ("GET", "") => list(shared, q),
        (m, r) => {
            let id: i64 = r.strip_prefix('/')?.parse().ok()?;
            match m {
                "GET" => get(shared, q, id),
                "PATCH" => update(shared, body, Some(id)),
                _ => return None,
            }
        }
    })
}

fn links(shared: &Shared, id: i64) -> Value {
    json!({"self": {"href": shared.url(&format!("/api/v4/leads/{id}"))}})
}

fn create(shared: &Shared, body: &[u8]) -> Resp {
    let items = match parse_batch(body) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let mut state = shared.state();
    let mut validation = Validation::default();
    let mut inputs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errors = Vec::new();
        let input = parse_input(shared, &state, item, &mut errors);
        validation.add(&rid, errors);
        inputs.push((rid, input));
    }
    if !validation.is_empty() {
        return validation.into_response();
    }
    let created: Vec<Value> = inputs
        .into_iter()
        .map(|(rid, input)| {
            let id = insert(shared, &mut state, input);
            json!({"id": id, "request_id": rid, "_links": links(shared, id)})
        })
        .collect();
    respond::hal(
        StatusCode::OK,
        &json!({"_links": {"self": {"href": shared.url("/api/v4/leads")}}, "_embedded": {"leads": created}}),
    )
}

fn update(shared: &Shared, body: &[u8], single: Option<i64>) -> Resp {
    let items = match single {
        Some(id) => match parse_object(body) {
            Ok(mut item) => {
                item.insert("id".into(), json!(id));
                vec![item]
            }
            Err(r) => return r,
        },
        None => match parse_batch(body) {
            Ok(i) => i,
            Err(r) => return r,
        },
    };
    let mut state = shared.state();
    if let Some(id) = single
        && !state.leads.contains_key(&id)
    {
        return respond::problem(StatusCode::NOT_FOUND, "Lead not found");
    }
    let mut validation = Validation::default();
    let mut inputs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errors = Vec::new();
        let id = opt_int(item, "id", &mut errors);
        match id {
            None => errors.push(FieldError::new("NotBlank", "id", "id is required")),
            Some(id) if !state.leads.contains_key(&id) => errors.push(FieldError::new(
                "NotFound",
                "id",
                format!("Lead {id} not found"),
            )),
            _ => {}
        }
        let input = parse_input(shared, &state, item, &mut errors);
        validation.add(&rid, errors);
        inputs.push((rid, id.unwrap_or_default(), input));
    }
    if !validation.is_empty() {
        return validation.into_response();
    }
    let mut out = Vec::new();
    for (rid, id, input) in inputs {
        apply(shared, &mut state, id, input);
        let updated_at = state
            .leads
            .get(&id)
            .map(|l| l.updated_at)
            .unwrap_or_default();
        out.push(json!({"id": id, "updated_at": updated_at, "request_id": rid, "_links": links(shared, id)}));
    }
    if single.is_some()
        && let [one] = out.as_slice()
    {
        return respond::hal(StatusCode::OK, one);
    }
    respond::hal(
        StatusCode::OK,
        &json!({"_links": {"self": {"href": shared.url("/api/v4/leads")}}, "_embedded": {"leads": out}}),
    )
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
    let needle = q
        .get("query")
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty());
    let state = shared.state();
    let mut found: Vec<&Lead> = state
        .leads
        .values()
        .filter(|l| !l.is_deleted)
        .filter(|l| ids.is_empty() || ids.contains(&l.id))
        .filter(|l| {
            needle
                .as_ref()
                .is_none_or(|n| l.name.to_lowercase().contains(n) || l.id.to_string() == *n)
        })
        .collect();
    if q.get("order[id]") == Some("desc") || q.get("order[updated_at]") == Some("desc") {
        found.reverse();
    }
    let (items, info) = query::paginate(found, page, limit);
    let with_contacts = q.with("contacts");
    let items = items
        .into_iter()
        .map(|l| lead_json(shared, &state, l, with_contacts))
        .collect();
    query::list_reply(shared, "/api/v4/leads", q, "leads", items, info)
}

fn get(shared: &Shared, q: &Query, id: i64) -> Resp {
    let state = shared.state();
    match state.leads.get(&id).filter(|l| !l.is_deleted) {
        Some(l) => respond::hal(
            StatusCode::OK,
            &lead_json(shared, &state, l, q.with("contacts")),
        ),
        None => respond::empty(StatusCode::NO_CONTENT),
    }
}
