//! The listener: accepts HTTP/1.1 (optionally over TLS), applies faults, limits and
//! auth, dispatches to REST, OAuth, Chats or control, and logs API requests.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{Method, Request, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::limits::{FaultKind, Refusal};
use crate::model::RequestRecord;
use crate::respond::{self, Resp};
use crate::state::Shared;
use crate::{chats, control, drive, oauth, page, rest};

/// Largest request body accepted.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How long a dropped response keeps the connection open before closing it unanswered.
const DROP_HOLD: Duration = Duration::from_secs(600);

/// Returned to hyper to close a connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("response withheld by a DropResponse fault")]
pub(crate) struct Withheld;

/// Accepts connections until the task is aborted; aborting drops every connection.
pub(crate) async fn serve(listener: TcpListener, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| handle(shared.clone(), req));
            let result = match acceptor {
                Some(acceptor) => match acceptor.accept(tcp).await {
                    Ok(tls) => http1::Builder::new().serve_connection(TokioIo::new(tls), svc).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Resp, Withheld> {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(Body::new(body), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return Ok(respond::problem(StatusCode::BAD_REQUEST, "Request body could not be read"));
        }
    };
    let method = parts.method;
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().map(str::to_string);
    if path.starts_with(control::PREFIX) {
        return Ok(control::handle(&shared, &method, &path, &bytes).await);
    }
    if page::is_page(&path) {
        return Ok(page::handle(&shared, &method, &path, &bytes).await);
    }
    let at_ms = shared.clock.now_ms();
    let real_ms = u64::try_from(shared.started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let fault = shared.faults().take(&method, &path);
    let withhold = fault == Some(FaultKind::DropResponse);
    let run = || process(&shared, &method, &path, query.as_deref(), &parts.headers, &bytes);
    let resp = match fault {
        Some(FaultKind::Status(code)) => {
            respond::for_status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        }
        Some(FaultKind::Delay(d)) => {
            tokio::time::sleep(d).await;
            run()
        }
        Some(FaultKind::DropResponse) | None => run(),
    };
    shared.state().requests.push(RequestRecord {
        at_ms,
        real_ms,
        method: method.to_string(),
        path,
        query,
        status: resp.status().as_u16(),
        dropped: withhold,
    });
    if withhold {
        tokio::time::sleep(DROP_HOLD).await;
        return Err(Withheld);
    }
    Ok(resp)
}

fn process(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Resp {
    if path == "/api/v4" || path.starts_with("/api/v4/") {
        let cfg = &shared.config;
        let verdict = shared.limits().check(shared.clock.now_ms(), cfg.rate_limit_per_sec, cfg.abuse_threshold);
        match verdict {
            Ok(()) => {}
            Err(Refusal::TooMany) => return respond::too_many_requests(1),
            Err(Refusal::Blocked) => {
                return respond::problem(
                    StatusCode::FORBIDDEN,
                    "Access denied: too many requests over the limit, the account is blocked",
                );
            }
        }
        if let Err(r) = oauth::authorize(shared, headers) {
            return r;
        }
        return rest::handle(shared, method, path, query, body);
    }
    if path == "/oauth2/access_token" {
        if method != Method::POST {
            return respond::problem(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed");
        }
        return oauth::access_token(shared, headers, body);
    }
    if path.starts_with(drive::PREFIX) {
        return drive::handle(shared, method, path, headers, body);
    }
    if path.starts_with(chats::PREFIX) {
        return chats::handle(shared, method, path, query, headers, body);
    }
    respond::problem(StatusCode::NOT_FOUND, "Not found")
}
