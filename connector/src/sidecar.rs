//! The sidecar: the pod's login and status page, reached by people through
//! `kubectl port-forward` (the API server checks RBAC on `pods/portforward`). It
//! reads everything from the connector's admin port on loopback, so it holds no
//! state and no credentials of its own.
//!
//! `GET /login` (HTML, refreshed before the QR code expires), `/login/qr.svg`,
//! `/login/qr.png`, `POST /login` (code or password form), `/status` (JSON) and
//! what `kubectl crmessenger` reads — `/login/state`, `/dead-letters`, `POST /replay`
//! (the admin port's JSON) — are
//! served only to what `port-forward` looks like inside the pod: a loopback peer,
//! a `Host` that names loopback (no DNS rebinding), and for a form a same-origin
//! `Origin` when there is one (no cross-site posts). Anything else is 403, so the
//! page stays private even when the port is reachable in the cluster. `/healthz`
//! and `/readyz` are open (the kubelet probes from the node). Nothing is cached
//! (`Cache-Control: no-store`); metrics are the connector's own port, not this one.

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Form, Router};
use serde::Deserialize;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tower_http::set_header::SetResponseHeaderLayer;

/// Where the connector's admin port is.
#[derive(Clone)]
pub struct Sidecar {
    admin: String,
    http: reqwest::Client,
}

#[derive(Deserialize, Default)]
struct AccountQuery {
    account: Option<String>,
}

impl Sidecar {
    /// A sidecar reading from `admin_url` (e.g. `http://127.0.0.1:9090`).
    pub fn new(admin_url: &str) -> anyhow::Result<Self> {
        let http = crmessenger_crm::tls::client_builder(None)
            .and_then(|b| b.timeout(std::time::Duration::from_secs(10)).build().map_err(|e| e.to_string()))
            .map_err(anyhow::Error::msg)?;
        Ok(Self { admin: admin_url.trim_end_matches('/').to_string(), http })
    }

    /// The router (it needs the peer's address: serve it with [`crate::http::serve`]).
    pub fn router(self) -> Router {
        let local = Router::new()
            .route("/login", get(page).post(submit))
            .route("/login/qr.svg", get(qr_svg))
            .route("/login/qr.png", get(qr_png))
            .route("/status", get(forward))
            .route("/login/state", get(forward))
            .route("/dead-letters", get(forward))
            .route("/replay", axum::routing::post(forward))
            .route_layer(middleware::from_fn(port_forward_only));
        Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(forward))
            .merge(local)
            .layer(SetResponseHeaderLayer::overriding(header::CACHE_CONTROL, HeaderValue::from_static("no-store")))
            .with_state(self)
    }

    async fn login(&self, account: Option<&str>) -> Result<Value, Response> {
        let mut req = self.http.get(format!("{}/login", self.admin));
        if let Some(a) = account {
            req = req.query(&[("account", a)]);
        }
        let resp = req.send().await.map_err(unavailable)?;
        if !resp.status().is_success() {
            let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            return Err((status, resp.text().await.unwrap_or_default()).into_response());
        }
        resp.json().await.map_err(unavailable)
    }
}

/// Lets through only requests that come the way `kubectl port-forward` brings them.
async fn port_forward_only(req: Request, next: Next) -> Response {
    match refusal(&req) {
        Some(why) => {
            tracing::warn!("sidecar request refused: {why}");
            (StatusCode::FORBIDDEN, format!("{why}\nThe login page is reached with `kubectl port-forward` only.\n"))
                .into_response()
        }
        None => next.run(req).await,
    }
}

/// Why `req` may not see the login page or status, if it may not.
fn refusal(req: &Request) -> Option<String> {
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return Some("the peer address is unknown".into());
    };
    if !is_loopback(peer.ip()) {
        return Some(format!("refused: the request came from {} over the network, not over loopback", peer.ip()));
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok());
    let Some(host) = host.filter(|h| loopback_host(h)) else {
        return Some(format!("refused: the Host header ({host:?}) must be localhost, 127.0.0.1 or [::1]"));
    };
    if !matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(origin) = req.headers().get(header::ORIGIN)
    {
        let same =
            origin.to_str().ok().and_then(|o| o.strip_prefix("http://")).is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Some(format!("refused: a form sent from another origin ({origin:?}, this page is http://{host})"));
        }
    }
    None
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(v6.is_loopback(), |v4| v4.is_loopback()),
    }
}

/// Whether a `Host` value (with or without a port) names loopback: `localhost`,
/// `127.x.y.z` or `[::1]`.
fn loopback_host(host: &str) -> bool {
    let (name, port) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, "")) => (ip, None),
            Some((ip, port)) => match port.strip_prefix(':') {
                Some(port) => (ip, Some(port)),
                None => return false,
            },
            None => return false,
        },
        None => match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        },
    };
    let port_ok = port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    let name_ok = if host.starts_with('[') {
        name.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback())
    } else {
        name.eq_ignore_ascii_case("localhost") || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
    };
    port_ok && name_ok
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("the connector is not answering: {e}\n")).into_response()
}

/// Passes a request on to the same path of the admin port (`/login/state` is the
/// admin's `/login`), with its query and body: what `kubectl crmessenger` reads.
async fn forward(State(s): State<Sidecar>, req: Request) -> Response {
    let path = match req.uri().path() {
        "/login/state" => "/login",
        other => other,
    };
    let query = req.uri().query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{}{path}{query}", s.admin);
    let method = req.method().clone();
    let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")).into_response(),
    };
    let mut out = s.http.request(method, url);
    if !body.is_empty() {
        out = out.header("content-type", "application/json").body(body);
    }
    match out.send().await {
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("text/plain").to_string();
            (status, [("content-type", ct)], r.bytes().await.unwrap_or_default()).into_response()
        }
        Err(e) => unavailable(e),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn qr_code(login: &Value) -> Option<(String, i64)> {
    let l = login.get("login")?;
    (l.get("state")?.as_str()? == "qr")
        .then(|| Some((l.get("code")?.as_str()?.to_string(), l.get("expires_at_ms")?.as_i64()?)))
        .flatten()
}

async fn page(State(s): State<Sidecar>, Query(q): Query<AccountQuery>) -> Response {
    let login = match s.login(q.account.as_deref()).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let account = login.get("account").and_then(Value::as_str).unwrap_or("").to_string();
    let state = login.pointer("/login/state").and_then(Value::as_str).unwrap_or("unknown").to_string();
    let now = jiff::Timestamp::now().as_millisecond();
    let (body, refresh) = match state.as_str() {
        "qr" => {
            let (code, expires) = qr_code(&login).unwrap_or_default();
            let svg = crate::qr::svg(&code).unwrap_or_default();
            // Reload a little before the code expires, so the page always shows a live one.
            let refresh = ((expires - now) / 1000 - 2).clamp(2, 60);
            (format!("<p>Scan this code with the messenger app on your phone (it renews itself).</p>{svg}"), refresh)
        }
        "code_required" => (
            "<form method=post><label>Login code <input name=code autocomplete=one-time-code autofocus></label> <button>Send</button></form>"
                .to_string(),
            30,
        ),
        "password_required" => (
            "<form method=post><label>Two-factor password <input name=password type=password autofocus></label> <button>Send</button></form>"
                .to_string(),
            30,
        ),
        "logged_in" => {
            let who = login.pointer("/login/identity/username").and_then(Value::as_str).unwrap_or("");
            (format!("<p>Logged in as <b>{}</b>.</p>", escape(who)), 30)
        }
        other => (format!("<p>Login state: {}</p>", escape(other)), 5),
    };
    Html(format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content={refresh}><title>CRMessenger login — {a}</title></head>\
         <body><h1>{a}</h1>{body}<p><a href=/status>status</a></p></body></html>",
        a = escape(&account)
    ))
    .into_response()
}

/// The current QR code rendered by `render`, or 404 when no scan is awaited.
async fn qr_image(
    s: &Sidecar,
    account: Option<&str>,
    content_type: &'static str,
    render: impl Fn(&str) -> Result<Vec<u8>, String>,
) -> Response {
    match s.login(account).await.map(|v| qr_code(&v)) {
        Ok(Some((code, _))) => match render(&code) {
            Ok(body) => ([("content-type", content_type)], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        },
        Ok(None) => (StatusCode::NOT_FOUND, "no QR code to show: not waiting for a scan\n").into_response(),
        Err(r) => r,
    }
}

async fn qr_svg(State(s): State<Sidecar>, Query(q): Query<AccountQuery>) -> Response {
    qr_image(&s, q.account.as_deref(), "image/svg+xml", |code| crate::qr::svg(code).map(String::into_bytes)).await
}

async fn qr_png(State(s): State<Sidecar>, Query(q): Query<AccountQuery>) -> Response {
    qr_image(&s, q.account.as_deref(), "image/png", |code| crate::qr::png(code, 6)).await
}

#[derive(Deserialize)]
struct LoginForm {
    code: Option<String>,
    password: Option<String>,
}

async fn submit(State(s): State<Sidecar>, Query(q): Query<AccountQuery>, Form(f): Form<LoginForm>) -> Response {
    let mut req = s.http.post(format!("{}/login", s.admin));
    if let Some(a) = &q.account {
        req = req.query(&[("account", a)]);
    }
    let form: Vec<(&str, String)> =
        [("code", f.code), ("password", f.password)].into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    match req.form(&form).send().await {
        Ok(r) if r.status().is_success() => (StatusCode::SEE_OTHER, [("location", "/login")]).into_response(),
        Ok(r) => {
            let status = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            (status, r.text().await.unwrap_or_default()).into_response()
        }
        Err(e) => unavailable(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_names_are_loopback_hosts() {
        for good in
            ["localhost", "LOCALHOST:8080", "127.0.0.1", "127.0.0.1:18080", "127.1.2.3:80", "[::1]", "[::1]:8080"]
        {
            assert!(loopback_host(good), "{good}");
        }
        for bad in [
            "",
            "example.com",
            "localhost.example.com",
            "evil.localhost",
            "10.0.0.1:8080",
            "127.0.0.1:",
            "127.0.0.1:80x",
            "127.0.0.1:123456",
            "[::1",
            "[::2]:80",
            "::1",
            "[127.0.0.1]",
            "localhost:8080:1",
        ] {
            assert!(!loopback_host(bad), "{bad}");
        }
        assert!(is_loopback("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!is_loopback("::ffff:10.0.0.1".parse().unwrap()));
    }
}
