//! The bridge end to end, in process: the scripted messenger, the amoCRM fake over
//! real HTTP, and real storage — the same suite on PostgreSQL (a real server) and
//! on SQLite (standalone's store).

use crmessenger_api::config::{RuntimeSettings, render};
use crmessenger_connector::app::{build_account, register_routes};
use crmessenger_connector::metrics::Metrics;
use crmessenger_connector::store::lock::AccountLock;
use crmessenger_connector::store::{POOL_SIZE, Store};
use crmessenger_crm::amocrm::StaticToken;
use crmessenger_crm::clock::SystemClock;
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig, Fault, FaultKind};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
use crmessenger_testkit::Postgres;
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
}

fn manifests(base_url: &str, detection: &str) -> String {
    format!(
        r#"
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {{ name: shop }}
spec:
  provider: telegram
  telegram: {{ apiCredentials: {{ secretName: tg-api }} }}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {{ name: shop }}
spec: {{ escalation: {{ enabled: true, after: 1m }} }}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {{ name: shop }}
spec:
  accountNames: [shop]
  policyRef: {{ name: shop }}
  crm:
    type: amocrm
    amocrm:
      baseUrl: {base_url}
      credentialsSecret: {{ name: amo }}
      responsibleUserIds: [1001]
      replies: {{ detection: {detection}, pollInterval: 2s }}
"#
    )
}

async fn rig(db_url: &str) -> Rig {
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    let mut m = crmessenger_api::manifests::parse(&manifests(&fake.base_url(), "poll"), "shop").unwrap();
    let config =
        render(&m.accounts.remove(0), &m.bindings.remove(0), &m.policies.remove(0), RuntimeSettings::default())
            .unwrap();
    let store = Store::connect(db_url, POOL_SIZE).await.unwrap();
    let token = fake.issue_token_pair().access_token;
    let parts = build_account(
        &config,
        &store,
        Arc::new(StaticToken(token)),
        None,
        Some(&messenger.base_url()),
        Arc::new(SystemClock),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    register_routes(&parts, &store, None).await.unwrap();
    let lock = AccountLock::acquire(&store, &parts.key, |_| {}).await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let bridge = parts.bridge.clone();
    tokio::spawn(async move {
        bridge.run(&lock, stop_rx).await;
        lock.release().await;
    });
    Rig { fake, messenger, store, stop, account: parts.key }
}

async fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Texts of the fake's common notes on `lead`, in id order.
fn notes_of(fake: &FakeAmo, lead: i64) -> Vec<String> {
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
    let leads = wait_for("three leads", 60, || {
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
    let sent = wait_for("the reply in the messenger", 30, || {
        let sent = r.messenger.sent();
        (!sent.is_empty()).then_some(sent)
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].text, "Thanks, we are on it");
    // Replaying the same messages (the messenger redelivering) changes nothing.
    r.messenger.push(vec![text("1001", "m0", "Customer 1001", "hello 0 from 1001")]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        r.fake.snapshot().notes.iter().filter(|n| n.note_type == "common").count(),
        31,
        "30 notes plus the manager's"
    );
    assert_eq!(r.messenger.sent().len(), 1, "the reply was sent once");
    let counts = r.store.counts(&r.account).await.unwrap();
    assert_eq!((counts.inbox_pending, counts.inbox_dead, counts.outbox_pending), (0, 0, 0));
    let _ = r.stop.send(true);
}

async fn a_permanent_error_dead_letters_one_message_and_replay_delivers_it(db_url: &str) {
    let r = rig(db_url).await;
    r.messenger.push(vec![text("2001", "a", "Ann", "first")]);
    let lead = wait_for("the first note", 30, || {
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
    wait_for("third note", 30, || notes_of(&r.fake, lead).iter().any(|t| t.contains("third")).then_some(())).await;
    let dead = r.store.dead_letters(&r.account).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
    assert!(!notes_of(&r.fake, lead).iter().any(|t| t.contains("second")));
    // Fixed: replay delivers it, once.
    assert_eq!(r.store.replay_dead(&r.account).await.unwrap(), 1);
    wait_for("second note", 30, || notes_of(&r.fake, lead).iter().any(|t| t.contains("second")).then_some(())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let texts = notes_of(&r.fake, lead);
    assert_eq!(texts.iter().filter(|t| t.contains("second")).count(), 1);
    assert!(r.store.dead_letters(&r.account).await.unwrap().is_empty());
    let _ = r.stop.send(true);
}

async fn a_crm_outage_delays_delivery_and_loses_nothing(db_url: &str) {
    let r = rig(db_url).await;
    r.fake.inject(Fault { method: None, path_prefix: "/api/v4/".into(), kind: FaultKind::Status(503), times: 12 });
    let batch: Vec<_> =
        (0..20).map(|i| text("3001", &format!("o{i}"), "Olga", &format!("during outage {i}"))).collect();
    r.messenger.push(batch);
    let lead = wait_for("the notes after the outage", 120, || {
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

fn pg(prefix: &str) -> String {
    Postgres::shared().database(prefix).unwrap()
}

fn sqlite(dir: &tempfile::TempDir) -> String {
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
    tokio::time::sleep(Duration::from_secs(3)).await;
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
