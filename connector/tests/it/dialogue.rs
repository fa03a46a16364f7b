//! The whole dialogue in the CRM: what the account's owner writes from their own
//! phone reaches the CRM as the account's side, in order with the customer's
//! messages, and answers the customer; the echoes of replies the connector sent
//! never do. On PostgreSQL and SQLite, across a restart.

use crate::bridge::{escalation_checks, notes_of, pg, sqlite};
use crate::common;
use crmessenger_api::config::{ConnectorConfig, RuntimeSettings, render};
use crmessenger_connector::app::build_account;
use crmessenger_connector::metrics::Metrics;
use crmessenger_connector::store::{POOL_SIZE, Store};
use crmessenger_crm::amocrm::StaticToken;
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
use crmessenger_fake_messenger::{
    Media, OWNER_ID, OWNER_NAME, Options, ScriptedMessenger, Update, from_owner, group_text, media_bytes, text,
};
use crmessenger_testkit::TestClock;
use crmessenger_testkit::checks::eventually_some;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

struct Shop {
    fake: FakeAmo,
    messenger: ScriptedMessenger,
    store: Store,
    config: ConnectorConfig,
    clock: TestClock,
    metrics: Arc<Metrics>,
}

impl Shop {
    async fn new(db_url: &str) -> Self {
        Self::with(db_url, "").await
    }

    /// A shop whose binding also has `binding_extra` (flow-style fields).
    async fn with(db_url: &str, binding_extra: &str) -> Self {
        Self::configured(db_url, "{ chats: { groups: true }, escalation: { enabled: true, after: 1m } }", binding_extra)
            .await
    }

    /// A shop with its policy's spec (flow style) and `binding_extra`.
    async fn configured(db_url: &str, policy: &str, binding_extra: &str) -> Self {
        let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
        let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
        let extra = if binding_extra.is_empty() { String::new() } else { format!(", {binding_extra}") };
        let yaml = common::shop_yaml(
            &fake.base_url(),
            policy,
            &format!(
                "replies: {{ detection: poll, pollInterval: 1s }}, contactFields: {{ telegramUserId: 201, telegramUsername: 202 }}{extra}"
            ),
        );
        let mut m = crmessenger_api::manifests::parse(&yaml, "shop").unwrap();
        let config =
            render(&m.accounts.remove(0), &m.bindings.remove(0), &m.policies.remove(0), RuntimeSettings::default())
                .unwrap();
        let store = Store::connect(db_url, POOL_SIZE).await.unwrap();
        Self { fake, messenger, store, config, clock: TestClock::default(), metrics: Arc::new(Metrics::default()) }
    }

    /// Starts a connector for the account (a new one after each stop).
    async fn start(&self) -> watch::Sender<bool> {
        let parts = build_account(
            &self.config,
            &self.store,
            Arc::new(StaticToken(self.fake.issue_token_pair().access_token)),
            None,
            Arc::new(crmessenger_connector::messenger::scripted::Scripted::new(&self.messenger.base_url()).unwrap()),
            None,
            Arc::new(self.clock.clone()),
            self.metrics.clone(),
        )
        .unwrap();
        common::run_bridge(&parts, &self.store).await
    }

    /// The connector's notes on the lead (ours carry a `[ref …]` marker), once
    /// `n` of them are there.
    async fn notes(&self, n: usize) -> Vec<String> {
        eventually_some(&format!("{n} notes of ours"), 60, || {
            let lead = self.fake.snapshot().leads.first()?.id;
            let ours: Vec<String> = notes_of(&self.fake, lead).into_iter().filter(|t| t.contains("[ref ")).collect();
            (ours.len() >= n).then_some(ours)
        })
        .await
    }
}

impl Shop {
    /// Waits until the CRM has `n` notes of ours on any leads.
    async fn notes_total(&self, n: usize) {
        eventually_some(&format!("{n} notes in all"), 90, || {
            let s = self.fake.snapshot();
            let ours =
                s.notes.iter().filter(|x| x.params["text"].as_str().is_some_and(|t| t.contains("[ref "))).count();
            (ours >= n).then_some(())
        })
        .await
    }
}

/// First line of a note after its header: the message itself.
fn body(note: &str) -> String {
    note.lines().nth(1).unwrap_or_default().to_string()
}

async fn both_sides_reach_the_crm_in_order_once_and_the_owners_answer_counts(db_url: &str) {
    let shop = Shop::new(db_url).await;
    let stop = shop.start().await;
    shop.messenger.push(vec![text("7001", "c1", "Vera", "Do you deliver on Sundays?")]);
    shop.messenger.push(vec![from_owner("7001", "o1", "Yes, until 6 pm")]);
    shop.messenger.push(vec![text("7001", "c2", "Vera", "Great, tomorrow then")]);
    let notes = shop.notes(3).await;
    assert!(notes[1].starts_with("Telegram · → the account owner, Shop Owner:"), "{notes:?}");

    // A restart in the middle of the conversation.
    let _ = stop.send(true);
    shop.messenger.push(vec![from_owner("7001", "o2", "Noted: Sunday, 2 pm")]);
    let stop = shop.start().await;
    // A manager answers in the CRM: the reply goes out once, and the messenger's
    // echo of it is not written back as the owner's message.
    let lead = shop.fake.snapshot().leads[0].id;
    shop.fake.add_manager_note(lead, 1001, ">> The courier will call you");
    eventually_some("the reply in the messenger", 30, || (!shop.messenger.sent().is_empty()).then_some(())).await;
    shop.messenger.push(vec![text("7001", "c3", "Vera", "Thanks!")]);
    shop.messenger.push(vec![from_owner("7001", "o3", "You are welcome")]);
    let notes = shop.notes(6).await;
    let bodies: Vec<String> = notes.iter().map(|n| body(n)).collect();
    assert_eq!(
        bodies,
        [
            "Do you deliver on Sundays?",
            "Yes, until 6 pm",
            "Great, tomorrow then",
            "Noted: Sunday, 2 pm",
            "Thanks!",
            "You are welcome"
        ],
        "both sides, in order, once: {notes:?}"
    );
    let sent = shop.messenger.sent();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(!notes.iter().any(|n| n.contains("courier")), "our own reply is not echoed: {notes:?}");
    // A note is in the CRM a moment before its row is recorded done: wait for that
    // (an echo left pending or dead-lettered would never get there).
    let key = format!("{}/{}", shop.config.account.namespace, shop.config.account.name);
    crmessenger_testkit::checks::eventually("every row recorded, the echo included", 10, || async {
        let c = shop.store.counts(&key).await.map_err(|e| e.to_string())?;
        match (c.inbox_pending, c.inbox_dead) {
            (0, 0) => Ok(()),
            other => Err(format!("pending and dead: {other:?}")),
        }
    })
    .await;

    // The owner answered last: however long nobody writes, no escalation task.
    escalation_checks(&shop.metrics, &shop.clock, 2).await;
    shop.clock.advance(Duration::from_secs(180));
    escalation_checks(&shop.metrics, &shop.clock, 4).await;
    assert!(shop.fake.snapshot().tasks.is_empty(), "the owner's answer counts as an answer");
    // A customer who then waits gets one (so the check above could fail)...
    shop.messenger.push(vec![text("7001", "c4", "Vera", "Is the courier coming?")]);
    shop.notes(7).await;
    // The waiting is recorded just after the note is written: the clock moves on
    // only once it is (a check before it would find nobody waiting).
    crmessenger_testkit::checks::eventually("the customer recorded as waiting", 10, || async {
        let c = shop.store.conversation(&key, "7001").await.map_err(|e| e.to_string())?;
        match c.and_then(|c| c.unanswered_since_ms) {
            Some(_) => Ok(()),
            None => Err("nobody waits yet".to_string()),
        }
    })
    .await;
    shop.clock.advance(Duration::from_secs(180));
    // The fake CRM limits requests per second of real time, while the connector's
    // budget runs on the moved clock: a task refused with 429 comes at a later check.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        escalation_checks(&shop.metrics, &shop.clock, 1).await;
        tasks = shop.fake.snapshot().tasks;
        if !tasks.is_empty() {
            break;
        }
    }
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    // ...which the owner's answer from the phone completes.
    shop.messenger.push(vec![from_owner("7001", "o4", "He is on the way")]);
    eventually_some("the task completed", 30, || shop.fake.snapshot().tasks[0].is_completed.then_some(())).await;
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_both_sides_of_the_dialogue() {
    both_sides_reach_the_crm_in_order_once_and_the_owners_answer_counts(&pg("dialogue")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_both_sides_of_the_dialogue() {
    let dir = tempfile::tempdir().unwrap();
    both_sides_reach_the_crm_in_order_once_and_the_owners_answer_counts(&sqlite(&dir)).await;
}

/// A group chat is one lead (its title and member count in the lead's name) with
/// every sender a contact linked to it and each note naming its sender; a
/// manager's reply goes to the group. A member's private chat keeps a lead of its
/// own. On PostgreSQL and SQLite, across a restart.
async fn a_group_is_one_lead_with_a_contact_per_sender(db_url: &str) {
    const GROUP: &str = "-100777";
    let shop = Shop::new(db_url).await;
    let say = |id: &str, who: (&str, &str), t: &str| group_text(GROUP, "Sunday market", 5, id, who, t);
    let stop = shop.start().await;
    shop.messenger
        .push(vec![say("g1", ("301", "Anna"), "Who brings the tables?"), say("g2", ("302", "Boris"), "I do")]);
    shop.notes(2).await;
    let _ = stop.send(true);
    // After a restart: a third sender, a known one again, and the owner.
    shop.messenger.push(vec![
        say("g3", ("303", "Clara"), "Chairs are on me"),
        say("g4", ("301", "Anna"), "Great"),
        Update { outgoing: true, ..say("g5", (OWNER_ID, OWNER_NAME), "See you all at 9") },
    ]);
    let stop = shop.start().await;
    shop.notes(5).await;
    // Anna also writes to the shop privately.
    shop.messenger.push(vec![text("301", "p1", "Anna", "A private question")]);
    let (group_lead, private_lead) = eventually_some("the private chat's lead", 30, || {
        let s = shop.fake.snapshot();
        let group = s.leads.iter().find(|l| l.name.contains("Sunday market"))?.clone();
        let private = s.leads.iter().find(|l| l.id != group.id)?.clone();
        (!notes_of(&shop.fake, private.id).is_empty()).then_some((group, private))
    })
    .await;
    let s = shop.fake.snapshot();
    assert_eq!(s.leads.len(), 2, "one lead for the group, one for the private chat: {:?}", s.leads);
    assert!(group_lead.name.contains("group of 5"), "{}", group_lead.name);
    let name_of = |id: &i64| s.contacts.iter().find(|c| c.id == *id).map(|c| c.name.clone()).unwrap_or_default();
    let mut members: Vec<String> = group_lead.contact_ids.iter().map(name_of).collect();
    members.sort();
    assert_eq!(members, ["Anna", "Boris", "Clara"], "each sender once, linked to the group's lead");
    assert_eq!(s.contacts.len(), 3, "Anna's private chat finds her contact: {:?}", s.contacts);
    assert_eq!(private_lead.contact_ids.iter().map(name_of).collect::<Vec<_>>(), ["Anna"]);
    let notes = notes_of(&shop.fake, group_lead.id);
    let headers: Vec<&str> = notes.iter().filter_map(|n| n.lines().next()).collect();
    assert_eq!(
        headers,
        [
            "Telegram · Anna in Sunday market:",
            "Telegram · Boris in Sunday market:",
            "Telegram · Clara in Sunday market:",
            "Telegram · Anna in Sunday market:",
            "Telegram · → the account owner, Shop Owner in Sunday market:",
        ],
        "{notes:?}"
    );
    // A manager's answer on the group's lead goes to the group.
    shop.fake.add_manager_note(group_lead.id, 1001, ">> Tables at the north gate");
    let sent = eventually_some("the reply in the group", 30, || {
        let sent = shop.messenger.sent();
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert_eq!((sent[0].chat_id.as_str(), sent[0].text.as_str()), (GROUP, "Tables at the north gate"));
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_group_is_one_lead() {
    a_group_is_one_lead_with_a_contact_per_sender(&pg("dialogue_group")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_group_is_one_lead() {
    let dir = tempfile::tempdir().unwrap();
    a_group_is_one_lead_with_a_contact_per_sender(&sqlite(&dir)).await;
}

/// Files both ways in notes mode. A customer's photo and documents go to amoCRM's
/// file service (a 600 KB one in two parts) and are linked to the lead, once even
/// when linking fails and is retried; an oversized one gets a note saying why. A
/// manager's files go to the customer only when attached by the same manager right
/// before a `>>` reply; another manager's attachment, and one attached after the
/// reply, never leave the CRM.
async fn files_go_both_ways_in_notes_mode(db_url: &str) {
    let shop = Shop::new(db_url).await;
    let file = |id: &str, kind: &str, name: &str, mime: &str, size: u64, caption: &str| Update {
        media: Some(Media { id: id.into(), kind: kind.into(), file_name: name.into(), mime_type: mime.into(), size }),
        ..text("7001", &format!("m-{id}"), "Vera", caption)
    };
    // The first link of the files to the lead fails: the retry links the same files.
    shop.fake.inject(crmessenger_fake_amocrm::Fault {
        method: Some(http::Method::PUT),
        path_prefix: "/api/v4/leads/".into(),
        kind: crmessenger_fake_amocrm::FaultKind::Status(503),
        times: 1,
    });
    let stop = shop.start().await;
    shop.messenger.push(vec![
        file("shelf", "photo", "shelf.jpg", "image/jpeg", 1024, "This one?"),
        file("order*600000", "document", "order.pdf", "application/pdf", 600_000, ""),
        file("scan", "document", "scan.tiff", "image/tiff", 300 * 1024 * 1024, "the full scan"),
    ]);
    let notes = shop.notes(3).await;
    let s = shop.fake.snapshot();
    let lead = s.leads[0].id;
    let mut files: Vec<(String, Vec<i64>, u64)> =
        s.files.iter().map(|f| (f.name.clone(), f.leads.clone(), f.size)).collect();
    files.sort();
    assert_eq!(
        files,
        [("order.pdf".to_string(), vec![lead], 600_000), ("shelf.jpg".to_string(), vec![lead], 1024)],
        "each file uploaded once and linked to the lead"
    );
    assert!(s.requests.iter().any(|r| r.method == "PUT" && r.status == 503), "the first link was refused");
    let uploads = s.requests.iter().filter(|r| r.path.starts_with("/drive/v1.0/sessions/upload/")).count();
    assert_eq!(uploads, 3, "600,000 bytes in two parts of 524,288 at most, 1,024 in one");
    assert!(notes[0].contains("This one?\n(in the lead's files: shelf.jpg)"), "{notes:?}");
    assert!(notes[1].contains("(in the lead's files: order.pdf)"), "{notes:?}");
    assert!(notes[2].contains("the full scan\n(not attached: over the policy's media limit of 20 MiB)"), "{notes:?}");

    // The manager: a file by a colleague, then two of their own, the reply, and
    // one more after it.
    let bytes = |n: usize, b: u8| vec![b; n];
    shop.fake.add_manager_attachment(lead, 1002, "internal.xlsx", "application/vnd.ms-excel", &bytes(50, 1));
    shop.fake.add_manager_attachment(lead, 1001, "invoice.pdf", "application/pdf", &bytes(700_000, 2));
    shop.fake.add_manager_attachment(lead, 1001, "photo.png", "image/png", &bytes(2048, 3));
    shop.fake.add_manager_note(lead, 1001, ">> Here is your invoice");
    let sent = eventually_some("the reply and its two files", 30, || {
        let sent = shop.messenger.sent();
        (sent.len() >= 3).then_some(sent)
    })
    .await;
    shop.fake.add_manager_attachment(lead, 1001, "later.pdf", "application/pdf", &bytes(10, 4));
    let b64 = |v: &[u8]| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v);
    assert_eq!(sent[0].text, "Here is your invoice");
    let files: Vec<(&str, &str, &str)> = sent[1..]
        .iter()
        .filter_map(|m| m.file.as_ref().map(|f| (f.kind.as_str(), f.file_name.as_str(), f.data.as_str())))
        .collect();
    let (invoice, photo) = (b64(&bytes(700_000, 2)), b64(&bytes(2048, 3)));
    assert!(
        files == [("file", "invoice.pdf", invoice.as_str()), ("picture", "photo.png", photo.as_str())],
        "as the type says, byte for byte: {:?}",
        files.iter().map(|(k, n, d)| (k, n, d.len())).collect::<Vec<_>>()
    );
    // Later polls and a restart send nothing more: not the colleague's file, not
    // the one attached after the reply, not the reply again. The colleague answers
    // six minutes after attaching their file: it stays in the CRM too.
    let _ = stop.send(true);
    let stop = shop.start().await;
    shop.fake.clock().advance(Duration::from_secs(360));
    shop.fake.add_manager_note(lead, 1002, ">> Anything else?");
    eventually_some("the colleague's reply", 30, || {
        let sent = shop.messenger.sent();
        (sent.len() >= 4).then_some(sent)
    })
    .await;
    for _ in 0..3 {
        shop.clock.advance(Duration::from_secs(2));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let sent = shop.messenger.sent().into_iter().skip(3).collect::<Vec<_>>();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].text.as_str(), sent[0].file.is_none()), ("Anything else?", true));
    // What the customer sent is in the file service byte for byte.
    let s = shop.fake.snapshot();
    for (name, id) in [("shelf.jpg", "shelf"), ("order.pdf", "order*600000")] {
        let f = s.files.iter().find(|f| f.name == name).unwrap();
        assert!(f.bytes == media_bytes(id), "{name} differs");
    }
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_files_go_both_ways_in_notes_mode() {
    files_go_both_ways_in_notes_mode(&pg("dialogue_files")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_files_go_both_ways_in_notes_mode() {
    let dir = tempfile::tempdir().unwrap();
    files_go_both_ways_in_notes_mode(&sqlite(&dir)).await;
}

/// A manager who edits a reply note after it went out changes the message in the
/// messenger (once per edit); the messenger's report of the edit is not written to
/// the CRM as the owner's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_managers_edit_of_a_sent_reply_reaches_the_messenger() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::new(&sqlite(&dir)).await;
    let stop = shop.start().await;
    shop.messenger.push(vec![text("7001", "c1", "Vera", "When do you open?")]);
    shop.notes(1).await;
    let lead = shop.fake.snapshot().leads[0].id;
    let note = shop.fake.add_manager_note(lead, 1001, ">> We open at 9");
    eventually_some("the reply", 30, || (!shop.messenger.sent().is_empty()).then_some(())).await;
    // A minute later the manager corrects it.
    shop.fake.clock().advance(Duration::from_secs(60));
    assert!(shop.fake.edit_note(note, ">> We open at 10, sorry"));
    let sent = eventually_some("the edit in the messenger", 30, || {
        let sent = shop.messenger.sent();
        (sent[0].text == "We open at 10, sorry").then_some(sent)
    })
    .await;
    assert_eq!((sent.len(), sent[0].edits.clone()), (1, vec!["We open at 9".to_string()]), "edited, not sent again");
    // Polls go on; the customer writes again: nothing else is sent or edited, and
    // the messenger's report of the edit is not in the CRM.
    shop.messenger.push(vec![text("7001", "c2", "Vera", "Thanks")]);
    let notes = shop.notes(2).await;
    assert!(!notes.iter().any(|n| n.contains("We open at")), "{notes:?}");
    let sent = shop.messenger.sent();
    assert_eq!((sent.len(), sent[0].edits.len()), (1, 1), "{sent:?}");
    let _ = stop.send(true);
}

/// Round-robin assignment over three users: 30 new leads while the connector is
/// restarted twice go 10/10/10 (the rotation is in the database, not in a
/// connector's memory), and customers who come back to their open lead take no turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leads_go_round_robin_across_restarts_and_reused_leads_take_no_turn() {
    let url = pg("dialogue_rr");
    let shop = Shop::with(&url, "responsibleUserIds: [1001, 1002, 1003]").await;
    let mut stop = shop.start().await;
    for round in 0..3 {
        let batch: Vec<Update> =
            (0..10).map(|i| text(&format!("88{round}{i}"), "m1", &format!("Customer {round}{i}"), "hello")).collect();
        shop.messenger.push(batch);
        shop.notes_total(10 * (round + 1)).await;
        // Two customers come back to their open leads.
        shop.messenger.push(vec![
            text(&format!("88{round}0"), "m2", "again", "me again"),
            text(&format!("88{round}1"), "m2", "again", "me again"),
        ]);
        shop.notes_total(10 * (round + 1) + 2 * (round + 1)).await;
        let _ = stop.send(true);
        stop = shop.start().await;
    }
    let leads = shop.fake.snapshot().leads;
    assert_eq!(leads.len(), 30);
    let per_user = |u: i64| leads.iter().filter(|l| l.responsible_user_id == u).count();
    assert_eq!((per_user(1001), per_user(1002), per_user(1003)), (10, 10, 10));
    // The rotation is one counter in the database: two connectors' stores take
    // distinct turns.
    let other = Store::connect(&url, POOL_SIZE).await.unwrap();
    let binding = format!("{}/shop", shop.config.account.namespace);
    let (a, b) = tokio::join!(async { futures_take(&shop.store, &binding, 20).await }, async {
        futures_take(&other, &binding, 20).await
    });
    let mut turns: Vec<u64> = a.into_iter().chain(b).collect();
    turns.sort();
    assert_eq!(turns, (30..70).collect::<Vec<u64>>(), "every turn once, after the 30 taken");
    let _ = stop.send(true);
}

/// A user who left (deactivated in amoCRM) gets no more leads: the rotation goes
/// on among the others, and when nobody of it is active the binding's fallback
/// user gets them. The CRM's user list is read again after five minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_user_is_skipped_and_the_fallback_takes_over() {
    let shop = Shop::with(&pg("dialogue_fallback"), "responsibleUserIds: [1002, 1003], fallbackUserId: 1001").await;
    shop.fake.deactivate_user(1002);
    let stop = shop.start().await;
    let batch: Vec<Update> = (0..4).map(|i| text(&format!("890{i}"), "m1", &format!("Customer {i}"), "hi")).collect();
    shop.messenger.push(batch);
    shop.notes_total(4).await;
    let users: Vec<i64> = shop.fake.snapshot().leads.iter().map(|l| l.responsible_user_id).collect();
    assert_eq!(users, [1003, 1003, 1003, 1003], "1002 left: the rotation is 1003 alone");
    // 1003 leaves too; once the connector reads the users again, the fallback.
    shop.fake.deactivate_user(1003);
    shop.clock.advance(Duration::from_secs(301));
    shop.messenger.push(vec![text("8910", "m1", "Late customer", "hello?")]);
    shop.notes_total(5).await;
    let s = shop.fake.snapshot();
    assert_eq!(s.leads.len(), 5);
    let late = s.leads.iter().find(|l| l.name.contains("Late customer")).unwrap();
    assert_eq!(late.responsible_user_id, 1001, "the fallback user");
    let _ = stop.send(true);
}

/// `leads.create: false`: no lead at all; the conversation is kept on the
/// customer's contact — its notes, its escalation task — and a manager's `>>` note
/// on the contact is the reply that goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_leads_the_conversation_is_kept_on_the_contact() {
    let policy = "{ leads: { create: false }, escalation: { enabled: true, after: 1m } }";
    let shop = Shop::configured(&pg("dialogue_contacts"), policy, "").await;
    let stop = shop.start().await;
    shop.messenger
        .push(vec![text("8801", "c1", "Olga", "Is it still for sale?"), text("8801", "c2", "Olga", "The red one")]);
    let contact_notes = |s: &crmessenger_fake_amocrm::Snapshot| -> Vec<String> {
        s.notes
            .iter()
            .filter(|n| n.entity_type == "contacts")
            .filter_map(|n| n.params["text"].as_str().map(str::to_string))
            .filter(|t| t.contains("[ref "))
            .collect()
    };
    let s = eventually_some("two notes on the contact", 60, || {
        let s = shop.fake.snapshot();
        (contact_notes(&s).len() == 2).then_some(s)
    })
    .await;
    assert!(s.leads.is_empty(), "no lead: {:?}", s.leads);
    assert_eq!(s.contacts.len(), 1);
    let contact = s.contacts[0].id;
    assert!(s.notes.iter().filter(|n| n.params["text"].to_string().contains("[ref ")).all(|n| n.entity_id == contact));
    // Nobody answers for over a minute: the task is on the contact.
    for _ in 0..9 {
        shop.clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let task = eventually_some("the escalation task", 30, || shop.fake.snapshot().tasks.into_iter().next()).await;
    assert_eq!((task.entity_type.as_str(), task.entity_id), ("contacts", contact));
    // The manager answers on the contact: it goes out, and the task is done.
    shop.fake.add_manager_contact_note(contact, 1002, ">> Yes, the red one is here");
    eventually_some("the reply in the messenger", 30, || {
        shop.messenger.sent().iter().any(|m| m.chat_id == "8801" && m.text == "Yes, the red one is here").then_some(())
    })
    .await;
    eventually_some("the task completed", 30, || {
        shop.fake.snapshot().tasks.iter().any(|t| t.is_completed).then_some(())
    })
    .await;
    assert!(shop.fake.snapshot().leads.is_empty(), "still no lead");
    let _ = stop.send(true);
}

/// A new lead names the account's lead source when the CRM has it, and carries
/// the account's name as a tag when sources were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leads_name_the_accounts_source_or_carry_its_tag() {
    let mut shop = Shop::new(&pg("dialogue_source")).await;
    let external = crmessenger_api::config::lead_source_id(&shop.config.account.namespace, &shop.config.account.name);
    shop.fake.add_source(&external, "shop");
    shop.config.crm.lead_source = Some(external);
    let stop = shop.start().await;
    shop.messenger.push(vec![text("8701", "m1", "Rita", "hello")]);
    shop.notes_total(1).await;
    let lead = shop.fake.snapshot().leads.remove(0);
    let source = shop.fake.snapshot().sources.remove(0);
    assert_eq!(lead.source_id, Some(source.id), "the account's source");
    let _ = stop.send(true);

    let mut tagged = Shop::new(&pg("dialogue_source_tag")).await;
    tagged.config.crm.source_tag = Some("shop".into());
    let stop = tagged.start().await;
    tagged.messenger.push(vec![text("8702", "m1", "Sara", "hello")]);
    tagged.notes_total(1).await;
    let lead = tagged.fake.snapshot().leads.remove(0);
    assert_eq!((lead.source_id, lead.tags), (None, vec!["Telegram".to_string(), "shop".to_string()]));
    let _ = stop.send(true);
}

/// The scripted messenger's history (messages from before the account was
/// connected, never in its update stream) is imported by the policy's backfill,
/// in order and marked as history, beside a live message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripted_messengers_history_is_imported() {
    let shop = Shop::configured(&pg("dialogue_history"), "{ backfill: { days: 1, maxChats: 10 } }", "").await;
    let hour_ago = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let old = (0..3)
        .map(|i| {
            let mut u = text("8601", &format!("old{i}"), "Pavel", &format!("from before {i}"));
            u.sent_at_ms = hour_ago + i;
            u
        })
        .collect();
    shop.messenger.push_history(old);
    let stop = shop.start().await;
    shop.messenger.push(vec![text("8601", "live1", "Pavel", "and now live")]);
    let notes = shop.notes(4).await;
    let bodies: Vec<String> = notes.iter().map(|n| body(n)).collect();
    // Live messages never wait behind the import, so the live one may come first.
    let old: Vec<&String> = bodies.iter().filter(|b| b.starts_with("from before")).collect();
    assert_eq!(old, ["from before 0", "from before 1", "from before 2"], "history in order: {notes:?}");
    assert!(bodies.iter().any(|b| b == "and now live"), "{notes:?}");
    let _ = stop.send(true);
}

/// A link a manager makes in the CRM: a contact they keep (from a phone call)
/// gets the customer's Telegram username typed into its identity field; when that
/// customer writes, the message goes to that contact — no second contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_a_manager_linked_to_a_username_gets_that_customers_messages() {
    let shop = Shop::new(&pg("dialogue_link")).await;
    let cfv = serde_json::json!([{ "field_id": 202, "values": [{ "value": "@irina_k" }] }]);
    let linked = shop.fake.add_contact("Irina Kovaleva (called on Monday)", cfv);
    let stop = shop.start().await;
    let mut hello = text("8501", "m1", "Ira", "Hi, it's me from the call");
    hello.sender.username = Some("irina_k".into());
    shop.messenger.push(vec![hello]);
    shop.notes(1).await;
    let s = shop.fake.snapshot();
    assert_eq!(s.contacts.len(), 1, "the manager's contact, not a new one: {:?}", s.contacts);
    assert_eq!(s.contacts[0].id, linked);
    assert_eq!(s.leads[0].contact_ids, vec![linked]);
    let _ = stop.send(true);
}

async fn futures_take(store: &Store, binding: &str, n: usize) -> Vec<u64> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(store.take_turn(binding).await.unwrap());
    }
    out
}

/// Emoji with skin tones and joiners, right-to-left Arabic, and combining marks.
const UNUSUAL: &str = "Привет 👋🏽 👩‍👩‍👧 — مرحبا بك، — e\u{301} n\u{303} A\u{30a}\u{31b}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusual_text_survives_both_ways_byte_for_byte() {
    let shop = Shop::new(&pg("unusual")).await;
    let stop = shop.start().await;
    shop.messenger.push(vec![text("7101", "u1", "Layla", UNUSUAL)]);
    let notes = shop.notes(1).await;
    assert_eq!(body(&notes[0]).as_bytes(), UNUSUAL.as_bytes(), "{notes:?}");
    let lead = shop.fake.snapshot().leads[0].id;
    shop.fake.add_manager_note(lead, 1001, &format!(">> {UNUSUAL}"));
    let sent = eventually_some("the reply", 30, || shop.messenger.sent().first().cloned()).await;
    assert_eq!(sent.text.as_bytes(), UNUSUAL.as_bytes());
    let _ = stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_goes_as_ordered_parts_once_across_a_restart() {
    let shop = Shop::new(&pg("longreply")).await;
    let stop = shop.start().await;
    shop.messenger.push(vec![text("7201", "q1", "Oleg", "Send me the full terms, please")]);
    shop.notes(1).await;
    let lead = shop.fake.snapshot().leads[0].id;
    // 10,000 characters with spaces (Cyrillic: two bytes each in UTF-8).
    let terms: String = (0..1000).map(|i| format!("пункт{i:04} ")).collect();
    assert_eq!(terms.chars().count(), 10_000);
    // The connector stops once the first part is out, the next send attempt
    // fails, and a new connector finishes the job.
    shop.fake.add_manager_note(lead, 1001, &format!(">> {terms}"));
    eventually_some("the first part", 30, || (!shop.messenger.sent().is_empty()).then_some(())).await;
    shop.messenger.inject(crmessenger_fake_messenger::Fault {
        op: "send".into(),
        status: 503,
        times: 1,
        flood_wait_secs: 0,
        skip: 0,
    });
    let _ = stop.send(true);
    let stop = shop.start().await;
    let sent = eventually_some("three parts", 60, || {
        let sent = shop.messenger.sent();
        (sent.len() >= 3).then_some(sent)
    })
    .await;
    // The trimmed text (the prefix and its space go) arrives whole, in order, once.
    let expected = terms.trim();
    assert_eq!(sent.len(), 3, "{:?}", sent.iter().map(|s| s.text.chars().count()).collect::<Vec<_>>());
    assert_eq!(sent.iter().map(|s| s.text.as_str()).collect::<String>(), expected);
    assert!(sent.iter().all(|s| s.text.encode_utf16().count() <= 4096));
    let _ = stop.send(true);
}
