//! amoCRM's file service ("drive"), on its own path of this server as on its own
//! host in amoCRM (`GET /api/v4/account?with=drive_url` names it): upload sessions
//! (`POST /v1.0/sessions`), parts posted to the URL each answer gives (every part
//! but the last exactly `max_part_size`, never past the announced size; a spent or
//! unknown part URL is 404), the file model with its UUID and version UUID, file
//! reads and downloads. Linking files to leads is REST (`rest/files.rs`).

use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};

use crate::model::DriveFile;
use crate::oauth;
use crate::respond::{self, Resp};
use crate::state::Shared;

/// Where the file service lives on this server.
pub(crate) const PREFIX: &str = "/drive";
/// The largest part amoCRM accepts.
pub(crate) const MAX_PART_SIZE: usize = 524_288;
/// The largest file amoCRM accepts.
pub(crate) const MAX_FILE_SIZE: u64 = 314_572_800;

/// An open upload session.
#[derive(Clone, Debug)]
pub(crate) struct Session {
    pub id: i64,
    pub file_name: String,
    pub file_size: u64,
    pub content_type: String,
    /// The token of the URL the next part goes to.
    pub next_token: String,
    pub received: Vec<u8>,
    pub created_by: i64,
}

fn error(status: StatusCode, detail: &str) -> Resp {
    respond::json(status, &json!({"title": status.canonical_reason(), "status": status.as_u16(), "detail": detail}))
}

/// Handles a request under [`PREFIX`].
pub(crate) fn handle(shared: &Shared, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Resp {
    if let Err(r) = oauth::authorize(shared, headers) {
        return r;
    }
    let rest = path.strip_prefix(PREFIX).unwrap_or(path);
    let parts: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match (method.as_str(), parts.as_slice()) {
        ("POST", ["v1.0", "sessions"]) => open_session(shared, body),
        ("POST", ["v1.0", "sessions", "upload", token]) => upload_part(shared, token, body),
        ("GET", ["v1.0", "files", uuid]) => match shared.state().files.get(*uuid) {
            Some(f) => respond::json(StatusCode::OK, &file_json(shared, f)),
            None => error(StatusCode::NOT_FOUND, "File not found"),
        },
        ("GET", ["download", uuid, version, _name]) => match shared.state().files.get(*uuid) {
            Some(f) if f.version_uuid == *version => respond::file(StatusCode::OK, &f.mime_type, f.bytes.clone()),
            _ => error(StatusCode::NOT_FOUND, "File not found"),
        },
        _ => error(StatusCode::NOT_FOUND, "Not found"),
    }
}

fn open_session(shared: &Shared, body: &[u8]) -> Resp {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let file_name = v.get("file_name").and_then(Value::as_str).unwrap_or_default().trim().to_string();
    let file_size = v.get("file_size").and_then(Value::as_u64).unwrap_or(0);
    if file_name.is_empty() {
        return error(StatusCode::BAD_REQUEST, "file_name is required");
    }
    if file_size == 0 {
        return error(StatusCode::BAD_REQUEST, "file_size is required and must be positive");
    }
    if file_size > MAX_FILE_SIZE {
        return error(StatusCode::BAD_REQUEST, &format!("file_size is over the limit of {MAX_FILE_SIZE} bytes"));
    }
    if v.get("file_uuid").is_some() {
        return error(StatusCode::BAD_REQUEST, "This fake uploads new files only, not new versions");
    }
    let content_type = v.get("content_type").and_then(Value::as_str).unwrap_or("application/octet-stream").to_string();
    let mut state = shared.state();
    let id = state.next_id();
    let token = uuid::Uuid::new_v4().to_string();
    state.upload_sessions.insert(
        id,
        Session {
            id,
            file_name,
            file_size,
            content_type,
            next_token: token.clone(),
            received: Vec::new(),
            created_by: crate::account::TOKEN_USER_ID,
        },
    );
    respond::json(
        StatusCode::OK,
        &json!({
            "session_id": id,
            "upload_url": shared.url(&format!("{PREFIX}/v1.0/sessions/upload/{token}")),
            "max_file_size": MAX_FILE_SIZE,
            "max_part_size": MAX_PART_SIZE,
        }),
    )
}

fn upload_part(shared: &Shared, token: &str, body: &[u8]) -> Resp {
    let mut state = shared.state();
    let Some(session) = state.upload_sessions.values_mut().find(|s| s.next_token == token) else {
        return error(StatusCode::NOT_FOUND, "Upload session not found");
    };
    let total = session.received.len() as u64 + body.len() as u64;
    if body.is_empty() || body.len() > MAX_PART_SIZE {
        return error(StatusCode::BAD_REQUEST, &format!("a part is 1 to {MAX_PART_SIZE} bytes"));
    }
    if total > session.file_size {
        return error(StatusCode::BAD_REQUEST, "more bytes than the session's file_size");
    }
    if total < session.file_size && body.len() != MAX_PART_SIZE {
        return error(StatusCode::BAD_REQUEST, &format!("every part but the last is {MAX_PART_SIZE} bytes"));
    }
    session.received.extend_from_slice(body);
    if total < session.file_size {
        session.next_token = uuid::Uuid::new_v4().to_string();
        let (id, next) = (session.id, session.next_token.clone());
        return respond::json(
            StatusCode::OK,
            &json!({"session_id": id, "next_url": shared.url(&format!("{PREFIX}/v1.0/sessions/upload/{next}"))}),
        );
    }
    let id = session.id;
    let Some(done) = state.upload_sessions.remove(&id) else {
        return error(StatusCode::NOT_FOUND, "Upload session not found");
    };
    let file = DriveFile {
        uuid: uuid::Uuid::new_v4().to_string(),
        version_uuid: uuid::Uuid::new_v4().to_string(),
        name: done.file_name,
        mime_type: done.content_type,
        size: done.file_size,
        bytes: done.received,
        created_by: done.created_by,
        created_at: shared.now(),
        leads: Vec::new(),
        contacts: Vec::new(),
    };
    let mut doc = file_json(shared, &file);
    doc["session_id"] = json!(id);
    state.files.insert(file.uuid.clone(), file);
    respond::json(StatusCode::OK, &doc)
}

/// The file kind amoCRM reports for a MIME type.
fn kind(mime: &str) -> &'static str {
    match mime.split('/').next().unwrap_or_default() {
        "image" => "image",
        "video" => "video",
        "audio" => "audio",
        _ if mime == "application/pdf" || mime.contains("document") || mime.starts_with("text/") => "document",
        _ => "file",
    }
}

/// A file as the file service shows it.
pub(crate) fn file_json(shared: &Shared, f: &DriveFile) -> Value {
    let extension = f.name.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    json!({
        "_links": {
            "download": {"href": download_url(shared, f)},
            "self": {"href": shared.url(&format!("{PREFIX}/v1.0/files/{}", f.uuid))},
        },
        "uuid": f.uuid,
        "version_uuid": f.version_uuid,
        "type": kind(&f.mime_type),
        "is_trashed": false,
        "name": f.name,
        "sanitized_name": f.name,
        "size": f.size,
        "source_id": null,
        "has_multiple_versions": false,
        "created_at": f.created_at,
        "created_by": {"type": "internal", "id": f.created_by},
        "updated_at": f.created_at,
        "updated_by": {"type": "internal", "id": f.created_by},
        "deleted_at": null,
        "deleted_by": null,
        "metadata": {"extension": extension, "mime_type": f.mime_type},
        "previews": null,
    })
}

/// Where a file's current version is downloaded (with the access token).
pub(crate) fn download_url(shared: &Shared, f: &DriveFile) -> String {
    shared.url(&format!("{PREFIX}/download/{}/{}/{}", f.uuid, f.version_uuid, f.name))
}
