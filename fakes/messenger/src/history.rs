//! Chat history: messages from before the account was connected, which the update
//! stream never carries (as Telegram streams updates only from login on). The
//! connector reads them back for its history import: the chats active since a
//! time (`GET /v1/dialogs`) and a chat's messages before one of them
//! (`GET /v1/history`, newest first). A script adds them with
//! `POST /_script/history` (kept in memory).

use crate::*;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
pub(crate) struct DialogsQuery {
    since_ms: i64,
    limit: Option<usize>,
}

/// Chats with a history message at or after `since_ms`, most recent first.
pub(crate) async fn dialogs(State(s): State<Arc<Shared>>, Query(q): Query<DialogsQuery>) -> Response {
    let Ok(inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let mut latest: Vec<(String, i64)> = Vec::new();
    for u in inner.history.iter().filter(|u| u.sent_at_ms >= q.since_ms) {
        match latest.iter_mut().find(|(c, _)| *c == u.chat_id) {
            Some(entry) => entry.1 = entry.1.max(u.sent_at_ms),
            None => latest.push((u.chat_id.clone(), u.sent_at_ms)),
        }
    }
    latest.sort_by_key(|(_, at)| std::cmp::Reverse(*at));
    let chats: Vec<String> = latest.into_iter().take(q.limit.unwrap_or(100)).map(|(c, _)| c).collect();
    Json(chats).into_response()
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    chat_id: String,
    before: Option<String>,
    limit: Option<usize>,
}

/// A chat's history messages before `before` (a message id), newest first.
pub(crate) async fn history(State(s): State<Arc<Shared>>, Query(q): Query<HistoryQuery>) -> Response {
    let Ok(inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let chat: Vec<&Update> = inner.history.iter().filter(|u| u.chat_id == q.chat_id).collect();
    let end = match &q.before {
        Some(id) => chat.iter().position(|u| &u.message_id == id).unwrap_or(chat.len()),
        None => chat.len(),
    };
    let page: Vec<Update> =
        chat[..end].iter().rev().take(q.limit.unwrap_or(100).clamp(1, 100)).map(|u| (*u).clone()).collect();
    Json(Updates { last_seq: 0, updates: page }).into_response()
}

/// Adds history messages (one or a list), oldest first.
pub(crate) async fn script_history(
    State(s): State<Arc<Shared>>,
    Json(body): Json<crate::script::OneOrMany>,
) -> StatusCode {
    if let Ok(mut i) = s.inner.lock() {
        i.history.extend(body.into_vec());
    }
    StatusCode::NO_CONTENT
}
