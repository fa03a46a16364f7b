//! What the create and update batches share: validating every item under its
//! `request_id`, the `POST` and `PATCH` of an entity collection, and the
//! `{_links, _embedded}` reply.

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::query::{opt_int, parse_batch, parse_object, request_id};
use super::self_links;
use crate::respond::{self, FieldError, Reply, Resp, Validation};
use crate::state::{Shared, State};

/// One request item: a JSON object.
pub(crate) type Item = Map<String, Value>;

/// Checks every item with `check`, which records its field errors and returns what
/// it parsed. All pass: each result with its request_id, in order; otherwise the
/// documented 400 naming every failed item.
pub(crate) fn validate<T>(
    items: &[Item],
    mut check: impl FnMut(&Item, &mut Vec<FieldError>) -> T,
) -> Result<Vec<(String, T)>, Resp> {
    let mut validation = Validation::default();
    let mut checked = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let rid = request_id(item, i);
        let mut errors = Vec::new();
        let parsed = check(item, &mut errors);
        validation.add(&rid, errors);
        checked.push((rid, parsed));
    }
    if validation.is_empty() { Ok(checked) } else { Err(validation.into_response()) }
}

/// The reply to a create or update batch on `path`: `items` under `_embedded.{key}`.
pub(crate) fn reply(shared: &Shared, path: &str, key: &str, items: Vec<Value>) -> Resp {
    let mut embedded = Map::new();
    embedded.insert(key.into(), Value::Array(items));
    respond::hal(StatusCode::OK, &json!({"_links": self_links(shared, path), "_embedded": embedded}))
}

/// An entity that [`create`] and [`update`] handle.
pub(crate) struct Entity {
    /// "Lead": how errors name one.
    pub noun: &'static str,
    /// "leads": the collection under `/api/v4` and the `_embedded` key.
    pub key: &'static str,
    /// Whether one with this ID exists.
    pub exists: fn(&State, i64) -> bool,
}

impl Entity {
    fn path(&self) -> String {
        format!("/api/v4/{}", self.key)
    }
}

/// `POST /api/v4/{key}`: `parse` validates each item's fields; once all pass,
/// `insert` stores each and returns its ID.
pub(crate) fn create<I>(
    shared: &Shared,
    entity: &Entity,
    body: &[u8],
    parse: impl Fn(&Shared, &State, &Item, &mut Vec<FieldError>) -> I,
    mut insert: impl FnMut(&Shared, &mut State, I) -> i64,
) -> Reply {
    let items = parse_batch(body)?;
    let mut state = shared.state();
    let inputs = validate(&items, |item, errors| parse(shared, &state, item, errors))?;
    let path = entity.path();
    let created = inputs
        .into_iter()
        .map(|(rid, input)| {
            let id = insert(shared, &mut state, input);
            json!({"id": id, "request_id": rid, "_links": self_links(shared, &format!("{path}/{id}"))})
        })
        .collect();
    Ok(reply(shared, &path, entity.key, created))
}

/// The item's `id`, which must name an existing entity.
fn existing_id(entity: &Entity, state: &State, item: &Item, errors: &mut Vec<FieldError>) -> i64 {
    let id = opt_int(item, "id", errors);
    match id {
        None => errors.push(FieldError::new("NotBlank", "id", "id is required")),
        Some(id) if !(entity.exists)(state, id) => {
            errors.push(FieldError::new("NotFound", "id", format!("{} {id} not found", entity.noun)))
        }
        _ => {}
    }
    id.unwrap_or_default()
}

/// `PATCH /api/v4/{key}` (a batch with an `id` in each item) or, with `single`,
/// `PATCH /api/v4/{key}/{id}` (one object; its reply is the bare item). `parse`
/// validates an item's fields; once all pass, `apply` writes each and returns the
/// `updated_at` to report.
pub(crate) fn update<I>(
    shared: &Shared,
    entity: &Entity,
    body: &[u8],
    single: Option<i64>,
    parse: impl Fn(&Shared, &State, &Item, &mut Vec<FieldError>) -> I,
    mut apply: impl FnMut(&Shared, &mut State, i64, I) -> i64,
) -> Reply {
    let items = match single {
        Some(id) => {
            let mut item = parse_object(body)?;
            item.insert("id".into(), json!(id));
            vec![item]
        }
        None => parse_batch(body)?,
    };
    let mut state = shared.state();
    if let Some(id) = single
        && !(entity.exists)(&state, id)
    {
        return Err(respond::problem(StatusCode::NOT_FOUND, &format!("{} not found", entity.noun)));
    }
    let inputs = validate(&items, |item, errors| {
        let id = existing_id(entity, &state, item, errors);
        (id, parse(shared, &state, item, errors))
    })?;
    let path = entity.path();
    let out: Vec<Value> = inputs
        .into_iter()
        .map(|(rid, (id, input))| {
            let updated_at = apply(shared, &mut state, id, input);
            let links = self_links(shared, &format!("{path}/{id}"));
            json!({"id": id, "updated_at": updated_at, "request_id": rid, "_links": links})
        })
        .collect();
    if single.is_some()
        && let [one] = out.as_slice()
    {
        return Ok(respond::hal(StatusCode::OK, one));
    }
    Ok(reply(shared, &path, entity.key, out))
}
