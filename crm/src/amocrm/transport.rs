//! HTTP to amoCRM's REST API: the shared request budget, bearer tokens (refreshed
//! once on a 401), and the mapping of answers to [`CrmError`]s.

use crate::CrmError;
use crate::budget::Budget;
use async_trait::async_trait;
use reqwest::Method;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Where the current access token comes from.
#[async_trait]
pub trait TokenSource: Send + Sync + std::fmt::Debug {
    /// The access token to use now.
    async fn access_token(&self) -> Result<String, CrmError>;
    /// `rejected` was refused with 401: obtain a newer token (re-read the Secret the
    /// operator maintains, or refresh). An error means no newer token exists.
    async fn renew(&self, rejected: &str) -> Result<(), CrmError>;
}

/// A token that never changes (long-lived tokens, tests).
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

#[async_trait]
impl TokenSource for StaticToken {
    async fn access_token(&self) -> Result<String, CrmError> {
        Ok(self.0.clone())
    }
    async fn renew(&self, _rejected: &str) -> Result<(), CrmError> {
        Err(CrmError::Unauthorized("the configured access token was refused".into()))
    }
}

/// The REST transport of one amoCRM account.
#[derive(Debug, Clone)]
pub struct Transport {
    http: reqwest::Client,
    base: String,
    budget: Budget,
    tokens: Arc<dyn TokenSource>,
    timeout: Duration,
}

/// What a request carries.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Nothing.
    None,
    /// JSON.
    Json(&'a Value),
    /// Raw bytes (a part of a file).
    Bytes(&'a [u8]),
}

/// The longest pause a 429's `retry_after` imposes; beyond it we retry sooner and
/// let the next 429 say again.
const MAX_PAUSE: Duration = Duration::from_secs(600);

impl Transport {
    /// A transport for `base_url`, trusting `ca_pem` in addition to the web PKI.
    pub fn new(
        base_url: &str,
        ca_pem: Option<&str>,
        budget: Budget,
        tokens: Arc<dyn TokenSource>,
        timeout: Duration,
    ) -> Result<Self, CrmError> {
        let http = crate::tls::client_builder(ca_pem)
            .and_then(|b| b.build().map_err(|e| e.to_string()))
            .map_err(CrmError::Config)?;
        let base = url::Url::parse(base_url).map_err(|e| CrmError::Config(format!("base URL {base_url:?}: {e}")))?;
        Ok(Self { http, base: base.as_str().trim_end_matches('/').to_string(), budget, tokens, timeout })
    }

    /// The request budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// GET `path` with `query`; `None` for amoCRM's 204 (nothing found).
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Option<Value>, CrmError> {
        self.call(Method::GET, &self.url(path), query, Payload::None).await
    }

    /// POST `body` to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, CrmError> {
        self.call(Method::POST, &self.url(path), &[], Payload::Json(body))
            .await?
            .ok_or_else(|| CrmError::Protocol(format!("POST {path}: empty answer")))
    }

    /// PATCH `path` with `body`.
    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, CrmError> {
        self.call(Method::PATCH, &self.url(path), &[], Payload::Json(body))
            .await?
            .ok_or_else(|| CrmError::Protocol(format!("PATCH {path}: empty answer")))
    }

    /// PUT `body` to `path`; `None` for an answer without a body (202).
    pub async fn put(&self, path: &str, body: &Value) -> Result<Option<Value>, CrmError> {
        self.call(Method::PUT, &self.url(path), &[], Payload::Json(body)).await
    }

    /// GET an absolute URL of another amoCRM service (the file service).
    pub async fn get_from(&self, url: &str) -> Result<Option<Value>, CrmError> {
        self.call(Method::GET, url, &[], Payload::None).await
    }

    /// POST to an absolute URL of another amoCRM service (the file service), with
    /// the same token and budget: JSON, or raw bytes (a file's part).
    pub async fn post_to(&self, url: &str, body: Payload<'_>) -> Result<Value, CrmError> {
        self.call(Method::POST, url, &[], body)
            .await?
            .ok_or_else(|| CrmError::Protocol(format!("POST {url}: empty answer")))
    }

    /// Downloads a file of the file service, refusing more than `max_bytes`.
    pub async fn download(&self, url: &str, max_bytes: u64) -> Result<Vec<u8>, CrmError> {
        self.budget.acquire().await.map_err(CrmError::Unavailable)?;
        let token = self.tokens.access_token().await?;
        let failed = |e: reqwest::Error| CrmError::Unavailable(format!("download {url}: {e}"));
        let mut resp = self.http.get(url).bearer_auth(token).timeout(self.timeout * 6).send().await.map_err(failed)?;
        let status = resp.status().as_u16();
        if status >= 300 {
            let answer = Answer { status, text: String::new(), body: None };
            return answer.common(url, format!("download answered {status}")).map(|_| Vec::new());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > max_bytes {
                return Err(CrmError::Rejected { status: 413, detail: format!("{url}: over {max_bytes} bytes") });
            }
        }
        Ok(body)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn call(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, String)],
        body: Payload<'_>,
    ) -> Result<Option<Value>, CrmError> {
        let mut renewed = false;
        loop {
            let token = self.tokens.access_token().await?;
            match self.send(&method, url, query, &body, &token).await {
                Err(CrmError::Unauthorized(detail)) if !renewed => {
                    tracing::info!(url, "access token refused; renewing it once: {detail}");
                    self.tokens.renew(&token).await?;
                    renewed = true;
                }
                other => return other,
            }
        }
    }

    async fn send(
        &self,
        method: &Method,
        url: &str,
        query: &[(&str, String)],
        body: &Payload<'_>,
        token: &str,
    ) -> Result<Option<Value>, CrmError> {
        let path = url.strip_prefix(&self.base).unwrap_or(url);
        let build = || {
            let req = self.http.request(method.clone(), url).bearer_auth(token);
            let req = if query.is_empty() { req } else { req.query(query) };
            Ok(match body {
                Payload::Json(body) => req.json(body),
                Payload::Bytes(bytes) => req.header("Content-Type", "application/octet-stream").body(bytes.to_vec()),
                Payload::None => req,
            })
        };
        let answer = exchange(&self.budget, self.timeout, *method != Method::GET, path, build).await?;
        self.classify(answer, path).await
    }

    async fn classify(&self, answer: Answer, path: &str) -> Result<Option<Value>, CrmError> {
        let detail = problem_detail(answer.body.as_ref(), &answer.text);
        match answer.status {
            401 => Err(CrmError::Unauthorized(detail)),
            402 | 403 => Err(CrmError::Blocked { status: answer.status, detail }),
            429 => {
                let retry_after = answer
                    .body
                    .as_ref()
                    .and_then(|b| b.get("retry_after"))
                    .and_then(Value::as_u64)
                    .map(|s| Duration::from_secs(s).min(MAX_PAUSE));
                if let Some(d) = retry_after {
                    // Everyone sharing this budget waits, not only this caller.
                    let _ = self.budget.pause(d).await;
                }
                Err(CrmError::RateLimited { retry_after })
            }
            _ => answer.common(path, detail),
        }
    }
}

/// An HTTP answer: status, text, and the text as JSON when it is JSON.
pub(crate) struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body as text.
    pub text: String,
    /// The body as JSON, when it parses.
    pub body: Option<Value>,
}

impl Answer {
    /// What every amoCRM API answers alike: 204 is nothing, another 2xx its JSON
    /// (or nothing when empty), 5xx unavailable, anything else a refusal with
    /// `detail`. API-specific statuses are mapped by the caller first.
    pub(crate) fn common(self, path: &str, detail: String) -> Result<Option<Value>, CrmError> {
        match self.status {
            204 => Ok(None),
            200..=299 => match self.body {
                Some(v) => Ok(Some(v)),
                None if self.text.trim().is_empty() => Ok(None),
                None => Err(CrmError::Protocol(format!("{path}: answer is not JSON"))),
            },
            500..=599 => Err(CrmError::Unavailable(format!("{path}: {}: {detail}", self.status))),
            s => Err(CrmError::Rejected { status: s, detail: format!("{path}: {detail}") }),
        }
    }
}

/// The one HTTP call core of amoCRM's APIs (REST and Chats): waits for `budget`,
/// builds the request (after the wait, so signed dates are fresh), sends it with
/// `timeout` and reads the answer. A failure on the way is `Unavailable`, or
/// `InDoubt` for a write that may have reached the server.
pub(crate) async fn exchange(
    budget: &Budget,
    timeout: Duration,
    is_write: bool,
    path: &str,
    build: impl FnOnce() -> Result<reqwest::RequestBuilder, CrmError>,
) -> Result<Answer, CrmError> {
    budget.acquire().await.map_err(CrmError::Unavailable)?;
    let response = build()?.timeout(timeout).send().await.map_err(|e| transport_error(e, is_write, path))?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| transport_error(e, is_write, path))?;
    let body = serde_json::from_str(&text).ok();
    Ok(Answer { status, text, body })
}

/// Classifies a failed request: in doubt when a write may have reached the server.
fn transport_error(e: reqwest::Error, is_write: bool, path: &str) -> CrmError {
    // A write whose request may have reached the server is in doubt; a failure to
    // connect means nothing was sent.
    if is_write && !e.is_connect() && (e.is_timeout() || e.is_request() || e.is_body() || e.is_decode()) {
        CrmError::InDoubt(format!("{path}: {e}"))
    } else {
        CrmError::Unavailable(format!("{path}: {e}"))
    }
}

/// A readable summary of an amoCRM problem answer, with validation paths.
fn problem_detail(body: Option<&Value>, text: &str) -> String {
    let Some(b) = body else {
        return text.chars().take(300).collect();
    };
    let mut parts = Vec::new();
    for key in ["title", "detail", "hint"] {
        if let Some(s) = b.get(key).and_then(Value::as_str) {
            parts.push(s.to_string());
        }
    }
    if let Some(groups) = b.get("validation-errors").and_then(Value::as_array) {
        for group in groups {
            let request_id = group.get("request_id").and_then(Value::as_str).unwrap_or("?");
            for err in group.get("errors").and_then(Value::as_array).into_iter().flatten() {
                let path = err.get("path").and_then(Value::as_str).unwrap_or("");
                let detail = err.get("detail").and_then(Value::as_str).unwrap_or("");
                let code = err.get("code").and_then(Value::as_str).unwrap_or("");
                parts.push(format!("item {request_id}: {path}: {code} {detail}"));
            }
        }
    }
    if parts.is_empty() { text.chars().take(300).collect() } else { parts.join("; ") }
}

/// `_embedded.<name>` of a HAL answer (empty when absent).
pub(crate) fn embedded<'a>(v: &'a Value, name: &str) -> &'a [Value] {
    v.get("_embedded").and_then(|e| e.get(name)).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Whether a HAL list answer has a next page.
pub(crate) fn has_next(v: &Value) -> bool {
    v.get("_links").and_then(|l| l.get("next")).is_some()
}

/// The ids of created items, in the order they were sent (by `request_id`).
pub(crate) fn created_ids(v: &Value, name: &str, count: usize) -> Result<Vec<i64>, CrmError> {
    let items = embedded(v, name);
    let mut ids = vec![None; count];
    for (pos, item) in items.iter().enumerate() {
        let id = item
            .get("id")
            .and_then(Value::as_i64)
            .ok_or_else(|| CrmError::Protocol(format!("created {name}: no id")))?;
        let idx = item.get("request_id").and_then(Value::as_str).and_then(|r| r.parse::<usize>().ok()).unwrap_or(pos);
        if let Some(slot) = ids.get_mut(idx) {
            *slot = Some(id);
        }
    }
    ids.into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| CrmError::Protocol(format!("created {name}: {} of {count} ids returned", items.len())))
}
