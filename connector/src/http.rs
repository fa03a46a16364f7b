//! One way to serve HTTP for every listener of the connector: the gateway, the
//! sidecar, the admin and the metrics ports.
//!
//! Guarantees, whatever the router:
//! - a client that does not finish its request head within [`Limits::header_read`]
//!   is disconnected (slowloris; the same deadline closes an idle keep-alive
//!   connection);
//! - a body that does not arrive within [`Limits::body_read`] fails the request,
//!   and no request runs longer than [`Limits::request`] (408);
//! - every response carries `X-Content-Type-Options: nosniff`;
//! - handlers see the peer's address as `ConnectInfo<SocketAddr>` (the loopback
//!   checks of the admin port and the sidecar);
//! - an accept error (out of file descriptors) is logged and waited out; it never
//!   ends the server.

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::time::Duration;
use tower::ServiceExt;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};

/// Deadlines of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Reading a request head (and waiting on an idle keep-alive connection).
    pub header_read: Duration,
    /// Reading a request body.
    pub body_read: Duration,
    /// A whole request, from its head to the response.
    pub request: Duration,
}

impl Default for Limits {
    /// 10 s for the head, 10 s for the body, 30 s in all.
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, limits: Limits) -> std::io::Result<()> {
    serve_until(listener, router, limits, std::future::pending()).await
}

/// Serves `router` on `listener` until `shutdown` resolves; then stops accepting and
/// lets the requests in flight finish (at most [`Limits::request`]).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = harden(router, &limits);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // A failed handshake or a full file table: wait a little, go on.
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.request) => tracing::warn!("requests still in flight at shutdown were cut"),
    }
    Ok(())
}

/// The deadlines and headers every listener has, around `router`.
fn harden(router: Router, limits: &Limits) -> Router {
    router
        .layer(RequestBodyTimeoutLayer::new(limits.body_read))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request))
        .layer(SetResponseHeaderLayer::overriding(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
}
