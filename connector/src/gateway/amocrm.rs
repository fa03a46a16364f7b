//! amoCRM's hooks: REST webhooks (authenticated by the token in the URL) and
//! Chats API hooks (signed with the channel secret).

use super::{Gateway, ROUTE_BINDING_CRM, stored_in_time};
use crate::messenger::OutgoingMedia;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crmessenger_crm::clock::{Clock, SystemClock};

pub(super) async fn amocrm_rest(State(g): State<Gateway>, Path(token): Path<String>, body: Bytes) -> Response {
    let work = async {
        let Some(binding) = g.store.binding_of_token(&token).await? else {
            return Ok((StatusCode::NOT_FOUND, "unknown webhook URL\n").into_response());
        };
        let hook = match crmessenger_crm::amocrm::webhook::parse(&body) {
            Ok(h) => h,
            Err(e) => return Ok((StatusCode::BAD_REQUEST, format!("malformed webhook: {e}\n")).into_response()),
        };
        let Some(crm) = g.store.route(ROUTE_BINDING_CRM, &binding).await? else {
            return Ok((StatusCode::NOT_FOUND, "the binding has no connector yet\n").into_response());
        };
        let mut stored = 0;
        for (lead_id, note_id) in &hook.lead_notes {
            let Some((account, _chat)) = g.store.chat_of_lead(&crm, *lead_id).await? else {
                // A lead no connector knows (not ours): accepted, nothing to do.
                continue;
            };
            let payload = serde_json::json!({ "lead_id": lead_id, "note_id": note_id }).to_string();
            if g.store
                .put_event(&account, "amocrm-note", &format!("note:{note_id}"), &payload, SystemClock.now_ms())
                .await?
            {
                stored += 1;
            }
        }
        tracing::debug!(binding, notes = hook.lead_notes.len(), stored, "amoCRM webhook accepted");
        Ok::<_, crate::store::StoreError>((StatusCode::OK, "ok\n").into_response())
    };
    stored_in_time("webhook", true, work).await
}

/// The parts of a Chats hook the connector needs.
fn parse_chat_hook(body: &[u8]) -> Result<(String, String, String, Option<OutgoingMedia>), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let m = v.get("message").ok_or("no message")?;
    let conversation = m
        .get("conversation")
        .and_then(|c| c.get("client_id"))
        .and_then(|x| x.as_str())
        .ok_or("no message.conversation.client_id")?;
    let inner = m.get("message").ok_or("no message.message")?;
    let id = inner.get("id").and_then(|x| x.as_str()).ok_or("no message.message.id")?;
    let text = inner.get("text").and_then(|x| x.as_str()).unwrap_or_default();
    let media = crmessenger_crm::amocrm::chats::attachment(inner).map(|m| crate::bridge::chats::outgoing_media(&m));
    Ok((conversation.to_string(), id.to_string(), text.to_string(), media))
}

pub(super) async fn amocrm_chats(
    State(g): State<Gateway>,
    Path(scope_id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(secret) = g.chats_secret.clone() else {
        return (StatusCode::NOT_FOUND, "the Chats API is not configured on this gateway\n").into_response();
    };
    let signature = headers.get("x-signature").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !crmessenger_crm::amocrm::verify_hook_signature(&secret, &body, signature) {
        return (StatusCode::UNAUTHORIZED, "bad or missing X-Signature\n").into_response();
    }
    let (conversation, message_id, text, media) = match parse_chat_hook(&body) {
        Ok(parts) => parts,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("malformed Chats hook: {e}\n")).into_response(),
    };
    let work = async {
        let Some(account) = g.store.route(crate::bridge::chats::ROUTE_CHATS_CONVERSATION, &conversation).await? else {
            // A chat no connector posted in (not ours): accepted, nothing to do.
            tracing::debug!(scope_id, "Chats hook for an unknown conversation ignored");
            return Ok((StatusCode::OK, "ok\n").into_response());
        };
        let payload =
            serde_json::json!({ "conversation_id": conversation, "message_id": message_id, "text": text, "media": media })
                .to_string();
        g.store
            .put_event(&account, crate::bridge::chats::EVENT_CHAT, &message_id, &payload, SystemClock.now_ms())
            .await?;
        Ok::<_, crate::store::StoreError>((StatusCode::OK, "ok\n").into_response())
    };
    stored_in_time("Chats hook", false, work).await
}
