//! Response builders: hal+json successes and problem+json errors in amoCRM's shapes.

use axum::body::Body;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Value, json};

/// The response type every handler returns.
pub(crate) type Resp = http::Response<Body>;

/// A handler's outcome; `Err` is an error reply that ended it early (so `?` works).
pub(crate) type Reply = Result<Resp, Resp>;

fn with_type(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Resp {
    let mut resp = http::Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A file's bytes under its own content type.
pub(crate) fn file(status: StatusCode, content_type: &str, body: Vec<u8>) -> Resp {
    let mut resp = http::Response::new(Body::from(body));
    *resp.status_mut() = status;
    let value = HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    resp.headers_mut().insert(header::CONTENT_TYPE, value);
    resp
}

/// A `application/hal+json` success.
pub(crate) fn hal(status: StatusCode, body: &Value) -> Resp {
    with_type(status, "application/hal+json", body.to_string().into_bytes())
}

/// A plain `application/json` reply (OAuth, Chats API).
pub(crate) fn json(status: StatusCode, body: &Value) -> Resp {
    with_type(status, "application/json", body.to_string().into_bytes())
}

/// 200 with `body`, or 204 with no body when nothing was found (amoCRM's answer
/// for an unknown ID).
pub(crate) fn found(body: Option<Value>) -> Resp {
    match body {
        Some(body) => hal(StatusCode::OK, &body),
        None => empty(StatusCode::NO_CONTENT),
    }
}

/// An empty reply with `status` (204 for empty lists, 200 for Chats delivery status).
pub(crate) fn empty(status: StatusCode) -> Resp {
    let mut resp = http::Response::new(Body::empty());
    *resp.status_mut() = status;
    resp
}

/// The reason phrase amoCRM puts in `title`.
fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => status.canonical_reason().unwrap_or("Error"),
    }
}

/// The base problem document for `status`.
pub(crate) fn problem_value(status: StatusCode, detail: &str) -> Value {
    json!({
        "title": title(status),
        "type": format!("https://httpstatus.es/{}", status.as_u16()),
        "status": status.as_u16(),
        "detail": detail,
    })
}

/// An `application/problem+json` error with `detail`.
pub(crate) fn problem(status: StatusCode, detail: &str) -> Resp {
    problem_doc(status, problem_value(status, detail))
}

/// An `application/problem+json` error with a prepared document.
pub(crate) fn problem_doc(status: StatusCode, doc: Value) -> Resp {
    with_type(status, "application/problem+json", doc.to_string().into_bytes())
}

/// The documented 429 reply.
pub(crate) fn too_many_requests(retry_after: u64) -> Resp {
    let mut doc = problem_value(StatusCode::TOO_MANY_REQUESTS, "Too many requests, slow down");
    doc["retry_after"] = json!(retry_after);
    let mut resp = problem_doc(StatusCode::TOO_MANY_REQUESTS, doc);
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// A problem reply for an injected status fault, with the documented body for it.
pub(crate) fn for_status(status: StatusCode) -> Resp {
    match status.as_u16() {
        429 => too_many_requests(1),
        401 => problem(status, "Account or user not authorized"),
        402 => problem(status, "Account is not paid"),
        403 => problem(status, "Access denied"),
        s if s >= 500 => {
            let mut doc = problem_value(status, "Internal error, try again later");
            doc["trace_id"] = json!(uuid::Uuid::new_v4().simple().to_string());
            problem_doc(status, doc)
        }
        _ => problem(status, title(status)),
    }
}

/// One failed check of one request item.
#[derive(Debug)]
pub(crate) struct FieldError {
    /// e.g. "NotSupportedChoice".
    pub code: &'static str,
    /// e.g. "custom_fields_values.0.field_id".
    pub path: String,
    /// Human-readable text.
    pub detail: String,
}

impl FieldError {
    /// A field error.
    pub fn new(code: &'static str, path: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { code, path: path.into(), detail: detail.into() }
    }
}

/// Validation errors of a batch, per item (`request_id`).
#[derive(Debug, Default)]
pub(crate) struct Validation {
    items: Vec<(String, Vec<FieldError>)>,
}

impl Validation {
    /// Records `errors` for the item whose request_id is `request_id` (if any).
    pub fn add(&mut self, request_id: &str, errors: Vec<FieldError>) {
        if !errors.is_empty() {
            self.items.push((request_id.to_string(), errors));
        }
    }

    /// Whether nothing failed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The documented 400 reply.
    pub fn into_response(self) -> Resp {
        let items: Vec<Value> = self
            .items
            .into_iter()
            .map(|(rid, errs)| {
                let errs: Vec<Value> =
                    errs.into_iter().map(|e| json!({"code": e.code, "path": e.path, "detail": e.detail})).collect();
                json!({"request_id": rid, "errors": errs})
            })
            .collect();
        let mut doc = problem_value(StatusCode::BAD_REQUEST, "Request validation failed");
        doc["validation-errors"] = Value::Array(items);
        problem_doc(StatusCode::BAD_REQUEST, doc)
    }
}

/// A single-item validation failure.
pub(crate) fn invalid(request_id: &str, errors: Vec<FieldError>) -> Resp {
    let mut v = Validation::default();
    v.add(request_id, errors);
    v.into_response()
}

/// The Chats API error body (`{"status":0,"error_code":..,"error_type":..}`).
pub(crate) fn chats_error(status: StatusCode, error_type: &str, description: &str) -> Resp {
    json(
        status,
        &json!({
            "status": 0,
            "error_code": status.as_u16(),
            "error_type": error_type,
            "error_description": description,
        }),
    )
}
