//! WhatsApp Cloud API end to end: the Graph API fake over TLS signs and retries
//! its webhooks into the real gateway over loopback, the adapter streams them to
//! the bridge, the amoCRM fake records them, and replies go back through the
//! Graph API — on PostgreSQL. Also: webhook authentication, statuses that come
//! reordered, duplicated or skipped, and the 24-hour window.

use crate::common;

use crmessenger_api::config::{RuntimeSettings, render};
use crmessenger_connector::app::{AccountParts, SecretValues, build_account, whatsapp_settings};
use crmessenger_connector::gateway::{Gateway, WhatsAppApp};
use crmessenger_connector::messenger::whatsapp::WhatsApp;
use crmessenger_connector::store::{POOL_SIZE, Store};
use crmessenger_crm::clock::Clock;
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig, TlsIdentity};
use crmessenger_fake_whatsapp::{FakeGraph, GraphConfig, StatusScript, WindowError, signature};
use crmessenger_testkit::TestClock;
use crmessenger_testkit::{Postgres, TestCa};
use std::sync::Arc;
use std::time::Duration;

const VERIFY: &str = "verify-me-7d1";
const CUSTOMER: &str = "15550001111";

struct Rig {
    amo: FakeAmo,
    graph: FakeGraph,
    store: Store,
    parts: AccountParts,
    clock: TestClock,
    gateway: String,
    stop: tokio::sync::watch::Sender<bool>,
}

fn manifests(amo_url: &str, template: bool) -> String {
    let policy =
        if template { "{ whatsapp: { outsideWindowTemplate: { name: follow_up, language: en_US } } }" } else { "{}" };
    let account = r#"{ provider: whatsapp, whatsapp: { loginMethod: cloudApi, cloudApi: { phoneNumberId: "106540352242922", accessToken: { name: wa, key: access_token } } } }"#;
    common::shop_yaml_for(account, amo_url, policy, "replies: { detection: poll, pollInterval: 1s }")
}

/// The gateway on loopback, writing into `store`.
async fn gateway(store: &Store, app_secret: &str) -> String {
    let app = WhatsAppApp { app_secret: app_secret.into(), verify_token: VERIFY.into() };
    let router = Gateway::new(store.clone()).with_whatsapp(Some(app)).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn rig(db: &str, template: bool, window_error: WindowError) -> Rig {
    rig_with(db, template, GraphConfig { window_error, ..GraphConfig::default() }, None).await
}

/// [`rig`] with the Graph API fake configured by `base`, and the connector given
/// `token` instead of the fake's access token when set.
async fn rig_with(db: &str, template: bool, base: GraphConfig, token: Option<&str>) -> Rig {
    let ca = TestCa::new("crmessenger test CA").unwrap();
    let cert = ca.issue_server("graph.test", &["127.0.0.1", "localhost"]).unwrap();
    let store = Store::connect(&Postgres::shared().database(db).unwrap(), POOL_SIZE).await.unwrap();
    let gw = gateway(&store, &base.app_secret).await;
    let graph = FakeGraph::start(GraphConfig {
        tls: Some(TlsIdentity { cert_pem: cert.cert_pem, key_pem: cert.key_pem }),
        webhook_url: Some(format!("{gw}/whatsapp/webhook")),
        ..base
    })
    .await
    .unwrap();
    assert!(graph.graph_url().starts_with("https://"));
    let amo = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let mut m = crmessenger_api::manifests::parse(&manifests(&amo.base_url(), template), "shop").unwrap();
    let config =
        render(&m.accounts.remove(0), &m.bindings.remove(0), &m.policies.remove(0), RuntimeSettings::default())
            .unwrap();
    let values: SecretValues =
        [(("wa".to_string(), "access_token".to_string()), token.unwrap_or(&graph.config().access_token).to_string())]
            .into();
    let mut settings = whatsapp_settings(&config, &values).unwrap();
    settings.graph_url = graph.graph_url();
    settings.ca_pem = Some(ca.cert_pem().to_string());
    let clock = TestClock::default();
    let adapter = WhatsApp::new(settings, store.clone(), Arc::new(clock.clone())).unwrap();
    let token = amo.issue_token_pair().access_token;
    let parts = build_account(
        &config,
        &store,
        Arc::new(crmessenger_crm::amocrm::StaticToken(token)),
        None,
        Arc::new(adapter),
        None,
        Arc::new(clock.clone()) as Arc<dyn Clock>,
        Arc::new(crmessenger_connector::metrics::Metrics::default()),
    )
    .unwrap();
    let stop = common::run_bridge(&parts, &store).await;
    Rig { amo, graph, store, parts, clock, gateway: gw, stop }
}

/// Waits up to 90 s: under load a send can time out and stay in doubt for up to
/// a minute (`IN_DOUBT_MS`) while its status webhook may still come.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..900 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

fn has_note(amo: &FakeAmo, text: &str) -> bool {
    amo.snapshot().notes.iter().any(|n| n.params["text"].as_str().is_some_and(|t| t.contains(text)))
}

/// A customer writes; returns the lead their note is on.
async fn customer_writes(r: &Rig, text: &str) -> i64 {
    r.graph.customer_says(Some(CUSTOMER), Some("US.13491208655302741918"), "Maria", text);
    eventually("the note in amoCRM", async || has_note(&r.amo, text)).await;
    r.amo.snapshot().leads[0].id
}

/// The manager answers; returns the message the fake received.
async fn manager_answers(r: &Rig, lead: i64, text: &str) -> crmessenger_fake_whatsapp::SentMessage {
    r.amo.add_manager_note(lead, 1001, &format!(">> {text}"));
    let mut found = None;
    eventually("the reply at the Graph API", async || {
        found = r.graph.sent().into_iter().find(|m| serde_json::to_string(&m.body).unwrap().contains(text));
        found.is_some()
    })
    .await;
    found.unwrap()
}

async fn final_delivery(r: &Rig, wamid: &str, expected: &str) {
    for _ in 0..900 {
        if r.store.outbox_delivery_of(&r.parts.key, wamid).await.unwrap().as_deref() == Some(expected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if r.store.outbox_delivery_of(&r.parts.key, wamid).await.unwrap().as_deref() != Some(expected) {
        // What a reader of a failed run needs: the reply's row, what was parked,
        // what the gateway stored and what the fake still holds.
        let q = |sql: &'static str| async move {
            let rows = sqlx::query(sql).bind(&r.parts.key).fetch_all(r.store.pool()).await.unwrap();
            rows.iter()
                .map(|row| {
                    (0..sqlx::Row::len(row))
                        .map(|i| {
                            let v: Option<String> = sqlx::Row::try_get(row, i).ok().flatten();
                            v.unwrap_or_else(|| "NULL".into())
                        })
                        .collect::<Vec<_>>()
                        .join(" | ")
                })
                .collect::<Vec<_>>()
        };
        let statuses: Vec<(u16, String)> =
            r.graph.deliveries().iter().map(|d| (d.status, d.body.chars().take(160).collect())).collect();
        panic!(
            "timed out waiting for delivery {expected} of {wamid}\noutbox: {:?}\nearly: {:?}\nstream: {:?}\nfake pending {} deliveries {statuses:?}",
            q("SELECT state, COALESCE(message_id, ''), COALESCE(delivery, ''), CAST(attempts AS TEXT), COALESCE(last_error, '') FROM outbox WHERE account = $1").await,
            q("SELECT message_id, status FROM early_statuses WHERE account = $1").await,
            q("SELECT state, kind FROM events WHERE account = $1").await,
            r.graph.pending_webhooks(),
        );
    }
    // Nothing moves it afterwards (late or duplicated statuses): judged once every
    // status webhook Meta sent was answered 200 and the connector consumed every
    // stored webhook, the positive signal that no status is still on its way.
    eventually("every webhook delivered and consumed", async || {
        let unconsumed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE account = $1 AND state = 'stream'")
            .bind(&r.parts.key)
            .fetch_one(r.store.pool())
            .await
            .unwrap();
        r.graph.pending_webhooks() == 0 && unconsumed == 0
    })
    .await;
    assert_eq!(r.store.outbox_delivery_of(&r.parts.key, wamid).await.unwrap().as_deref(), Some(expected));
}

#[tokio::test]
async fn a_customer_reaches_amocrm_and_the_reply_comes_back_with_its_statuses() {
    let r = rig("wae2e", false, WindowError::Sync).await;
    let lead = customer_writes(&r, "Is the blue one available?").await;
    let snap = r.amo.snapshot();
    assert_eq!((snap.contacts.len(), snap.leads.len()), (1, 1));
    assert_eq!(snap.contacts[0].name, "Maria");
    let sent = manager_answers(&r, lead, "Yes, size M and L").await;
    assert_eq!(sent.to, CUSTOMER);
    assert_eq!(sent.kind, "text");
    assert!(sent.body["biz_opaque_callback_data"].as_str().unwrap().starts_with("rid:"), "{}", sent.body);
    final_delivery(&r, &sent.id, "read").await;
    assert_eq!(r.graph.sent().len(), 1, "sent once");
    // The customer's message was marked read when the manager answered.
    assert_eq!(r.graph.reads().len(), 1);
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn statuses_reordered_duplicated_or_skipped_end_in_the_right_state() {
    let r = rig("wastatus", false, WindowError::Sync).await;
    let lead = customer_writes(&r, "hello").await;
    r.graph.set_statuses(StatusScript { reverse: true, duplicate: true, skip_delivered: true, ..Default::default() });
    let first = manager_answers(&r, lead, "first answer").await;
    final_delivery(&r, &first.id, "read").await;
    // Only `sent` so far: it stays there (the pair rate needs 6 s between messages).
    r.graph.set_statuses(StatusScript { only_sent: true, duplicate: true, ..Default::default() });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let second = manager_answers(&r, lead, "second answer").await;
    final_delivery(&r, &second.id, "sent").await;
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn statuses_that_overtake_the_answer_to_the_send_are_applied_once_it_is_recorded() {
    let r = rig("waearly", false, WindowError::Sync).await;
    let lead = customer_writes(&r, "are you open?").await;
    // `read` reaches the gateway (and the intake) before the send's answer does.
    r.graph.set_statuses(StatusScript { reverse: true, before_answer: true, ..Default::default() });
    let sent = manager_answers(&r, lead, "until six").await;
    final_delivery(&r, &sent.id, "read").await;
    assert_eq!(r.graph.sent().len(), 1, "sent once");
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn webhooks_without_a_valid_signature_or_malformed_or_replayed_change_nothing() {
    let r = rig("wahooks", false, WindowError::Sync).await;
    let url = format!("{}/whatsapp/webhook", r.gateway);
    let http = crmessenger_crm::tls::client_builder(None).unwrap().build().unwrap();
    let secret = r.graph.config().app_secret.clone();
    let count = async || r.store.stream_events(&r.parts.key, 0, 10_000).await.unwrap().len();
    // Meta's handshake: the challenge only for our verify token.
    let ok = http
        .get(format!("{url}?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={VERIFY}"))
        .send()
        .await
        .unwrap();
    assert_eq!((ok.status().as_u16(), ok.text().await.unwrap()), (200, "1158201444".to_string()));
    let bad =
        http.get(format!("{url}?hub.mode=subscribe&hub.challenge=1&hub.verify_token=guess")).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 403);

    let before = count().await;
    let body = serde_json::json!({ "object": "whatsapp_business_account", "entry": [{ "id": "1", "changes": [{ "field": "messages",
        "value": { "messaging_product": "whatsapp", "metadata": { "display_phone_number": "+1 555 0100", "phone_number_id": "106540352242922" },
            "contacts": [{ "profile": { "name": "Eve" }, "wa_id": "15550009999" }],
            "messages": [{ "from": "15550009999", "id": "wamid.FORGED", "timestamp": "1700000000", "type": "text", "text": { "body": "forged" } }] } }] }] })
    .to_string();
    let post = |sig: Option<String>, body: String| {
        let mut req = http.post(&url).header("content-type", "application/json").body(body);
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        req.send()
    };
    assert_eq!(post(None, body.clone()).await.unwrap().status().as_u16(), 401, "no signature");
    assert_eq!(
        post(Some(signature("wrong-secret", body.as_bytes())), body.clone()).await.unwrap().status().as_u16(),
        401
    );
    assert_eq!(post(Some("sha256=zz".into()), body.clone()).await.unwrap().status().as_u16(), 401);
    let nope = "{nope".to_string();
    assert_eq!(post(Some(signature(&secret, nope.as_bytes())), nope).await.unwrap().status().as_u16(), 400);
    assert_eq!(count().await, before, "nothing stored");

    // A valid one is stored once however often it is replayed.
    for _ in 0..3 {
        assert_eq!(post(Some(signature(&secret, body.as_bytes())), body.clone()).await.unwrap().status().as_u16(), 200);
    }
    eventually("the note", async || has_note(&r.amo, "forged")).await;
    // Eve writes again: her chat is delivered in order, so once this is in, any
    // copy of the replayed webhook would be too.
    r.graph.customer_says(Some("15550009999"), None, "Eve", "marker after the replays");
    eventually("Eve's marker", async || has_note(&r.amo, "marker after the replays")).await;
    assert_eq!(
        r.amo
            .snapshot()
            .notes
            .iter()
            .filter(|n| n.params["text"].as_str().is_some_and(|t| t.contains("forged")))
            .count(),
        1
    );

    // A badly signed webhook from Meta is refused, and Meta's retry gets through.
    r.graph.sign_badly(1);
    r.graph.customer_says(Some(CUSTOMER), None, "Maria", "after a bad signature");
    eventually("the retried webhook", async || has_note(&r.amo, "after a bad signature")).await;
    let statuses: Vec<u16> = r.graph.deliveries().iter().map(|d| d.status).collect();
    assert!(statuses.contains(&401) && statuses.ends_with(&[200]), "{statuses:?}");
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn outside_the_window_without_a_template_the_reply_is_dead_lettered_with_the_reason() {
    let r = rig("wanotemplate", false, WindowError::Sync).await;
    let lead = customer_writes(&r, "old question").await;
    // A day and an hour later, the manager answers.
    r.graph.clock().advance(Duration::from_secs(25 * 3600));
    r.clock.advance(Duration::from_secs(25 * 3600));
    r.amo.add_manager_note(lead, 1001, ">> Sorry for the wait");
    eventually("the dead letter", async || !r.store.dead_letters(&r.parts.key).await.unwrap().is_empty()).await;
    let dead = r.store.dead_letters(&r.parts.key).await.unwrap();
    assert!(
        dead[0].reason.contains("24 hours") && dead[0].reason.contains("outsideWindowTemplate"),
        "{}",
        dead[0].reason
    );
    assert!(r.graph.sent().is_empty(), "nothing went out");
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn outside_the_window_the_reply_goes_as_the_policys_template() {
    let r = rig("watemplate", true, WindowError::Sync).await;
    let lead = customer_writes(&r, "old question").await;
    r.graph.clock().advance(Duration::from_secs(25 * 3600));
    r.clock.advance(Duration::from_secs(25 * 3600));
    let sent = manager_answers(&r, lead, "Back in stock now").await;
    assert_eq!(sent.kind, "template");
    assert_eq!(sent.body["template"]["name"], "follow_up");
    assert_eq!(sent.body["template"]["language"]["code"], "en_US");
    assert_eq!(sent.body["template"]["components"][0]["parameters"][0]["text"], "Back in stock now");
    final_delivery(&r, &sent.id, "read").await;
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn a_window_refusal_that_comes_as_a_failed_status_dead_letters_the_reply() {
    let r = rig("wafailed", false, WindowError::Status).await;
    let lead = customer_writes(&r, "old question").await;
    // Only WhatsApp's clock moves: the connector believes the window is open.
    r.graph.clock().advance(Duration::from_secs(25 * 3600));
    let sent = manager_answers(&r, lead, "We can do it").await;
    assert_eq!(sent.kind, "text");
    eventually("the dead letter", async || !r.store.dead_letters(&r.parts.key).await.unwrap().is_empty()).await;
    let dead = r.store.dead_letters(&r.parts.key).await.unwrap();
    assert!(dead[0].reason.contains("131047"), "{}", dead[0].reason);
    final_delivery(&r, &sent.id, "failed: (#131047) Re-engagement message").await;
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn a_customers_picture_is_fetched_with_a_fresh_url_within_the_limits() {
    use crmessenger_connector::messenger::MediaRef;
    let r = rig("wamedia", false, WindowError::Sync).await;
    let picture: Vec<u8> = (0..300_000u32).map(|i| (i % 241) as u8).collect();
    r.graph.customer_sends_image(CUSTOMER, "Maria", "image/jpeg", picture.clone(), "this one");
    eventually("the note", async || has_note(&r.amo, "this one")).await;
    // Long after the webhook (its media URLs live 5 minutes): a fresh URL is asked for.
    r.graph.clock().advance(Duration::from_secs(600));
    let media = MediaRef {
        id: "wa:900000".into(),
        kind: "photo".into(),
        file_name: "image_900000.jpeg".into(),
        mime_type: "image/jpeg".into(),
        size: 0,
    };
    assert_eq!(r.parts.messenger.fetch_media(&media).await.unwrap(), picture);
    let unknown = MediaRef { id: "wa:123".into(), ..media.clone() };
    assert!(r.parts.messenger.fetch_media(&unknown).await.is_err());
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn a_reply_with_a_file_is_uploaded_then_sent_by_id_within_whatsapps_limits() {
    use crmessenger_connector::messenger::{Outgoing, OutgoingMedia};
    let r = rig("wafile", false, WindowError::Sync).await;
    customer_writes(&r, "send me the invoice").await;
    let pdf: Vec<u8> = (0..200_000u32).map(|i| (i % 199) as u8).collect();
    let files = common::file_server(pdf).await;
    let reply = Outgoing {
        chat_id: CUSTOMER.into(),
        text: "Here it is".into(),
        random_id: 42,
        media: Some(OutgoingMedia {
            kind: "file".into(),
            url: format!("{files}/files/invoice.pdf"),
            file_name: "invoice.pdf".into(),
            ..Default::default()
        }),
    };
    let sent = r.parts.messenger.send(&reply).await.unwrap();
    let got = r.graph.sent();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].id.as_str(), got[0].kind.as_str()), (sent.message_id.as_str(), "document"));
    assert!(got[0].body["document"]["id"].as_str().is_some_and(|id| !id.is_empty()), "sent by id: {}", got[0].body);
    assert_eq!(got[0].body["document"]["filename"], "invoice.pdf");
    assert_eq!(got[0].body["document"]["caption"], "Here it is");
    // A picture over WhatsApp's 5 MB is refused with the reason, before any upload.
    let big = common::file_server(vec![0; 6 << 20]).await;
    let picture = Outgoing {
        random_id: 43,
        media: Some(OutgoingMedia {
            kind: "picture".into(),
            url: format!("{big}/files/big.jpg"),
            file_name: "big.jpg".into(),
            ..Default::default()
        }),
        ..reply
    };
    let refused = r.parts.messenger.send(&picture).await.unwrap_err();
    assert!(refused.to_string().contains("WhatsApp's limit"), "{refused}");
    assert_eq!(r.graph.sent().len(), 1);
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn throughput_and_pair_rate_refusals_wait_and_every_reply_goes_once_in_order() {
    // One message a second for the number, and Meta's 6 s between two messages to
    // the same customer.
    let config = GraphConfig { throughput_per_sec: 1, ..GraphConfig::default() };
    let r = rig_with("walimits", false, config, None).await;
    let lead_a = customer_writes(&r, "from Maria").await;
    r.graph.customer_says(Some("15550002222"), None, "Omar", "from Omar");
    eventually("Omar's note", async || has_note(&r.amo, "from Omar")).await;
    let lead_b = r.amo.snapshot().leads.iter().map(|l| l.id).find(|id| *id != lead_a).expect("Omar's lead");
    // Three answers at once: Maria, Omar, Maria again.
    r.amo.add_manager_note(lead_a, 1001, ">> first for Maria");
    r.amo.add_manager_note(lead_b, 1001, ">> first for Omar");
    r.amo.add_manager_note(lead_a, 1001, ">> second for Maria");
    let texts_to = |to: &str| -> Vec<String> {
        r.graph
            .sent()
            .iter()
            .filter(|m| m.to == to)
            .map(|m| m.body["text"]["body"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    for i in 0.. {
        if texts_to(CUSTOMER).len() == 2 && texts_to("15550002222").len() == 1 {
            break;
        }
        assert!(
            i < 300,
            "every answer at the Graph API: sent {:?}, refused {:?}, outbox {:?}, dead {:?}",
            r.graph.sent().iter().map(|m| (&m.to, m.body["text"]["body"].as_str())).collect::<Vec<_>>(),
            r.graph.refusals(),
            r.store.counts(&r.parts.key).await,
            r.store.dead_letters(&r.parts.key).await,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(texts_to(CUSTOMER), ["first for Maria", "second for Maria"], "once each, in order");
    assert_eq!(texts_to("15550002222"), ["first for Omar"]);
    // Both limits were hit, and waited out rather than dead-lettered.
    let codes: Vec<u32> = r.graph.refusals().iter().map(|f| f.code).collect();
    assert!(codes.contains(&130429) && codes.contains(&131056), "refusals: {codes:?}");
    assert_eq!(r.store.dead_letters(&r.parts.key).await.unwrap().len(), 0);
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn a_refused_access_token_shows_the_account_logged_out_and_keeps_its_messages() {
    use crmessenger_connector::messenger::LoginState;
    let r = rig_with("watoken", false, GraphConfig::default(), Some("EAAG-revoked-token")).await;
    eventually("logged out", async || matches!(r.parts.state.get().login, Some(LoginState::LoggedOut { .. }))).await;
    let Some(LoginState::LoggedOut { reason }) = r.parts.state.get().login else { unreachable!() };
    assert!(reason.contains("access token was refused"), "{reason}");
    // A customer's webhook still lands (Meta signs it with the app secret, not the
    // token): it is kept for when the token is fixed, not lost.
    r.graph.customer_says(Some(CUSTOMER), None, "Maria", "while the token is bad");
    eventually("the webhook stored", async || r.graph.pending_webhooks() == 0).await;
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE account = $1")
        .bind(&r.parts.key)
        .fetch_one(r.store.pool())
        .await
        .unwrap();
    assert_eq!(kept, 1, "the customer's message is kept");
    let _ = r.stop.send(true);
}

#[tokio::test]
async fn what_the_owner_sends_from_the_business_app_is_the_accounts_side_and_opens_no_window() {
    let r = rig("waecho", true, WindowError::Sync).await;
    let lead = customer_writes(&r, "Do you ship abroad?").await;
    // A day later the owner answers from the WhatsApp Business app (coexistence):
    // Meta reports it as an smb_message_echoes webhook.
    r.graph.clock().advance(Duration::from_secs(25 * 3600));
    r.clock.advance(Duration::from_secs(25 * 3600));
    r.graph.owner_says_from_the_app(CUSTOMER, "Yes, to the EU");
    eventually("the owner's note", async || has_note(&r.amo, "Yes, to the EU")).await;
    let notes: Vec<String> = r
        .amo
        .snapshot()
        .notes
        .iter()
        .filter_map(|n| n.params["text"].as_str().map(str::to_string))
        .filter(|t| t.contains("Yes, to the EU"))
        .collect();
    assert!(notes[0].starts_with("WhatsApp · → the account owner"), "{notes:?}");
    assert_eq!(r.amo.snapshot().leads.len(), 1, "the same conversation");
    // Only the customer opens the 24-hour window: a reply now is the template.
    let sent = manager_answers(&r, lead, "Shipping takes 3 days").await;
    assert_eq!(sent.kind, "template");
    let _ = r.stop.send(true);
}

/// One person on two messengers through two connectors of one CRM: Maria writes
/// on WhatsApp, then from Telegram with her phone in another spelling; the
/// Telegram account's connector finds her contact by phone and her open lead, so
/// both chats are on one contact and one lead.
#[tokio::test]
async fn one_person_on_whatsapp_and_telegram_is_one_contact_and_one_lead() {
    use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
    let r = rig("wa_and_tg", false, WindowError::Sync).await;
    let lead = customer_writes(&r, "Hello from WhatsApp").await;
    let telegram = ScriptedMessenger::start(Options::default()).await.unwrap();
    let yaml = common::shop_yaml(&r.amo.base_url(), "{}", "replies: { detection: poll, pollInterval: 1s }");
    let mut m = crmessenger_api::manifests::parse(&yaml, "shop-telegram").unwrap();
    let config =
        render(&m.accounts.remove(0), &m.bindings.remove(0), &m.policies.remove(0), RuntimeSettings::default())
            .unwrap();
    let parts = build_account(
        &config,
        &r.store,
        Arc::new(crmessenger_crm::amocrm::StaticToken(r.amo.issue_token_pair().access_token)),
        None,
        Arc::new(crmessenger_connector::messenger::scripted::Scripted::new(&telegram.base_url()).unwrap()),
        None,
        Arc::new(r.clock.clone()) as Arc<dyn Clock>,
        Arc::new(crmessenger_connector::metrics::Metrics::default()),
    )
    .unwrap();
    let stop = common::run_bridge(&parts, &r.store).await;
    let mut hello = text("7001", "t1", "Maria S.", "And hello from Telegram");
    hello.sender.phone = Some(format!("+1 ({}) {}-{}", &CUSTOMER[1..4], &CUSTOMER[4..7], &CUSTOMER[7..]));
    telegram.push(vec![hello]);
    eventually("the Telegram note", async || has_note(&r.amo, "And hello from Telegram")).await;
    let s = r.amo.snapshot();
    assert_eq!(s.contacts.len(), 1, "one contact: {:?}", s.contacts);
    assert_eq!(s.leads.len(), 1, "her open lead, not a second");
    let on_lead = |t: &str| s.notes.iter().any(|n| n.entity_id == lead && n.params["text"].to_string().contains(t));
    assert!(on_lead("Hello from WhatsApp") && on_lead("And hello from Telegram"));
    let _ = stop.send(true);
    let _ = r.stop.send(true);
}
