//! Sending: `POST /{version}/{node}/messages`, the contract a message must meet.

use crate::*;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::sync::Arc;

pub(crate) fn base64_sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) fn envelope(value: Value) -> String {
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "102290129340398", "changes": [{ "field": "messages", "value": value }] }] })
        .to_string()
}

pub(crate) fn authorized(shared: &Shared, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(&format!("Bearer {}", shared.config.access_token))
}

pub(crate) fn unauthorized() -> Response {
    error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token - Cannot parse access token", "")
}

pub(crate) async fn messages(
    State(s): State<Arc<Shared>>,
    Path((_, node)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let before_answer = s.world.lock().unwrap().statuses.before_answer;
    let response = accept_message(&s, &node, &headers, &body);
    if before_answer && response.status().is_success() {
        // The statuses go out first: the answer waits until they are accepted.
        let pending = || !s.world.lock().unwrap().hooks.is_empty();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while pending() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    response
}

pub(crate) fn accept_message(s: &Arc<Shared>, node: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    if !authorized(s, headers) {
        return unauthorized();
    }
    if node != s.config.phone_number_id {
        return error(StatusCode::BAD_REQUEST, 100, "Unsupported post request", "unknown phone number id");
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "the body is not JSON");
    };
    if req["messaging_product"] != "whatsapp" {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "messaging_product is required");
    }
    if req["status"] == "read" {
        let Some(id) = req["message_id"].as_str() else {
            return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "message_id is required");
        };
        s.world.lock().unwrap().reads.push(id.to_string());
        return axum::Json(json!({ "success": true })).into_response();
    }
    let Some(to) = req["to"].as_str().map(str::to_string) else {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "to is required");
    };
    let kind = req["type"].as_str().unwrap_or("text").to_string();
    match kind.as_str() {
        "text" => {
            let text = req["text"]["body"].as_str().unwrap_or_default();
            if text.is_empty() || text.chars().count() > 4096 {
                return error(
                    StatusCode::BAD_REQUEST,
                    100,
                    "Invalid parameter",
                    "text.body must have 1 to 4096 characters",
                );
            }
        }
        "template" => {
            if req["template"]["name"].as_str().is_none() || req["template"]["language"]["code"].as_str().is_none() {
                return error(StatusCode::BAD_REQUEST, 132001, "Template name does not exist in the translation", "");
            }
        }
        "image" | "document" | "audio" | "video" => {
            let id = req[&kind]["id"].as_str().unwrap_or_default();
            if !s.world.lock().unwrap().media.contains_key(id) && req[&kind]["link"].as_str().is_none() {
                return error(StatusCode::BAD_REQUEST, 131053, "Media upload error", "unknown media id");
            }
        }
        _ => return error(StatusCode::BAD_REQUEST, 131051, "Message type unknown", ""),
    }
    let now = s.clock.now_ms();
    let mut w = s.world.lock().unwrap();
    while w.recent.front().is_some_and(|t| *t <= now - 1000) {
        w.recent.pop_front();
    }
    if w.recent.len() >= s.config.throughput_per_sec {
        w.refused.push(Refusal { to: to.clone(), code: 130429 });
        return error(
            StatusCode::BAD_REQUEST,
            130429,
            "Rate limit hit",
            "Cloud API message throughput has been reached",
        );
    }
    if w.last_sent_to.get(&to).is_some_and(|t| now - t < s.config.pair_interval_ms) {
        w.refused.push(Refusal { to: to.clone(), code: 131056 });
        return error(StatusCode::BAD_REQUEST, 131056, "(Business Account, Consumer Account) pair rate limit hit", "");
    }
    let outside = kind != "template" && w.last_inbound.get(&to).is_none_or(|t| now - t > WINDOW_MS);
    if outside && s.config.window_error == WindowError::Sync {
        return error(
            StatusCode::BAD_REQUEST,
            131047,
            "Re-engagement message",
            "Message failed to send because more than 24 hours have passed since the customer last replied to this number.",
        );
    }
    w.recent.push_back(now);
    w.last_sent_to.insert(to.clone(), now);
    let id = format!("wamid.OUT{}", uuid::Uuid::new_v4().simple());
    w.sent.push(SentMessage { id: id.clone(), to: to.clone(), kind, body: req.clone() });
    let callback = req["biz_opaque_callback_data"].as_str().map(str::to_string);
    let script = w.statuses;
    let mut steps: Vec<&str> = if outside {
        vec!["failed"]
    } else if script.only_sent {
        vec!["sent"]
    } else if script.skip_delivered {
        vec!["sent", "read"]
    } else {
        vec!["sent", "delivered", "read"]
    };
    if script.reverse {
        steps.reverse();
    }
    for step in steps {
        let mut status = json!({ "id": id, "status": step, "timestamp": (now / 1000).to_string(), "recipient_id": to });
        if let Some(cb) = &callback {
            status["biz_opaque_callback_data"] = json!(cb);
        }
        if step == "failed" {
            status["errors"] = json!([{ "code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
                "error_data": { "details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number." } }]);
        }
        let value = json!({ "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": s.config.display_phone_number, "phone_number_id": s.config.phone_number_id },
            "statuses": [status] });
        let body = envelope(value);
        if script.duplicate {
            w.hooks.push_back((body.clone(), 0));
        }
        w.hooks.push_back((body, 0));
    }
    drop(w);
    s.kick.notify_one();
    axum::Json(json!({ "messaging_product": "whatsapp", "contacts": [{ "input": to, "wa_id": to }], "messages": [{ "id": id }] }))
        .into_response()
}
