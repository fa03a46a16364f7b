//! Leads: a returning contact's open lead is reused; otherwise a lead is created in
//! the binding's pipeline, linked to the contact and tagged with the channel.

use super::transport::{created_ids, embedded};
use super::{AmoCrm, STATUS_LOST, STATUS_WON};
use crate::CrmError;
use crate::model::{LeadRef, LeadRequest};
use serde_json::{Value, json};

const CREATE_ATTEMPTS: usize = 3;

/// The contact's open lead `request` reuses, if any.
pub(super) async fn reusable(
    amo: &AmoCrm,
    contact_id: i64,
    request: &LeadRequest,
) -> Result<Option<LeadRef>, CrmError> {
    if !request.reuse_open {
        return Ok(None);
    }
    match open_lead(amo, contact_id, request.pipeline_id, &request.not_reused).await? {
        Some(lead) => Ok(Some(LeadRef { id: lead_id(&lead)?, created: false })),
        None => Ok(None),
    }
}

pub(super) async fn find_or_create(amo: &AmoCrm, contact_id: i64, request: &LeadRequest) -> Result<LeadRef, CrmError> {
    if let Some(lead) = reusable(amo, contact_id, request).await? {
        return Ok(lead);
    }
    let mut last = None;
    for _ in 0..CREATE_ATTEMPTS {
        let started = amo.clock.now_secs();
        match create(amo, contact_id, request).await {
            Ok(id) => return Ok(LeadRef { id, created: true }),
            Err(e @ CrmError::InDoubt(_)) => {
                // Look for the lead this attempt may have created: linked to the
                // contact, with our name, created since the attempt began.
                tracing::warn!("lead create in doubt, looking it up: {e}");
                let found = contact_leads(amo, contact_id).await?.into_iter().find(|l| {
                    l.get("name").and_then(Value::as_str) == Some(request.name.as_str())
                        && l.get("created_at").and_then(Value::as_i64).unwrap_or(0) >= started - 5
                });
                if let Some(lead) = found {
                    return Ok(LeadRef { id: lead_id(&lead)?, created: true });
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

/// The contact's most recent open lead, preferring `pipeline`, other than `not`.
async fn open_lead(
    amo: &AmoCrm,
    contact_id: i64,
    pipeline: Option<i64>,
    not: &[i64],
) -> Result<Option<Value>, CrmError> {
    let leads = contact_leads(amo, contact_id).await?.into_iter();
    let open: Vec<Value> = leads.filter(is_open).filter(|l| lead_id(l).is_ok_and(|id| !not.contains(&id))).collect();
    let in_pipeline = |l: &&Value| pipeline.is_none() || l.get("pipeline_id").and_then(Value::as_i64) == pipeline;
    let newest = |leads: Vec<&Value>| {
        leads.into_iter().max_by_key(|l| l.get("id").and_then(Value::as_i64).unwrap_or(0)).cloned()
    };
    Ok(newest(open.iter().filter(in_pipeline).collect()).or_else(|| newest(open.iter().collect())))
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
    for (key, value) in [
        ("pipeline_id", request.pipeline_id),
        ("status_id", request.status_id),
        ("responsible_user_id", request.responsible_user_id),
    ] {
        if let Some(v) = value {
            lead[key] = json!(v);
        }
    }
    let created = amo.rest.post("/api/v4/leads", &json!([lead])).await?;
    Ok(created_ids(&created, "leads", 1)?[0])
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
