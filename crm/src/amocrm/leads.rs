//! Leads: a returning contact's open lead is reused; otherwise a lead is created in
//! the binding's pipeline, linked to the contact and tagged with the channel.

use super::transport::{created_ids, embedded};
use super::{AmoCrm, STATUS_LOST, STATUS_WON};
use crate::CrmError;
use crate::model::{LeadRef, LeadRequest};
use serde_json::{Value, json};

const CREATE_ATTEMPTS: usize = 3;
/// Pages of the Unsorted list searched for an incoming lead (250 entries each).
const MAX_PAGES: usize = 8;

/// The contact's open lead `request` reuses, if any. A lead amoCRM made itself and
/// nobody accepted yet (an Unsorted entry, as a chat's first message can make) is
/// returned even when open leads are not reused: it is nobody's lead yet, and
/// adopting it is what keeps the conversation at one lead.
pub(super) async fn reusable(
    amo: &AmoCrm,
    contact_id: i64,
    request: &LeadRequest,
) -> Result<Option<LeadRef>, CrmError> {
    let open = open_leads(amo, contact_id, &request.not_reused).await?;
    let stages = incoming_stages(amo).await?;
    let stage = |l: &Value| l.get("status_id").and_then(Value::as_i64).unwrap_or(0);
    if let Some(lead) = newest(open.iter().filter(|l| stages.contains(&stage(l))).collect()) {
        let id = lead_id(&lead)?;
        let incoming = incoming_uid(amo, id, lead.get("pipeline_id").and_then(Value::as_i64)).await?;
        if incoming.is_some() {
            return Ok(Some(LeadRef { id, created: false, incoming }));
        }
    }
    if !request.reuse_open {
        return Ok(None);
    }
    let in_pipeline = |l: &&Value| {
        request.pipeline_id.is_none() || l.get("pipeline_id").and_then(Value::as_i64) == request.pipeline_id
    };
    let lead = newest(open.iter().filter(in_pipeline).collect()).or_else(|| newest(open.iter().collect()));
    match lead {
        Some(lead) => Ok(Some(LeadRef { id: lead_id(&lead)?, created: false, incoming: None })),
        None => Ok(None),
    }
}

/// Accepts an incoming lead's Unsorted entry (`POST /api/v4/leads/unsorted/{uid}/accept`)
/// and gives the lead the request's name, place, responsible user and tags.
pub(super) async fn adopt(amo: &AmoCrm, lead: &LeadRef, request: &LeadRequest) -> Result<(), CrmError> {
    if let Some(uid) = &lead.incoming {
        let mut accept = json!({});
        if let Some(user) = request.responsible_user_id {
            accept["user_id"] = json!(user);
        }
        match amo.rest.post(&format!("/api/v4/leads/unsorted/{uid}/accept"), &accept).await {
            // Accepted by an earlier attempt whose answer was lost: it is ours already.
            Ok(_) | Err(CrmError::Rejected { status: 404, .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let mut patch = json!({
        "name": request.name,
        "_embedded": { "tags": request.tags.iter().map(|t| json!({ "name": t })).collect::<Vec<_>>() },
    });
    place(&mut patch, request);
    amo.rest.patch(&format!("/api/v4/leads/{}", lead.id), &patch).await?;
    Ok(())
}

/// The account's Unsorted stages: the statuses of type 1, one per pipeline.
async fn incoming_stages(amo: &AmoCrm) -> Result<&Vec<i64>, CrmError> {
    amo.incoming_stages
        .get_or_try_init(|| async {
            let found = amo.rest.get("/api/v4/leads/pipelines", &[]).await?.unwrap_or_default();
            Ok(embedded(&found, "pipelines")
                .iter()
                .flat_map(|p| embedded(p, "statuses").to_vec())
                .filter(|s| s.get("type").and_then(Value::as_i64) == Some(1))
                .filter_map(|s| s.get("id").and_then(Value::as_i64))
                .collect())
        })
        .await
}

/// The uid of the Unsorted entry that holds lead `id`, if it is still unsorted.
async fn incoming_uid(amo: &AmoCrm, id: i64, pipeline: Option<i64>) -> Result<Option<String>, CrmError> {
    for page in 1..=MAX_PAGES {
        let mut query = vec![("limit", "250".to_string()), ("page", page.to_string())];
        if let Some(p) = pipeline {
            query.push(("filter[pipeline_id]", p.to_string()));
        }
        let Some(found) = amo.rest.get("/api/v4/leads/unsorted", &query).await? else { return Ok(None) };
        let entries = embedded(&found, "unsorted");
        let holds = |u: &&Value| embedded(u, "leads").iter().any(|l| l.get("id").and_then(Value::as_i64) == Some(id));
        if let Some(entry) = entries.iter().find(holds) {
            return Ok(entry.get("uid").and_then(Value::as_str).map(str::to_string));
        }
        if entries.len() < 250 {
            break;
        }
    }
    Ok(None)
}

pub(super) async fn find_or_create(amo: &AmoCrm, contact_id: i64, request: &LeadRequest) -> Result<LeadRef, CrmError> {
    if let Some(lead) = reusable(amo, contact_id, request).await? {
        if lead.incoming.is_some() {
            adopt(amo, &lead, request).await?;
            return Ok(LeadRef { incoming: None, ..lead });
        }
        return Ok(lead);
    }
    let mut last = None;
    for _ in 0..CREATE_ATTEMPTS {
        let started = amo.clock.now_secs();
        match create(amo, contact_id, request).await {
            Ok(id) => return Ok(LeadRef { id, created: true, incoming: None }),
            Err(e @ CrmError::InDoubt(_)) => {
                // Look for the lead this attempt may have created: linked to the
                // contact, with our name, created since the attempt began.
                tracing::warn!("lead create in doubt, looking it up: {e}");
                let found = contact_leads(amo, contact_id).await?.into_iter().find(|l| {
                    l.get("name").and_then(Value::as_str) == Some(request.name.as_str())
                        && l.get("created_at").and_then(Value::as_i64).unwrap_or(0) >= started - 5
                });
                if let Some(lead) = found {
                    return Ok(LeadRef { id: lead_id(&lead)?, created: true, incoming: None });
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| CrmError::Protocol("lead create did not settle".into())))
}

fn lead_id(lead: &Value) -> Result<i64, CrmError> {
    lead.get("id").and_then(Value::as_i64).ok_or_else(|| CrmError::Protocol("lead without id".into()))
}

fn is_open(lead: &Value) -> bool {
    let status = lead.get("status_id").and_then(Value::as_i64).unwrap_or(0);
    !lead.get("is_deleted").and_then(Value::as_bool).unwrap_or(false) && status != STATUS_WON && status != STATUS_LOST
}

/// The contact's open leads other than `not`.
async fn open_leads(amo: &AmoCrm, contact_id: i64, not: &[i64]) -> Result<Vec<Value>, CrmError> {
    let leads = contact_leads(amo, contact_id).await?.into_iter();
    Ok(leads.filter(is_open).filter(|l| lead_id(l).is_ok_and(|id| !not.contains(&id))).collect())
}

/// The most recent of `leads`.
fn newest(leads: Vec<&Value>) -> Option<Value> {
    leads.into_iter().max_by_key(|l| l.get("id").and_then(Value::as_i64).unwrap_or(0)).cloned()
}

/// Every lead linked to the contact.
async fn contact_leads(amo: &AmoCrm, contact_id: i64) -> Result<Vec<Value>, CrmError> {
    let Some(contact) = amo.rest.get(&format!("/api/v4/contacts/{contact_id}"), &[("with", "leads".into())]).await?
    else {
        return Err(CrmError::Rejected { status: 204, detail: format!("contact {contact_id} no longer exists") });
    };
    let ids: Vec<i64> =
        embedded(&contact, "leads").iter().filter_map(|l| l.get("id").and_then(Value::as_i64)).collect();
    let mut leads = Vec::new();
    for chunk in ids.chunks(50) {
        let mut query: Vec<(&str, String)> = chunk.iter().map(|id| ("filter[id][]", id.to_string())).collect();
        query.push(("limit", "250".into()));
        if let Some(found) = amo.rest.get("/api/v4/leads", &query).await? {
            leads.extend(embedded(&found, "leads").iter().cloned());
        }
    }
    Ok(leads)
}

async fn create(amo: &AmoCrm, contact_id: i64, request: &LeadRequest) -> Result<i64, CrmError> {
    let mut lead = json!({
        "name": request.name,
        "request_id": "0",
        "_embedded": {
            "contacts": [{ "id": contact_id, "is_main": true }],
            "tags": request.tags.iter().map(|t| json!({ "name": t })).collect::<Vec<_>>(),
        },
    });
    place(&mut lead, request);
    if let Some(source) = &request.source {
        lead["_embedded"]["source"] = json!({ "external_id": source, "type": "widget" });
    }
    let created = amo.rest.post("/api/v4/leads", &json!([lead])).await?;
    Ok(created_ids(&created, "leads", 1)?[0])
}

/// The request's pipeline, stage and responsible user, where it sets them.
fn place(lead: &mut Value, request: &LeadRequest) {
    for (key, value) in [
        ("pipeline_id", request.pipeline_id),
        ("status_id", request.status_id),
        ("responsible_user_id", request.responsible_user_id),
    ] {
        if let Some(v) = value {
            lead[key] = json!(v);
        }
    }
}

/// Links contacts to the lead (`POST /api/v4/leads/{id}/link`); amoCRM keeps one
/// link per pair, so linking again (a retry after an in-doubt request) is harmless.
pub(super) async fn link_contacts(amo: &AmoCrm, lead_id: i64, contact_ids: &[i64]) -> Result<(), CrmError> {
    for chunk in contact_ids.chunks(50) {
        let body: Vec<Value> =
            chunk.iter().map(|id| json!({ "to_entity_id": id, "to_entity_type": "contacts" })).collect();
        amo.rest.post(&format!("/api/v4/leads/{lead_id}/link"), &json!(body)).await?;
    }
    Ok(())
}
