//! Manager replies written as lead notes starting with the reply prefix: found by
//! polling notes (one poller per binding) or named by a webhook and re-read here.

use super::AmoCrm;
use super::notes::MAX_BATCH;
use super::transport::{embedded, has_next};
use crate::CrmError;
use crate::model::{Reply, ReplyCursor, ReplyFile, StoredFile};
use serde_json::Value;

/// At most this many pages per poll, so one poll never monopolises the budget.
const MAX_PAGES: u32 = 4;

/// How long before a reply note its author's attachments go with it.
pub const REPLY_FILES_WINDOW_SECS: i64 = 300;

pub(super) async fn poll(amo: &AmoCrm, cursor: &ReplyCursor) -> Result<(Vec<Reply>, ReplyCursor), CrmError> {
    let mut replies = Vec::new();
    let mut next = cursor.clone();
    for page in 1..=MAX_PAGES {
        let query = [
            ("filter[note_type]", "common".to_string()),
            ("filter[updated_at][from]", cursor.updated_since.to_string()),
            ("order[updated_at]", "asc".to_string()),
            ("limit", MAX_BATCH.to_string()),
            ("page", page.to_string()),
        ];
        let Some(list) = amo.rest.get(&format!("/api/v4/{}/notes", amo.config.records.plural()), &query).await? else {
            break;
        };
        for note in embedded(&list, "notes") {
            let (Some(id), Some(updated)) =
                (note.get("id").and_then(Value::as_i64), note.get("updated_at").and_then(Value::as_i64))
            else {
                continue;
            };
            if updated < cursor.updated_since
                || (updated == cursor.updated_since && cursor.seen_at_cursor.contains(&id))
            {
                continue;
            }
            if updated > next.updated_since {
                next.updated_since = updated;
                next.seen_at_cursor.clear();
            }
            if updated == next.updated_since && !next.seen_at_cursor.contains(&id) {
                next.seen_at_cursor.push(id);
            }
            if let Some(reply) = as_reply(note, &amo.config.reply_prefix) {
                replies.push(with_files(amo, reply).await?);
            }
        }
        if !has_next(&list) {
            break;
        }
    }
    Ok((replies, next))
}

pub(super) async fn read(amo: &AmoCrm, lead_id: i64, note_id: i64) -> Result<Option<Reply>, CrmError> {
    let note = amo.rest.get(&format!("/api/v4/{}/{lead_id}/notes/{note_id}", amo.config.records.plural()), &[]).await?;
    match note.as_ref().and_then(|n| as_reply(n, &amo.config.reply_prefix)) {
        Some(reply) => Ok(Some(with_files(amo, reply).await?)),
        None => Ok(None),
    }
}

/// The files a reply carries. The rule: a manager attaches files to the lead and
/// then writes the reply note; their attachments of the five minutes before it go
/// with it, back to their previous reply note (whose files they were). Anyone
/// else's attachments, and attachments no reply of their author follows, never
/// leave the CRM.
async fn with_files(amo: &AmoCrm, mut reply: Reply) -> Result<Reply, CrmError> {
    let Some(reply_id) = reply.source_id.strip_prefix("note:").and_then(|id| id.parse::<i64>().ok()) else {
        return Ok(reply);
    };
    let query = [
        ("filter[note_type][0]", "common".to_string()),
        ("filter[note_type][1]", "attachment".to_string()),
        ("filter[updated_at][from]", (reply.created_at - REPLY_FILES_WINDOW_SECS).to_string()),
        ("limit", MAX_BATCH.to_string()),
    ];
    let Some(list) =
        amo.rest.get(&format!("/api/v4/{}/{}/notes", amo.config.records.plural(), reply.lead_id), &query).await?
    else {
        return Ok(reply);
    };
    reply.files = files_for(embedded(&list, "notes"), reply_id, &reply, &amo.config.reply_prefix);
    Ok(reply)
}

/// Of a lead's recent notes, the attachments that go with reply note `reply_id`.
fn files_for(notes: &[Value], reply_id: i64, reply: &Reply, prefix: &str) -> Vec<ReplyFile> {
    let mut notes: Vec<&Value> = notes
        .iter()
        .filter(|n| n.get("id").and_then(Value::as_i64).is_some_and(|id| id < reply_id))
        .filter(|n| n.get("created_by").and_then(Value::as_i64) == Some(reply.author_id))
        .collect();
    notes.sort_by_key(|n| std::cmp::Reverse(n.get("id").and_then(Value::as_i64)));
    let mut files = Vec::new();
    for n in notes {
        if as_reply(n, prefix).is_some() {
            break;
        }
        let created = n.get("created_at").and_then(Value::as_i64).unwrap_or(0);
        let params = n.get("params");
        let text = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str).map(str::to_string);
        if n.get("note_type").and_then(Value::as_str) != Some("attachment")
            || created < reply.created_at - REPLY_FILES_WINDOW_SECS
        {
            continue;
        }
        let (Some(uuid), Some(id)) = (text("file_uuid"), n.get("id").and_then(Value::as_i64)) else { continue };
        let file_name = text("original_name").or_else(|| text("file_name")).unwrap_or_else(|| uuid.clone());
        files.push(ReplyFile {
            file: StoredFile { uuid, version_uuid: text("version_uuid").unwrap_or_default(), file_name },
            source_id: format!("note:{id}"),
        });
    }
    files.reverse();
    files
}

/// A common note whose text starts with `prefix` is a reply; the prefix and the
/// whitespace after it are not sent.
fn as_reply(note: &Value, prefix: &str) -> Option<Reply> {
    if note.get("note_type").and_then(Value::as_str) != Some("common") {
        return None;
    }
    let text = note.get("params")?.get("text")?.as_str()?;
    let body = text.trim_start().strip_prefix(prefix)?.trim();
    if body.is_empty() {
        return None;
    }
    Some(Reply {
        source_id: format!("note:{}", note.get("id")?.as_i64()?),
        lead_id: note.get("entity_id")?.as_i64()?,
        text: body.to_string(),
        author_id: note.get("created_by").and_then(Value::as_i64).unwrap_or(0),
        created_at: note.get("created_at").and_then(Value::as_i64).unwrap_or(0),
        files: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::{as_reply, files_for};
    use serde_json::json;

    #[test]
    fn a_reply_carries_its_authors_attachments_back_to_their_previous_reply() {
        let note = |id: i64, kind: &str, by: i64, at: i64, text: &str| {
            json!({ "id": id, "entity_id": 9, "note_type": kind, "created_by": by, "created_at": at,
                    "params": { "text": text, "file_uuid": format!("f{id}"), "file_name": format!("file{id}.pdf") } })
        };
        let notes = [
            note(1, "attachment", 3, 1_000, ""), // before the author's previous reply: its file
            note(2, "common", 3, 1_010, ">> first"), // the previous reply
            note(3, "attachment", 3, 1_020, ""), // goes with the reply
            note(4, "attachment", 7, 1_030, ""), // another manager's: stays
            note(5, "common", 3, 1_040, "internal remark"),
            note(6, "attachment", 3, 1_050, ""), // goes with the reply
            note(8, "attachment", 3, 1_070, ""), // after the reply: not its file
        ];
        let reply = as_reply(&note(7, "common", 3, 1_060, ">> here you are"), ">>").unwrap();
        let files = files_for(&notes, 7, &reply, ">>");
        let names: Vec<(&str, &str)> = files.iter().map(|f| (f.file.uuid.as_str(), f.source_id.as_str())).collect();
        assert_eq!(names, [("f3", "note:3"), ("f6", "note:6")]);
        // Attachments older than the window stay in the CRM.
        let late = as_reply(&note(7, "common", 3, 1_050 + 301, ">> late"), ">>").unwrap();
        let files = files_for(&notes[2..6], 7, &late, ">>");
        assert!(files.is_empty(), "{files:?}");
    }

    #[test]
    fn only_prefixed_common_notes_are_replies() {
        let note = |t: &str, kind: &str| json!({ "id": 5, "entity_id": 9, "note_type": kind, "created_by": 3, "created_at": 10, "params": { "text": t } });
        let reply = as_reply(&note(">> Hello, we open at 9", "common"), ">>").expect("reply");
        assert_eq!(
            (reply.text.as_str(), reply.lead_id, reply.source_id.as_str()),
            ("Hello, we open at 9", 9, "note:5")
        );
        assert!(as_reply(&note("internal remark", "common"), ">>").is_none());
        assert!(as_reply(&note(">>   ", "common"), ">>").is_none());
        assert!(as_reply(&note(">> hi", "service_message"), ">>").is_none());
    }
}
