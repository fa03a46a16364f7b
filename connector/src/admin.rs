//! The connector's admin port: health for the kubelet's probes and — to loopback
//! peers only (the sidecar in the same pod) — status and login. Metrics have a
//! port of their own ([`Admin::metrics_router`]), the only one the account's
//! NetworkPolicy admits.
//!
//! - `GET /livez`, `/healthz`: the process serves requests;
//! - `GET /readyz`: the process works (its database answers) — never "logged in";
//! - `GET /status`: every account's state, queue sizes and dead letters (loopback);
//! - `GET /login?account=NS/NAME`: login progress (loopback);
//! - `POST /login?account=NS/NAME` with `code` or `password` (loopback);
//! - `GET /dead-letters?account=NS/NAME`: the dead letters with their ids (loopback);
//! - `POST /replay?account=NS/NAME` with `{"ids": [...]}` or nothing (every one):
//!   puts dead letters back in their queues (loopback).

use crate::messenger::{LoginState, Messenger};
use crate::metrics::Metrics;
use crate::state::StateCell;
use crate::store::Store;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// One account served by this process.
#[derive(Clone)]
pub struct AccountHandle {
    /// `namespace/name`.
    pub key: String,
    /// Its state.
    pub state: Arc<StateCell>,
    /// Its messenger.
    pub messenger: Arc<dyn Messenger>,
}

/// What the admin server reads.
#[derive(Clone)]
pub struct Admin {
    /// The accounts.
    pub accounts: Arc<std::sync::RwLock<Vec<AccountHandle>>>,
    /// The database.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

impl Admin {
    /// The admin port's router (it needs the peer's address: serve it with
    /// [`crate::http::serve`]).
    pub fn router(self) -> Router {
        Router::new()
            .route("/livez", get(|| async { "ok" }))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .route("/status", get(status))
            .route("/login", get(login_state).post(login_submit))
            .route("/dead-letters", get(dead_letters))
            .route("/replay", axum::routing::post(replay))
            .with_state(self)
    }

    /// The metrics port's router: `GET /metrics`, OpenMetrics text.
    pub fn metrics_router(self) -> Router {
        Router::new().route("/metrics", get(metrics)).with_state(self)
    }

    fn account(&self, key: Option<&str>) -> Option<AccountHandle> {
        let accounts = self.accounts.read().ok()?;
        match key {
            Some(k) => accounts.iter().find(|a| a.key == k).cloned(),
            None => accounts.first().cloned(),
        }
    }
}

/// The account a loopback peer (the sidecar) asks about (`?account=NS/NAME`, the
/// first when absent); anyone else, or an account not served here, is refused.
struct LocalAccount(AccountHandle);

impl FromRequestParts<Admin> for LocalAccount {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, a: &Admin) -> Result<Self, Response> {
        let Query(q) =
            Query::<AccountQuery>::from_request_parts(parts, a).await.map_err(IntoResponse::into_response)?;
        let ConnectInfo(peer) =
            ConnectInfo::<SocketAddr>::from_request_parts(parts, a).await.map_err(IntoResponse::into_response)?;
        if let Some(r) = loopback_only(&peer) {
            return Err(r);
        }
        a.account(q.account.as_deref())
            .map(LocalAccount)
            .ok_or_else(|| (StatusCode::NOT_FOUND, "no such account\n").into_response())
    }
}

fn loopback_only(peer: &SocketAddr) -> Option<Response> {
    (!peer.ip().is_loopback())
        .then(|| (StatusCode::FORBIDDEN, "only the sidecar (loopback) may read this\n").into_response())
}

async fn ready(State(a): State<Admin>) -> Response {
    match sqlx::query("SELECT 1").execute(a.store.pool()).await {
        Ok(_) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

async fn metrics(State(a): State<Admin>) -> Response {
    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], a.metrics.encode())
        .into_response()
}

async fn status(State(a): State<Admin>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> Response {
    if let Some(r) = loopback_only(&peer) {
        return r;
    }
    let accounts = a.accounts.read().map(|v| v.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for h in accounts {
        let counts = a.store.counts(&h.key).await.ok();
        let dead = a.store.dead_letters(&h.key).await.unwrap_or_default();
        out.push(serde_json::json!({ "state": h.state.get(), "queues": counts, "deadLetters": dead }));
    }
    Json(serde_json::json!({ "accounts": out })).into_response()
}

#[derive(Deserialize)]
struct AccountQuery {
    account: Option<String>,
}

/// The account's dead letters, oldest first, each with the id `replay` takes.
async fn dead_letters(State(a): State<Admin>, LocalAccount(h): LocalAccount) -> Response {
    match a.store.dead_letters(&h.key).await {
        Ok(dead) => {
            let list: Vec<_> = dead
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "id": d.id(), "queue": d.queue, "chatId": d.chat_id, "reason": d.reason, "queuedMs": d.queued_ms,
                    })
                })
                .collect();
            Json(serde_json::json!({ "account": h.key, "deadLetters": list })).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

#[derive(Deserialize, Default)]
struct ReplayRequest {
    /// Only these (`inbox/SEQ`, `outbox/SEQ`); every dead letter when absent.
    ids: Option<Vec<String>>,
}

/// Puts dead letters back in their queues: `{"ids": [...]}` or every one.
async fn replay(State(a): State<Admin>, LocalAccount(h): LocalAccount, body: axum::body::Bytes) -> Response {
    let request: ReplayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ReplayRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("expected {{\"ids\": [\"inbox/SEQ\", …]}}: {e}\n"))
                    .into_response();
            }
        }
    };
    if let Some(bad) = request.ids.iter().flatten().find(|id| !crmessenger_api::common::valid_dead_letter_id(id)) {
        return (StatusCode::BAD_REQUEST, format!("{bad:?} is not a dead letter id (inbox/SEQ or outbox/SEQ)\n"))
            .into_response();
    }
    match a.store.replay_dead_only(&h.key, request.ids.as_deref()).await {
        Ok(n) => {
            tracing::info!(account = h.key, replayed = n, "dead letters put back in their queues");
            Json(serde_json::json!({ "account": h.key, "replayed": n })).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

async fn login_state(LocalAccount(h): LocalAccount) -> Response {
    let login = h.state.get().login.unwrap_or(LoginState::LoggedOut { reason: "starting".into() });
    Json(serde_json::json!({ "account": h.key, "login": login })).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    code: Option<String>,
    password: Option<String>,
}

async fn login_submit(LocalAccount(h): LocalAccount, Form(f): Form<LoginForm>) -> Response {
    // Only the lock holder may talk to the messenger (one connection per account).
    if !h.state.get().holds_lock {
        return (StatusCode::CONFLICT, "this connector is waiting for the account lock; try again shortly\n")
            .into_response();
    }
    let code = f.code.as_deref().filter(|c| !c.trim().is_empty());
    let password = f.password.as_deref().filter(|p| !p.is_empty());
    if code.is_none() && password.is_none() {
        return (StatusCode::BAD_REQUEST, "give a code or a password\n").into_response();
    }
    match h.messenger.submit_login(code, password).await {
        Ok(()) => {
            h.state.update(|s| s.login = None);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::UNPROCESSABLE_ENTITY, format!("{e}\n")).into_response(),
    }
}
