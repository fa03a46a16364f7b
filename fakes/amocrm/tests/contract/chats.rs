//! Chats API: signing, Unsorted creation, strict payloads, delivery status, history.

use std::time::Duration;

use crmessenger_fake_amocrm::{FakeConfig, UNSORTED_STATUS_ID};
use http::{Method, StatusCode};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::common::{Env, rfc2822, sign, start, start_tls, status_json};

fn inbound(conversation: &str, msgid: &str, silent: bool, text: &str) -> Value {
    json!({"event_type": "new_message", "payload": {
        "timestamp": 1_700_000_000, "msec_timestamp": 1_700_000_000_123_i64,
        "msgid": msgid, "conversation_id": conversation, "silent": silent,
        "sender": {"id": format!("user-{conversation}"), "name": "Вася Клиент",
                   "profile": {"phone": "+79991112233"}},
        "message": {"type": "text", "text": text}}})
}

async fn send_event(env: &Env, scope: &str, body: &Value) -> (StatusCode, Value) {
    status_json(env.chats(Method::POST, &format!("/v2/origin/custom/{scope}"), Some(body)).await).await
}

#[tokio::test]
async fn chats_requests_must_be_signed_with_a_fresh_date_and_json_content_type() {
    let env = start_tls(FakeConfig::default()).await;
    let ch = env.channel();
    let amojo = env.fake.config().amojo_id.clone();
    let connect = format!("/v2/origin/custom/{}/connect", ch.channel_id);
    let body = json!({"account_id": amojo, "hook_api_version": "v2", "title": "T"}).to_string();
    let now = env.fake.clock().now_secs();

    // Sends the connect body, signed as documented unless `signature` is forced.
    let post = async |path: &str, date: &str, content_type: &str, signature: Option<&str>| {
        status_json(env.chats_raw(Method::POST, path, body.clone(), date, content_type, signature).await).await
    };

    let unregistered = "/v2/origin/custom/00000000-0000-0000-0000-000000000000/connect";
    let (status, err) = post(unregistered, &rfc2822(now), "application/json", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(err["error_type"], "ORIGIN_NOT_REGISTERED");

    let forged = "0".repeat(40);
    let (status, err) = post(&connect, &rfc2822(now), "application/json", Some(&forged)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(err["error_type"], "ORIGIN_INVALID_SIGNATURE");
    assert_eq!(err["error_code"], 403);

    let (status, _) = post(&connect, &rfc2822(now), "application/json; charset=utf-8", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only exactly application/json is accepted");

    // Content-MD5 and signature computed over other bytes than those sent.
    let date = rfc2822(now);
    let other_md5 = hex::encode(Md5::digest(b"{}"));
    let sig = sign(&ch.secret, "POST", &other_md5, "application/json", &date, &connect);
    let resp = env
        .http
        .post(env.url(&connect))
        .header("Date", &date)
        .header("Content-Type", "application/json")
        .header("Content-MD5", other_md5)
        .header("X-Signature", sig)
        .body(body.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // A Date 16 minutes behind the fake clock is stale.
    let real_date = rfc2822(env.fake.clock().now_secs());
    env.fake.clock().advance(Duration::from_secs(16 * 60));
    let (status, _) = post(&connect, &real_date, "application/json", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let (status, ok) = post(&connect, &rfc2822(env.fake.clock().now_secs()), "application/json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ok["scope_id"], format!("{}_{}", ch.channel_id, amojo));
    assert_eq!(ok["hook_api_version"], "v2");
}

#[tokio::test]
async fn first_unsilent_message_in_an_unlinked_chat_creates_contact_and_unsorted_lead() {
    let env = start(FakeConfig::default()).await;
    let scope = env.connect().await;

    let (status, reply) = send_event(&env, &scope, &inbound("conv-1", "m-1", false, "Привет")).await;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["new_message"]["ref_id"], "m-1");
    let amojo_msgid = reply["new_message"]["msgid"].as_str().expect("msgid");
    assert!(uuid::Uuid::parse_str(amojo_msgid).is_ok());
    let snap = env.fake.snapshot();
    assert_eq!(snap.contacts.len(), 1);
    assert_eq!(snap.contacts[0].name, "Вася Клиент");
    assert_eq!(snap.contacts[0].custom_fields_values[0]["values"][0]["value"], "+79991112233");
    assert_eq!(snap.unsorted.len(), 1);
    assert_eq!(snap.unsorted[0].category, "chats");
    assert_eq!(snap.leads.len(), 1);
    assert_eq!(snap.leads[0].status_id, UNSORTED_STATUS_ID);
    assert_eq!(snap.chats[0].contact_id, Some(snap.contacts[0].id));

    // Further messages in that chat add nothing.
    let (status, _) = send_event(&env, &scope, &inbound("conv-1", "m-2", false, "ещё")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.fake.snapshot().unsorted.len(), 1);

    // The right order: create the chat, link it to a contact, then send.
    let resp = env
        .chats(
            Method::POST,
            &format!("/v2/origin/custom/{scope}/chats"),
            Some(&json!({
            "conversation_id": "conv-2",
            "user": {"id": "user-conv-2", "name": "Петя", "profile": {"phone": "+79990000000"}}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let chat: Value = resp.json().await.expect("json");
    let chat_id = chat["id"].as_str().expect("chat id").to_string();
    assert_eq!(chat["user"]["client_id"], "user-conv-2");
    let contact_id = env.create("contacts", json!({"name": "Петя"})).await;
    let resp = env.post("/api/v4/contacts/chats", &json!([{"chat_id": chat_id, "contact_id": contact_id}])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, _) = send_event(&env, &scope, &inbound("conv-2", "m-3", false, "hi")).await;
    assert_eq!(status, StatusCode::OK);
    let snap = env.fake.snapshot();
    assert_eq!(snap.unsorted.len(), 1, "a linked chat must not create Unsorted");
    assert_eq!(snap.contacts.len(), 2);
    let (_, links) = env.get_json(&format!("/api/v4/contacts/chats?chat_id[]={chat_id}")).await;
    assert_eq!(links["_embedded"]["chats"][0]["contact_id"], contact_id);

    // Silent imports notify nobody and create nothing.
    let (status, _) = send_event(&env, &scope, &inbound("conv-3", "m-4", true, "old")).await;
    assert_eq!(status, StatusCode::OK);
    let snap = env.fake.snapshot();
    assert_eq!(snap.unsorted.len(), 1);
    assert_eq!(snap.notifications, 3);

    // No msgid de-duplication by default: a resend is a second message.
    let before = snap.chat_messages.len();
    let (status, again) = send_event(&env, &scope, &inbound("conv-1", "m-1", false, "Привет")).await;
    assert_eq!(status, StatusCode::OK);
    assert_ne!(again["new_message"]["msgid"], amojo_msgid);
    assert_eq!(env.fake.snapshot().chat_messages.len(), before + 1);
}

#[tokio::test]
async fn message_payloads_are_strictly_typed() {
    let env = start(FakeConfig { dedupe_chat_msgid: true, ..FakeConfig::default() }).await;
    let scope = env.connect().await;
    let mut string_ts = inbound("c", "m", false, "x");
    string_ts["payload"]["timestamp"] = json!("1700000000");
    let mut bad_type = inbound("c", "m", false, "x");
    bad_type["payload"]["message"] = json!({"type": "gif", "text": "x"});
    let mut no_size = inbound("c", "m", false, "x");
    no_size["payload"]["message"] = json!({"type": "picture", "media": "https://x/y.jpg", "file_name": "y.jpg"});
    let mut no_name = inbound("c", "m", false, "x");
    no_name["payload"]["sender"] = json!({"id": "u"});
    let no_text = inbound("c", "m", false, "");
    // A message to the client needs an author amoCRM knows: a user or the bot.
    let to_client = |ref_id: Option<&str>| {
        let mut body = inbound("c", "m", false, "x");
        body["payload"]["receiver"] = body["payload"]["sender"].clone();
        body["payload"]["sender"] = json!({"id": "owner", "name": "Owner"});
        if let Some(r) = ref_id {
            body["payload"]["sender"]["ref_id"] = json!(r);
        }
        body
    };
    let (no_author, unknown_author) = (to_client(None), to_client(Some("not-a-user")));
    for body in [string_ts, bad_type, no_size, no_name, no_text, no_author, unknown_author] {
        let (status, err) = send_event(&env, &scope, &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {err}");
    }
    assert!(env.fake.snapshot().chat_messages.is_empty());
    // With the de-duplication switch on, a resent msgid returns the same message.
    let (_, first) = send_event(&env, &scope, &inbound("c", "m", false, "x")).await;
    let (_, second) = send_event(&env, &scope, &inbound("c", "m", false, "x")).await;
    assert_eq!(first["new_message"]["msgid"], second["new_message"]["msgid"]);
    assert_eq!(env.fake.snapshot().chat_messages.len(), 1);
    // The channel's bot may write to the client.
    let bot = env.channel().bot_id.clone();
    let mut by_bot = to_client(Some(&bot));
    by_bot["payload"]["msgid"] = json!("m2");
    let (status, answer) = send_event(&env, &scope, &by_bot).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(env.fake.snapshot().chat_messages[1].direction, crmessenger_fake_amocrm::Direction::Outbound);
}

#[tokio::test]
async fn delivery_status_edit_and_history_follow_the_contract() {
    let env = start(FakeConfig::default()).await;
    let scope = env.connect().await;
    let (_, reply) = send_event(&env, &scope, &inbound("conv", "m-1", false, "first")).await;
    let id = reply["new_message"]["msgid"].as_str().expect("msgid").to_string();

    let set_status = async |msgid: &str, body: Value| {
        let path = format!("/v2/origin/custom/{scope}/{msgid}/delivery_status");
        env.chats(Method::POST, &path, Some(&body)).await.status()
    };

    let unknown = set_status("no-such", json!({"msgid": "no-such", "delivery_status": 1})).await;
    assert_eq!(unknown, StatusCode::NOT_FOUND);
    let mismatch = set_status(&id, json!({"msgid": "other", "delivery_status": 1})).await;
    assert_eq!(mismatch, StatusCode::BAD_REQUEST);
    let no_code = set_status(&id, json!({"msgid": id, "delivery_status": -1})).await;
    assert_eq!(no_code, StatusCode::BAD_REQUEST);
    let ok = set_status(&id, json!({"msgid": id, "delivery_status": -1, "error_code": 905, "error": "blocked"})).await;
    assert_eq!(ok, StatusCode::OK);
    let snap = env.fake.snapshot();
    assert_eq!(snap.chat_messages[0].delivery_status, Some(-1));
    assert_eq!(snap.chat_messages[0].delivery_error_code, Some(905));

    let edit = |msgid: &str| {
        json!({"event_type": "edit_message", "payload": {
        "msgid": msgid, "conversation_id": "conv", "timestamp": 1_700_000_001,
        "message": {"type": "text", "text": "edited"}}})
    };
    let (status, _) = send_event(&env, &scope, &edit("never-sent")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = send_event(&env, &scope, &edit("m-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(env.fake.snapshot().chat_messages[0].text, "edited");

    let mut later = inbound("conv", "m-2", false, "second");
    later["payload"]["timestamp"] = json!(1_700_000_100);
    later["payload"]["msec_timestamp"] = json!(1_700_000_100_000_i64);
    send_event(&env, &scope, &later).await;
    let history = async |conversation: &str, query: &str| {
        let path = format!("/v2/origin/custom/{scope}/chats/{conversation}/history{query}");
        status_json(env.chats(Method::GET, &path, None).await).await
    };
    let (status, body) = history("conv", "?offset=0&limit=50").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"][0]["message"]["client_id"], "m-2", "newest first");
    assert_eq!(body["messages"][1]["message"]["text"], "edited");
    assert_eq!(history("conv", "?limit=51").await.0, StatusCode::BAD_REQUEST);
    assert_eq!(history("nobody", "").await.0, StatusCode::NO_CONTENT);
}
