//! `/api/v4/tasks`: create, complete, update and list tasks.

use http::Method;
use serde_json::{Map, Value, json};

use super::batch::{self, Entity};
use super::query::{self, Query, opt_bool, opt_int, opt_str};
use super::{Op, self_links, set_if_some, user_known};
use crate::account::TOKEN_USER_ID;
use crate::model::Task;
use crate::respond::{self, FieldError, Reply};
use crate::state::{Shared, State};

const ENTITY_TYPES: [&str; 4] = ["leads", "contacts", "companies", "customers"];

const TASKS: Entity = Entity { noun: "Task", key: "tasks", exists: |state, id| state.tasks.contains_key(&id) };

fn links(shared: &Shared, id: i64) -> Value {
    self_links(shared, &format!("/api/v4/tasks/{id}"))
}

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
        "_links": links(shared, t.id),
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

fn parse_input(shared: &Shared, state: &State, item: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Input {
    let text = opt_str(item, "text", errors);
    if text.as_deref().is_some_and(|t| t.trim().is_empty()) {
        errors.push(FieldError::new("NotBlank", "text", "text must not be blank"));
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
                errors.push(FieldError::new("NotFound", "entity_id", format!("Entity {id} not found")));
            }
            Some((t, id))
        }
        (None, None) => None,
        (None, Some(_)) => {
            errors.push(FieldError::new("NotBlank", "entity_type", "entity_type is required with entity_id"));
            None
        }
        (Some(_), None) => {
            errors.push(FieldError::new("NotBlank", "entity_id", "entity_id is required with entity_type"));
            None
        }
    };
    let responsible_user_id = opt_int(item, "responsible_user_id", errors);
    if let Some(id) = responsible_user_id
        && !user_known(shared, id)
    {
        errors.push(FieldError::new("NotSupportedChoice", "responsible_user_id", format!("User {id} not found")));
    }
    let is_completed = opt_bool(item, "is_completed", errors);
    let result_text = item.get("result").and_then(|r| r.get("text")).and_then(Value::as_str).map(str::to_string);
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

/// Writes a validated PATCH item; returns the `updated_at` to report.
fn apply(state: &mut State, id: i64, input: Input, now: i64) -> i64 {
    let Some(t) = state.tasks.get_mut(&id) else {
        return now;
    };
    set_if_some(&mut t.text, input.text);
    set_if_some(&mut t.complete_till, input.complete_till);
    if let Some((et, eid)) = input.entity {
        t.entity_type = et;
        t.entity_id = eid;
    }
    set_if_some(&mut t.task_type_id, input.task_type_id);
    set_if_some(&mut t.responsible_user_id, input.responsible_user_id);
    set_if_some(&mut t.is_completed, input.is_completed);
    if input.result_text.is_some() {
        t.result_text = input.result_text;
    }
    t.updated_at = now;
    now
}

/// Routes `/api/v4/tasks...`.
pub(crate) fn route(shared: &Shared, method: &Method, rest: &str, q: &Query, body: &[u8]) -> Option<Reply> {
    let now = shared.now();
    Some(match Op::of(method, rest)? {
        Op::Create => batch::create(shared, &TASKS, body, parse_new, |_, state, input| insert(state, input, now)),
        Op::Update(single) => {
            batch::update(shared, &TASKS, body, single, parse_input, |_, state, id, input| apply(state, id, input, now))
        }
        Op::List => list(shared, q),
        Op::Get(id) => {
            let state = shared.state();
            let task = state.tasks.get(&id);
            Ok(respond::found(task.map(|t| task_json(shared, t))))
        }
    })
}

/// [`parse_input`] plus the fields a new task requires.
fn parse_new(shared: &Shared, state: &State, item: &Map<String, Value>, errors: &mut Vec<FieldError>) -> Input {
    let input = parse_input(shared, state, item, errors);
    if input.text.is_none() && !errors.iter().any(|e| e.path == "text") {
        errors.push(FieldError::new("NotBlank", "text", "text is required"));
    }
    if input.complete_till.is_none() && !errors.iter().any(|e| e.path == "complete_till") {
        errors.push(FieldError::new("NotBlank", "complete_till", "complete_till is required"));
    }
    input
}

/// Stores a validated create item.
fn insert(state: &mut State, input: Input, now: i64) -> i64 {
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
    id
}

fn list(shared: &Shared, q: &Query) -> Reply {
    let paging = q.paging()?;
    let ids = q.ids("filter[id]")?;
    let entity_ids = q.ids("filter[entity_id]")?;
    let entity_type = q.get("filter[entity_type]");
    let completed = match q.get("filter[is_completed]") {
        None => None,
        Some("1") | Some("true") => Some(true),
        Some("0") | Some("false") => Some(false),
        Some(_) => {
            return Err(respond::invalid(
                "0",
                vec![FieldError::new("InvalidType", "filter[is_completed]", "filter[is_completed] must be 0 or 1")],
            ));
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
    Ok(query::list_reply(shared, "/api/v4/tasks", q, "tasks", paging, found, |t| task_json(shared, t)))
}
