//! Manager replies written as lead notes starting with the reply prefix: found by
//! polling notes (one poller per binding) or named by a webhook and re-read here.

use super::AmoCrm;
use super::notes::MAX_BATCH;
use super::transport::{embedded, has_next};
use crate::CrmError;
use crate::model::{Reply, ReplyCursor};
use serde_json::Value;

/// At most this many pages per poll, so one poll never monopolises the budget.
const MAX_PAGES: u32 = 4;

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
        let Some(list) = amo.rest.get("/api/v4/leads/notes", &query).await? else {
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
                replies.push(reply);
            }
        }
        if !has_next(&list) {
            break;
        }
    }
    Ok((replies, next))
}

pub(super) async fn read(amo: &AmoCrm, lead_id: i64, note_id: i64) -> Result<Option<Reply>, CrmError> {
    let note = amo.rest.get(&format!("/api/v4/leads/{lead_id}/notes/{note_id}"), &[]).await?;
    Ok(note.as_ref().and_then(|n| as_reply(n, &amo.config.reply_prefix)))
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
    })
}

#[cfg(test)]
mod tests {
    use super::as_reply;
    use serde_json::json;

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
