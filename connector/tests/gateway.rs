//! The gateway against bad input, over real HTTP with a real PostgreSQL: unknown
//! tokens, malformed bodies and replays get 4xx or are stored once, with no side
//! effect and no crash; a hook for a connector that is down waits in the database.

use crmessenger_connector::gateway::{Gateway, ROUTE_BINDING_CRM};
use crmessenger_connector::store::{Conversation, Store};
use crmessenger_testkit::Postgres;

fn note_hook(lead: i64, note: i64) -> String {
    format!(
        "leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D={note}&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Belement_id%5D={lead}&account%5Bid%5D=31000001"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hooks_are_refused_and_good_ones_are_stored_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = Postgres::shared().database("gateway").unwrap();
    let store = Store::connect(&url, 2).await.unwrap();
    // What a connector registers: the binding's CRM, a conversation, the token.
    store.put_route(ROUTE_BINDING_CRM, "ns/b", "https://x.amocrm.ru").await.unwrap();
    let conv = Conversation { contact_id: Some(1), lead_id: Some(77), ..Conversation::default() };
    store.put_conversation("ns/acct", "chat-1", "https://x.amocrm.ru", &conv, 0).await.unwrap();
    let token = store.webhook_token("ns/b").await.unwrap();
    assert_eq!(store.webhook_token("ns/b").await.unwrap(), token, "one token per binding");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, Gateway::new(store).router()).await });
    let http = reqwest::Client::new();
    let post = |path: String, body: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://{addr}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(post("/amocrm/webhook/not-a-token".into(), note_hook(77, 1)).await, 404);
    assert_eq!(post(format!("/amocrm/webhook/{token}"), "\u{1}garbage=%zz".into()).await, 400);
    assert_eq!(
        post(format!("/amocrm/webhook/{token}"), "leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D=x".into()).await,
        400
    );
    assert_eq!(post(format!("/amocrm/webhook/{token}"), "x".repeat(300 * 1024)).await, 413);
    let check = Store::connect(&url, 1).await.unwrap();
    assert!(check.events_pending("ns/acct", 10).await.unwrap().is_empty(), "bad hooks leave nothing behind");

    // A good hook, twice (amoCRM retries): stored once, for the right account.
    assert_eq!(post(format!("/amocrm/webhook/{token}"), note_hook(77, 5)).await, 200);
    assert_eq!(post(format!("/amocrm/webhook/{token}"), note_hook(77, 5)).await, 200);
    // A lead no connector knows: accepted, nothing stored.
    assert_eq!(post(format!("/amocrm/webhook/{token}"), note_hook(999, 6)).await, 200);
    let rows = check.events_pending("ns/acct", 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kind, "amocrm-note");
    let v: serde_json::Value = serde_json::from_str(&rows[0].payload).unwrap();
    assert_eq!((v["lead_id"].as_i64(), v["note_id"].as_i64()), (Some(77), Some(5)));
    // Still serving after all that.
    let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}
