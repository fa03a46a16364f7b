//! amoCRM REST API v4 (`/api/v4/...`): routing plus the read-only account data.

mod batch;
mod chats_link;
mod complex;
pub(crate) mod contacts;
pub(crate) mod fields;
pub(crate) mod leads;
pub(crate) mod notes;
mod query;
mod sources;
mod tasks;
mod unsorted;
mod webhooks;

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use crate::account::{self, MAIN_PIPELINE_ID, STATUSES, TOKEN_USER_ID};
use crate::respond::{self, FieldError, Reply, Resp};
use crate::state::{Shared, State};
use query::Query;

/// One of the operations every entity collection (`/api/v4/{leads|contacts|tasks}`) has.
pub(crate) enum Op {
    /// `POST ""`: create a batch.
    Create,
    /// `PATCH ""` (`None`: a batch) or `PATCH /{id}`.
    Update(Option<i64>),
    /// `GET ""`: list.
    List,
    /// `GET /{id}`: one.
    Get(i64),
}

impl Op {
    /// The operation `method` asks for on `rest`, the path after the collection.
    pub fn of(method: &Method, rest: &str) -> Option<Op> {
        Some(match (method.as_str(), rest) {
            ("POST", "") => Op::Create,
            ("PATCH", "") => Op::Update(None),
            ("GET", "") => Op::List,
            (m, r) => {
                let id: i64 = r.strip_prefix('/')?.parse().ok()?;
                match m {
                    "GET" => Op::Get(id),
                    "PATCH" => Op::Update(Some(id)),
                    _ => return None,
                }
            }
        })
    }
}

/// Whether `id` is a user of the account.
pub(crate) fn user_known(shared: &Shared, id: i64) -> bool {
    shared.users.iter().any(|u| u.id == id)
}

/// Tag names from `_embedded.tags` and `tags_to_add` (`[{"name": ..}]`).
pub(crate) fn tags_of(item: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Vec<String> {
    let embedded = item.get("_embedded").and_then(|e| e.get("tags"));
    let to_add = item.get("tags_to_add");
    let mut names = Vec::new();
    for (path, list) in [("_embedded.tags", embedded), ("tags_to_add", to_add)] {
        let Some(list) = list else { continue };
        let Some(list) = list.as_array() else {
            errors.push(FieldError::new("InvalidType", path, "tags must be an array"));
            continue;
        };
        for (i, t) in list.iter().enumerate() {
            match t.get("name").and_then(Value::as_str) {
                Some(n) if !n.trim().is_empty() => {
                    if !names.iter().any(|x: &String| x == n) {
                        names.push(n.to_string());
                    }
                }
                _ if t.get("id").and_then(Value::as_i64).is_some() => {}
                _ => errors.push(FieldError::new("NotBlank", format!("{path}.{i}.name"), "tag name or id is required")),
            }
        }
    }
    names
}

/// Stores `value` in `slot` if there is one (a PATCH leaves absent fields alone).
pub(crate) fn set_if_some<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Adds the tag names of `new` that `tags` lacks, keeping their order.
pub(crate) fn add_tags(tags: &mut Vec<String>, new: Vec<String>) {
    for tag in new {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
}

/// `{"self": {"href": ...}}` for an API path.
pub(crate) fn self_links(shared: &Shared, path: &str) -> Value {
    json!({"self": {"href": shared.url(path)}})
}

/// The `_embedded` of a lead or a contact: its tags, no companies, and the entities
/// linked to it (`("contacts", [...])`) when the request asked for them.
pub(crate) fn embedded(state: &State, tags: &[String], linked: Option<(&str, Vec<Value>)>) -> Value {
    let mut embedded = Map::new();
    embedded.insert("tags".into(), tags_json(state, tags));
    embedded.insert("companies".into(), json!([]));
    if let Some((key, items)) = linked {
        embedded.insert(key.into(), Value::Array(items));
    }
    Value::Object(embedded)
}

/// Renders tags as `[{id, name, color}]`.
pub(crate) fn tags_json(state: &State, names: &[String]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| json!({"id": state.tags.get(n).copied().unwrap_or(0), "name": n, "color": null}))
            .collect(),
    )
}

/// Handles an authorized REST call; `path` starts with `/api/v4`.
pub(crate) fn handle(shared: &Shared, method: &Method, path: &str, raw_query: Option<&str>, body: &[u8]) -> Resp {
    let q = Query::parse(raw_query);
    let rest = path.strip_prefix("/api/v4").unwrap_or(path).trim_end_matches('/');
    match route(shared, method, rest, &q, body) {
        Some(Ok(resp) | Err(resp)) => resp,
        None => respond::problem(StatusCode::NOT_FOUND, "Not found"),
    }
}

fn route(shared: &Shared, method: &Method, rest: &str, q: &Query, body: &[u8]) -> Option<Reply> {
    let get = method == Method::GET;
    match rest {
        "/account" if get => return Some(Ok(account_info(shared, q))),
        "/users" if get => return Some(users(shared, q)),
        "/leads/pipelines" if get => return Some(Ok(pipelines(shared))),
        "/contacts/custom_fields" if get => return Some(Ok(custom_fields(shared))),
        "/contacts/custom_fields" if method == Method::POST => return Some(create_custom_fields(shared, body)),
        "/leads/complex" if method == Method::POST => return Some(complex::create(shared, body)),
        "/webhooks" => return webhooks::route(shared, method, q, body),
        "/sources" => return sources::route(shared, method, body),
        _ => {}
    }
    if let Some(r) = rest.strip_prefix("/leads/unsorted") {
        return unsorted::route(shared, method, r, q, body);
    }
    if let Some(r) = rest.strip_prefix("/users/") {
        let id: i64 = r.parse().ok()?;
        if !get {
            return None;
        }
        let user = shared.users.iter().find(|u| u.id == id);
        return Some(Ok(respond::found(user.map(|u| user_json(shared, u, q)))));
    }
    for entity in ["leads", "contacts"] {
        let Some(r) = rest.strip_prefix("/").and_then(|r| r.strip_prefix(entity)) else {
            continue;
        };
        if !(r.is_empty() || r.starts_with('/')) {
            continue;
        }
        if r.contains("/notes") || r == "/notes" {
            return notes::route(shared, method, entity, r, q, body);
        }
        return match entity {
            "leads" => leads::route(shared, method, r, q, body),
            _ => contacts::route(shared, method, r, q, body),
        };
    }
    if let Some(r) = rest.strip_prefix("/tasks")
        && (r.is_empty() || r.starts_with('/'))
    {
        return tasks::route(shared, method, r, q, body);
    }
    None
}

fn account_info(shared: &Shared, q: &Query) -> Resp {
    let cfg = &shared.config;
    let mut doc = json!({
        "id": cfg.account_id,
        "name": format!("{} (fake)", cfg.subdomain),
        "subdomain": cfg.subdomain,
        "created_at": 1_600_000_000,
        "created_by": TOKEN_USER_ID,
        "updated_at": 1_600_000_000,
        "updated_by": TOKEN_USER_ID,
        "current_user_id": TOKEN_USER_ID,
        "country": "RU",
        "customers_mode": "disabled",
        "is_unsorted_on": true,
        "is_loss_reason_enabled": false,
        "is_helpbot_enabled": false,
        "is_technical_account": false,
        "contact_name_display_order": 1,
        "_links": {"self": {"href": shared.url("/api/v4/account")}},
    });
    if q.with("amojo_id") {
        doc["amojo_id"] = json!(cfg.amojo_id);
    }
    if q.with("drive_url") {
        doc["drive_url"] = json!(shared.url(crate::drive::PREFIX));
    }
    if q.with("task_types") {
        doc["_embedded"] = json!({"task_types": [
            {"id": 1, "name": "Связаться", "color": null, "icon_id": null, "code": "FOLLOW_UP"},
            {"id": 2, "name": "Встреча", "color": null, "icon_id": null, "code": "MEETING"},
        ]});
    }
    respond::hal(StatusCode::OK, &doc)
}

fn user_json(shared: &Shared, u: &account::User, q: &Query) -> Value {
    let mut doc = json!({
        "id": u.id,
        "name": u.name,
        "email": u.email,
        "lang": "ru",
        "rights": {"is_admin": u.is_admin, "is_free": false, "is_active": shared.user_active(u.id), "group_id": null},
        "_links": {"self": {"href": shared.url(&format!("/api/v4/users/{}", u.id))}},
    });
    if q.with("amojo_id") {
        doc["amojo_id"] = json!(u.amojo_id);
    }
    doc
}

fn users(shared: &Shared, q: &Query) -> Reply {
    let paging = q.paging()?;
    let found = shared.users.iter().collect();
    Ok(query::list_reply(shared, "/api/v4/users", q, "users", paging, found, |u| user_json(shared, u, q)))
}

fn pipelines(shared: &Shared) -> Resp {
    let statuses: Vec<Value> = STATUSES
        .iter()
        .map(|s| {
            json!({
                "id": s.id, "name": s.name, "sort": s.sort, "is_editable": s.kind == 0 && s.id > 143,
                "pipeline_id": MAIN_PIPELINE_ID, "color": "#99ccff", "type": s.kind,
                "account_id": shared.config.account_id,
                "_links": {"self": {"href": shared.url(&format!("/api/v4/leads/pipelines/{MAIN_PIPELINE_ID}/statuses/{}", s.id))}},
            })
        })
        .collect();
    respond::hal(
        StatusCode::OK,
        &json!({
            "_total_items": 1,
            "_links": {"self": {"href": shared.url("/api/v4/leads/pipelines")}},
            "_embedded": {"pipelines": [{
                "id": MAIN_PIPELINE_ID, "name": "Воронка", "sort": 1, "is_main": true,
                "is_unsorted_on": true, "is_archive": false, "account_id": shared.config.account_id,
                "_links": {"self": {"href": shared.url(&format!("/api/v4/leads/pipelines/{MAIN_PIPELINE_ID}"))}},
                "_embedded": {"statuses": statuses},
            }]},
        }),
    )
}

/// `POST /api/v4/contacts/custom_fields [{name, type, code?}]`: an administrator's
/// call; this fake creates text fields.
fn create_custom_fields(shared: &Shared, body: &[u8]) -> Reply {
    if !shared.config.token_is_admin {
        return Err(respond::problem(StatusCode::FORBIDDEN, "Only an account administrator can create custom fields"));
    }
    let items = query::parse_batch(body)?;
    let mut v = respond::Validation::default();
    for (i, item) in items.iter().enumerate() {
        let mut errors = Vec::new();
        if item.get("name").and_then(Value::as_str).is_none_or(|n| n.trim().is_empty()) {
            errors.push(FieldError::new("NotBlank", "name", "This value should not be blank."));
        }
        if item.get("type").and_then(Value::as_str) != Some("text") {
            errors.push(FieldError::new("NotSupportedChoice", "type", "This fake creates text fields only"));
        }
        v.add(&query::request_id(item, i), errors);
    }
    if !v.is_empty() {
        return Err(v.into_response());
    }
    let mut created = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
        let code = item.get("code").and_then(Value::as_str);
        let field = shared.create_contact_field(name, code).map_err(|e| {
            respond::invalid(&query::request_id(item, i), vec![FieldError::new("NotUnique", "code", e)])
        })?;
        created.push(json!({"id": field.id, "name": field.name, "code": field.code, "type": field.kind,
            "entity_type": "contacts", "request_id": query::request_id(item, i)}));
    }
    Ok(respond::hal(StatusCode::OK, &json!({"_total_items": created.len(), "_embedded": {"custom_fields": created}})))
}

fn custom_fields(shared: &Shared) -> Resp {
    let items: Vec<Value> = shared
        .contact_fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let enums: Value = if f.enums.is_empty() {
                Value::Null
            } else {
                f.enums
                    .iter()
                    .enumerate()
                    .map(|(j, e)| json!({"id": e.id, "value": e.code, "sort": (j + 1) * 2, "code": e.code}))
                    .collect()
            };
            json!({
                "id": f.id, "name": f.name, "code": f.code, "sort": (i + 1) * 10, "type": f.kind,
                "entity_type": "contacts", "is_predefined": f.code.is_some(), "is_deletable": f.code.is_none(),
                "is_api_only": false, "enums": enums, "account_id": shared.config.account_id,
                "_links": {"self": {"href": shared.url(&format!("/api/v4/contacts/custom_fields/{}", f.id))}},
            })
        })
        .collect();
    respond::hal(
        StatusCode::OK,
        &json!({
            "_total_items": items.len(), "_page": 1, "_page_count": 1,
            "_links": {"self": {"href": shared.url("/api/v4/contacts/custom_fields")}},
            "_embedded": {"custom_fields": items},
        }),
    )
}
