//! Unsorted (incoming leads): the list, and accepting an entry, which moves its
//! lead out of the Unsorted stage into the pipeline's work.

use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::query::{self, Query};
use crate::account::{self, FIRST_STAGE_ID};
use crate::model::Unsorted;
use crate::respond::{self, FieldError, Reply};
use crate::state::Shared;

/// Routes `/api/v4/leads/unsorted...`.
pub(crate) fn route(shared: &Shared, method: &Method, rest: &str, q: &Query, body: &[u8]) -> Option<Reply> {
    if rest.is_empty() {
        return (method == Method::GET).then(|| list(shared, q));
    }
    let uid = rest.strip_prefix('/')?.strip_suffix("/accept")?;
    (method == Method::POST).then(|| accept(shared, uid, body))
}

fn list(shared: &Shared, q: &Query) -> Reply {
    let paging = q.paging()?;
    let category = q.all("filter[category]");
    let uids = q.all("filter[uid]");
    let pipeline = q.get("filter[pipeline_id]").map(|p| p.parse::<i64>()).transpose().map_err(|_| {
        respond::invalid("0", vec![FieldError::new("InvalidType", "filter.pipeline_id", "must be an integer")])
    })?;
    let state = shared.state();
    let found = state
        .unsorted
        .iter()
        .filter(|u| category.is_empty() || category.contains(&u.category.as_str()))
        .filter(|u| uids.is_empty() || uids.contains(&u.uid.as_str()))
        .filter(|u| pipeline.is_none_or(|p| p == u.pipeline_id))
        .collect();
    Ok(query::list_reply(shared, "/api/v4/leads/unsorted", q, "unsorted", paging, found, |u| model(shared, u)))
}

fn model(shared: &Shared, u: &Unsorted) -> Value {
    json!({
        "uid": u.uid, "source_uid": u.conversation_id, "source_name": "Chats API",
        "category": u.category, "pipeline_id": u.pipeline_id, "created_at": u.created_at,
        "metadata": {"from": "chat"}, "account_id": shared.config.account_id,
        "_embedded": {"leads": [{"id": u.lead_id}], "contacts": [{"id": u.contact_id}], "companies": []},
    })
}

/// `POST /api/v4/leads/unsorted/{uid}/accept {user_id?, status_id?}`: the lead
/// leaves Unsorted for `status_id` (a working stage of its pipeline) or the
/// pipeline's first stage; the entry is gone (accepting again is a 404).
fn accept(shared: &Shared, uid: &str, body: &[u8]) -> Reply {
    let input: Value = if body.is_empty() { json!({}) } else { query::parse_json(body)? };
    let mut errors = Vec::new();
    let user_id = input.get("user_id").map(|v| v.as_i64().ok_or(()));
    match user_id {
        Some(Err(())) => errors.push(FieldError::new("InvalidType", "user_id", "user_id must be an integer")),
        Some(Ok(id)) if !shared.users.iter().any(|u| u.id == id) => {
            errors.push(FieldError::new("NotSupportedChoice", "user_id", format!("User {id} not found")))
        }
        _ => {}
    }
    let status_id = match input.get("status_id").map(Value::as_i64) {
        None => FIRST_STAGE_ID,
        Some(Some(s)) if account::status(s).is_some_and(|st| st.kind == 0) => s,
        Some(_) => {
            errors.push(FieldError::new("NotSupportedChoice", "status_id", "a working stage of the lead's pipeline"));
            FIRST_STAGE_ID
        }
    };
    if !errors.is_empty() {
        return Err(respond::invalid("0", errors));
    }
    let now = shared.now();
    let mut state = shared.state();
    let Some(i) = state.unsorted.iter().position(|u| u.uid == uid) else {
        return Err(respond::problem(StatusCode::NOT_FOUND, "Unsorted not found"));
    };
    let entry = state.unsorted.remove(i);
    super::leads::set_status(&mut state, entry.lead_id, status_id, now);
    Ok(respond::hal(StatusCode::OK, &model(shared, &entry)))
}
