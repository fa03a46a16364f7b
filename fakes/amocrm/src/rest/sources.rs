//! The Sources API: an integration's lead sources, so reports split leads by
//! channel. Creating one is an administrator's call and needs the integration's
//! widget (its manifest lists `"locations":["lead_sources"]`).

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::query;
use crate::account::MAIN_PIPELINE_ID;
use crate::model::Source;
use crate::respond::{self, FieldError, Reply};
use crate::state::Shared;

/// Routes `/api/v4/sources`.
pub(crate) fn route(shared: &Shared, method: &Method, body: &[u8]) -> Option<Reply> {
    match *method {
        Method::GET => Some(Ok(list(shared))),
        Method::POST => Some(create(shared, body)),
        _ => None,
    }
}

fn model(s: &Source) -> Value {
    json!({"id": s.id, "name": s.name, "external_id": s.external_id, "pipeline_id": s.pipeline_id,
        "default": s.default, "origin_code": null, "services": []})
}

fn list(shared: &Shared) -> respond::Resp {
    let state = shared.state();
    let items: Vec<Value> = state.sources.iter().map(model).collect();
    respond::found((!items.is_empty()).then(|| json!({"_total_items": items.len(), "_embedded": {"sources": items}})))
}

fn create(shared: &Shared, body: &[u8]) -> Reply {
    if !shared.config.token_is_admin {
        return Err(respond::problem(StatusCode::FORBIDDEN, "Only an account administrator can add sources"));
    }
    // Undocumented in amoCRM's reference: this fake refuses an integration without
    // the widget as it refuses a non-administrator.
    if !shared.config.sources_widget {
        return Err(respond::problem(
            StatusCode::FORBIDDEN,
            "The integration has no widget with the lead_sources location",
        ));
    }
    let items = query::parse_batch(body)?;
    let mut state = shared.state();
    let mut v = respond::Validation::default();
    for (i, item) in items.iter().enumerate() {
        let mut errors = Vec::new();
        if item.get("name").and_then(Value::as_str).is_none_or(|n| n.trim().is_empty()) {
            errors.push(FieldError::new("NotBlank", "name", "This value should not be blank."));
        }
        match item.get("external_id").and_then(Value::as_str) {
            None => errors.push(FieldError::new("NotBlank", "external_id", "This value should not be blank.")),
            Some(e) if e.len() > 36 || !e.chars().all(|c| c.is_ascii_graphic() || c == ' ') => {
                errors.push(FieldError::new("InvalidValue", "external_id", "at most 36 printable ASCII characters"))
            }
            Some(e) if state.sources.iter().any(|s| s.external_id == e) => {
                errors.push(FieldError::new("NotUnique", "external_id", format!("Source {e:?} exists")))
            }
            Some(_) => {}
        }
        if let Some(p) = item.get("pipeline_id").and_then(Value::as_i64)
            && p != MAIN_PIPELINE_ID
        {
            errors.push(FieldError::new("NotFound", "pipeline_id", format!("Pipeline {p} not found")));
        }
        v.add(&query::request_id(item, i), errors);
    }
    if !v.is_empty() {
        return Err(v.into_response());
    }
    let mut created = Vec::new();
    for item in &items {
        let source = Source {
            id: state.next_id(),
            name: item.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
            external_id: item.get("external_id").and_then(Value::as_str).unwrap_or_default().to_string(),
            pipeline_id: item.get("pipeline_id").and_then(Value::as_i64).unwrap_or(MAIN_PIPELINE_ID),
            default: item.get("default").and_then(Value::as_bool).unwrap_or(false),
        };
        created.push(model(&source));
        state.sources.push(source);
    }
    Ok(respond::hal(StatusCode::OK, &json!({"_total_items": created.len(), "_embedded": {"sources": created}})))
}
