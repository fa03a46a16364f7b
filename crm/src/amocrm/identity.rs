//! The contact fields that keep messenger identities (Telegram user id and
//! username, WhatsApp id), so a returning customer is found instead of
//! duplicated: found by their codes, or created once with an administrator's
//! token (`POST /api/v4/contacts/custom_fields`).

use super::IdentityFields;
use super::transport::{Transport, embedded};
use crate::CrmError;
use serde_json::{Value, json};

/// One identity field as the connector creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityField {
    /// The field's code in amoCRM (how it is found again).
    pub code: &'static str,
    /// Its name as managers see it.
    pub name: &'static str,
}

/// The three identity fields.
pub const FIELDS: [IdentityField; 3] = [
    IdentityField { code: "CRMESSENGER_TELEGRAM_ID", name: "Telegram user id" },
    IdentityField { code: "CRMESSENGER_TELEGRAM_USERNAME", name: "Telegram username" },
    IdentityField { code: "CRMESSENGER_WHATSAPP_ID", name: "WhatsApp id" },
];

/// What [`ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every field exists; their ids.
    Ready(IdentityFields),
    /// Some are missing and this token may not create them (not an administrator's).
    AdminRequired(Vec<IdentityField>),
}

/// Finds the identity fields by code and creates the missing ones.
pub async fn ensure(rest: &Transport) -> Result<Outcome, CrmError> {
    let mut ids = existing(rest).await?;
    let missing: Vec<IdentityField> = FIELDS.into_iter().filter(|f| id_of(&ids, f.code).is_none()).collect();
    if !missing.is_empty() {
        let body: Vec<Value> = missing
            .iter()
            .map(|f| json!({ "name": f.name, "type": "text", "code": f.code, "request_id": f.code }))
            .collect();
        match rest.post("/api/v4/contacts/custom_fields", &json!(body)).await {
            Ok(created) => ids.extend(codes_and_ids(&created)),
            // The listing just worked with this token, so a 403 here is about
            // the right to create fields, not a blocked integration.
            Err(CrmError::Blocked { status: 403, .. } | CrmError::Rejected { status: 403, .. }) => {
                return Ok(Outcome::AdminRequired(missing));
            }
            // A retry after an answer that was lost: the fields are there now.
            Err(CrmError::Rejected { status: 400, .. }) => ids = existing(rest).await?,
            Err(e) => return Err(e),
        }
    }
    let fields = IdentityFields {
        telegram_user_id: id_of(&ids, FIELDS[0].code),
        telegram_username: id_of(&ids, FIELDS[1].code),
        whatsapp_id: id_of(&ids, FIELDS[2].code),
    };
    match (fields.telegram_user_id, fields.telegram_username, fields.whatsapp_id) {
        (Some(_), Some(_), Some(_)) => Ok(Outcome::Ready(fields)),
        _ => Err(CrmError::Protocol("identity fields were created but are not listed".into())),
    }
}

/// The account's contact fields with a code: (code, id).
async fn existing(rest: &Transport) -> Result<Vec<(String, i64)>, CrmError> {
    let mut out = Vec::new();
    for page in 1..=20 {
        let query = [("limit", "250".to_string()), ("page", page.to_string())];
        let Some(found) = rest.get("/api/v4/contacts/custom_fields", &query).await? else { break };
        let n = embedded(&found, "custom_fields").len();
        out.extend(codes_and_ids(&found));
        if n < 250 {
            break;
        }
    }
    Ok(out)
}

fn codes_and_ids(doc: &Value) -> Vec<(String, i64)> {
    embedded(doc, "custom_fields")
        .iter()
        .filter_map(|f| Some((f.get("code")?.as_str()?.to_string(), f.get("id")?.as_i64()?)))
        .collect()
}

fn id_of(ids: &[(String, i64)], code: &str) -> Option<i64> {
    ids.iter().find(|(c, _)| c == code).map(|(_, id)| *id)
}
