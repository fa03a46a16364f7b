//! The connector's side of the scripted messenger's HTTP API (`/v1`), and the
//! router that serves it beside the script's side.

use crate::script::{inbound, script_fault, script_scan, script_sent};
use crate::*;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/connect", get(connect))
        .route("/v1/updates", get(updates))
        .route("/v1/send", post(send))
        .route("/v1/edit", post(edit))
        .route("/v1/sent", get(find_sent))
        .route("/v1/session", get(session))
        .route("/v1/logout", post(logout))
        .route("/v1/login", post(login))
        .route("/v1/media/{id}", get(media))
        .route("/v1/dialogs", get(crate::history::dialogs))
        .route("/v1/history", get(crate::history::history))
        .route("/_script/inbound", post(inbound))
        .route("/_script/history", post(crate::history::script_history))
        .route("/_script/sent", get(script_sent))
        .route("/_script/scan", post(script_scan))
        .route("/_script/fault", post(script_fault))
        .with_state(shared)
}

#[derive(Deserialize)]
struct ConnectQuery {
    id: String,
}

/// Opens a connection and holds it: a newline every second until the client
/// goes away (then the guard logs it closed).
async fn connect(State(shared): State<Arc<Shared>>, Query(q): Query<ConnectQuery>) -> Response {
    let index = {
        let Ok(mut i) = shared.inner.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        i.connections.push(Connection { id: q.id, opened_ms: now_ms(), closed_ms: None });
        i.connections.len() - 1
    };
    let guard = ConnectionGuard { shared, index };
    let beats = futures::stream::unfold((guard, true), |(guard, first)| async move {
        if !first {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Some((Ok::<_, std::io::Error>(axum::body::Bytes::from_static(b"\n")), (guard, false)))
    });
    axum::body::Body::from_stream(beats).into_response()
}

/// Takes one matching fault, if any.
fn fault(shared: &Shared, op: &str) -> Option<Response> {
    let mut inner = shared.inner.lock().ok()?;
    let f = inner.faults.iter_mut().find(|f| f.op == op && f.times > 0)?;
    if f.skip > 0 {
        f.skip -= 1;
        return None;
    }
    f.times -= 1;
    let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({ "error": format!("injected {}", f.status), "flood_wait_secs": f.flood_wait_secs });
    Some((status, Json(body)).into_response())
}

fn not_logged_in() -> Response {
    (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": "AUTH_KEY_UNREGISTERED" }))).into_response()
}

#[derive(Deserialize)]
struct UpdatesQuery {
    after: u64,
    #[serde(default)]
    timeout_ms: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn updates(State(s): State<Arc<Shared>>, Query(q): Query<UpdatesQuery>) -> Response {
    if let Some(r) = fault(&s, "updates") {
        return r;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(q.timeout_ms.min(30_000));
    loop {
        let notified = s.notify.notified();
        {
            let Ok(inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
            if !inner.logged_in {
                return not_logged_in();
            }
            let last_seq = inner.updates.last().map(|u| u.seq).unwrap_or(0);
            let start = inner.updates.partition_point(|u| u.seq <= q.after);
            let end = (start + q.limit.unwrap_or(500).clamp(1, 1000)).min(inner.updates.len());
            if start < end || tokio::time::Instant::now() >= deadline {
                return Json(Updates { updates: inner.updates[start..end].to_vec(), last_seq }).into_response();
            }
        }
        let _ = tokio::time::timeout_at(deadline, notified).await;
    }
}

async fn send(State(s): State<Arc<Shared>>, Json(req): Json<SendRequest>) -> Response {
    if let Ok(mut i) = s.inner.lock() {
        i.send_calls += 1;
    }
    if let Some(r) = fault(&s, "send") {
        return r;
    }
    let Ok(mut inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    if !inner.logged_in {
        return not_logged_in();
    }
    if req.text.trim().is_empty() && req.file.is_none() {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "MESSAGE_EMPTY" }))).into_response();
    }
    // Like Telegram: at most 4,096 UTF-16 units in one message.
    if req.text.encode_utf16().count() > 4096 {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "MESSAGE_TOO_LONG" }))).into_response();
    }
    if let Some(prev) = inner.sent.iter().find(|m| m.chat_id == req.chat_id && m.random_id == req.random_id) {
        return Json(SendResponse { message_id: prev.message_id.clone(), duplicate: true }).into_response();
    }
    let sent = Sent {
        chat_id: req.chat_id,
        text: req.text,
        file: req.file,
        edits: Vec::new(),
        random_id: req.random_id,
        message_id: format!("out-{}", inner.sent.len() + 1),
        at_ms: now_ms(),
    };
    append(&s.dir, "sent.jsonl", std::slice::from_ref(&sent));
    let message_id = sent.message_id.clone();
    // Like every messenger, the account's update stream reports what it sent.
    let echo = Update { message_id: message_id.clone(), ..from_owner(&sent.chat_id, "", &sent.text) };
    inner.sent.push(sent);
    drop(inner);
    push(&s, vec![echo]);
    Json(SendResponse { message_id, duplicate: false }).into_response()
}

/// Edits a message the account sent, like Telegram's `messages.editMessage`: an
/// unknown message is `MESSAGE_ID_INVALID`, the same text `MESSAGE_NOT_MODIFIED`;
/// the account's update stream reports the edit.
async fn edit(State(s): State<Arc<Shared>>, Json(req): Json<EditRequest>) -> Response {
    let bad = |e: &str| (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": e }))).into_response();
    let Ok(mut inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    if !inner.logged_in {
        return not_logged_in();
    }
    if req.text.trim().is_empty() {
        return bad("MESSAGE_EMPTY");
    }
    if req.text.encode_utf16().count() > 4096 {
        return bad("MESSAGE_TOO_LONG");
    }
    let Some(m) = inner.sent.iter_mut().find(|m| m.chat_id == req.chat_id && m.message_id == req.message_id) else {
        return bad("MESSAGE_ID_INVALID");
    };
    if m.text == req.text {
        return bad("MESSAGE_NOT_MODIFIED");
    }
    let before = std::mem::replace(&mut m.text, req.text.clone());
    m.edits.push(before);
    drop(inner);
    let echo =
        Update { kind: "edit".into(), message_id: req.message_id.clone(), ..from_owner(&req.chat_id, "", &req.text) };
    push(&s, vec![echo]);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct SentQuery {
    chat_id: String,
    random_id: i64,
}

async fn find_sent(State(s): State<Arc<Shared>>, Query(q): Query<SentQuery>) -> Response {
    let Ok(inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    match inner.sent.iter().find(|m| m.chat_id == q.chat_id && m.random_id == q.random_id) {
        Some(m) => Json(m.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn session(State(s): State<Arc<Shared>>) -> Json<Session> {
    let mut inner = s.inner.lock().unwrap_or_else(|e| e.into_inner());
    if inner.logged_in {
        return Json(Session {
            state: "logged_in".into(),
            qr: None,
            qr_expires_at_ms: None,
            user_id: Some("777000".into()),
            username: Some("scripted_shop".into()),
            phone: Some("+15550001122".into()),
        });
    }
    if s.login_code.is_some() {
        let state = if inner.code_ok { "password" } else { "code" };
        return Json(Session {
            state: state.into(),
            qr: None,
            qr_expires_at_ms: None,
            user_id: None,
            username: None,
            phone: None,
        });
    }
    let now = now_ms();
    if inner.qr.as_ref().is_none_or(|(_, exp)| *exp <= now) {
        let code = format!("scripted://login?token={}", uuid::Uuid::new_v4().simple());
        inner.qr = Some((code, now + s.qr_ttl.as_millis() as i64));
    }
    let (qr, exp) = inner.qr.clone().unwrap_or_default();
    Json(Session {
        state: "qr".into(),
        qr: Some(qr),
        qr_expires_at_ms: Some(exp),
        user_id: None,
        username: None,
        phone: None,
    })
}

/// A typed login code or password.
#[derive(Debug, Deserialize)]
struct LoginForm {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// `POST /v1/login`: the code, then (if one is set) the password; a wrong one is
/// 400 with Telegram's error name.
async fn login(State(s): State<Arc<Shared>>, Json(f): Json<LoginForm>) -> Response {
    let Ok(mut inner) = s.inner.lock() else { return StatusCode::INTERNAL_SERVER_ERROR.into_response() };
    let Some(expected) = &s.login_code else {
        return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "this messenger logs in by QR code" })))
            .into_response();
    };
    if !inner.code_ok {
        if f.code.as_deref() != Some(expected.as_str()) {
            return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "PHONE_CODE_INVALID" })))
                .into_response();
        }
        inner.code_ok = true;
    }
    if let Some(pw) = &s.password
        && !inner.logged_in
    {
        match f.password.as_deref() {
            None => return StatusCode::NO_CONTENT.into_response(),
            Some(p) if p == pw.as_str() => {}
            Some(_) => {
                return (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": "PASSWORD_HASH_INVALID" })))
                    .into_response();
            }
        }
    }
    inner.logged_in = true;
    if let Some(dir) = &s.dir {
        let _ = std::fs::write(dir.join("logged_in"), b"");
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn logout(State(s): State<Arc<Shared>>) -> StatusCode {
    if let Ok(mut i) = s.inner.lock() {
        i.logged_in = false;
    }
    if let Some(dir) = &s.dir {
        let _ = std::fs::remove_file(dir.join("logged_in"));
    }
    StatusCode::NO_CONTENT
}

async fn media(Path(id): Path<String>) -> Response {
    // Deterministic content, so a test can check what arrived: `media_bytes(id)`.
    let body = media_bytes(&id);
    ([("content-type", "application/octet-stream")], body).into_response()
}
