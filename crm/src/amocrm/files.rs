//! Files: amoCRM keeps them on its file service, whose address the account names
//! (`GET /api/v4/account?with=drive_url`). A file goes up through an upload session
//! (`POST {drive}/v1.0/sessions`) in parts of the session's `max_part_size`, each
//! posted to the URL the previous answer gave; the last answer is the file. Files
//! are linked to a lead over REST (`PUT /api/v4/leads/{id}/files`), and a manager's
//! attachment is read back through the file's download link.

use super::AmoCrm;
use super::transport::Payload;
use crate::CrmError;
use crate::model::{FileUpload, StoredFile};
use serde_json::{Value, json};

/// The file service's address.
async fn drive_url(amo: &AmoCrm) -> Result<&str, CrmError> {
    let url = amo
        .drive_url
        .get_or_try_init(|| async {
            let account = amo.rest.get("/api/v4/account", &[("with", "drive_url".into())]).await?;
            account
                .as_ref()
                .and_then(|a| a.get("drive_url"))
                .and_then(Value::as_str)
                .map(|u| u.trim_end_matches('/').to_string())
                .ok_or_else(|| CrmError::Protocol("the account names no drive_url (file service)".into()))
        })
        .await?;
    Ok(url.as_str())
}

fn field<'a>(v: &'a Value, name: &str, what: &str) -> Result<&'a str, CrmError> {
    v.get(name).and_then(Value::as_str).ok_or_else(|| CrmError::Protocol(format!("{what}: no {name}")))
}

pub(super) async fn upload(amo: &AmoCrm, file: &FileUpload) -> Result<StoredFile, CrmError> {
    if file.bytes.is_empty() {
        return Err(CrmError::Rejected { status: 0, detail: format!("{}: an empty file", file.file_name) });
    }
    let drive = drive_url(amo).await?;
    let session = amo
        .rest
        .post_to(
            &format!("{drive}/v1.0/sessions"),
            Payload::Json(&json!({
                "file_name": file.file_name,
                "file_size": file.bytes.len(),
                "content_type": file.mime_type,
            })),
        )
        .await?;
    let max_file = session.get("max_file_size").and_then(Value::as_u64).unwrap_or(u64::MAX);
    if file.bytes.len() as u64 > max_file {
        return Err(CrmError::Rejected {
            status: 0,
            detail: format!("{} is over the file service's limit of {max_file} bytes", file.file_name),
        });
    }
    let part = session.get("max_part_size").and_then(Value::as_u64).filter(|n| *n > 0).unwrap_or(524_288) as usize;
    let mut url = field(&session, "upload_url", "upload session")?.to_string();
    let mut chunks = file.bytes.chunks(part).peekable();
    while let Some(chunk) = chunks.next() {
        let answer = amo.rest.post_to(&url, Payload::Bytes(chunk)).await?;
        if chunks.peek().is_some() {
            url = field(&answer, "next_url", "upload part")?.to_string();
            continue;
        }
        return Ok(StoredFile {
            uuid: field(&answer, "uuid", "uploaded file")?.to_string(),
            version_uuid: field(&answer, "version_uuid", "uploaded file")?.to_string(),
            file_name: file.file_name.clone(),
        });
    }
    Err(CrmError::Protocol("upload ended without a file".into()))
}

pub(super) async fn link(amo: &AmoCrm, lead_id: i64, files: &[StoredFile]) -> Result<(), CrmError> {
    if files.is_empty() {
        return Ok(());
    }
    let body: Vec<Value> = files.iter().map(|f| json!({ "file_uuid": f.uuid })).collect();
    amo.rest.put(&format!("/api/v4/{}/{lead_id}/files", amo.config.records.plural()), &json!(body)).await?;
    Ok(())
}

pub(super) async fn download(amo: &AmoCrm, file: &StoredFile, max_bytes: u64) -> Result<(String, Vec<u8>), CrmError> {
    let drive = drive_url(amo).await?;
    let Some(info) = amo.rest.get_from(&format!("{drive}/v1.0/files/{}", file.uuid)).await? else {
        return Err(CrmError::Rejected { status: 404, detail: format!("file {} is gone", file.uuid) });
    };
    if info.get("is_trashed").and_then(Value::as_bool) == Some(true) {
        return Err(CrmError::Rejected { status: 404, detail: format!("file {} was deleted", file.file_name) });
    }
    let size = info.get("size").and_then(Value::as_u64).unwrap_or(0);
    if size > max_bytes {
        return Err(CrmError::Rejected {
            status: 413,
            detail: format!("{} ({size} bytes) is over the media limit of {max_bytes} bytes", file.file_name),
        });
    }
    let mime = info
        .get("metadata")
        .and_then(|m| m.get("mime_type"))
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or("application/octet-stream")
        .to_string();
    let href = info
        .get("_links")
        .and_then(|l| l.get("download"))
        .and_then(|d| d.get("href"))
        .and_then(Value::as_str)
        .ok_or_else(|| CrmError::Protocol(format!("file {}: no download link", file.uuid)))?;
    Ok((mime, amo.rest.download(href, max_bytes).await?))
}
