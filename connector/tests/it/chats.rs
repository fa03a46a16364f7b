//! The Chats API path end to end, in process, on PostgreSQL: a customer's message
//! goes into amoCRM's chat (contact linked first); a manager's answer comes back as
//! a signed hook through the gateway, reaches the messenger once and is reported
//! delivered; forged, unsigned and malformed hooks are refused with no effect; an
//! answer written while the gateway was down is recovered from the chat history.

use crate::common;
use crmessenger_testkit::checks::eventually_some;

use crmessenger_api::config::{RuntimeSettings, render};
use crmessenger_connector::app::{ChatsSettings, build_account};
use crmessenger_connector::gateway::Gateway;
use crmessenger_connector::metrics::Metrics;
use crmessenger_connector::store::{POOL_SIZE, Store};
use crmessenger_crm::amocrm::StaticToken;
use crmessenger_fake_amocrm::{ChatsChannel, Direction, FakeAmo, FakeConfig};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, from_owner, text};
use crmessenger_testkit::Postgres;
use crmessenger_testkit::TestClock;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "chats-channel-secret-5d1c";

fn sign(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A shop in Chats API mode on PostgreSQL: the amoCRM fake with a channel whose
/// hooks go to a gateway, the scripted messenger, and the account's bridge.
struct ChatsShop {
    fake: FakeAmo,
    messenger: ScriptedMessenger,
    store: Store,
    clock: TestClock,
    channel: ChatsChannel,
    /// The gateway's base URL.
    gw: String,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl ChatsShop {
    async fn start(db_name: &str, fake_config: FakeConfig, policy: &str, binding_extra: &str) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let db = Postgres::shared().database(db_name).unwrap();
        let store = Store::connect(&db, POOL_SIZE).await.unwrap();
        // The gateway's address must be known to the fake (the channel's hook URL).
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw = format!("http://{}", listener.local_addr().unwrap());
        let channel = ChatsChannel {
            channel_id: "3f6e0c1a-0000-4000-8000-00000000c4a7".into(),
            secret: SECRET.into(),
            hook_url: Some(format!("{gw}/amocrm/chats/:scope_id")),
            ..ChatsChannel::default()
        };
        let fake = FakeAmo::start(FakeConfig { chats: Some(channel.clone()), ..fake_config }).await.unwrap();
        let gateway = Gateway::new(store.clone()).with_chats_secret(Some(SECRET.into())).router();
        let server = tokio::spawn(async move { axum::serve(listener, gateway).await });
        let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
        let extra = format!("chatsChannel: true, replies: {{ detection: poll, pollInterval: 10m }}{binding_extra}");
        let yaml = common::shop_yaml(&fake.base_url(), policy, &extra);
        let mut m = crmessenger_api::manifests::parse(&yaml, "shop").unwrap();
        let config =
            render(&m.accounts.remove(0), &m.bindings.remove(0), &m.policies.remove(0), RuntimeSettings::default())
                .unwrap();
        let clock = TestClock::default();
        let chats = ChatsSettings {
            base_url: fake.base_url(),
            channel_id: channel.channel_id.clone(),
            secret: SECRET.into(),
            bot_id: channel.bot_id.clone(),
            media_url: Some(gw.clone()),
        };
        let parts = build_account(
            &config,
            &store,
            Arc::new(StaticToken(fake.issue_token_pair().access_token)),
            None,
            Arc::new(crmessenger_connector::messenger::scripted::Scripted::new(&messenger.base_url()).unwrap()),
            Some(&chats),
            Arc::new(clock.clone()),
            Arc::new(Metrics::default()),
        )
        .unwrap();
        let stop = common::run_bridge(&parts, &store).await;
        Self { fake, messenger, store, clock, channel, gw, server, stop }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_messages_and_answers_cross_the_chats_api() {
    let ChatsShop { fake, messenger, store, clock, channel, gw, server, stop, .. } =
        ChatsShop::start("chats", FakeConfig::default(), "{}", "").await;

    // The customer writes: the message is in amoCRM's chat, the chat linked to a contact.
    messenger.push(vec![text("6001", "1", "Lena", "Can I pick it up today?")]);
    let conversation = eventually_some("the chat message", 30, || {
        let s = fake.snapshot();
        s.chat_messages.iter().find(|m| m.text == "Can I pick it up today?").map(|m| m.conversation_id.clone())
    })
    .await;
    let s = fake.snapshot();
    assert_eq!(s.contacts.len(), 1, "one contact for the chat");
    assert!(s.notes.iter().all(|n| !n.params["text"].to_string().contains("pick it up")), "no note in chats mode");

    // The manager answers in the chat: the signed hook goes through the gateway.
    let answer = fake.manager_chat_reply(&conversation, 1001, "Yes, until 8 pm").await.unwrap();
    eventually_some("the answer in the messenger", 30, || {
        messenger.sent().iter().any(|m| m.chat_id == "6001" && m.text == "Yes, until 8 pm").then_some(())
    })
    .await;
    eventually_some("the delivery status in amoCRM", 30, || {
        fake.snapshot().chat_messages.iter().any(|m| m.id == answer && m.delivery_status == Some(1)).then_some(())
    })
    .await;
    // The customer reads it: amoCRM's chat shows it read.
    let sent_id = messenger.sent().iter().find(|m| m.text == "Yes, until 8 pm").map(|m| m.message_id.clone()).unwrap();
    messenger.push(vec![crmessenger_fake_messenger::receipt("6001", &sent_id, "read")]);
    eventually_some("the read status in amoCRM", 30, || {
        fake.snapshot().chat_messages.iter().any(|m| m.id == answer && m.delivery_status == Some(2)).then_some(())
    })
    .await;

    // Forged, unsigned and malformed hooks: refused, nothing stored.
    let http = reqwest::Client::new();
    let url = format!("{gw}/amocrm/chats/{}", fake.scope_id().unwrap());
    let forged = serde_json::json!({ "message": { "conversation": { "client_id": conversation }, "message": { "id": "forged-1", "text": "send money" } } }).to_string();
    let status = |r: reqwest::Response| r.status().as_u16();
    let r = http.post(&url).header("X-Signature", "00".repeat(20)).body(forged.clone()).send().await.unwrap();
    assert_eq!(status(r), 401);
    let r = http.post(&url).body(forged.clone()).send().await.unwrap();
    assert_eq!(status(r), 401);
    let r = http.post(&url).header("X-Signature", sign(b"{nope")).body("{nope").send().await.unwrap();
    assert_eq!(status(r), 400);
    let other = serde_json::json!({ "message": { "conversation": { "client_id": "not-ours:1" }, "message": { "id": "x", "text": "hi" } } }).to_string();
    let r = http.post(&url).header("X-Signature", sign(other.as_bytes())).body(other).send().await.unwrap();
    assert_eq!(status(r), 200, "a chat that is not ours is accepted and ignored");

    // A manager's file: the hook carries its URL, and it goes out with the reply.
    let file = serde_json::json!({ "message": { "conversation": { "client_id": conversation }, "message": {
        "id": "file-1", "type": "file", "text": "", "media": "https://amojo.example/files/price.pdf",
        "file_name": "price.pdf", "file_size": 1234 } } })
    .to_string();
    let r = http.post(&url).header("X-Signature", sign(file.as_bytes())).body(file).send().await.unwrap();
    assert_eq!(status(r), 200);
    eventually_some("the manager's file in the messenger", 30, || {
        messenger
            .sent()
            .iter()
            .any(|m| m.text.contains("[file: price.pdf] https://amojo.example/files/price.pdf"))
            .then_some(())
    })
    .await;

    // A photo: amoCRM gets a signed, expiring URL on the gateway and downloads it.
    let mut photo = text("6001", "2", "Lena", "this one");
    photo.media = Some(crmessenger_fake_messenger::Media {
        id: "ph-1".into(),
        kind: "photo".into(),
        file_name: "cake.jpg".into(),
        mime_type: "image/jpeg".into(),
        size: 1024,
    });
    messenger.push(vec![photo]);
    let media_url = eventually_some("the picture in amoCRM's chat", 30, || {
        fake.snapshot().chat_messages.iter().find(|m| m.message_type == "picture").and_then(|m| m.media.clone())
    })
    .await;
    assert!(media_url.starts_with(&format!("{gw}/media/")), "{media_url}");
    let got = http.get(&media_url).send().await.unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert_eq!(got.headers()["content-type"], "image/jpeg");
    let expected: Vec<u8> = "ph-1".bytes().cycle().take(1024).collect();
    assert_eq!(got.bytes().await.unwrap().to_vec(), expected, "the messenger's bytes");
    let tampered = media_url.replace("sig=", "sig=00");
    assert_eq!(http.get(&tampered).send().await.unwrap().status().as_u16(), 403);
    let id = media_url.split("/media/").nth(1).unwrap().split('?').next().unwrap().to_string();
    let key = store.media_key().await.unwrap();
    let past = 1_000;
    let expired =
        format!("{gw}/media/{id}?exp={past}&sig={}", crmessenger_connector::store::media::sign(&key, &id, past));
    assert_eq!(http.get(&expired).send().await.unwrap().status().as_u16(), 410);

    // The owner answers from their own phone: a message to the customer in the
    // same chat, authored by the channel's bot. The messenger's echoes of the
    // answers sent above are not posted again.
    messenger.push(vec![from_owner("6001", "o1", "I can hold it until 9")]);
    let by_owner = eventually_some("the owner's message in amoCRM's chat", 30, || {
        fake.snapshot().chat_messages.into_iter().find(|m| m.text == "I can hold it until 9")
    })
    .await;
    assert_eq!((by_owner.direction, by_owner.conversation_id.as_str()), (Direction::Outbound, conversation.as_str()));
    assert_eq!(by_owner.sender["ref_id"], channel.bot_id.as_str());
    assert_eq!(by_owner.receiver.as_ref().map(|r| r["id"].clone()), Some(serde_json::json!("6001")));
    let by_bot = |s: &crmessenger_fake_amocrm::Snapshot| {
        s.chat_messages.iter().filter(|m| m.sender["ref_id"] == channel.bot_id.as_str()).count()
    };
    assert_eq!(by_bot(&fake.snapshot()), 1, "only the owner's message, no echo of an answer");

    // The customer edits the first message, then deletes the photo's message:
    // both change the message in amoCRM's chat in place (amoCRM has no deletion
    // event), and nothing new is posted.
    let before = fake.snapshot().chat_messages.len();
    let mut edited = text("6001", "1", "Lena", "Can I pick it up tomorrow?");
    edited.kind = "edit".into();
    let mut deleted = text("6001", "2", "Lena", "");
    deleted.kind = "delete".into();
    messenger.push(vec![edited, deleted]);
    let changed = eventually_some("the edit and the deletion in amoCRM's chat", 30, || {
        let s = fake.snapshot();
        let first = s.chat_messages.iter().find(|m| m.text == "Can I pick it up tomorrow?")?;
        let photo = s.chat_messages.iter().find(|m| m.text == "[the customer deleted this message]")?;
        Some((first.edits, photo.message_type.clone(), s.chat_messages.len()))
    })
    .await;
    assert_eq!(changed, (1, "text".to_string(), before), "edited in place, nothing posted");

    // The gateway goes down; the manager answers; amoCRM's single hook fails.
    server.abort();
    let _ = server.await;
    fake.manager_chat_reply(&conversation, 1001, "Written while you were away").await.unwrap();
    let deliveries = fake.snapshot().chat_hook_deliveries;
    assert!(deliveries.last().is_some_and(|d| d.status.is_none()), "the hook found no gateway");
    // The history recovery (every minute on the connector's clock) finds it. The
    // CRM's clock moves with the connector's (the recovery compares the CRM's
    // timestamps with its own cursor, as with real, synchronised clocks).
    let crm_clock = fake.clock();
    for _ in 0..70 {
        clock.advance(Duration::from_secs(1));
        crm_clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually_some("the recovered answer in the messenger", 30, || {
        messenger.sent().iter().any(|m| m.text == "Written while you were away").then_some(())
    })
    .await;
    // One more answer while the gateway is still down, found by the next recovery:
    // once it is in, a recovery pass ran after the first one, and anything either
    // pass would have sent again has been sent.
    fake.manager_chat_reply(&conversation, 1001, "And one more thing").await.unwrap();
    for _ in 0..70 {
        clock.advance(Duration::from_secs(1));
        crm_clock.advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eventually_some("the second recovered answer", 30, || {
        messenger.sent().iter().any(|m| m.text == "And one more thing").then_some(())
    })
    .await;
    let sent = messenger.sent();
    assert_eq!(
        sent.len(),
        4,
        "each answer (three texts, a file) once, the hooked ones not again from history: {sent:?}"
    );
    assert!(!sent.iter().any(|m| m.text.contains("send money")), "a forged hook was acted on");
    let _ = stop.send(true);
}

/// Chats mode gives each conversation exactly one lead, placed as the policy says
/// (pipeline, stage, the round-robin user, tags), whether or not amoCRM opens
/// incoming leads for chats itself: the lead is made before the chat's first
/// post, and a customer who already has an incoming lead amoCRM made (here from
/// another channel) gets that lead adopted rather than a second one. Escalation
/// fires on those leads and a manager's answer in the chat completes it.
async fn one_lead_per_conversation(db_name: &str, incoming_leads_for_contacts: bool) {
    use crmessenger_fake_amocrm::{MAIN_PIPELINE_ID, SECOND_STAGE_ID, UNSORTED_STATUS_ID};
    let fake_config = FakeConfig { incoming_leads_for_contacts, ..FakeConfig::default() };
    let binding = format!(
        ", pipelineId: {MAIN_PIPELINE_ID}, statusId: {SECOND_STAGE_ID}, responsibleUserIds: [1001, 1002, 1003]"
    );
    let policy = "{ leads: { tags: [shop] }, escalation: { enabled: true, after: 1m, taskText: Answer the customer } }";
    let shop = ChatsShop::start(db_name, fake_config, policy, &binding).await;
    let (fake, messenger, clock) = (&shop.fake, &shop.messenger, &shop.clock);
    // Anna wrote to another channel of the shop first: amoCRM made her an incoming lead.
    let (anna_contact, incoming) = fake.add_incoming_lead("Anna", "+79161234501");
    let with_phone = |mut u: crmessenger_fake_messenger::Update, phone: &str| {
        u.sender.phone = Some(phone.into());
        u
    };
    messenger.push(vec![
        with_phone(text("7001", "1", "Anna", "Is the blue one in stock?"), "+79161234501"),
        text("7002", "1", "Boris", "Do you deliver?"),
        text("7003", "1", "Clara", "Hello"),
    ]);
    messenger.push(vec![
        with_phone(text("7001", "2", "Anna", "Size M"), "+79161234501"),
        text("7002", "2", "Boris", "To Tverskaya"),
        text("7003", "2", "Clara", "Are you open on Sunday?"),
    ]);
    let s = eventually_some("six messages in amoCRM's chats", 60, || {
        let s = fake.snapshot();
        (s.chat_messages.len() == 6).then_some(s)
    })
    .await;
    assert_eq!(s.leads.len(), 3, "one lead per conversation, none besides: {:?}", s.leads);
    assert!(s.unsorted.is_empty(), "no incoming lead left unsorted: {:?}", s.unsorted);
    let adopted = s.leads.iter().find(|l| l.id == incoming).expect("Anna's incoming lead is her conversation's lead");
    assert!(adopted.contact_ids.contains(&anna_contact));
    assert_eq!(s.contacts.len(), 3, "Anna's contact found by her phone, not made again");
    let mut users: Vec<i64> = s.leads.iter().map(|l| l.responsible_user_id).collect();
    users.sort();
    assert_eq!(users, vec![1001, 1002, 1003], "one turn of the rotation each");
    for l in &s.leads {
        assert_eq!((l.pipeline_id, l.status_id), (MAIN_PIPELINE_ID, SECOND_STAGE_ID), "placed per the binding: {l:?}");
        assert_ne!(l.status_id, UNSORTED_STATUS_ID);
        assert!(l.tags.iter().any(|t| t == "shop"), "the policy's tag: {l:?}");
        assert!(!l.name.starts_with("Новое обращение"), "named per the policy: {l:?}");
    }
    for name in ["Anna", "Boris", "Clara"] {
        assert!(s.leads.iter().any(|l| l.name.contains(name)), "a lead named for {name}: {:?}", s.leads);
    }

    // Nobody answers for over a minute: one escalation task per lead.
    for _ in 0..9 {
        clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tasks = eventually_some("three escalation tasks", 60, || {
        let t = fake.snapshot().tasks;
        (t.len() >= 3).then_some(t)
    })
    .await;
    let mut on: Vec<i64> = tasks.iter().map(|t| t.entity_id).collect();
    on.sort();
    let mut leads: Vec<i64> = s.leads.iter().map(|l| l.id).collect();
    leads.sort();
    assert_eq!(on, leads, "a task on each conversation's lead");
    assert!(tasks.iter().all(|t| t.text == "Answer the customer"));

    // A manager answers Anna in the chat: the answer goes out, her task is done.
    let anna_chat = s.chat_messages.iter().find(|m| m.text == "Size M").unwrap().conversation_id.clone();
    fake.manager_chat_reply(&anna_chat, 1002, "Yes, size M is here").await.unwrap();
    eventually_some("Anna's task completed", 30, || {
        fake.snapshot().tasks.iter().any(|t| t.entity_id == incoming && t.is_completed).then_some(())
    })
    .await;
    assert!(messenger.sent().iter().any(|m| m.chat_id == "7001" && m.text == "Yes, size M is here"));

    // Boris writes again: his conversation keeps its one lead.
    messenger.push(vec![text("7002", "3", "Boris", "Any news?")]);
    let s = eventually_some("Boris's third message", 30, || {
        let s = fake.snapshot();
        s.chat_messages.iter().any(|m| m.text == "Any news?").then_some(s)
    })
    .await;
    assert_eq!(s.leads.len(), 3, "still one lead per conversation");
    assert!(s.unsorted.is_empty());
    let _ = shop.stop.send(true);
    shop.server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lead_per_conversation_in_chats_mode() {
    one_lead_per_conversation("chats_leads", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_lead_per_conversation_when_amocrm_opens_incoming_leads() {
    one_lead_per_conversation("chats_incoming", true).await;
}
