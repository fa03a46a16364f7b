//! Tasks: unanswered-message escalation.

use super::AmoCrm;
use super::transport::{created_ids, embedded};
use crate::CrmError;
use crate::model::{TaskRef, TaskRequest};
use serde_json::{Value, json};

pub(super) async fn add(amo: &AmoCrm, task: &TaskRequest) -> Result<TaskRef, CrmError> {
    let started = amo.clock.now_secs();
    let mut item = json!({
        "text": task.text,
        "complete_till": task.complete_till,
        "entity_id": task.lead_id,
        "entity_type": amo.config.records.plural(),
        "task_type_id": 1,
        "request_id": "0",
    });
    if let Some(user) = task.responsible_user_id {
        item["responsible_user_id"] = json!(user);
    }
    match amo.rest.post("/api/v4/tasks", &json!([item])).await {
        Ok(created) => Ok(TaskRef { id: created_ids(&created, "tasks", 1)?[0] }),
        Err(e @ CrmError::InDoubt(_)) => {
            // Find the open task this attempt may have created before anyone retries.
            let query = [
                ("filter[entity_type]", amo.config.records.plural().to_string()),
                ("filter[entity_id][]", task.lead_id.to_string()),
                ("filter[is_completed]", "0".to_string()),
            ];
            let found = amo.rest.get("/api/v4/tasks", &query).await?;
            let existing = found.as_ref().map(|v| embedded(v, "tasks")).unwrap_or_default().iter().find(|t| {
                t.get("text").and_then(Value::as_str) == Some(task.text.as_str())
                    && t.get("complete_till").and_then(Value::as_i64) == Some(task.complete_till)
                    && t.get("created_at").and_then(Value::as_i64).unwrap_or(0) >= started - 5
            });
            match existing.and_then(|t| t.get("id").and_then(Value::as_i64)) {
                Some(id) => Ok(TaskRef { id }),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

pub(super) async fn complete(amo: &AmoCrm, task_id: i64, result: &str) -> Result<(), CrmError> {
    // Completing is idempotent: a retry after an in-doubt PATCH is harmless.
    let body = json!({ "is_completed": true, "result": { "text": result } });
    amo.rest.patch(&format!("/api/v4/tasks/{task_id}"), &body).await?;
    Ok(())
}
