//! The gateway: the shared, stateless webhook receiver (two or more replicas in a
//! cluster; in-process in standalone mode). It authenticates each hook, routes it
//! by the keys connectors registered, writes it into the database for that
//! account, and answers 200 only after the write; the connector picks the row up
//! (LISTEN/NOTIFY, or a poll as fallback), so a connector that is down loses
//! nothing.
//!
//! Routes:
//! - `POST /amocrm/webhook/{token}`: amoCRM REST webhooks (unsigned; the secret
//!   token in each binding's URL authenticates them). Routed by the binding's CRM
//!   and the lead id; the note is re-read over REST by the connector before it is
//!   acted on, so a forged body can at most cause a read.
//! - `GET /healthz`, `/readyz`.
//!
//! Bad input never has a side effect: an unknown token is 404, a malformed body 400,
//! a replayed hook is stored once. A write that cannot finish within the sender's
//! deadline is answered 503, so the sender (amoCRM retries REST webhooks) tries again.

use crate::store::Store;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use crmessenger_crm::clock::{Clock, SystemClock};
use std::time::Duration;

/// Route kind: binding → the CRM key its leads are routed by.
pub const ROUTE_BINDING_CRM: &str = "binding-crm";
/// The longest the gateway takes before answering (amoCRM waits about 2 s).
pub const DEADLINE: Duration = Duration::from_millis(1500);
/// The largest body accepted.
pub const MAX_BODY: usize = 256 * 1024;

/// The gateway's state.
#[derive(Clone)]
pub struct Gateway {
    store: Store,
}

impl Gateway {
    /// A gateway writing into `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The router.
    pub fn router(self) -> Router {
        Router::new()
            .route("/amocrm/webhook/{token}", post(amocrm_rest))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .with_state(self)
    }
}

async fn ready(State(g): State<Gateway>) -> Response {
    match sqlx::query("SELECT 1").execute(g.store.pool()).await {
        Ok(_) => "ok".into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

async fn amocrm_rest(State(g): State<Gateway>, Path(token): Path<String>, body: Bytes) -> Response {
    let work = async {
        let Some(binding) = g.store.binding_of_token(&token).await? else {
            return Ok((StatusCode::NOT_FOUND, "unknown webhook URL\n").into_response());
        };
        let hook = match crmessenger_crm::amocrm::webhook::parse(&body) {
            Ok(h) => h,
            Err(e) => return Ok((StatusCode::BAD_REQUEST, format!("malformed webhook: {e}\n")).into_response()),
        };
        let Some(crm) = g.store.route(ROUTE_BINDING_CRM, &binding).await? else {
            return Ok((StatusCode::NOT_FOUND, "the binding has no connector yet\n").into_response());
        };
        let mut stored = 0;
        for (lead_id, note_id) in &hook.lead_notes {
            let Some((account, _chat)) = g.store.chat_of_lead(&crm, *lead_id).await? else {
                // A lead no connector knows (not ours): accepted, nothing to do.
                continue;
            };
            let payload = serde_json::json!({ "lead_id": lead_id, "note_id": note_id }).to_string();
            if g.store
                .put_event(&account, "amocrm-note", &format!("note:{note_id}"), &payload, SystemClock.now_ms())
                .await?
            {
                stored += 1;
            }
        }
        tracing::debug!(binding, notes = hook.lead_notes.len(), stored, "amoCRM webhook accepted");
        Ok::<_, crate::store::StoreError>((StatusCode::OK, "ok\n").into_response())
    };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("webhook not stored: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "not stored; try again\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "not stored in time; try again\n").into_response(),
    }
}
