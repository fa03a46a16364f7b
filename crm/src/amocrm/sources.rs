//! Lead sources (the Sources API): one per messenger account, so amoCRM's
//! reports split leads by channel. Creating them needs an administrator's token
//! and the integration's widget (its manifest lists `"locations":["lead_sources"]`);
//! where that is missing, leads carry a tag instead.

use super::transport::{Transport, embedded};
use crate::CrmError;
use serde_json::{Value, json};

/// A source to have: its external id (≤ 36 printable ASCII) and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The integration's id for it.
    pub external_id: String,
    /// Its name in amoCRM's reports.
    pub name: String,
}

/// What [`ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every wanted source exists.
    Ready,
    /// Sources cannot be made here; why, as amoCRM said it.
    Unavailable(String),
}

/// Creates the wanted sources that do not exist yet (in `pipeline_id`).
pub async fn ensure(rest: &Transport, wanted: &[Wanted], pipeline_id: Option<i64>) -> Result<Outcome, CrmError> {
    let existing: Vec<String> = match rest.get("/api/v4/sources", &[]).await {
        Ok(found) => found
            .map(|f| {
                embedded(&f, "sources")
                    .iter()
                    .filter_map(|s| s.get("external_id").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
        Err(CrmError::Blocked { status: 403, detail } | CrmError::Rejected { status: 403, detail }) => {
            return Ok(Outcome::Unavailable(detail));
        }
        Err(e) => return Err(e),
    };
    let missing: Vec<Value> = wanted
        .iter()
        .filter(|w| !existing.contains(&w.external_id))
        .map(|w| {
            let mut s = json!({ "name": w.name, "external_id": w.external_id, "request_id": w.external_id });
            if let Some(p) = pipeline_id {
                s["pipeline_id"] = json!(p);
            }
            s
        })
        .collect();
    for chunk in missing.chunks(50) {
        match rest.post("/api/v4/sources", &json!(chunk)).await {
            Ok(_) => {}
            // The listing worked with this token: a 403 is about the right to add
            // sources (an administrator's token, the widget), not a blocked integration.
            Err(CrmError::Blocked { status: 403, detail } | CrmError::Rejected { status: 403, detail }) => {
                return Ok(Outcome::Unavailable(detail));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Outcome::Ready)
}
