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
//! - `POST /amocrm/chats/{scope_id}`: amoCRM Chats API hooks (a manager wrote in a
//!   chat), signed with HMAC-SHA1 of the raw body under the installation's channel
//!   secret (`X-Signature`; a bad or missing signature is 401). Routed by the
//!   conversation id the connector registered when it first posted in that chat.
//!   amoCRM sends each hook once; connectors also read chat history for any they
//!   missed.
//! - `GET /media/{id}?exp=…&sig=…`: an attachment for amoCRM to download, under a
//!   URL signed (HMAC-SHA256 with the installation's key kept in the database) and
//!   expiring after a day; a bad signature is 403, an expired URL 410.
//! - `GET /healthz`, `/readyz`.
//!
//! Metrics (requests by route pattern and code, and their durations) are served
//! on a port of their own ([`metrics::GatewayMetrics::router`]).
//!
//! Bad input never has a side effect: an unknown token is 404, a malformed body 400,
//! a replayed hook is stored once, a media URL with a bad signature writes nothing.
//! A write that cannot finish within the sender's deadline is answered 503, so the
//! sender (amoCRM retries REST webhooks) tries again.
//!
//! Load: at most [`MAX_IN_FLIGHT`] requests at a time on the routes whose senders
//! retry (REST webhooks, WhatsApp webhooks, media); beyond that they are shed at
//! once with 503 instead of queueing. Chats API hooks are never shed: amoCRM sends
//! each one once. Slow clients are cut by the deadlines of [`crate::http`].

mod amocrm;
mod media;
pub mod metrics;
mod whatsapp;

pub use whatsapp::verify_hub_signature;

use crate::store::Store;
use amocrm::{amocrm_chats, amocrm_rest};
use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use media::media;
use std::time::Duration;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use whatsapp::{whatsapp_verify, whatsapp_webhook};

/// Route kind: binding → the CRM key its leads are routed by.
pub const ROUTE_BINDING_CRM: &str = "binding-crm";
/// The longest the gateway takes before answering (amoCRM waits about 2 s).
pub const DEADLINE: Duration = Duration::from_millis(1500);
/// Runs the storing `work` of a delivery within [`DEADLINE`]: its own answer
/// once stored, else 503 (`retried`: the sender tries again, and the body says so;
/// amoCRM's Chats hooks are not retried). `what` names the delivery in the log.
async fn stored_in_time(
    what: &str,
    retried: bool,
    work: impl std::future::Future<Output = Result<Response, crate::store::StoreError>>,
) -> Response {
    let again = if retried { "; try again" } else { "" };
    match tokio::time::timeout(DEADLINE, work).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::error!("{what} not stored: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not stored{again}\n")).into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, format!("not stored in time{again}\n")).into_response(),
    }
}

/// The largest body accepted.
pub const MAX_BODY: usize = 256 * 1024;
/// Requests in progress at once on the routes whose senders retry (per replica);
/// more are answered 503 at once.
pub const MAX_IN_FLIGHT: usize = 64;

/// Route kind: WhatsApp phone number id → account.
pub const ROUTE_WA_NUMBER: &str = "wa-number";

/// The installation's Meta app: its secret signs WhatsApp webhooks, the verify
/// token answers Meta's subscription handshake.
#[derive(Clone)]
pub struct WhatsAppApp {
    /// App secret.
    pub app_secret: String,
    /// Verify token.
    pub verify_token: String,
}

impl std::fmt::Debug for WhatsAppApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WhatsAppApp(<redacted>)")
    }
}

/// The gateway's state.
#[derive(Clone)]
pub struct Gateway {
    store: Store,
    chats_secret: Option<std::sync::Arc<str>>,
    whatsapp: Option<std::sync::Arc<WhatsAppApp>>,
    metrics: std::sync::Arc<metrics::GatewayMetrics>,
}

impl Gateway {
    /// A gateway writing into `store`.
    pub fn new(store: Store) -> Self {
        Self { store, chats_secret: None, whatsapp: None, metrics: Default::default() }
    }

    /// Its metrics (serve them with [`metrics::GatewayMetrics::router`] on a port of their own).
    pub fn metrics(&self) -> std::sync::Arc<metrics::GatewayMetrics> {
        self.metrics.clone()
    }

    /// Accepts WhatsApp webhooks of this Meta app (none: the route answers 404).
    pub fn with_whatsapp(mut self, app: Option<WhatsAppApp>) -> Self {
        self.whatsapp = app.filter(|a| !a.app_secret.is_empty()).map(std::sync::Arc::new);
        self
    }

    /// Accepts Chats API hooks signed with `secret` (none: the route answers 404).
    pub fn with_chats_secret(mut self, secret: Option<String>) -> Self {
        self.chats_secret = secret.filter(|s| !s.is_empty()).map(Into::into);
        self
    }

    /// The router (serve it with [`crate::http::serve`] for the deadlines).
    pub fn router(self) -> Router {
        // One budget shared by these routes: their senders retry a 503.
        let shed = tower::ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")], "busy; try again\n")
            }))
            .layer(LoadShedLayer::new())
            .layer(GlobalConcurrencyLimitLayer::new(MAX_IN_FLIGHT));
        let retried = Router::new()
            .route("/amocrm/webhook/{token}", post(amocrm_rest))
            .route("/whatsapp/webhook", get(whatsapp_verify).post(whatsapp_webhook))
            .route("/media/{id}", get(media))
            .route_layer(shed);
        // Chats API hooks come once and are never retried: never shed.
        Router::new()
            .route("/amocrm/chats/{scope_id}", post(amocrm_chats))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(ready))
            .merge(retried)
            .route_layer(axum::middleware::from_fn_with_state(self.metrics.clone(), metrics::count))
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
