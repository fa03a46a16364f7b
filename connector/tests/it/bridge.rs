//! The bridge end to end, in process: the scripted messenger, the amoCRM fake over
//! real HTTP, and real storage — the same suite on PostgreSQL (a real server) and
//! on SQLite (standalone's store).

use crate::common;
use crmessenger_testkit::checks::{eventually, eventually_some};

use crmessenger_api::config::{RuntimeSettings, render};
use crmessenger_connector::app::build_account;
use crmessenger_connector::metrics::Metrics;
use crmessenger_connector::store::lock::AccountLock;
use crmessenger_connector::store::{POOL_SIZE, Store};
use crmessenger_crm::amocrm::StaticToken;
use crmessenger_crm::clock::{Clock, SystemClock};
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig, Fault, FaultKind};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
use crmessenger_testkit::Postgres;
use crmessenger_testkit::TestClock;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const CANARY: &str = "canary-secret-value-7f3a";

struct Rig {
    fake: FakeAmo,
    messenger: ScriptedMessenger,
    store: Store,
    stop: watch::Sender<bool>,
    account: String,
    metrics: Arc<Metrics>,
}

fn manifests(base_url: &str, detection: &str) -> String {
    common::shop_yaml(
        base_url,
        "{ escalation: { enabled: true, after: 1m } }",
        &format!("responsibleUserIds: [1001], replies: {{ detection: {detection}, pollInterval: 2s }}"),
    )
}

async fn rig(db_url: &str) -> Rig {
    rig_on(db_url, Arc::new(SystemClock)).await
}

async fn rig_on(db_url: &str, clock: Arc<dyn Clock>) -> Rig {
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    let mut m = crmessenger_api::manifests::parse(&manifests(&fake.base_url(), "poll"), "shop").unwrap();
    let config =
        render(&m.accounts.remove(0), &m.bindings.remove(0), &m.policies.remove(0), RuntimeSettings::default())
            .unwrap();
    let store = Store::connect(db_url, POOL_SIZE).await.unwrap();
    let token = fake.issue_token_pair().access_token;
    let metrics = Arc::new(Metrics::default());
    let parts = build_account(
        &config,
        &store,
        Arc::new(StaticToken(token)),
        None,
        Arc::new(crmessenger_connector::messenger::scripted::Scripted::new(&messenger.base_url()).unwrap()),
        None,
        clock,
        metrics.clone(),
    )
    .unwrap();
    let stop = common::run_bridge(&parts, &store).await;
    Rig { fake, messenger, store, stop, account: parts.key, metrics }
}

/// The positive signal that a chat has nothing more in the pipe: a marker message
/// pushed after everything else in `chat` reaches the CRM. Each chat is delivered
/// in order, so whatever the connector was going to do with the earlier messages
/// of that chat (deliver them again, dead-letter them) it has done by then.
async fn drained(r: &Rig, chat: &str, tag: &str) {
    r.messenger.push(vec![text(chat, tag, "Marker", tag)]);
    eventually_some(&format!("marker {tag} in chat {chat}"), 30, || {
        r.fake
            .snapshot()
            .notes
            .iter()
            .any(|n| n.params["text"].as_str().unwrap_or_default().contains(tag))
            .then_some(())
    })
    .await;
}

/// Texts of the fake's common notes on `lead`, in id order.
pub(crate) fn notes_of(fake: &FakeAmo, lead: i64) -> Vec<String> {
    let mut notes: Vec<_> =
        fake.snapshot().notes.into_iter().filter(|n| n.entity_id == lead && n.note_type == "common").collect();
    notes.sort_by_key(|n| n.id);
    notes.iter().map(|n| n.params["text"].as_str().unwrap_or_default().to_string()).collect()
}

async fn messages_reach_the_crm_once_in_order_and_replies_come_back(db_url: &str) {
    let r = rig(db_url).await;
    let chats = ["1001", "1002", "1003"];
    for i in 0..10 {
        let batch: Vec<_> = chats
            .iter()
            .map(|c| text(c, &format!("m{i}"), &format!("Customer {c}"), &format!("hello {i} from {c}")))
            .collect();
        r.messenger.push(batch);
    }
    // One contact and one lead per chat; ten notes per lead, in order, once each.
    let leads = eventually_some("three leads", 60, || {
        let s = r.fake.snapshot();
        (s.leads.len() == 3 && s.notes.iter().filter(|n| n.note_type == "common").count() == 30).then_some(s.leads)
    })
    .await;
    assert_eq!(r.fake.snapshot().contacts.len(), 3);
    for lead in &leads {
        let texts = notes_of(&r.fake, lead.id);
        let chat = chats.iter().find(|c| texts[0].contains(&format!("from {c}"))).expect("a chat of ours");
        let expected: Vec<String> = (0..10).map(|i| format!("hello {i} from {chat}")).collect();
        let got: Vec<String> = texts.iter().map(|t| t.lines().nth(1).unwrap_or_default().to_string()).collect();
        assert_eq!(got, expected, "notes of lead {} out of order or duplicated", lead.id);
    }
    // A manager's reply (a note with the prefix) reaches the customer once.
    let lead = leads[0].id;
    r.fake.add_manager_note(lead, 1001, ">> Thanks, we are on it");
    let sent = eventually_some("the reply in the messenger", 30, || {
        let sent = r.messenger.sent();
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].text, "Thanks, we are on it");
    // The account's status says when traffic last moved each way.
    eventually("the last reply's time in the counts", 30, || async {
        let c = r.store.counts(&r.account).await.map_err(|e| e.to_string())?;
        if c.last_inbound_ms.is_some() && c.last_outbound_ms.is_some() { Ok(()) } else { Err(format!("{c:?}")) }
    })
    .await;
    // Replaying the same messages (the messenger redelivering) changes nothing.
    r.messenger.push(vec![text("1001", "m0", "Customer 1001", "hello 0 from 1001")]);
    drained(&r, "1001", "marker-after-redelivery").await;
    assert_eq!(
        r.fake.snapshot().notes.iter().filter(|n| n.note_type == "common").count(),
        32,
        "30 notes, the manager's and the marker"
    );
    assert_eq!(r.messenger.sent().len(), 1, "the reply was sent once");
    // The marker's note is in the CRM a moment before its inbox row is marked
    // delivered: wait for the store to settle rather than read it once.
    eventually("nothing pending or dead", 30, || async {
        let c = r.store.counts(&r.account).await.map_err(|e| e.to_string())?;
        let got = (c.inbox_pending, c.inbox_dead, c.outbox_pending);
        if got == (0, 0, 0) { Ok(()) } else { Err(format!("(inbox pending, dead, outbox pending) = {got:?}")) }
    })
    .await;
    let _ = r.stop.send(true);
}

async fn a_permanent_error_dead_letters_one_message_and_replay_delivers_it(db_url: &str) {
    let r = rig(db_url).await;
    r.messenger.push(vec![text("2001", "a", "Ann", "first")]);
    let lead = eventually_some("the first note", 30, || {
        let s = r.fake.snapshot();
        s.notes.iter().find(|n| n.note_type == "common").map(|n| n.entity_id)
    })
    .await;
    // The next batch is refused, and so is the first message on its own: that one
    // message is dead-lettered, the rest of the chat flows.
    r.fake.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: "/api/v4/leads/notes".into(),
        kind: FaultKind::Status(400),
        times: 2,
    });
    r.messenger.push(vec![text("2001", "b", "Ann", "second"), text("2001", "c", "Ann", "third")]);
    eventually_some("third note", 30, || notes_of(&r.fake, lead).iter().any(|t| t.contains("third")).then_some(()))
        .await;
    let dead = r.store.dead_letters(&r.account).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
    assert!(!notes_of(&r.fake, lead).iter().any(|t| t.contains("second")));
    assert_eq!(r.store.oldest_dead_reason(&r.account).await.unwrap().as_deref(), Some(dead[0].reason.as_str()));
    // Fixed: replay delivers it, once — named by its id (an id of nothing, or of
    // the other queue, replays nothing).
    let others = [format!("outbox/{}", dead[0].seq), format!("inbox/{}", dead[0].seq + 1000)];
    assert_eq!(r.store.replay_dead_only(&r.account, Some(&others)).await.unwrap(), 0);
    assert_eq!(r.store.replay_dead_only(&r.account, Some(&[dead[0].id()])).await.unwrap(), 1);
    eventually_some("second note", 30, || notes_of(&r.fake, lead).iter().any(|t| t.contains("second")).then_some(()))
        .await;
    drained(&r, "2001", "marker-after-replay").await;
    let texts = notes_of(&r.fake, lead);
    assert_eq!(texts.iter().filter(|t| t.contains("second")).count(), 1);
    assert!(r.store.dead_letters(&r.account).await.unwrap().is_empty());
    assert_eq!(r.store.oldest_dead_reason(&r.account).await.unwrap(), None);

    // Two chats share one request; it is refused, and so is the first chat's
    // message alone: that one is dead-lettered, the other chat's goes through.
    r.messenger.push(vec![text("2002", "x", "Bob", "hello from bob")]);
    eventually_some("bob's first note", 30, || {
        r.fake
            .snapshot()
            .notes
            .iter()
            .any(|n| n.params["text"].as_str().unwrap_or_default().contains("hello from bob"))
            .then_some(())
    })
    .await;
    r.fake.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: "/api/v4/leads/notes".into(),
        kind: FaultKind::Status(400),
        times: 2,
    });
    r.messenger.push(vec![text("2001", "d", "Ann", "fourth"), text("2002", "y", "Bob", "bob again")]);
    let dead = eventually_some("one dead letter of the two chats", 30, || {
        let dead = block_on_store(r.store.dead_letters(&r.account));
        let delivered = r
            .fake
            .snapshot()
            .notes
            .iter()
            .filter(|n| {
                let t = n.params["text"].as_str().unwrap_or_default();
                t.contains("fourth") || t.contains("bob again")
            })
            .count();
        (dead.len() == 1 && delivered == 1).then_some(dead)
    })
    .await;
    assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
    drained(&r, "2001", "marker-ann").await;
    drained(&r, "2002", "marker-bob").await;
    assert_eq!(r.store.dead_letters(&r.account).await.unwrap().len(), 1, "only one message was refused");
    let _ = r.stop.send(true);
}

/// Runs a store call from a synchronous check (the test runtime has worker threads).
fn block_on_store<T>(f: impl std::future::Future<Output = Result<T, crmessenger_connector::store::StoreError>>) -> T {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f)).unwrap()
}

async fn a_crm_outage_delays_delivery_and_loses_nothing(db_url: &str) {
    let r = rig(db_url).await;
    r.fake.inject(Fault { method: None, path_prefix: "/api/v4/".into(), kind: FaultKind::Status(503), times: 12 });
    let batch: Vec<_> =
        (0..20).map(|i| text("3001", &format!("o{i}"), "Olga", &format!("during outage {i}"))).collect();
    r.messenger.push(batch);
    let lead = eventually_some("the notes after the outage", 120, || {
        let s = r.fake.snapshot();
        let notes: Vec<_> = s.notes.iter().filter(|n| n.note_type == "common").collect();
        (notes.len() == 20).then(|| notes[0].entity_id)
    })
    .await;
    let got: Vec<String> =
        notes_of(&r.fake, lead).iter().map(|t| t.lines().nth(1).unwrap_or_default().to_string()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("during outage {i}")).collect();
    assert_eq!(got, expected);
    assert_eq!(r.fake.snapshot().contacts.len(), 1, "no duplicate contact from the retries");
    let _ = r.stop.send(true);
}

/// A 10-minute outage, driven by the connector's clock and the fake's clock moved
/// together (real time would make this test 10 minutes long; a paused tokio clock
/// would also fire the database's timeouts).
async fn a_ten_minute_outage_delays_delivery_in_order_within_the_budget(db_url: &str) {
    let clock = TestClock::default();
    let r = rig_on(db_url, Arc::new(clock.clone())).await;
    let fake_clock = r.fake.clock();
    let advance = |d: Duration| {
        clock.advance(d);
        fake_clock.advance(d);
    };
    r.messenger.push(vec![text("4000", "before", "Ivan", "before the outage")]);
    eventually_some("the first note", 30, || (!r.fake.snapshot().notes.is_empty()).then_some(())).await;

    r.fake.inject(Fault {
        method: None,
        path_prefix: "/api/v4/".into(),
        kind: FaultKind::Status(503),
        times: u32::MAX,
    });
    let outage_started = r.fake.snapshot().requests.len();
    let batch: Vec<_> = (0..30)
        .map(|i| text(&format!("400{}", i % 3 + 1), &format!("o{i}"), "Ivan", &format!("outage {} #{i}", i % 3 + 1)))
        .collect();
    r.messenger.push(batch);
    for _ in 0..40 {
        advance(Duration::from_secs(15));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ten minutes later: nothing delivered, nothing lost, and the breaker kept the
    // connector from hammering the CRM (the budget would have allowed 4,200 calls).
    let s = r.fake.snapshot();
    assert_eq!(s.notes.iter().filter(|n| n.note_type == "common").count(), 1);
    let counts = r.store.counts(&r.account).await.unwrap();
    assert_eq!(counts.inbox_pending, 30, "{counts:?}");
    let during = s.requests.len() - outage_started;
    assert!((1..=60).contains(&during), "{during} requests during the outage");

    r.fake.clear_faults();
    let mut delivered = 0;
    for _ in 0..600 {
        advance(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        delivered = r.fake.snapshot().notes.iter().filter(|n| n.note_type == "common").count();
        if delivered == 31 {
            break;
        }
    }
    if delivered != 31 {
        let s = r.fake.snapshot();
        for q in s.requests.iter().rev().take(15) {
            eprintln!("{} {} {} {}", q.at_ms, q.method, q.path, q.status);
        }
        eprintln!("{:?} dead {:?}", r.store.counts(&r.account).await, r.store.dead_letters(&r.account).await);
    }
    assert_eq!(delivered, 31, "every message after the outage");
    let s = r.fake.snapshot();
    for chat in 1..=3 {
        let needle = format!("outage {chat} #");
        let leads: std::collections::BTreeSet<i64> = s
            .notes
            .iter()
            .filter(|n| n.params["text"].as_str().unwrap_or_default().contains(&needle))
            .map(|n| n.entity_id)
            .collect();
        assert_eq!(leads.len(), 1, "one lead for chat 400{chat}");
        let lead = *leads.first().unwrap();
        let got: Vec<String> =
            notes_of(&r.fake, lead).iter().map(|t| t.lines().nth(1).unwrap_or_default().to_string()).collect();
        let expected: Vec<String> =
            (0..30).filter(|i| i % 3 + 1 == chat).map(|i| format!("outage {chat} #{i}")).collect();
        assert_eq!(got, expected, "chat 400{chat} in order");
    }
    assert_eq!(s.contacts.len(), 4, "one contact per chat");
    // The budget held: the fake, which counts amoCRM's 7 calls per second by
    // arrival on the shared clock, refused none. (The spacing itself is checked
    // exactly on the budget's clock in `crm/src/budget.rs`; counting arrivals per
    // second here would judge the machine's scheduling, not the budget.)
    assert!(s.requests.iter().all(|q| q.status != 429), "the fake refused a call for the rate");
    let _ = r.stop.send(true);
}

/// The value of the connector's counter `crmessenger_connector_<name>_total` (0 before it is first counted).
pub(crate) fn counter(metrics: &Metrics, name: &str) -> f64 {
    let prefix = format!("crmessenger_connector_{name}_total{{");
    metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// The positive signal that escalation has looked: waits for `n` more escalation
/// checks to complete (the connector's metric), moving `clock` by the loop's
/// 5 s interval before each, so the last of them started after everything before
/// this call and the clock moved no more than `n` × 5 s.
pub(crate) async fn escalation_checks(metrics: &Metrics, clock: &TestClock, n: usize) {
    let done = || counter(metrics, "escalation_checks");
    for _ in 0..n {
        let before = done();
        clock.advance(Duration::from_secs(5));
        eventually_some("an escalation check", 30, || (done() > before).then_some(())).await;
    }
}

/// Escalation (policy: after 1m): one task per unanswered conversation, however
/// long it stays unanswered; the reply going out completes it.
async fn unanswered_conversations_get_one_task_each_until_answered(db_url: &str) {
    let clock = TestClock::default();
    let r = rig_on(db_url, Arc::new(clock.clone())).await;
    r.messenger.push(vec![text("5001", "a", "Anna", "anyone there?"), text("5002", "b", "Boris", "hello?")]);
    let leads = eventually_some("two leads with notes", 30, || {
        let s = r.fake.snapshot();
        (s.notes.iter().filter(|n| n.note_type == "common").count() == 2).then_some(s.leads)
    })
    .await;
    // Two checks (a few seconds of the clock, well inside the minute): no task yet.
    escalation_checks(&r.metrics, &clock, 2).await;
    assert!(r.fake.snapshot().tasks.is_empty(), "no task before the delay");
    // Three minutes unanswered: still one task each.
    for _ in 0..18 {
        clock.advance(Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tasks = eventually_some("two tasks", 30, || {
        let t = r.fake.snapshot().tasks;
        (t.len() >= 2).then_some(t)
    })
    .await;
    escalation_checks(&r.metrics, &clock, 2).await;
    let tasks_later = r.fake.snapshot().tasks;
    assert_eq!(tasks_later.len(), 2, "one task per conversation: {tasks:?}");
    let mut on: Vec<i64> = tasks_later.iter().map(|t| t.entity_id).collect();
    on.sort();
    let mut lead_ids: Vec<i64> = leads.iter().map(|l| l.id).collect();
    lead_ids.sort();
    assert_eq!(on, lead_ids);
    // The manager answers Anna: the reply goes out and her task is completed.
    let anna = r
        .fake
        .snapshot()
        .notes
        .iter()
        .find(|n| n.params["text"].as_str().unwrap_or_default().contains("anyone"))
        .unwrap()
        .entity_id;
    r.fake.add_manager_note(anna, 1001, ">> Here, how can I help?");
    eventually_some("Anna's task completed", 30, || {
        r.fake.snapshot().tasks.iter().any(|t| t.entity_id == anna && t.is_completed).then_some(())
    })
    .await;
    assert_eq!(r.messenger.sent().len(), 1);
    let s = r.fake.snapshot();
    assert!(s.tasks.iter().any(|t| t.entity_id != anna && !t.is_completed), "Boris's task stays open");
    assert_eq!(s.tasks.len(), 2);
    let _ = r.stop.send(true);
}

pub(crate) fn pg(prefix: &str) -> String {
    Postgres::shared().database(prefix).unwrap()
}

pub(crate) fn sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("crmessenger.db").display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_messages_and_replies() {
    messages_reach_the_crm_once_in_order_and_replies_come_back(&pg("flow")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_messages_and_replies() {
    let dir = tempfile::tempdir().unwrap();
    messages_reach_the_crm_once_in_order_and_replies_come_back(&sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dead_letter_and_replay() {
    a_permanent_error_dead_letters_one_message_and_replay_delivers_it(&pg("dead")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_dead_letter_and_replay() {
    let dir = tempfile::tempdir().unwrap();
    a_permanent_error_dead_letters_one_message_and_replay_delivers_it(&sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crm_outage() {
    a_crm_outage_delays_delivery_and_loses_nothing(&pg("outage")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_ten_minute_outage() {
    a_ten_minute_outage_delays_delivery_in_order_within_the_budget(&pg("outage10")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_ten_minute_outage() {
    let dir = tempfile::tempdir().unwrap();
    a_ten_minute_outage_delays_delivery_in_order_within_the_budget(&sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_escalation() {
    unanswered_conversations_get_one_task_each_until_answered(&pg("escalation")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_escalation() {
    let dir = tempfile::tempdir().unwrap();
    unanswered_conversations_get_one_task_each_until_answered(&sqlite(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_second_connector_waits_for_the_lock_and_takes_over() {
    let url = pg("lock");
    let store = Store::connect(&url, 1).await.unwrap();
    let first = AccountLock::acquire(&store, "ns/acct", |_| {}).await.unwrap();
    let waited = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let w = waited.clone();
    let store2 = Store::connect(&url, 1).await.unwrap();
    let second = tokio::spawn(async move {
        AccountLock::acquire(&store2, "ns/acct", move |why| w.lock().unwrap().push(why.to_string())).await.unwrap()
    });
    // Two refusals reported: the second connector tried, waited and tried again.
    eventually_some("two refused attempts", 30, || (waited.lock().unwrap().len() >= 2).then_some(())).await;
    assert!(!second.is_finished(), "the second connector must wait while the first holds the lock");
    let why = waited.lock().unwrap().first().cloned().unwrap_or_default();
    assert!(why.contains("crmessenger-connector ns/acct"), "the wait names the holder: {why}");
    // The first lets go (a crash closes its connection the same way); the second takes over.
    first.release().await;
    let second = tokio::time::timeout(Duration::from_secs(10), second).await.expect("took over").unwrap();
    assert!(!second.is_lost());
    // Killing the holder's database session makes it lose the lock, and it notices.
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'crmessenger-connector ns/acct'")
        .execute(store.pool())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), second.lost()).await.expect("the holder notices the lost lock");
    let _ = CANARY;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holders_writes_are_refused_after_a_takeover() {
    let url = pg("fence");
    let stale = Store::connect(&url, 1).await.unwrap();
    let first = AccountLock::acquire(&stale, "ns/fenced", |_| {}).await.unwrap();
    let conv = crmessenger_connector::store::Conversation { lead_id: Some(7), ..Default::default() };
    stale.put_conversation("ns/fenced", "c1", "crm", &conv, 1).await.expect("the holder writes");
    // Its lock connection is cut behind its back; another connector takes over.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'crmessenger-connector ns/fenced'",
    )
    .execute(stale.pool())
    .await
    .unwrap();
    let fresh = Store::connect(&url, 1).await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), AccountLock::acquire(&fresh, "ns/fenced", |_| {}))
        .await
        .expect("the lock is free")
        .unwrap();
    assert_eq!(second.epoch(), first.epoch() + 1, "each holder takes the next epoch");
    // Before the stale holder even notices, its writes are refused; the new holder's are not.
    let refused = stale.put_conversation("ns/fenced", "c1", "crm", &conv, 2).await;
    assert!(
        matches!(refused, Err(crmessenger_connector::store::StoreError::Fenced(_))),
        "a stale write must be refused: {refused:?}"
    );
    let refused = stale.set_cursor("ns/fenced", "updates", "99").await;
    assert!(matches!(refused, Err(crmessenger_connector::store::StoreError::Fenced(_))), "{refused:?}");
    fresh.put_conversation("ns/fenced", "c1", "crm", &conv, 3).await.expect("the new holder writes");
    assert_eq!(fresh.cursor("ns/fenced", "updates").await.unwrap(), None, "the stale cursor never landed");
    second.release().await;
}

/// Two accounts (`a`, `b`) in one binding polling replies every second, each
/// with its own scripted messenger, sharing one database and one amoCRM.
fn two_accounts_yaml(base_url: &str) -> String {
    let account = |name: &str| {
        format!(
            "apiVersion: crmessenger.io/v1alpha1\nkind: MessengerAccount\nmetadata: {{ name: {name}, labels: {{ shop: \"yes\" }} }}\n\
             spec: {{ provider: telegram, telegram: {{ apiCredentials: {{ secretName: tg-api }} }} }}\n---\n"
        )
    };
    format!(
        "{}{}apiVersion: crmessenger.io/v1alpha1\nkind: SyncPolicy\nmetadata: {{ name: shop }}\nspec: {{}}\n---\n\
         apiVersion: crmessenger.io/v1alpha1\nkind: CrmBinding\nmetadata: {{ name: shop }}\nspec:\n  accountNames: [a, b]\n  policyRef: {{ name: shop }}\n  \
         crm: {{ type: amocrm, amocrm: {{ baseUrl: \"{base_url}\", credentialsSecret: {{ name: amo }}, responsibleUserIds: [1001], replies: {{ detection: poll, pollInterval: 1s }} }} }}\n",
        account("a"),
        account("b"),
    )
}

async fn start_account(
    fake: &FakeAmo,
    token: &str,
    db_url: &str,
    name: &str,
    messenger: &ScriptedMessenger,
) -> (watch::Sender<bool>, Store) {
    let m = crmessenger_api::manifests::parse(&two_accounts_yaml(&fake.base_url()), "shop").unwrap();
    let account = m.accounts.iter().find(|a| a.metadata.name.as_deref() == Some(name)).unwrap().clone();
    let config = render(&account, &m.bindings[0], &m.policies[0], RuntimeSettings::default()).unwrap();
    let store = Store::connect(db_url, POOL_SIZE).await.unwrap();
    let parts = build_account(
        &config,
        &store,
        Arc::new(StaticToken(token.to_string())),
        None,
        Arc::new(crmessenger_connector::messenger::scripted::Scripted::new(&messenger.base_url()).unwrap()),
        None,
        Arc::new(SystemClock),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    (common::run_bridge(&parts, &store).await, store)
}

/// The same customer (one phone number) writes to two accounts of a binding.
fn from_customer(chat: &str, id: &str, text_: &str) -> crmessenger_fake_messenger::Update {
    let mut u = text(chat, id, "Dana", text_);
    u.sender.phone = Some("+79991234567".into());
    u
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_go_to_the_chat_that_wrote_last_and_survive_the_pollers_removal() {
    let db = pg("duty");
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let token = fake.issue_token_pair().access_token;
    let (ma, mb) = (
        ScriptedMessenger::start(Options::default()).await.unwrap(),
        ScriptedMessenger::start(Options::default()).await.unwrap(),
    );
    let sent_texts = |m: &ScriptedMessenger| m.sent().iter().map(|s| s.text.clone()).collect::<Vec<_>>();
    // Account a alone: it holds the polling duty, and a reply comes back through it.
    let (stop_a, _) = start_account(&fake, &token, &db, "a", &ma).await;
    ma.push(vec![from_customer("501", "m1", "hello on a")]);
    let lead = eventually_some("the lead", 30, || fake.snapshot().leads.first().map(|l| l.id)).await;
    fake.add_manager_note(lead, 1001, ">> first answer");
    eventually_some("the first answer on a", 30, || (sent_texts(&ma) == ["first answer"]).then_some(())).await;
    // Account b joins; the same person writes there: same contact, same lead, two chats.
    let (stop_b, _) = start_account(&fake, &token, &db, "b", &mb).await;
    mb.push(vec![from_customer("502", "m1", "hello on b")]);
    eventually_some("b's note on the same lead", 30, || {
        notes_of(&fake, lead).iter().any(|n| n.contains("hello on b")).then_some(())
    })
    .await;
    let s = fake.snapshot();
    assert_eq!((s.leads.len(), s.contacts.len()), (1, 1), "one person, one contact, one lead");
    // The reply goes where the customer wrote last: b, then a, then b again.
    fake.add_manager_note(lead, 1001, ">> second answer");
    eventually_some("the second answer on b", 30, || (sent_texts(&mb) == ["second answer"]).then_some(())).await;
    ma.push(vec![from_customer("501", "m2", "back on a")]);
    eventually_some("a's new note", 30, || notes_of(&fake, lead).iter().any(|n| n.contains("back on a")).then_some(()))
        .await;
    fake.add_manager_note(lead, 1001, ">> third answer");
    eventually_some("the third answer on a", 30, || {
        (sent_texts(&ma) == ["first answer", "third answer"]).then_some(())
    })
    .await;
    mb.push(vec![from_customer("502", "m2", "back on b")]);
    eventually_some("b's new note", 30, || notes_of(&fake, lead).iter().any(|n| n.contains("back on b")).then_some(()))
        .await;
    // The poller (a) is removed (suspended, deleted, or crashed): b takes polling over.
    let _ = stop_a.send(true);
    fake.add_manager_note(lead, 1001, ">> fourth answer");
    eventually_some("the fourth answer on b, polled by b", 60, || {
        (sent_texts(&mb) == ["second answer", "fourth answer"]).then_some(())
    })
    .await;
    assert_eq!(sent_texts(&ma), ["first answer", "third answer"], "nothing went to the wrong chat");
    let _ = stop_b.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_storage_write_is_logged_and_counted_and_its_work_retried() {
    let r = rig(&pg("storefail")).await;
    r.messenger.push(vec![text("3001", "a", "Ann", "hello")]);
    let lead = eventually_some("the lead", 30, || r.fake.snapshot().leads.first().map(|l| l.id)).await;
    // The lead is in the CRM before the store links it to the chat; a reply polled
    // in between belongs to no chat of ours. Wait for the link before fences move.
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM conversations WHERE lead_id = $1")
        .bind(lead)
        .fetch_one(r.store.pool())
        .await
        .unwrap()
        == 0
    {
        assert!(Instant::now() < deadline, "timed out waiting for the store to link the lead to its chat");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = || counter(&r.metrics, "store_errors");
    assert_eq!(failed(), 0.0);
    // Writes start failing (here: the fence moves, as when the lock is taken over).
    let bump = |d: i64| {
        sqlx::query("UPDATE account_fences SET epoch = epoch + $1 WHERE account = $2").bind(d).bind(r.account.clone())
    };
    bump(1).execute(r.store.pool()).await.unwrap();
    r.fake.add_manager_note(lead, 1001, ">> Here you go");
    eventually_some("the failed write counted", 30, || (failed() >= 1.0).then_some(())).await;
    assert!(r.messenger.sent().is_empty(), "nothing recorded, nothing sent");
    // Writes work again: the reply the failed write did not record is polled again and sent once.
    bump(-1).execute(r.store.pool()).await.unwrap();
    eventually_some("the reply", 30, || (!r.messenger.sent().is_empty()).then_some(())).await;
    let _ = r.stop.send(true);
    assert_eq!(r.messenger.sent().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_that_names_no_chat_lands_on_the_chat_of_the_message_it_deletes() {
    let r = rig(&pg("delnochat")).await;
    r.messenger.push(vec![text("6001", "m-61", "Lena", "wrong address, sorry")]);
    let lead = eventually_some("Lena's note", 30, || {
        r.fake.snapshot().notes.iter().find(|n| n.note_type == "common").map(|n| n.entity_id)
    })
    .await;
    // Telegram reports deletions in private chats without the chat (and after a
    // restart the adapter no longer remembers it): the stored message says.
    let deletion = |id: &str| {
        let mut u = text("", id, "", "");
        u.kind = "delete".into();
        u
    };
    r.messenger.push(vec![deletion("m-61"), deletion("never-seen")]);
    eventually_some("the deletion on Lena's lead", 30, || {
        notes_of(&r.fake, lead).iter().any(|t| t.contains("the customer deleted message m-61")).then_some(())
    })
    .await;
    drained(&r, "6001", "marker-after-deletions").await;
    let deleted: Vec<_> = r
        .fake
        .snapshot()
        .notes
        .into_iter()
        .filter(|n| n.params["text"].as_str().unwrap_or_default().contains("deleted message"))
        .collect();
    assert_eq!(deleted.len(), 1, "one deletion reported, the unknown one dropped: {deleted:?}");
    let _ = r.stop.send(true);
}

/// Statuses of one reply applied at the same moment (the intake's and a parked
/// one that the send's record claims) end at the furthest of them: a lower one
/// judged against a stale value never overwrites a higher one.
async fn concurrent_statuses_of_one_reply_end_at_the_furthest(db_url: &str) {
    let store = Store::connect(db_url, POOL_SIZE).await.unwrap();
    let store = &store;
    let sources: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    for source in &sources {
        let reply = crmessenger_connector::store::NewReply {
            source_id: source,
            chat_id: "15550001111",
            text: "until six",
            crm_message_id: None,
            media: None,
            edit_of: None,
        };
        assert!(store.outbox_add("race", &reply, 1).await.unwrap());
    }
    for row in store.outbox_pending("race", 100).await.unwrap() {
        store.outbox_sent(row.seq, &format!("wamid.{}", row.source_id), 2).await.unwrap();
    }
    for (i, source) in sources.iter().enumerate() {
        let id = format!("wamid.{source}");
        // Every order of the three, one per reply in turn.
        let mut order = ["read", "delivered", "sent"];
        order.rotate_left(i % 3);
        if i % 2 == 1 {
            order.reverse();
        }
        let [a, b, c] = order.map(|s| store.outbox_delivery("race", &id, s));
        let (a, b, c) = tokio::join!(a, b, c);
        let moved = [a, b, c]
            .into_iter()
            .filter(|u| matches!(u, Ok(crmessenger_connector::store::DeliveryUpdate::Moved { .. })))
            .count();
        assert!(moved >= 1, "{id}: nothing moved");
        assert_eq!(store.outbox_delivery_of("race", &id).await.unwrap().as_deref(), Some("read"), "{id} ({order:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_statuses() {
    concurrent_statuses_of_one_reply_end_at_the_furthest(&pg("statusrace")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_concurrent_statuses() {
    let dir = tempfile::tempdir().unwrap();
    concurrent_statuses_of_one_reply_end_at_the_furthest(&sqlite(&dir)).await;
}
