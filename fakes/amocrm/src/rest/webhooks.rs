//! `/api/v4/webhooks`: REST webhook subscriptions.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::query::{Query, parse_object};
use crate::account::TOKEN_USER_ID;
use crate::model::WebhookSubscription;
use crate::respond::{self, FieldError, Reply, Resp};
use crate::state::Shared;

const ACTIONS: [&str; 7] = ["add", "update", "delete", "restore", "responsible", "note", "status"];
const ENTITIES: [&str; 5] = ["lead", "contact", "company", "customer", "task"];
/// At most this many subscriptions per account.
const MAX_WEBHOOKS: usize = 100;

fn event_known(e: &str) -> bool {
    matches!(e, "add_talk" | "update_talk" | "add_message")
        || e.split_once('_').is_some_and(|(a, b)| ACTIONS.contains(&a) && ENTITIES.contains(&b))
}

fn sub_json(shared: &Shared, s: &WebhookSubscription) -> Value {
    json!({
        "id": s.id,
        "destination": s.destination,
        "created_at": s.created_at,
        "updated_at": s.created_at,
        "account_id": shared.config.account_id,
        "created_by": TOKEN_USER_ID,
        "sort": s.sort,
        "disabled": s.disabled,
        "settings": s.settings,
    })
}

/// Routes `/api/v4/webhooks`.
pub(crate) fn route(shared: &Shared, method: &Method, q: &Query, body: &[u8]) -> Option<Reply> {
    Some(match method.as_str() {
        "POST" => subscribe(shared, body),
        "DELETE" => unsubscribe(shared, body),
        "GET" => Ok(list(shared, q)),
        _ => return None,
    })
}

fn destination_of(item: &serde_json::Map<String, Value>) -> Result<String, Resp> {
    let dest = item.get("destination").and_then(Value::as_str).unwrap_or_default();
    let ok = url::Url::parse(dest).map(|u| matches!(u.scheme(), "http" | "https")).unwrap_or(false);
    if ok {
        Ok(dest.to_string())
    } else {
        Err(respond::invalid(
            "0",
            vec![FieldError::new("InvalidUrl", "destination", "destination must be an http(s) URL")],
        ))
    }
}

fn subscribe(shared: &Shared, body: &[u8]) -> Reply {
    let item = parse_object(body)?;
    let destination = destination_of(&item)?;
    let settings: Vec<String> = match item.get("settings").and_then(Value::as_array) {
        Some(list) if !list.is_empty() => {
            let mut out = Vec::new();
            for (i, e) in list.iter().enumerate() {
                match e.as_str() {
                    Some(e) if event_known(e) => out.push(e.to_string()),
                    _ => {
                        return Err(respond::invalid(
                            "0",
                            vec![FieldError::new(
                                "NotSupportedChoice",
                                format!("settings.{i}"),
                                format!("Unknown event {e}"),
                            )],
                        ));
                    }
                }
            }
            out
        }
        _ => {
            return Err(respond::invalid(
                "0",
                vec![FieldError::new("NotBlank", "settings", "settings must be a non-empty array of events")],
            ));
        }
    };
    let sort = item.get("sort").and_then(Value::as_i64).unwrap_or(1);
    let now = shared.now();
    let mut state = shared.state();
    if let Some(existing) = state.webhooks.iter_mut().find(|w| w.destination == destination) {
        existing.settings = settings;
        existing.sort = sort;
        existing.disabled = false;
        let s = existing.clone();
        state.webhook_invalid.remove(&s.id);
        return Ok(respond::hal(StatusCode::CREATED, &sub_json(shared, &s)));
    }
    if state.webhooks.len() >= MAX_WEBHOOKS {
        return Err(respond::problem(StatusCode::BAD_REQUEST, "Limit of 100 webhooks reached"));
    }
    let id = state.next_id();
    let s = WebhookSubscription { id, destination, settings, sort, disabled: false, created_at: now };
    state.webhooks.push(s.clone());
    Ok(respond::hal(StatusCode::CREATED, &sub_json(shared, &s)))
}

fn unsubscribe(shared: &Shared, body: &[u8]) -> Reply {
    let destination = destination_of(&parse_object(body)?)?;
    let mut state = shared.state();
    let before = state.webhooks.len();
    state.webhooks.retain(|w| w.destination != destination);
    state.pending_webhooks.retain(|p| p.destination != destination);
    if state.webhooks.len() == before {
        return Err(respond::problem(StatusCode::NOT_FOUND, "Webhook not found"));
    }
    Ok(respond::empty(StatusCode::NO_CONTENT))
}

fn list(shared: &Shared, q: &Query) -> Resp {
    let dest = q.get("filter[destination]");
    let state = shared.state();
    let found: Vec<Value> = state
        .webhooks
        .iter()
        .filter(|w| dest.is_none_or(|d| w.destination == d))
        .map(|w| sub_json(shared, w))
        .collect();
    if found.is_empty() {
        return respond::empty(StatusCode::NO_CONTENT);
    }
    respond::hal(
        StatusCode::OK,
        &json!({"_total_items": found.len(),
                "_links": {"self": {"href": shared.url("/api/v4/webhooks")}},
                "_embedded": {"webhooks": found}}),
    )
}
