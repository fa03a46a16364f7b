//! Crash safety: the connector (standalone on PostgreSQL) is SIGKILLed at random
//! points while 5,000 messages stream in from an out-of-process scripted messenger
//! with a durable log, toward an out-of-process amoCRM fake — and twice right
//! after the fake wrote a batch of notes but before the connector heard back (the
//! fake withholds the answer). After the restarts every message is in the fake
//! exactly once, in per-chat order, with one contact and one lead per chat.
//!
//! A second test cuts the connector's database connections without closing them
//! (a loopback proxy that silently drops everything, then lets the server side
//! go as PostgreSQL's keepalives would): the connector gives its account up and
//! drops its messenger connection before another connector can take over, so the
//! messenger never sees two live connections for the account.
//!
//! The fake gets a high rate limit (and the connector a matching budget) so the
//! test stays short; the seed is printed so a failure can be replayed with
//! `CRASH_SEED=<seed>`.

use crate::common;

use common::{Ports, start_standalone, write_manifests};
use crmessenger_fake_messenger::text;
use crmessenger_testkit::Postgres;
use crmessenger_testkit::controlplane::free_port;
use crmessenger_testkit::process::{Proc, workspace_bin};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

const CHATS: usize = 25;
const PER_CHAT: usize = 200;

/// xorshift64*: enough randomness for kill times, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

fn marker(chat: usize, n: usize) -> String {
    format!("crash-{chat:02}-{n:04}")
}

async fn snapshot(http: &reqwest::Client, base: &str) -> Value {
    http.get(format!("{base}/_fake/snapshot")).send().await.unwrap().json().await.unwrap()
}

/// Batches of notes the fake wrote and then withheld the answer to (its record
/// of requests dropped by a `drop_response` fault that succeeded).
fn withheld_writes(snap: &Value) -> usize {
    snap["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| {
            r["dropped"] == true
                && r["method"] == "POST"
                && r["path"] == "/api/v4/leads/notes"
                && r["status"].as_u64().is_some_and(|s| (200..300).contains(&s))
        })
        .count()
}

/// Every marker in the fake's notes, by chat, in note order.
fn delivered(snap: &Value) -> BTreeMap<usize, Vec<usize>> {
    let mut notes: Vec<&Value> = snap["notes"].as_array().unwrap().iter().collect();
    notes.sort_by_key(|n| n["id"].as_i64());
    let mut out: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for note in notes {
        let text = note["params"]["text"].as_str().unwrap_or_default();
        for (i, _) in text.match_indices("crash-") {
            let m = &text[i..(i + 15).min(text.len())];
            let (Some(chat), Some(n)) =
                (m.get(6..8).and_then(|c| c.parse().ok()), m.get(9..13).and_then(|c| c.parse().ok()))
            else {
                continue;
            };
            out.entry(chat).or_default().push(n);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_arrives_once_and_in_order_across_sigkills() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seed: u64 = std::env::var("CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    println!("CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = Postgres::shared().database("crash").unwrap();
    let http = reqwest::Client::new();

    let Fakes { amo, token, messenger, _procs } = Fakes::start(dir.path(), &http).await;
    write_manifests(dir.path(), &amo, &format!("  long_lived_token: {token}"), "h");
    let ports = Ports::free();
    let args = ["--database-url", &db, "--scripted-messenger", &messenger, "--crm-requests-per-second", "500"];
    let start = || start_standalone(dir.path(), &ports, &args);

    // The stream: 5,000 messages over 25 chats, interleaved, in batches of 50.
    let feeder = {
        let (http, messenger) = (http.clone(), messenger.clone());
        tokio::spawn(async move {
            let all: Vec<_> = (0..PER_CHAT)
                .flat_map(|n| (0..CHATS).map(move |c| (c, n)))
                .map(|(c, n)| text(&format!("90{c:02}"), &n.to_string(), &format!("Customer {c}"), &marker(c, n)))
                .collect();
            for batch in all.chunks(50) {
                let r = http.post(format!("{messenger}/_script/inbound")).json(&batch).send().await.unwrap();
                assert!(r.status().is_success());
                tokio::time::sleep(Duration::from_millis(120)).await;
            }
        })
    };

    let mut connector = start();
    let mut kills = 0;
    let mut in_doubt_kills = 0;
    while !feeder.is_finished() || kills < 8 {
        if in_doubt_kills < 2 && kills % 3 == 1 {
            // The fake writes the next batch of notes and withholds the answer;
            // kill the connector once its record shows that request written and
            // unanswered (not merely that some notes appeared: a batch sent before
            // the fault was armed would be answered).
            let fault = json!({ "method": "POST", "path_prefix": "/api/v4/leads/notes", "drop_response": true });
            http.post(format!("{amo}/_fake/faults")).json(&fault).send().await.unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            while withheld_writes(&snapshot(&http, &amo).await) == in_doubt_kills {
                assert!(Instant::now() < deadline, "no batch of notes withheld\n{}", connector.log_tail(20));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            in_doubt_kills += 1;
        } else {
            tokio::time::sleep(Duration::from_millis(rng.between(150, 1500))).await;
        }
        connector.kill();
        kills += 1;
        connector = start();
    }
    feeder.await.unwrap();

    // After the last restart everything arrives.
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let snap = snapshot(&http, &amo).await;
        let got: usize = delivered(&snap).values().map(Vec::len).sum();
        if got >= CHATS * PER_CHAT {
            break;
        }
        assert!(Instant::now() < deadline, "{got} of {} delivered\n{}", CHATS * PER_CHAT, connector.log_tail(30));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Judge once the connector has nothing left to write: every message of the
    // stream is done in its inbox (a straggling duplicate would come from a row
    // still pending), so the CRM's notes are final.
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (done, open): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state <> 'done') FROM inbox",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open == 0 && done >= (CHATS * PER_CHAT) as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "inbox: {done} done, {open} not\n{}", connector.log_tail(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let snap = snapshot(&http, &amo).await;
    let by_chat = delivered(&snap);
    assert_eq!(by_chat.len(), CHATS);
    for (chat, ns) in &by_chat {
        let expected: Vec<usize> = (0..PER_CHAT).collect();
        assert_eq!(ns, &expected, "chat {chat}: every message once, in order (seed {seed})");
    }
    assert_eq!(snap["contacts"].as_array().unwrap().len(), CHATS, "one contact per chat");
    assert_eq!(snap["leads"].as_array().unwrap().len(), CHATS, "one lead per chat");
    assert_eq!(withheld_writes(&snap), 2, "both in-doubt cases happened: a batch written, its answer withheld");
    println!("{kills} kills ({in_doubt_kills} with a batch written but unanswered), seed {seed}");
}

/// The two fakes, each its own process: amoCRM (a high rate limit) and the
/// scripted messenger (a durable log in `DIR/messenger`).
struct Fakes {
    amo: String,
    token: String,
    messenger: String,
    _procs: (Proc, Proc),
}

impl Fakes {
    async fn start(dir: &std::path::Path, http: &reqwest::Client) -> Fakes {
        let amo_port = free_port().unwrap();
        let amo = format!("http://127.0.0.1:{amo_port}");
        let mut cmd = Command::new(workspace_bin("fake-amocrm"));
        cmd.args(["--listen", &format!("127.0.0.1:{amo_port}"), "--rate-limit", "1000", "--abuse-threshold", "100000"]);
        let amo_proc = Proc::start("fake-amocrm", cmd, dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let token = loop {
            if let Some(line) =
                amo_proc.log().lines().find_map(|l| l.strip_prefix("access_token: ").map(str::to_string))
            {
                break line;
            }
            assert!(Instant::now() < deadline, "{}", amo_proc.log_tail(20));
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let msg_port = free_port().unwrap();
        let messenger = format!("http://127.0.0.1:{msg_port}");
        let mut cmd = Command::new(workspace_bin("fake-messenger"));
        cmd.args(["--listen", &format!("127.0.0.1:{msg_port}"), "--dir"]).arg(dir.join("messenger"));
        let msg_proc = Proc::start("fake-messenger", cmd, dir).unwrap();
        while http.get(format!("{messenger}/v1/session")).send().await.is_err() {
            assert!(Instant::now() < deadline, "{}", msg_proc.log_tail(20));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Fakes { amo, token, messenger, _procs: (amo_proc, msg_proc) }
    }
}

/// A kill -9 after amoCRM created a customer's contact and before the connector
/// heard back (the fake withholds the answer) leaves one contact: the restarted
/// connector finds it by the Telegram id kept in the identity field that the
/// connector (standalone, where no operator runs) created in the CRM. The
/// customer has no phone, so nothing else could have matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_between_creating_a_contact_and_recording_it_leaves_one_contact() {
    let dir = tempfile::tempdir().unwrap();
    let db = Postgres::shared().database("crash_contact").unwrap();
    let http = reqwest::Client::new();
    let Fakes { amo, token, messenger, _procs } = Fakes::start(dir.path(), &http).await;
    let manifests = write_manifests(dir.path(), &amo, &format!("  long_lived_token: {token}"), "h");
    // The binding names no identity fields: the connector finds or makes them.
    let shop = manifests.join("shop.yaml");
    let yaml = std::fs::read_to_string(&shop).unwrap().replace(", contactFields: { telegramUserId: 201 }", "");
    std::fs::write(&shop, yaml).unwrap();
    let ports = Ports::free();
    let args = ["--database-url", &db, "--scripted-messenger", &messenger, "--crm-requests-per-second", "500"];
    let mut connector = start_standalone(dir.path(), &ports, &args);
    // The connector makes its identity fields first (no operator here).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let fields = http.get(format!("{amo}/api/v4/contacts/custom_fields")).bearer_auth(&token).send().await.unwrap();
        if fields.text().await.unwrap().contains("CRMESSENGER_TELEGRAM_ID") {
            break;
        }
        assert!(Instant::now() < deadline, "no identity fields\n{}", connector.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fault = json!({ "method": "POST", "path_prefix": "/api/v4/contacts", "drop_response": true, "times": 1 });
    http.post(format!("{amo}/_fake/faults")).json(&fault).send().await.unwrap();
    let hello = text("9501", "1", "Nadia", "hello, anyone?");
    http.post(format!("{messenger}/_script/inbound")).json(&hello).send().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while snapshot(&http, &amo).await["contacts"].as_array().map_or(0, Vec::len) == 0 {
        assert!(Instant::now() < deadline, "no contact created\n{}", connector.log_tail(20));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    connector.kill();
    let connector = start_standalone(dir.path(), &ports, &args);
    let deadline = Instant::now() + Duration::from_secs(60);
    let snap = loop {
        let snap = snapshot(&http, &amo).await;
        if snap["notes"].as_array().is_some_and(|n| n.iter().any(|n| n.to_string().contains("hello, anyone?"))) {
            break snap;
        }
        assert!(Instant::now() < deadline, "the note never came\n{}", connector.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let contacts = snap["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "one contact after the kill: {contacts:?}");
    let fields = &contacts[0]["custom_fields_values"];
    let field = fields.as_array().and_then(|f| f.iter().find(|f| f["field_code"] == "CRMESSENGER_TELEGRAM_ID"));
    assert_eq!(field.map(|f| f["values"][0]["value"].clone()), Some(json!("9501")), "the identity field: {fields}");
}

/// What the proxy does with the bytes it carries.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    /// Forwards both ways.
    Up,
    /// Drops everything silently; both sockets stay open.
    Silent,
    /// Still silent to the client, and the server side is closed (what the
    /// server does once its keepalives go unanswered).
    Severed,
}

/// A loopback TCP proxy in front of `upstream` whose link can be cut silently.
async fn proxy(upstream: u16) -> (u16, tokio::sync::watch::Sender<Link>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (link, rx) = tokio::sync::watch::channel(Link::Up);
    tokio::spawn(async move {
        let parked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        while let Ok((client, _)) = listener.accept().await {
            let mut rx = rx.clone();
            let parked = parked.clone();
            tokio::spawn(async move {
                if *rx.borrow() != Link::Up {
                    // A new connection on a cut link: accepted, never answered.
                    parked.lock().unwrap().push(client);
                    return;
                }
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let (mut a, mut b) = (vec![0u8; 16384], vec![0u8; 16384]);
                loop {
                    tokio::select! {
                        n = cr.read(&mut a) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if *rx.borrow() == Link::Up && sw.write_all(&a[..n]).await.is_err() { return },
                        },
                        n = sr.read(&mut b) => match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if *rx.borrow() == Link::Up && cw.write_all(&b[..n]).await.is_err() { return },
                        },
                        changed = rx.changed() => {
                            if changed.is_err() || *rx.borrow() == Link::Severed {
                                // The server side goes; the client side stays open and silent.
                                drop((sr, sw));
                                if let Ok(client) = cr.reunite(cw) {
                                    parked.lock().unwrap().push(client);
                                }
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (port, link)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_cut_database_link_never_gives_one_account_two_messenger_connections() {
    use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
    use crmessenger_fake_messenger::{Options, ScriptedMessenger};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pg = Postgres::shared();
    let db = pg.database("cut").unwrap();
    let (proxy_port, link) = proxy(pg.port()).await;
    let db_via_proxy = db.replace(&format!(":{}/", pg.port()), &format!(":{proxy_port}/"));
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let token = fake.issue_token_pair().access_token;
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    let notes_with = |needle: &str| {
        fake.snapshot().notes.iter().filter(|n| n.params["text"].as_str().unwrap_or_default().contains(needle)).count()
    };
    let start = |dir: &std::path::Path, db: &str| {
        write_manifests(dir, &fake.base_url(), &format!("  long_lived_token: {token}"), "h");
        start_standalone(dir, &Ports::free(), &["--database-url", db, "--scripted-messenger", &messenger.base_url()])
    };
    // A, through the proxy, holds the account and works.
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start(dir_a.path(), &db_via_proxy);
    messenger.push(vec![text("8001", "1", "Ivan", "before the cut")]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while notes_with("before the cut") == 0 {
        assert!(Instant::now() < deadline, "A never delivered\n{}", a.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B, connected directly, waits for the lock (it says so) and stays off the messenger.
    let b = start(dir_b.path(), &db);
    while !b.log().contains("the account lock is held by") {
        assert!(Instant::now() < deadline, "B never waited for the lock\n{}", b.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(messenger.connections().len(), 1, "only the lock holder connects: {:?}", messenger.connections());

    // The link goes silent: A's lock checks get no answer, nothing is closed.
    link.send(Link::Silent).unwrap();
    let cut_at = jiff::Timestamp::now().as_millisecond();
    messenger.push(vec![text("8001", "2", "Ivan", "after the cut")]);
    // PostgreSQL ends A's sessions once its keepalives go unanswered (about 25 s
    // with the connector's settings); the proxy does that sooner.
    tokio::time::sleep(Duration::from_secs(15)).await;
    link.send(Link::Severed).unwrap();
    let severed_at = jiff::Timestamp::now().as_millisecond();
    // B takes the account over and delivers what arrived meanwhile, once.
    let deadline = Instant::now() + Duration::from_secs(90);
    while notes_with("after the cut") == 0 {
        assert!(Instant::now() < deadline, "B never took over\nA:\n{}\nB:\n{}", a.log_tail(30), b.log_tail(30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let connections = messenger.connections();
    assert!(connections.len() >= 2, "B connected: {connections:?}");
    // Never two at once: each connection closed before the next one opened.
    for pair in connections.windows(2) {
        let closed = pair[0].closed_ms.unwrap_or(i64::MAX);
        assert!(
            closed <= pair[1].opened_ms,
            "two live messenger connections for one account: {pair:?}\nA:\n{}",
            a.log_tail(40)
        );
    }
    // A let go of the messenger on its own, before the server freed the lock.
    let first_closed = connections[0].closed_ms.expect("A's connection closed");
    assert!(first_closed > cut_at && first_closed < severed_at, "{connections:?} cut {cut_at} severed {severed_at}");
    assert!(a.log().contains("the account lock was lost"), "{}", a.log_tail(30));
    assert_eq!(notes_with("before the cut"), 1);
    assert_eq!(notes_with("after the cut"), 1);
}
