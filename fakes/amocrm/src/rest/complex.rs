//! `POST /api/v4/leads/complex`: leads with embedded contact/company, with its limits
//! and optional duplicate control.

use std::collections::BTreeSet;

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::query::{opt_str, parse_batch};
use super::{batch, fields, leads};
use crate::account::TOKEN_USER_ID;
use crate::respond::{self, FieldError, Reply};
use crate::rest::contacts::insert_contact;
use crate::state::{Shared, State};

const MAX_LEADS: usize = 50;
const MAX_CF_VALUES: usize = 40;

enum ContactPlan {
    None,
    Existing(i64),
    New { name: String, cfv: Value },
}

fn cf_count(entity: &Value) -> usize {
    entity.get("custom_fields_values").and_then(Value::as_array).map_or(0, Vec::len)
}

fn digits(s: &str) -> String {
    let d: String = s.chars().filter(char::is_ascii_digit).collect();
    d.chars().rev().take(10).collect::<Vec<_>>().into_iter().rev().collect()
}

/// Finds a pre-existing contact sharing a phone or an email with `cfv`.
fn duplicate(state: &State, existing: &BTreeSet<i64>, cfv: &Value) -> Option<i64> {
    let phones: Vec<String> =
        fields::values_of(cfv, "PHONE").into_iter().map(digits).filter(|d| !d.is_empty()).collect();
    let emails: Vec<String> = fields::values_of(cfv, "EMAIL").into_iter().map(str::to_lowercase).collect();
    state
        .contacts
        .values()
        .filter(|c| existing.contains(&c.id) && !c.is_deleted)
        .find(|c| {
            fields::values_of(&c.custom_fields_values, "PHONE").into_iter().any(|p| phones.contains(&digits(p)))
                || fields::values_of(&c.custom_fields_values, "EMAIL")
                    .into_iter()
                    .any(|e| emails.contains(&e.to_lowercase()))
        })
        .map(|c| c.id)
}

fn plan_contact(
    shared: &Shared,
    state: &State,
    lead: &Map<String, Value>,
    errors: &mut Vec<FieldError>,
) -> ContactPlan {
    let Some(list) = lead.get("_embedded").and_then(|e| e.get("contacts")).and_then(Value::as_array) else {
        return ContactPlan::None;
    };
    if list.len() > 1 {
        errors.push(FieldError::new("TooMany", "_embedded.contacts", "At most 1 contact per lead"));
        return ContactPlan::None;
    }
    let Some(c) = list.first().and_then(Value::as_object) else {
        return ContactPlan::None;
    };
    if cf_count(&Value::Object(c.clone())) > MAX_CF_VALUES {
        errors.push(FieldError::new(
            "TooMany",
            "_embedded.contacts.0.custom_fields_values",
            "At most 40 custom field values per entity",
        ));
    }
    if let Some(id) = c.get("id").and_then(Value::as_i64) {
        if !state.contacts.contains_key(&id) {
            errors.push(FieldError::new("NotFound", "_embedded.contacts.0.id", format!("Contact {id} not found")));
        }
        return ContactPlan::Existing(id);
    }
    let mut cf_errors = Vec::new();
    let cfv = c.get("custom_fields_values").cloned().unwrap_or(Value::Null);
    let updates = fields::parse(&shared.contact_fields(), &cfv, &mut cf_errors);
    errors.extend(cf_errors.into_iter().map(|mut e| {
        e.path = format!("_embedded.contacts.0.{}", e.path);
        e
    }));
    let first = opt_str(c, "first_name", errors).unwrap_or_default();
    let last = opt_str(c, "last_name", errors).unwrap_or_default();
    let name = opt_str(c, "name", errors).unwrap_or_else(|| format!("{first} {last}").trim().to_string());
    ContactPlan::New { name, cfv: fields::apply(&Value::Null, updates) }
}

/// `POST /api/v4/leads/complex`.
pub(crate) fn create(shared: &Shared, body: &[u8]) -> Reply {
    let items = parse_batch(body)?;
    if items.len() > MAX_LEADS {
        return Err(respond::problem(StatusCode::BAD_REQUEST, "Limit 50 leads per request"));
    }
    let mut state = shared.state();
    let plans = batch::validate(&items, |item, errors| {
        let contact = plan_contact(shared, &state, item, errors);
        let companies =
            item.get("_embedded").and_then(|e| e.get("companies")).and_then(Value::as_array).map_or(0, Vec::len);
        if companies > 1 {
            errors.push(FieldError::new("TooMany", "_embedded.companies", "At most 1 company per lead"));
        }
        if cf_count(&Value::Object(item.clone())) > MAX_CF_VALUES {
            errors.push(FieldError::new(
                "TooMany",
                "custom_fields_values",
                "At most 40 custom field values per entity",
            ));
        }
        let mut lead_item = item.clone();
        if let Some(Value::Object(emb)) = lead_item.get_mut("_embedded") {
            emb.remove("contacts");
            emb.remove("companies");
            emb.remove("metadata");
            emb.remove("source");
        }
        let input = leads::parse_input(shared, &state, &lead_item, errors);
        (input, contact, companies == 1)
    })?;
    let existing: BTreeSet<i64> = state.contacts.keys().copied().collect();
    let mut out = Vec::new();
    for (rid, (input, contact, has_company)) in plans {
        let mut merged = false;
        let contact_id = match contact {
            ContactPlan::None => None,
            ContactPlan::Existing(id) => Some(id),
            ContactPlan::New { name, cfv } => {
                let dup = shared.config.duplicate_control.then(|| duplicate(&state, &existing, &cfv)).flatten();
                merged = dup.is_some();
                Some(dup.unwrap_or_else(|| insert_contact(shared, &mut state, &name, TOKEN_USER_ID, cfv)))
            }
        };
        let lead_id = leads::insert(shared, &mut state, input);
        if let Some(c) = contact_id {
            state.link(lead_id, c);
        }
        let company_id = has_company.then(|| state.next_id());
        out.push(json!({
            "id": lead_id,
            "contact_id": contact_id,
            "company_id": company_id,
            "request_id": [rid],
            "merged": merged,
        }));
    }
    Ok(respond::hal(StatusCode::OK, &Value::Array(out)))
}
