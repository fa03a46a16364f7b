//! Outgoing calls: REST webhooks retried on the fake clock, Chats hooks sent once.

use std::collections::HashMap;
use std::time::Duration;

use crmessenger_fake_amocrm::{ChatsChannel, FakeConfig};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Receiver, body_signature, start};

#[tokio::test]
async fn rest_webhooks_are_unsigned_forms_retried_on_the_fake_clock() {
    let receiver = Receiver::start(vec![500, 200]).await;
    let env = start(FakeConfig::default()).await;
    let destination = format!("{}/amo/hook?token=s3cret", receiver.base);
    let resp = env.post("/api/v4/webhooks", &json!({"destination": destination, "settings": ["note_lead"]})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let lead_id = env.create("leads", json!({"name": "Lead"})).await;

    let note_id = env.fake.add_manager_note(lead_id, 1002, "Ответ менеджера");
    assert!(receiver.wait_for(1, Duration::from_secs(3)).await, "first attempt never came");
    let first = &receiver.all()[0];
    assert_eq!(first.path, "/amo/hook");
    assert_eq!(
        first.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-www-form-urlencoded")
    );
    assert!(first.headers.get("x-signature").is_none(), "REST webhooks are unsigned");
    let form: HashMap<String, String> = serde_urlencoded::from_bytes(&first.body).expect("form body");
    assert_eq!(form["leads[note][0][note][text]"], "Ответ менеджера");
    assert_eq!(form["leads[note][0][note][id]"], note_id.to_string());
    assert_eq!(form["leads[note][0][note][element_id]"], lead_id.to_string());
    assert_eq!(form["leads[note][0][note][element_type]"], "2");
    assert_eq!(form["leads[note][0][note][note_type]"], "4");
    assert_eq!(form["leads[note][0][note][created_by]"], "1002");
    assert_eq!(form["account[subdomain]"], "example");

    // Retry #2 is due 5 minutes (fake time) after the failure, not before.
    env.fake.clock().advance(Duration::from_secs(4 * 60));
    env.fake.webhooks_settled().await;
    assert_eq!(receiver.count(), 1, "retried too early");
    env.fake.clock().advance(Duration::from_secs(61));
    assert!(receiver.wait_for(2, Duration::from_secs(3)).await, "retry #2 never came");
    // The receiver sees the request before the fake has its answer: wait for the
    // fake's record of the second delivery.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while env.fake.snapshot().webhook_deliveries.len() < 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let snap = env.fake.snapshot();
    let attempts: Vec<(u32, Option<u16>, bool)> =
        snap.webhook_deliveries.iter().map(|d| (d.attempt, d.status, d.success)).collect();
    assert_eq!(attempts, [(1, Some(500), false), (2, Some(200), true)]);
    // Success ends the schedule.
    env.fake.clock().advance(Duration::from_secs(3 * 3600));
    env.fake.webhooks_settled().await;
    assert_eq!(receiver.count(), 2);

    // The notes list shows the manager's note.
    let (_, notes) = env.get_json(&format!("/api/v4/leads/{lead_id}/notes?filter[note_type]=common")).await;
    assert_eq!(notes["_embedded"]["notes"][0]["params"]["text"], "Ответ менеджера");
}

#[tokio::test]
async fn outgoing_chat_hook_is_signed_and_sent_once_even_if_the_receiver_fails() {
    let receiver = Receiver::start(vec![500]).await;
    let channel =
        ChatsChannel { hook_url: Some(format!("{}/chats/:scope_id", receiver.base)), ..ChatsChannel::default() };
    let secret = channel.secret.clone();
    let env = start(FakeConfig { chats: Some(channel), ..FakeConfig::default() }).await;
    let scope = env.connect().await;
    let body = json!({"event_type": "new_message", "payload": {
        "timestamp": 1_700_000_000, "msgid": "in-1", "conversation_id": "conv-9",
        "sender": {"id": "client-9", "name": "Клиент", "profile": {"phone": "+70000000009"}},
        "message": {"type": "text", "text": "hello"}}});
    let resp = env.chats(Method::POST, &format!("/v2/origin/custom/{scope}"), Some(&body)).await;
    assert_eq!(resp.status(), StatusCode::OK);

    let id = env.fake.manager_chat_reply("conv-9", 1002, "Здравствуйте!").await.expect("manager reply");
    assert_eq!(receiver.count(), 1);
    let hook = &receiver.all()[0];
    assert_eq!(hook.path, format!("/chats/{scope}"));
    let sig = hook.headers.get("x-signature").and_then(|v| v.to_str().ok()).expect("X-Signature");
    assert_eq!(sig, body_signature(&secret, &hook.body));
    let payload: Value = serde_json::from_slice(&hook.body).expect("json hook");
    assert_eq!(payload["account_id"], env.fake.config().amojo_id.as_str());
    assert_eq!(payload["message"]["message"]["id"], id.as_str());
    assert_eq!(payload["message"]["message"]["text"], "Здравствуйте!");
    assert_eq!(payload["message"]["conversation"]["client_id"], "conv-9");
    assert_eq!(payload["message"]["receiver"]["client_id"], "client-9");

    // Never retried, whatever the clock does.
    env.fake.clock().advance(Duration::from_secs(3600));
    env.fake.webhooks_settled().await;
    assert_eq!(receiver.count(), 1);
    let snap = env.fake.snapshot();
    assert_eq!(snap.chat_hook_deliveries.len(), 1);
    assert_eq!(snap.chat_hook_deliveries[0].status, Some(500));
    assert!(snap.chat_messages.iter().any(|m| m.id == id && m.text == "Здравствуйте!"));
    assert!(env.fake.manager_chat_reply("unknown-conv", 1002, "x").await.is_err());
}
