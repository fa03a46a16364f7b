//! Contacts: look up before creating, by messenger identity or phone, so one person
//! stays one contact across messengers and phone spellings.

use super::AmoCrm;
use super::transport::{created_ids, embedded};
use crate::model::{ContactRef, DedupKey, Person};
use crate::{CrmError, phone};
use serde_json::{Value, json};

/// amoCRM's built-in phone field code.
const PHONE: &str = "PHONE";
/// How often an in-doubt create is resolved and retried within one call.
const CREATE_ATTEMPTS: usize = 3;

pub(super) async fn find_or_create(amo: &AmoCrm, person: &Person, dedup: &[DedupKey]) -> Result<ContactRef, CrmError> {
    let phone = person.phone.as_deref().and_then(|p| phone::normalize_in(p, &amo.config.phone_region));
    let mut last = None;
    for _ in 0..CREATE_ATTEMPTS {
        if let Some(contact) = find(amo, person, phone.as_deref(), dedup).await? {
            let id = id_of(&contact)?;
            complete_identities(amo, &contact, person, phone.as_deref()).await?;
            return Ok(ContactRef { id, created: false });
        }
        match create(amo, person, phone.as_deref()).await {
            Ok(id) => return Ok(ContactRef { id, created: true }),
            // The create may have happened: look for it before creating again.
            Err(e @ CrmError::InDoubt(_)) => {
                tracing::warn!("contact create in doubt, looking it up: {e}");
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| CrmError::Protocol("contact create did not settle".into())))
}

async fn find(
    amo: &AmoCrm,
    person: &Person,
    phone: Option<&str>,
    dedup: &[DedupKey],
) -> Result<Option<Value>, CrmError> {
    let fields = &amo.config.identity_fields;
    for key in dedup {
        let found = match key {
            DedupKey::TelegramUserId => match (fields.telegram_user_id, person.telegram_user_id) {
                (Some(f), Some(id)) => by_field(amo, f, &id.to_string()).await?,
                _ => None,
            },
            DedupKey::TelegramUsername => match (fields.telegram_username, person.telegram_username.as_deref()) {
                (Some(f), Some(u)) if !u.is_empty() => by_field(amo, f, &u.to_lowercase()).await?,
                _ => None,
            },
            DedupKey::WhatsappId => match (fields.whatsapp_id, person.whatsapp_id.as_deref()) {
                (Some(f), Some(w)) if !w.is_empty() => by_field(amo, f, w).await?,
                _ => None,
            },
            DedupKey::Phone => match phone {
                Some(p) => by_phone(amo, p).await?,
                None => None,
            },
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// Contacts matching `query` (amoCRM searches every filled field as text).
async fn search(amo: &AmoCrm, query: &str) -> Result<Vec<Value>, CrmError> {
    let found = amo.rest.get("/api/v4/contacts", &[("query", query.to_string()), ("limit", "50".into())]).await?;
    Ok(found.map(|v| embedded(&v, "contacts").to_vec()).unwrap_or_default())
}

async fn by_field(amo: &AmoCrm, field_id: i64, value: &str) -> Result<Option<Value>, CrmError> {
    // As a manager types it: spaces around, a username with its `@`.
    let bare = |v: &str| v.trim().trim_start_matches('@').to_string();
    let matches = |c: &Value| {
        field_values(c, |f| f.get("field_id").and_then(Value::as_i64) == Some(field_id))
            .iter()
            .any(|v| bare(v).eq_ignore_ascii_case(&bare(value)))
    };
    Ok(oldest(search(amo, value).await?.into_iter().filter(matches)))
}

async fn by_phone(amo: &AmoCrm, e164: &str) -> Result<Option<Value>, CrmError> {
    // The search matches stored text, and people store phones in many spellings:
    // search by the last ten digits, then compare normalised numbers.
    let matches =
        |c: &Value| phones(c).iter().any(|p| phone::normalize_in(p, &amo.config.phone_region).as_deref() == Some(e164));
    for key in phone::search_keys(e164) {
        if let Some(found) = oldest(search(amo, &key).await?.into_iter().filter(matches)) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// When duplicates already exist, the oldest contact is the canonical one.
fn oldest(found: impl Iterator<Item = Value>) -> Option<Value> {
    found
        .filter(|c| !c.get("is_deleted").and_then(Value::as_bool).unwrap_or(false))
        .min_by_key(|c| c.get("id").and_then(Value::as_i64).unwrap_or(i64::MAX))
}

fn phones(contact: &Value) -> Vec<String> {
    field_values(contact, |f| f.get("field_code").and_then(Value::as_str) == Some(PHONE))
}

fn field_values(contact: &Value, which: impl Fn(&Value) -> bool) -> Vec<String> {
    contact
        .get("custom_fields_values")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|f| which(f))
        .flat_map(|f| f.get("values").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|v| match v.get("value") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        })
        .collect()
}

fn id_of(contact: &Value) -> Result<i64, CrmError> {
    contact.get("id").and_then(Value::as_i64).ok_or_else(|| CrmError::Protocol("contact without id".into()))
}

/// Custom field values for the identities we know, for a create or an update.
fn identity_values(amo: &AmoCrm, person: &Person) -> Vec<Value> {
    let fields = &amo.config.identity_fields;
    let mut values = Vec::new();
    let mut push = |field: Option<i64>, value: Option<String>| {
        if let (Some(field_id), Some(value)) = (field, value) {
            values.push(json!({ "field_id": field_id, "values": [{ "value": value }] }));
        }
    };
    push(fields.telegram_user_id, person.telegram_user_id.map(|i| i.to_string()));
    push(
        fields.telegram_username,
        person.telegram_username.as_ref().filter(|u| !u.is_empty()).map(|u| u.to_lowercase()),
    );
    push(fields.whatsapp_id, person.whatsapp_id.clone().filter(|w| !w.is_empty()));
    values
}

async fn create(amo: &AmoCrm, person: &Person, phone: Option<&str>) -> Result<i64, CrmError> {
    let mut values = identity_values(amo, person);
    if let Some(p) = phone {
        values.push(json!({ "field_code": PHONE, "values": [{ "value": p, "enum_code": "MOB" }] }));
    }
    let name =
        if person.name.trim().is_empty() { phone.unwrap_or("Customer").to_string() } else { person.name.clone() };
    let body = json!([{ "name": name, "custom_fields_values": values, "request_id": "0" }]);
    let created = amo.rest.post("/api/v4/contacts", &body).await?;
    Ok(created_ids(&created, "contacts", 1)?[0])
}

/// Adds identities the found contact lacks (e.g. found by phone from WhatsApp, now
/// also writing from Telegram), so the next lookup finds it directly.
async fn complete_identities(
    amo: &AmoCrm,
    contact: &Value,
    person: &Person,
    phone: Option<&str>,
) -> Result<(), CrmError> {
    let id = id_of(contact)?;
    let mut missing: Vec<Value> = identity_values(amo, person)
        .into_iter()
        .filter(|v| {
            let field = v.get("field_id").and_then(Value::as_i64);
            field_values(contact, |f| f.get("field_id").and_then(Value::as_i64) == field).is_empty()
        })
        .collect();
    if let Some(p) = phone {
        let existing = phones(contact);
        if !existing.iter().any(|e| phone::normalize_in(e, &amo.config.phone_region).as_deref() == Some(p)) {
            // PATCH replaces a multitext field: send the existing numbers (with their
            // types) too.
            let mut values: Vec<Value> = contact
                .get("custom_fields_values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|f| f.get("field_code").and_then(Value::as_str) == Some(PHONE))
                .flat_map(|f| f.get("values").and_then(Value::as_array).cloned().unwrap_or_default())
                .map(|v| match v.get("enum_id") {
                    Some(e) => json!({ "value": v.get("value"), "enum_id": e }),
                    None => json!({ "value": v.get("value") }),
                })
                .collect();
            values.push(json!({ "value": p, "enum_code": "MOB" }));
            missing.push(json!({ "field_code": PHONE, "values": values }));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    amo.rest.patch(&format!("/api/v4/contacts/{id}"), &json!({ "custom_fields_values": missing })).await?;
    Ok(())
}
