//! The `/_fake/...` control API (no auth, not rate limited, not logged) and the
//! operations it shares with [`crate::FakeAmo`]'s methods.

use std::time::Duration;

use http::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::limits::{Fault, FaultKind};
use crate::respond::{self, Resp};
use crate::rest::{contacts, fields, leads, notes};
use crate::state::Shared;
use crate::{chats, hooks, oauth};

/// The control API's path prefix.
pub(crate) const PREFIX: &str = "/_fake/";

/// A manager adds a common note on a lead; `note_lead` webhooks are queued.
pub(crate) fn add_manager_note(shared: &Shared, lead_id: i64, user_id: i64, text: &str) -> i64 {
    let mut state = shared.state();
    if !state.leads.contains_key(&lead_id) {
        tracing::warn!(lead_id, "manager note on a lead that does not exist");
    }
    let id = notes::insert_note(shared, &mut state, "leads", lead_id, "common", json!({"text": text}), user_id);
    hooks::queue_note_lead(shared, &mut state, id, lead_id, text, user_id);
    id
}

/// A manager writes a note on a contact (no webhook: this fake sends note
/// webhooks for leads only; reply polling finds it).
pub(crate) fn add_manager_contact_note(shared: &Shared, contact_id: i64, user_id: i64, text: &str) -> i64 {
    let mut state = shared.state();
    notes::insert_note(shared, &mut state, "contacts", contact_id, "common", json!({"text": text}), user_id)
}

/// A manager attaches a file to a lead: the file is put in the file service,
/// linked to the lead, and an attachment note by the manager names it. Returns the
/// note's ID and the file's UUID.
pub(crate) fn add_manager_attachment(
    shared: &Shared,
    lead_id: i64,
    user_id: i64,
    file_name: &str,
    mime_type: &str,
    bytes: &[u8],
) -> (i64, String) {
    let file = crate::model::DriveFile {
        uuid: uuid::Uuid::new_v4().to_string(),
        version_uuid: uuid::Uuid::new_v4().to_string(),
        name: file_name.to_string(),
        mime_type: mime_type.to_string(),
        size: bytes.len() as u64,
        bytes: bytes.to_vec(),
        created_by: user_id,
        created_at: shared.now(),
        leads: vec![lead_id],
        contacts: Vec::new(),
    };
    let params = json!({
        "file_uuid": file.uuid,
        "version_uuid": file.version_uuid,
        "file_name": file_name,
        "original_name": file_name,
        "text": file_name,
        "is_drive_attachment": true,
    });
    let mut state = shared.state();
    let id = notes::insert_note(shared, &mut state, "leads", lead_id, "attachment", params, user_id);
    let uuid = file.uuid.clone();
    state.files.insert(uuid.clone(), file);
    (id, uuid)
}

/// A manager changes a note's text (its `updated_at` moves to now); false when
/// there is no such note.
pub(crate) fn edit_note(shared: &Shared, note_id: i64, text: &str) -> bool {
    let now = shared.now();
    let mut state = shared.state();
    let Some(n) = state.notes.get_mut(&note_id) else { return false };
    n.params["text"] = json!(text);
    n.updated_at = now;
    true
}

/// Moves a lead to `status_id`, as a manager would.
pub(crate) fn set_lead_status(shared: &Shared, lead_id: i64, status_id: i64) {
    let now = shared.now();
    leads::set_status(&mut shared.state(), lead_id, status_id, now);
}

/// Seeds a contact; `custom_fields_values` is in request form and stored verbatim.
pub(crate) fn add_contact(shared: &Shared, name: &str, custom_fields_values: &Value) -> i64 {
    let mut errors = Vec::new();
    let updates = fields::parse(&shared.contact_fields(), custom_fields_values, &mut errors);
    for e in &errors {
        tracing::warn!(path = %e.path, detail = %e.detail, "ignored seeded custom field value");
    }
    let cfv = fields::apply(&Value::Null, updates);
    let mut state = shared.state();
    contacts::insert_contact(shared, &mut state, name, crate::account::TOKEN_USER_ID, cfv)
}

/// A contact with `phone` and an Unsorted lead of another channel's chat.
pub(crate) fn add_incoming_lead(shared: &Shared, name: &str, phone: &str) -> (i64, i64) {
    let cfv = serde_json::json!([{"field_code": "PHONE", "values": [{"value": phone, "enum_code": "MOB"}]}]);
    let contact_id = add_contact(shared, name, &cfv);
    let mut state = shared.state();
    let lead_id = crate::chats::incoming_lead(shared, &mut state, name, contact_id, &format!("other-channel:{phone}"));
    (contact_id, lead_id)
}

/// A fault as JSON: `{"method":"POST","path_prefix":"/api/v4/leads","times":1}` plus one of
/// `"status":503`, `"delay_ms":1500` or `"drop_response":true`.
#[derive(Debug, Deserialize)]
struct FaultSpec {
    method: Option<String>,
    #[serde(default)]
    path_prefix: String,
    status: Option<u16>,
    delay_ms: Option<u64>,
    #[serde(default)]
    drop_response: bool,
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

impl FaultSpec {
    fn into_fault(self) -> Result<Fault, String> {
        let kind = match (self.status, self.delay_ms, self.drop_response) {
            (Some(s), None, false) => FaultKind::Status(s),
            (None, Some(ms), false) => FaultKind::Delay(Duration::from_millis(ms)),
            (None, None, true) => FaultKind::DropResponse,
            _ => return Err("give exactly one of status, delay_ms, drop_response".into()),
        };
        let method = self
            .method
            .map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()))
            .transpose()
            .map_err(|e| e.to_string())?;
        Ok(Fault { method, path_prefix: self.path_prefix, kind, times: self.times })
    }
}

#[derive(Debug, Deserialize)]
struct ByUser {
    user_id: i64,
    text: String,
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Resp> {
    serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))
}

fn bad(detail: &str) -> Resp {
    respond::json(StatusCode::BAD_REQUEST, &json!({"error": detail}))
}

fn ok(v: Value) -> Resp {
    respond::json(StatusCode::OK, &v)
}

/// Handles `/_fake/...`.
pub(crate) async fn handle(shared: &Shared, method: &Method, path: &str, body: &[u8]) -> Resp {
    let rest = path.strip_prefix(PREFIX).unwrap_or("").trim_end_matches('/');
    let parts: Vec<&str> = rest.split('/').collect();
    let result: Result<Resp, Resp> = async {
        Ok(match (method.as_str(), parts.as_slice()) {
            ("GET", ["snapshot"]) => {
                let snap = shared.state().snapshot();
                ok(serde_json::to_value(snap).map_err(|e| bad(&e.to_string()))?)
            }
            ("POST", ["clock", "advance"]) => {
                #[derive(Deserialize)]
                struct Advance {
                    secs: u64,
                }
                let a: Advance = parse(body)?;
                shared.clock.advance(Duration::from_secs(a.secs));
                ok(json!({"now_ms": shared.clock.now_ms()}))
            }
            ("POST", ["faults"]) => {
                let spec: FaultSpec = parse(body)?;
                shared.faults().push(spec.into_fault().map_err(|e| bad(&e))?);
                respond::empty(StatusCode::NO_CONTENT)
            }
            ("POST", ["oauth", "code"]) => {
                let code = oauth::issue_code(shared, &mut shared.state());
                ok(json!({"code": code}))
            }
            ("POST", ["oauth", "tokens"]) => {
                let pair = oauth::issue_pair(shared, &mut shared.state());
                ok(serde_json::to_value(pair).map_err(|e| bad(&e.to_string()))?)
            }
            ("POST", ["leads", id, "manager-note"]) => {
                let lead_id: i64 = id.parse().map_err(|_| bad("lead id must be an integer"))?;
                let b: ByUser = parse(body)?;
                if !shared.state().leads.contains_key(&lead_id) {
                    return Err(respond::json(StatusCode::NOT_FOUND, &json!({"error": "unknown lead"})));
                }
                ok(json!({"id": add_manager_note(shared, lead_id, b.user_id, &b.text)}))
            }
            ("POST", ["leads", id, "status"]) => {
                #[derive(Deserialize)]
                struct S {
                    status_id: i64,
                }
                let lead_id: i64 = id.parse().map_err(|_| bad("lead id must be an integer"))?;
                let s: S = parse(body)?;
                set_lead_status(shared, lead_id, s.status_id);
                respond::empty(StatusCode::NO_CONTENT)
            }
            ("POST", ["contacts"]) => {
                #[derive(Deserialize)]
                struct C {
                    name: String,
                    #[serde(default)]
                    custom_fields_values: Value,
                }
                let c: C = parse(body)?;
                ok(json!({"id": add_contact(shared, &c.name, &c.custom_fields_values)}))
            }
            ("POST", ["chats", conversation, "manager-reply"]) => {
                let b: ByUser = parse(body)?;
                let id = chats::manager_reply(shared, conversation, b.user_id, &b.text)
                    .await
                    .map_err(|e| bad(&format!("{e:#}")))?;
                ok(json!({"id": id}))
            }
            ("POST", ["reset-limits"]) => {
                shared.limits().reset();
                respond::empty(StatusCode::NO_CONTENT)
            }
            _ => respond::json(StatusCode::NOT_FOUND, &json!({"error": "unknown control endpoint"})),
        })
    }
    .await;
    result.unwrap_or_else(|e| e)
}
