//! The gateway's metrics: requests by route (the route's pattern, never a token
//! or an id from the path) and status code, and how long they took. Served on a
//! port of their own, so the public webhook port shows nothing of them.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Instant;

/// A route and the status code answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteCode {
    /// The route's pattern, e.g. `/amocrm/webhook/{token}`.
    pub route: String,
    /// The HTTP status code.
    pub code: String,
}

/// A route.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Route {
    /// The route's pattern.
    pub route: String,
}

/// The gateway's metrics.
pub struct GatewayMetrics {
    registry: Registry,
    /// Requests answered, by route and code.
    pub requests: Family<RouteCode, Counter>,
    /// Seconds to answer, by route.
    pub seconds: Family<Route, Histogram>,
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("crmessenger_gateway");
        let requests = Family::<RouteCode, Counter>::default();
        let seconds = Family::<Route, Histogram>::new_with_constructor(|| {
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5])
        });
        registry.register("requests", "Requests answered, by route and status code", requests.clone());
        registry.register("request_seconds", "Seconds to answer a request, by route", seconds.clone());
        Self { registry, requests, seconds }
    }
}

impl GatewayMetrics {
    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics port's router: `GET /metrics`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(
                "/metrics",
                get(|State(m): State<Arc<GatewayMetrics>>| async move {
                    ([("content-type", "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
                        .into_response()
                }),
            )
            .with_state(self)
    }
}

/// Counts and times each request of a matched route.
pub async fn count(State(m): State<Arc<GatewayMetrics>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "other".into());
    let started = Instant::now();
    let resp = next.run(req).await;
    m.seconds.get_or_create(&Route { route: route.clone() }).observe(started.elapsed().as_secs_f64());
    m.requests.get_or_create(&RouteCode { route, code: resp.status().as_u16().to_string() }).inc();
    resp
}
