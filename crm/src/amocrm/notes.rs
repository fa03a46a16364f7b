//! Notes: each message as a note on its lead, batched up to amoCRM's documented
//! 250 entities per request (the notes of many leads in one request). After an in-doubt write, the lead's recent notes are
//! searched for the markers before anything is written again.

use super::AmoCrm;
use super::transport::{created_ids, embedded, has_next};
use crate::CrmError;
use crate::model::{NoteRef, NoteRequest};
use serde_json::{Value, json};
use std::collections::HashMap;

/// amoCRM's per-request entity limit.
pub(super) const MAX_BATCH: usize = 250;
const ATTEMPTS: usize = 3;

pub(super) async fn add(amo: &AmoCrm, lead_id: i64, notes: &[NoteRequest]) -> Result<Vec<NoteRef>, CrmError> {
    let items: Vec<(i64, NoteRequest)> = notes.iter().map(|n| (lead_id, n.clone())).collect();
    add_many(amo, &items).await
}

/// Notes on several leads, in order, 250 to a request (amoCRM takes each item's
/// `entity_id`, so one request carries the notes of many leads).
pub(super) async fn add_many(amo: &AmoCrm, items: &[(i64, NoteRequest)]) -> Result<Vec<NoteRef>, CrmError> {
    let mut written = Vec::with_capacity(items.len());
    for batch in items.chunks(MAX_BATCH) {
        written.extend(add_batch(amo, batch).await?);
    }
    Ok(written)
}

async fn add_batch(amo: &AmoCrm, batch: &[(i64, NoteRequest)]) -> Result<Vec<NoteRef>, CrmError> {
    let mut done: HashMap<String, i64> = HashMap::new();
    let mut last = None;
    for _ in 0..ATTEMPTS {
        let pending: Vec<&(i64, NoteRequest)> = batch.iter().filter(|(_, n)| !done.contains_key(&n.marker)).collect();
        if pending.is_empty() {
            break;
        }
        let started = amo.clock.now_secs();
        let items: Vec<Value> = pending
            .iter()
            .enumerate()
            .map(|(i, (lead_id, n))| json!({ "entity_id": lead_id, "note_type": "common", "params": { "text": n.text }, "request_id": i.to_string() }))
            .collect();
        match amo.rest.post(&format!("/api/v4/{}/notes", amo.config.records.plural()), &Value::Array(items)).await {
            Ok(created) => {
                let ids = created_ids(&created, "notes", pending.len())?;
                for ((_, n), id) in pending.iter().zip(ids) {
                    done.insert(n.marker.clone(), id);
                }
            }
            Err(e @ CrmError::InDoubt(_)) => {
                tracing::warn!("note write in doubt, looking for its markers: {e}");
                let mut leads: Vec<i64> = pending.iter().map(|(l, _)| *l).collect();
                leads.sort_unstable();
                leads.dedup();
                for lead_id in leads {
                    let on_lead: Vec<&NoteRequest> =
                        pending.iter().filter(|(l, _)| *l == lead_id).map(|(_, n)| n).collect();
                    done.extend(find_markers(amo, lead_id, started - 5, &on_lead).await?);
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    batch
        .iter()
        .map(|(_, n)| match done.get(&n.marker) {
            Some(&id) => Ok(NoteRef { id, marker: n.marker.clone() }),
            None => Err(last.take().unwrap_or_else(|| CrmError::Protocol("note write did not settle".into()))),
        })
        .collect()
}

/// Notes whose marker is on the lead (written since `since`).
pub(super) async fn find(amo: &AmoCrm, lead_id: i64, since: i64, markers: &[String]) -> Result<Vec<NoteRef>, CrmError> {
    let wanted: Vec<NoteRequest> =
        markers.iter().map(|m| NoteRequest { marker: m.clone(), text: String::new() }).collect();
    let refs: Vec<&NoteRequest> = wanted.iter().collect();
    let found = find_markers(amo, lead_id, since, &refs).await?;
    Ok(markers.iter().filter_map(|m| found.get(m).map(|&id| NoteRef { id, marker: m.clone() })).collect())
}

/// Notes on the lead updated since `since` whose text contains a pending marker.
async fn find_markers(
    amo: &AmoCrm,
    lead_id: i64,
    since: i64,
    pending: &[&NoteRequest],
) -> Result<HashMap<String, i64>, CrmError> {
    let mut found = HashMap::new();
    let mut page = 1;
    loop {
        let query = [
            ("filter[note_type]", "common".to_string()),
            ("filter[updated_at][from]", since.to_string()),
            ("limit", MAX_BATCH.to_string()),
            ("page", page.to_string()),
        ];
        let Some(list) =
            amo.rest.get(&format!("/api/v4/{}/{lead_id}/notes", amo.config.records.plural()), &query).await?
        else {
            break;
        };
        for note in embedded(&list, "notes") {
            let text = note.get("params").and_then(|p| p.get("text")).and_then(Value::as_str).unwrap_or("");
            if let (Some(n), Some(id)) =
                (pending.iter().find(|n| text.contains(&n.marker)), note.get("id").and_then(Value::as_i64))
            {
                found.insert(n.marker.clone(), id);
            }
        }
        if !has_next(&list) {
            break;
        }
        page += 1;
    }
    Ok(found)
}
