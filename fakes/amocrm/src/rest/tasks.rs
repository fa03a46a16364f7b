//! `/api/v4/tasks`: create, complete, update and list tasks.

use http::{Method, StatusCode};
use serde_json::{Map, Value, json};

use super::query::{self, Query, opt_int, opt_str, parse_batch, parse_object, request_id};
use super::user_known;
use crate::account::TOKEN_USER_ID;
use crate::model::Task;
use crate::respond::{self, FieldError, Resp, Validation};
use crate::state::{Shared, State};

const ENTITY_TYPES: [&str; 4] = ["leads", "contacts", "companies", "customers"];

/// Renders a task as amoCRM does.
fn task_json(shared: &Shared, t: &Task) -> Value {
    json!({
        "id": t.id,
        "created_by": t.created_by,
        "updated_by": t.created_by,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
        "responsible_user_id": t.responsible_user_id,
        "group_id": 0,
        "entity_id": (t.entity_id != 0).then_some(t.entity_id),
        "entity_type": (!t.entity_type.is_empty()).then_some(&t.entity_type),
        "duration": 0,
        "is_completed": t.is_completed,
        "task_type_id": t.task_type_id,
        "text": t.text,
        "result": t.result_text.as_ref().map_or(json!([]), |r| json!({"text": r})),
        "complete_till": t.complete_till,
        "account_id": shared.config.account_id,
        "_links": {"self": {"href": shared.url(&format!("/api/v4/tasks/{}", t.id))}},
    })
}

/// Optional fields shared by create and update.
struct Input {
    text: Option<String>,
    complete_till: Option<i64>,
    entity: Option<(String, i64)>,
    task_type_id: Option<i64>,
    responsible_user_id: Option<i64>,
    is_completed: Option<bool>,
    result_text: Option<String>,
}

fn parse_input(
    shared: &Shared,
    state: &State,
    item: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> Input {
    let text = opt_str(item, "text", errors);
    if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
        errors.push(FieldError::new(
            "NotBlank",
            "text",
            "text must not be blank",
        ));
    }
    let entity_type = opt_str(item, "entity_type", errors);
    let entity_id = opt_int(item, "entity_id", errors);
    let entity = match (entity_type, entity_id) {
        (Some(t), Some(id)) => {
            if !ENTITY_TYPES.contains(&t.as_str()) {
                errors.push(FieldError::new(
                    "NotSupportedChoice",
                    "entity_type",
                    format!("Entity type {t} is not supported"),
                ));
            } else if (t == "leads" && !state.leads.contains_key(&id))
                || (t == "contacts" && !state.contacts.contains_key(&id))
            {
                errors.push(FieldError::new(
                    "NotFound",
                    "entity_id",
                    format!("Entity {id} not found"),
                ));
            }
            Some((t, id))
        }
        (None, None) => None,
        (None, Some(_)) => {
            errors.push(FieldError::new(
                "NotBlank",
                "entity_type",
                "entity_type is required with entity_id",
            ));
            None
        }
        (Some(_), None) => {
            errors.push(FieldError::new(
                "NotBlank",
                "entity_id",
                "entity_id is required with entity_type",
            ));
            None
        }
    };
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
    let is_completed = match item.get("is_completed") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(_) => {
            errors.push(FieldError::new(
                "InvalidType",
                "is_completed",
                "is_completed must be a boolean",
            ));
            None
        }
    };
    let result_text = item
        .get("result")
        .and_then(|r| r.get("text"))
        .and_then(Value::as_str)
        .map(str::to_string);
    Input {
        text,
        complete_till: opt_int(item, "complete_till", errors),
        entity,
        task_type_id: opt_int(item, "task_type_id", errors),
        responsible_user_id,
        is_completed,
        result_text,
    }
}

/// Routes `/api/v4/tasks...`.
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
                "GET" => {
                    let state = shared.state();
                    match state.tasks.get(&id) {
                        Some(t) => respond::hal(StatusCode::OK, &task_json(shared, t)),
                        None => respond::empty(StatusCode::NO_CONTENT),
                    }
                }
                "PATCH" => update(shared, body, Some(id)),
                _ => return None,
            }
        }
    })
}

fn links(shared: &Shared, id: i64) -> Value {
    json!({"self": {"href": shared.url(&format!("/api/v4/tasks/{id}"))}})
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
        if input.text.is_none() && !errors.iter().any(|e| e.path == "text") {
            errors.push(FieldError::new("NotBlank", "text", "text is required"));
        }
        if input.complete_till.is_none() && !errors.iter().any(|e| e.path == "complete_till") {
            errors.push(FieldError::new(
                "NotBlank",
                "complete_till",
                "complete_till is required",
            ));
        }
        validation.add(&rid, errors);
        inputs.push((rid, input));
    }
    if !validation.is_empty() {
        return validation.into_response();
    }
    let now = shared.now();
    let mut created = Vec::new();
    for (rid, input) in inputs {
        let id = state.next_id();
        let (entity_type, entity_id) = input.entity.unwrap_or_default();
        state.tasks.insert(
            id,
            Task {
                id,
                entity_id,
                entity_type,
                text: input.text.unwrap_or_default(),
                complete_till: input.complete_till.unwrap_or_default(),
                task_type_id: input.task_type_id.unwrap_or(1),
                responsible_user_id: input.responsible_user_id.unwrap_or(TOKEN_USER_ID),
                is_completed: input.is_completed.unwrap_or(false),
                result_text: input.result_text,
                created_by: TOKEN_USER_ID,
                created_at: now,
                updated_at: now,
            },
        );
        created.push(json!({"id": id, "request_id": rid, "_links": links(shared, id)}));
    }
    respond::hal(
        StatusCode::OK,
        &json!({"_links": {"self": {"href": shared.url("/api/v4/tasks")}}, "_embedded": {"tasks": created}}),
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
        && !state.tasks.contains_key(&id)
    {
        return respond::problem(StatusCode::NOT_FOUND, "Task not found");
    }
    let mut validation = Validation::default();
    let mut inputs = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errors = Vec::new();
        let id = opt_int(item, "id", &mut errors);
        match id {
            None => errors.push(FieldError::new("NotBlank", "id", "id is required")),
            Some(id) if !state.tasks.contains_key(&id) => errors.push(FieldError::new(
                "NotFound",
                "id",
                format!("Task {id} not found"),
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
    let now = shared.now();
    let mut out = Vec::new();
    for (rid, id, input) in inputs {
        if let Some(t) = state.tasks.get_mut(&id) {
            if let Some(v) = input.text {
                t.text = v;
            }
            if let Some(v) = input.complete_till {
                t.complete_till = v;
            }
            if let Some((et, eid)) = input.entity {
                t.entity_type = et;
                t.entity_id = eid;
            }
            if let Some(v) = input.task_type_id {
                t.task_type_id = v;
            }
            if let Some(v) = input.responsible_user_id {
                t.responsible_user_id = v;
            }
            if let Some(v) = input.is_completed {
                t.is_completed = v;
            }
            if input.result_text.is_some() {
                t.result_text = input.result_text;
            }
            t.updated_at = now;
        }
        out.push(
            json!({"id": id, "updated_at": now, "request_id": rid, "_links": links(shared, id)}),
        );
    }
    if single.is_some()
        && let [one] = out.as_slice()
    {
        return respond::hal(StatusCode::OK, one);
    }
    respond::hal(
        StatusCode::OK,
        &json!({"_links": {"self": {"href": shared.url("/api/v4/tasks")}}, "_embedded": {"tasks": out}}),
    )
}

fn list(shared: &Shared, q: &Query) -> Resp {
    let (page, limit) = match q.paging() {
        Ok(p) => p,
        Err(r) => return r,
    };
    let (ids, entity_ids) = match (q.ids("filter[id]"), q.ids("filter[entity_id]")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let entity_type = q.get("filter[entity_type]");
    let completed = match q.get("filter[is_completed]") {
        None => None,
        Some("1") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        Some(_) => {
            return respond::invalid(
                "0",
                vec![FieldError::new(
                    "InvalidType",
                    "filter[is_completed]",
                    "filter[is_completed] must be 0 or 1",
                )],
            );
        }
    };
    let state = shared.state();
    let found: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| ids.is_empty() || ids.contains(&t.id))
        .filter(|t| entity_type.is_none_or(|et| t.entity_type == et))
        .filter(|t| entity_ids.is_empty() || entity_ids.contains(&t.entity_id))
        .filter(|t| completed.is_none_or(|c| t.is_completed == c))
        .collect();
    let (items, info) = query::paginate(found, page, limit);
    let items = items.into_iter().map(|t| task_json(shared, t)).collect();
    query::list_reply(shared, "/api/v4/tasks", q, "tasks", items, info)
}
