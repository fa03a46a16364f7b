//! Query strings with PHP bracket keys, request bodies, paging and list replies.

use http::StatusCode;
use serde_json::{Map, Value, json};

use crate::respond::{self, FieldError, Resp};
use crate::state::Shared;

/// Most items one create/update request may carry.
pub(crate) const MAX_BATCH: usize = 250;
/// Most items one page may hold.
pub(crate) const MAX_LIMIT: u64 = 250;

/// A parsed query string.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    /// Parses `raw` (without `?`).
    pub fn parse(raw: Option<&str>) -> Self {
        let pairs = raw.map(|q| url::form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
        Self { pairs }
    }

    /// The first value of exactly `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Values of `base`, `base[]` and `base[N]`, comma lists split.
    pub fn all(&self, base: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| {
                k == base
                    || k.strip_prefix(base)
                        .and_then(|rest| rest.strip_prefix('['))
                        .and_then(|rest| rest.strip_suffix(']'))
                        .is_some_and(|inner| inner.chars().all(|c| c.is_ascii_digit()))
            })
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    }

    /// Integer values of `base` (see [`Query::all`]); a non-integer is a 400.
    pub fn ids(&self, base: &str) -> Result<Vec<i64>, Resp> {
        self.all(base)
            .into_iter()
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    respond::invalid(
                        "0",
                        vec![FieldError::new("InvalidType", base, format!("{base}: '{v}' is not an integer"))],
                    )
                })
            })
            .collect()
    }

    /// Whether `with` lists `what`.
    pub fn with(&self, what: &str) -> bool {
        self.get("with").is_some_and(|w| w.split(',').any(|p| p.trim() == what))
    }

    /// `page` (from 1) and `limit` (default 50, at most 250).
    pub fn paging(&self) -> Result<Paging, Resp> {
        let bad = |path: &str, detail: &str| {
            respond::invalid("0", vec![FieldError::new("LessThanOrEqual", path, detail.to_string())])
        };
        let page = match self.get("page") {
            None => 1,
            Some(p) => match p.parse::<u64>() {
                Ok(p) if p >= 1 => p,
                _ => return Err(bad("page", "page must be a positive integer")),
            },
        };
        let limit = match self.get("limit") {
            None => 50,
            Some(l) => match l.parse::<u64>() {
                Ok(l) if (1..=MAX_LIMIT).contains(&l) => l,
                _ => {
                    return Err(bad("limit", "This value should be less than or equal to 250."));
                }
            },
        };
        Ok(Paging { page, limit })
    }

    /// Whether `order[id]` or `order[updated_at]` asks for `desc` (IDs grow with time,
    /// so newest first is reversed ID order).
    pub fn descending(&self) -> bool {
        self.get("order[id]") == Some("desc") || self.get("order[updated_at]") == Some("desc")
    }

    /// The query with `page` replaced.
    fn with_page(&self, page: u64, limit: u64) -> String {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in &self.pairs {
            if k != "page" && k != "limit" {
                ser.append_pair(k, v);
            }
        }
        ser.append_pair("page", &page.to_string());
        ser.append_pair("limit", &limit.to_string());
        ser.finish()
    }
}

/// The page a list request asks for.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Paging {
    /// Page number from 1.
    pub page: u64,
    /// Page size.
    pub limit: u64,
}

/// The requested page of `found`, rendered with `render`: a hal+json list reply
/// whose `_embedded` holds it under `key`, or 204 with no body when it is empty.
pub(crate) fn list_reply<T>(
    shared: &Shared,
    path: &str,
    query: &Query,
    key: &str,
    paging: Paging,
    found: Vec<T>,
    render: impl FnMut(T) -> Value,
) -> Resp {
    let Paging { page, limit } = paging;
    let start = usize::try_from((page - 1).saturating_mul(limit)).unwrap_or(usize::MAX);
    let size = usize::try_from(limit).unwrap_or(usize::MAX);
    let has_next = start.saturating_add(size) < found.len();
    let items: Vec<Value> = found.into_iter().skip(start).take(size).map(render).collect();
    if items.is_empty() {
        return respond::empty(StatusCode::NO_CONTENT);
    }
    let href = |page: u64| json!({"href": shared.url(&format!("{path}?{}", query.with_page(page, limit)))});
    let mut links = Map::new();
    links.insert("self".into(), href(page));
    if has_next {
        links.insert("next".into(), href(page + 1));
    }
    if page > 1 {
        links.insert("prev".into(), href(page - 1));
    }
    let mut embedded = Map::new();
    embedded.insert(key.into(), Value::Array(items));
    respond::hal(StatusCode::OK, &json!({"_page": page, "_links": links, "_embedded": embedded}))
}

/// Parses a JSON body, rejecting an empty one with the documented 400.
pub(crate) fn parse_json(body: &[u8]) -> Result<Value, Resp> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(empty_request());
    }
    serde_json::from_slice(body).map_err(|e| respond::problem(StatusCode::BAD_REQUEST, &format!("Invalid JSON: {e}")))
}

fn empty_request() -> Resp {
    respond::problem(StatusCode::BAD_REQUEST, "Request data can not be empty")
}

/// Parses a create/update batch: a non-empty array of objects, at most 250.
pub(crate) fn parse_batch(body: &[u8]) -> Result<Vec<Map<String, Value>>, Resp> {
    let value = parse_json(body)?;
    let Value::Array(items) = value else {
        return Err(respond::invalid(
            "0",
            vec![FieldError::new("InvalidType", "", "The request body must be an array of objects")],
        ));
    };
    if items.is_empty() {
        return Err(empty_request());
    }
    if items.len() > MAX_BATCH {
        return Err(respond::problem(StatusCode::UNPROCESSABLE_ENTITY, "Limit 250 per page"));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::Object(map) => out.push(map),
            _ => {
                return Err(respond::invalid(
                    &i.to_string(),
                    vec![FieldError::new("InvalidType", "", "Each item must be an object")],
                ));
            }
        }
    }
    Ok(out)
}

/// Parses a single-object body (PATCH /entity/{id}).
pub(crate) fn parse_object(body: &[u8]) -> Result<Map<String, Value>, Resp> {
    match parse_json(body)? {
        Value::Object(map) if map.is_empty() => Err(empty_request()),
        Value::Object(map) => Ok(map),
        _ => Err(respond::invalid("0", vec![FieldError::new("InvalidType", "", "The request body must be an object")])),
    }
}

/// The item's `request_id` (string or number), or its index as a string.
pub(crate) fn request_id(item: &Map<String, Value>, index: usize) -> String {
    match item.get("request_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => index.to_string(),
    }
}

/// Reads an optional field with `read`; a value it rejects is an `InvalidType`
/// field error saying the field must be `expected` ("an integer", ...).
fn opt_typed<T>(
    item: &Map<String, Value>,
    key: &str,
    errors: &mut Vec<FieldError>,
    expected: &str,
    read: impl FnOnce(&Value) -> Option<T>,
) -> Option<T> {
    let value = item.get(key).filter(|v| !v.is_null())?;
    let read = read(value);
    if read.is_none() {
        errors.push(FieldError::new("InvalidType", key, format!("{key} must be {expected}")));
    }
    read
}

/// Reads an optional integer field; a wrong type is a field error.
pub(crate) fn opt_int(item: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<i64> {
    opt_typed(item, key, errors, "an integer", Value::as_i64)
}

/// Reads an optional string field; a wrong type is a field error.
pub(crate) fn opt_str(item: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<String> {
    opt_typed(item, key, errors, "a string", |v| v.as_str().map(str::to_string))
}

/// Reads an optional boolean field; a wrong type is a field error.
pub(crate) fn opt_bool(item: &Map<String, Value>, key: &str, errors: &mut Vec<FieldError>) -> Option<bool> {
    opt_typed(item, key, errors, "a boolean", Value::as_bool)
}
