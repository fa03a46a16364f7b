//! WhatsApp Cloud API webhooks: Meta's subscription handshake and signed
//! deliveries of messages and statuses.

use super::{Gateway, ROUTE_WA_NUMBER, stored_in_time};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crmessenger_crm::clock::{Clock, SystemClock};
use subtle::ConstantTimeEq;

/// Meta's subscription handshake: the challenge back only for our verify token.
pub(super) async fn whatsapp_verify(
    State(g): State<Gateway>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(app) = g.whatsapp.clone() else {
        return (StatusCode::NOT_FOUND, "WhatsApp is not configured on this gateway\n").into_response();
    };
    let token = q.get("hub.verify_token").map(String::as_str).unwrap_or_default();
    // No verify token configured: no handshake can succeed (an empty guess must not).
    let matches: bool = !app.verify_token.is_empty() && bool::from(token.as_bytes().ct_eq(app.verify_token.as_bytes()));
    match (q.get("hub.mode").map(String::as_str), q.get("hub.challenge")) {
        (Some("subscribe"), Some(challenge)) if matches => challenge.clone().into_response(),
        _ => (StatusCode::FORBIDDEN, "verification failed\n").into_response(),
    }
}

/// Whether `header` is `sha256=` and the HMAC-SHA256 of `body` under `secret`
/// (compared in constant time).
pub fn verify_hub_signature(secret: &str, body: &[u8], header: &str) -> bool {
    use hmac::Mac;
    let Some(hex_sig) = header.strip_prefix("sha256=") else { return false };
    let Ok(sig) = hex::decode(hex_sig) else { return false };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// WhatsApp webhooks: the signature is checked before the body is read; each
/// message and status is stored once for the account that owns the number
/// (a replay changes nothing); 200 only after the write, so Meta retries otherwise.
pub(super) async fn whatsapp_webhook(
    State(g): State<Gateway>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(app) = g.whatsapp.clone() else {
        return (StatusCode::NOT_FOUND, "WhatsApp is not configured on this gateway\n").into_response();
    };
    let signature = headers.get("x-hub-signature-256").and_then(|v| v.to_str().ok()).unwrap_or_default();
    if !verify_hub_signature(&app.app_secret, &body, signature) {
        return (StatusCode::UNAUTHORIZED, "bad or missing X-Hub-Signature-256\n").into_response();
    }
    let items = match parse_whatsapp(&body) {
        Ok(items) => items,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("malformed WhatsApp webhook: {e}\n")).into_response(),
    };
    let work = async {
        let now = SystemClock.now_ms();
        let mut woken = std::collections::HashSet::new();
        for (number, kind, key, payload) in items {
            let Some(account) = g.store.route(ROUTE_WA_NUMBER, &number).await? else {
                tracing::debug!(number, "WhatsApp webhook for a number no account serves ignored");
                continue;
            };
            if g.store.put_stream_event(&account, kind, &key, &payload, now).await? {
                woken.insert(account);
            }
        }
        for account in woken {
            g.store.notify(&account).await?;
        }
        Ok::<_, crate::store::StoreError>((StatusCode::OK, "ok\n").into_response())
    };
    stored_in_time("WhatsApp webhook", true, work).await
}

/// (phone number id, kind, dedup key, payload) of each message and status.
type WhatsAppItem = (String, &'static str, String, String);

fn parse_whatsapp(body: &[u8]) -> Result<Vec<WhatsAppItem>, String> {
    use crate::messenger::whatsapp::{EVENT_MESSAGE, EVENT_STATUS};
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let entries = v.get("entry").and_then(|e| e.as_array()).ok_or("no entry array")?;
    let mut out = Vec::new();
    for change in entries.iter().filter_map(|e| e.get("changes")?.as_array()).flatten() {
        let value = change.get("value").ok_or("a change without value")?;
        let Some(number) = value["metadata"]["phone_number_id"].as_str() else { continue };
        let contacts = value["contacts"].as_array().cloned().unwrap_or_default();
        for m in value["messages"].as_array().into_iter().flatten() {
            let id = m["id"].as_str().ok_or("a message without id")?;
            let from = m["from"].as_str().or(m["from_user_id"].as_str());
            let contact = contacts
                .iter()
                .find(|c| from.is_some() && (c["wa_id"].as_str() == from || c["user_id"].as_str() == from))
                .or(contacts.first())
                .cloned()
                .unwrap_or_default();
            let payload = serde_json::json!({ "message": m, "contact": contact }).to_string();
            out.push((number.to_string(), EVENT_MESSAGE, id.to_string(), payload));
        }
        // Coexistence numbers: what the owner sent from the WhatsApp Business app.
        for m in value["message_echoes"].as_array().into_iter().flatten() {
            let id = m["id"].as_str().ok_or("an echo without id")?;
            let payload = serde_json::json!({ "message": m, "echo": true }).to_string();
            out.push((number.to_string(), EVENT_MESSAGE, id.to_string(), payload));
        }
        for s in value["statuses"].as_array().into_iter().flatten() {
            let (Some(id), Some(status)) = (s["id"].as_str(), s["status"].as_str()) else {
                return Err("a status without id or status".into());
            };
            out.push((number.to_string(), EVENT_STATUS, format!("{id}:{status}"), s.to_string()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod whatsapp_tests {
    use super::*;
    use crate::gateway::WhatsAppApp;
    use crate::store::Store;

    #[tokio::test]
    async fn without_a_verify_token_no_handshake_succeeds() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("g.db").display()), 1).await.unwrap();
        let app = WhatsAppApp { app_secret: "app-secret".into(), verify_token: String::new() };
        for token in ["", "guess"] {
            let router = Gateway::new(store.clone()).with_whatsapp(Some(app.clone())).router();
            let uri = format!("/whatsapp/webhook?hub.mode=subscribe&hub.challenge=7&hub.verify_token={token}");
            let req = axum::http::Request::get(uri).body(axum::body::Body::empty()).unwrap();
            let resp = router.oneshot(req).await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "token {token:?}");
        }
    }

    #[test]
    fn hub_signatures_are_checked_exactly() {
        // HMAC-SHA256 of "what do ya want for nothing?" under "Jefe" (RFC 4231, case 2).
        let good = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert!(verify_hub_signature("Jefe", b"what do ya want for nothing?", good));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing!", good));
        assert!(!verify_hub_signature("jefe", b"what do ya want for nothing?", good));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing?", &good[7..]));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing?", "sha256=zz"));
        assert!(!verify_hub_signature("Jefe", b"what do ya want for nothing?", ""));
    }

    #[test]
    fn owner_echoes_from_the_business_app_are_messages_of_their_number() {
        let body = serde_json::json!({ "entry": [{ "changes": [{ "field": "smb_message_echoes", "value": {
            "metadata": { "phone_number_id": "111" },
            "message_echoes": [{ "from": "15550009999", "to": "15550001111", "id": "wamid.E1",
                "timestamp": "1700000000", "type": "text", "text": { "body": "hi" } }] } }] }] });
        let items = parse_whatsapp(body.to_string().as_bytes()).unwrap();
        assert_eq!((items[0].0.as_str(), items[0].1, items[0].2.as_str()), ("111", "wa-message", "wamid.E1"));
        let payload: serde_json::Value = serde_json::from_str(&items[0].3).unwrap();
        assert_eq!(payload["echo"], true);
        let no_id = serde_json::json!({ "entry": [{ "changes": [{ "value": {
            "metadata": { "phone_number_id": "111" }, "message_echoes": [{ "to": "1" }] } }] }] });
        assert!(parse_whatsapp(no_id.to_string().as_bytes()).is_err());
    }

    #[test]
    fn webhooks_split_into_messages_and_statuses_per_number() {
        let body = serde_json::json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [
            { "field": "messages", "value": { "metadata": { "phone_number_id": "111" },
                "contacts": [{ "profile": { "name": "A" }, "user_id": "US.1" }, { "profile": { "name": "B" }, "wa_id": "155" }],
                "messages": [{ "from_user_id": "US.1", "id": "wamid.1", "type": "text", "text": { "body": "x" } },
                             { "from": "155", "id": "wamid.2", "type": "text", "text": { "body": "y" } }] } },
            { "field": "messages", "value": { "metadata": { "phone_number_id": "222" },
                "statuses": [{ "id": "wamid.9", "status": "read", "recipient_id": "155" }] } }
        ] }] });
        let items = parse_whatsapp(body.to_string().as_bytes()).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!((items[0].0.as_str(), items[0].1, items[0].2.as_str()), ("111", "wa-message", "wamid.1"));
        // Each message goes with its own sender's contact (a BSUID-only user included).
        assert!(items[0].3.contains("US.1") && items[0].3.contains("\"A\""), "{}", items[0].3);
        assert!(items[1].3.contains("\"B\""), "{}", items[1].3);
        assert_eq!((items[2].0.as_str(), items[2].1, items[2].2.as_str()), ("222", "wa-status", "wamid.9:read"));
        assert!(parse_whatsapp(b"{}").is_err());
        assert!(
            parse_whatsapp(
                br#"{"entry":[{"changes":[{"value":{"metadata":{"phone_number_id":"1"},"statuses":[{"id":"x"}]}}]}]}"#
            )
            .is_err()
        );
    }
}
