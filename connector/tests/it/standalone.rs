//! `crmessenger-connector standalone -f DIR` as a user runs it on one host: the
//! manifests and Secrets in a directory, SQLite in a data directory, the amoCRM
//! token obtained with a single-use refresh token and kept (sealed) in the
//! database, so a restart goes on with the stored pair instead of the spent one.

use crate::common;

use common::{Ports, standalone_command, start_standalone, start_standalone_with, write_manifests};
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
use crmessenger_testkit::checks::{eventually, http_get};
use crmessenger_testkit::process::Proc;
use std::time::Duration;

async fn note_with(fake: &FakeAmo, needle: &str, p: &Proc) -> i64 {
    eventually(&format!("a note with {needle:?}"), 60, || async {
        let s = fake.snapshot();
        s.notes
            .iter()
            .find(|n| n.params["text"].as_str().unwrap_or_default().contains(needle))
            .map(|n| n.entity_id)
            .ok_or(p.log_tail(15))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_runs_its_manifests_on_sqlite_and_keeps_the_refreshed_token() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let refresh = fake.issue_token_pair().refresh_token;
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    let credentials = format!(
        "  client_id: fake-client\n  client_secret: fake-secret\n  redirect_uri: https://example.test/oauth\n  refresh_token: {refresh}"
    );
    let manifests = write_manifests(dir.path(), &fake.base_url(), &credentials, "canary-api-hash-77aa");
    // A second account no binding selects: named in the log, not started.
    std::fs::write(
        manifests.join("unbound.yaml"),
        "apiVersion: crmessenger.io/v1alpha1\nkind: MessengerAccount\nmetadata: { name: unbound }\n\
         spec: { provider: telegram, telegram: { apiCredentials: { secretName: tg-api } } }\n",
    )
    .unwrap();
    let ports = Ports::free();
    let scripted = format!("home/shop={}", messenger.base_url());
    let args = ["--scripted-messenger", scripted.as_str()];

    let mut p = start_standalone(dir.path(), &ports, &args);
    messenger.push(vec![text("7001", "1", "Olga", "Is the blue one in stock?")]);
    let lead = note_with(&fake, "blue one", &p).await;
    // A manager's answer comes back by webhook through the in-process gateway.
    fake.add_manager_note(lead, 1001, ">> Yes, two left");
    eventually("the reply in the messenger", 60, || async {
        let sent = messenger.sent();
        sent.iter().any(|s| s.chat_id == "7001" && s.text == "Yes, two left").then_some(()).ok_or(p.log_tail(10))
    })
    .await;
    // The login page and status cover the account; the unbound one is named in the log.
    let (code, page) = http_get(&ports.login, "/login?account=home/shop").unwrap();
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Logged in as"), "{page}");
    let (code, status) = http_get(&ports.admin, "/status").unwrap();
    assert_eq!(code, 200);
    assert!(status.contains("home/shop"), "{status}");
    assert!(p.log().contains("home/unbound") && p.log().contains("no CrmBinding selects this account"));

    // SIGTERM: a clean exit.
    let status = p.terminate(Duration::from_secs(20)).expect("exits within 20 s of SIGTERM");
    assert!(status.success(), "{status}\n{}", p.log_tail(20));

    // The refresh token in the manifest is spent; a restart uses the stored pair.
    let p = start_standalone(dir.path(), &ports, &args);
    messenger.push(vec![text("7001", "2", "Olga", "And the red one?")]);
    note_with(&fake, "red one", &p).await;
    let notes = fake.snapshot().notes;
    assert_eq!(notes.iter().filter(|n| n.params["text"].as_str().unwrap_or_default().contains("blue one")).count(), 1);
    assert!(!p.log().contains("ReauthorizationRequired") && !p.log().contains("reauthoriz"), "{}", p.log_tail(30));

    // Secrets canary: no Secret value in the log or the database file in clear.
    let log = p.log();
    let mut db = std::fs::read(dir.path().join("data/crmessenger.db")).unwrap();
    db.extend(std::fs::read(dir.path().join("data/crmessenger.db-wal")).unwrap_or_default());
    for secret in [refresh.as_str(), "canary-api-hash-77aa", "fake-secret"] {
        assert!(!log.contains(secret), "a Secret value leaked into the log");
        assert!(
            !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "a Secret value is in the database in clear"
        );
    }
    let key = std::fs::metadata(dir.path().join("data/session.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
}

/// Runs `standalone` to its exit (30 s at most); returns its code and output.
fn run_to_exit(dir: &std::path::Path, extra: &[&str]) -> (i32, String) {
    let cmd = standalone_command(dir, &Ports::free(), extra);
    let mut p = Proc::start("bad", cmd, dir).unwrap();
    let status = p.wait(Duration::from_secs(30)).unwrap_or_else(|| panic!("still running:\n{}", p.log_tail(20)));
    (status.code().unwrap_or(-1), p.log())
}

/// What a bad-input case changes in the manifest directory.
type Breaks = Box<dyn Fn(&std::path::Path)>;

#[test]
fn bad_input_is_a_clear_error_and_exit_1_never_a_panic() {
    let cases: Vec<(&str, Breaks, Vec<&str>, &str)> = vec![
        (
            "malformed YAML",
            Box::new(|m| std::fs::write(m.join("broken.yaml"), "kind: CrmBinding\nmetadata: [\n").unwrap()),
            vec![],
            "broken.yaml",
        ),
        (
            "an object that does not fit its schema",
            Box::new(|m| {
                std::fs::write(m.join("bad.yaml"), "apiVersion: crmessenger.io/v1alpha1\nkind: SyncPolicy\nmetadata: {name: p}\nspec: {assignment: {strategy: sometimes}}\n").unwrap()
            }),
            vec![],
            "bad.yaml: document 1 (SyncPolicy)",
        ),
        (
            "a Secret without the key the account names",
            Box::new(|m| {
                let text = std::fs::read_to_string(m.join("secrets.yaml")).unwrap().replace("api_hash: h", "other: h");
                std::fs::write(m.join("secrets.yaml"), text).unwrap()
            }),
            vec![],
            "Secret tg-api has no key api_hash",
        ),
        ("a malformed session key", Box::new(|_| {}), vec!["--session-key", "nope"], "--session-key"),
        (
            "an unreachable database",
            Box::new(|_| {}),
            vec!["--database-url", "postgres://crm@127.0.0.1:1/none"],
            "open the database",
        ),
    ];
    for (what, break_it, args, expected) in cases {
        let dir = tempfile::tempdir().unwrap();
        let manifests = write_manifests(dir.path(), "http://127.0.0.1:9", "  long_lived_token: t", "h");
        break_it(&manifests);
        let (code, log) = run_to_exit(dir.path(), &args);
        assert_eq!(code, 1, "{what}: exit code\n{log}");
        assert!(log.contains(expected), "{what}: the error should say {expected:?}\n{log}");
        assert!(!log.contains("panicked"), "{what}: panicked\n{log}");
    }
}

/// A host's directory with the manifests of a shop on the amoCRM fake (a
/// long-lived token) and the scripted messenger it talks to.
async fn one_host() -> (tempfile::TempDir, FakeAmo, ScriptedMessenger) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    let token = fake.issue_token_pair().access_token;
    write_manifests(dir.path(), &fake.base_url(), &format!("  long_lived_token: {token}"), "h");
    (dir, fake, messenger)
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, each message is one span from the
/// messenger event to the CRM write, named by its correlation id, exported over OTLP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_is_one_span_exported_over_otlp() {
    let (dir, fake, messenger) = one_host().await;
    let (otlp, mut spans) = crmessenger_testkit::otlp::span_receiver().await;
    let ports = Ports::free();
    let scripted = messenger.base_url();
    let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()), ("OTEL_BSP_SCHEDULE_DELAY", "200")];
    let p = start_standalone_with(dir.path(), &ports, &["--scripted-messenger", &scripted], &env);
    let keys = ["m-77", "m-78", "m-79"];
    for (i, key) in keys.iter().enumerate() {
        messenger.push(vec![text("8123", key, "Vera", &format!("trace me {i}"))]);
    }
    for i in 0..keys.len() {
        note_with(&fake, &format!("trace me {i}"), &p).await;
    }
    // A last message, after the others: spans are exported in the order they end,
    // so once its span is in, every earlier message's span is too.
    messenger.push(vec![text("8123", "m-marker", "Vera", "trace me last")]);
    note_with(&fake, "trace me last", &p).await;
    // The correlation id is `<account hash>:<chat>:<event key>`; the chat and key are ours.
    let mut per_key = std::collections::HashMap::<String, usize>::new();
    let got = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(span) = spans.recv().await {
            let Some(id) = span.attribute("crmessenger.correlation_id").filter(|_| span.name == "message") else {
                continue;
            };
            let Some((_, event)) = id.split_once(":8123:") else { continue };
            // The event key names the message id (with a kind prefix, if any).
            let Some(key) = keys.iter().chain(["m-marker"].iter()).find(|k| event.ends_with(*k)) else { continue };
            *per_key.entry(key.to_string()).or_default() += 1;
            if *key == "m-marker" {
                return;
            }
        }
    })
    .await;
    assert!(got.is_ok(), "the marker's span never reached the OTLP receiver: {per_key:?}\n{}", p.log_tail(20));
    for key in keys {
        assert_eq!(per_key.get(key), Some(&1), "one span for {key}: {per_key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_sqlite_waits_for_the_lock_and_takes_over_after_a_sigkill() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let token = fake.issue_token_pair().access_token;
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    write_manifests(dir.path(), &fake.base_url(), &format!("  long_lived_token: {token}"), "h");
    let scripted = format!("home/shop={}", messenger.base_url());
    let args = ["--scripted-messenger", scripted.as_str()];

    // A holds the account's lock file and works.
    let mut a = start_standalone(dir.path(), &Ports::free(), &args);
    messenger.push(vec![text("7101", "1", "Olga", "before the crash")]);
    note_with(&fake, "before the crash", &a).await;
    // B, on the same data directory, says it waits and stays off the messenger.
    let b = start_standalone(dir.path(), &Ports::free(), &args);
    eventually("B waiting for the lock file", 30, || async {
        b.log().contains("is held by another process").then_some(()).ok_or(b.log_tail(10))
    })
    .await;
    assert_eq!(messenger.connections().len(), 1, "only the holder connects: {:?}", messenger.connections());

    // A dies without a word; the kernel frees its lock; B takes over and goes on.
    a.kill();
    messenger.push(vec![text("7101", "2", "Olga", "after the crash")]);
    note_with(&fake, "after the crash", &b).await;
    assert_eq!(messenger.connections().len(), 2, "B connected once: {:?}", messenger.connections());
    let notes = fake.snapshot().notes;
    for needle in ["before the crash", "after the crash"] {
        let n = notes.iter().filter(|n| n.params["text"].as_str().unwrap_or_default().contains(needle)).count();
        assert_eq!(n, 1, "{needle:?} delivered once");
    }
}

/// A reply over the message limit goes as ordered parts. The connector is
/// SIGKILLed after the first part went out, while the next one is failing: the
/// restarted connector sends the rest, each part once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_survives_a_sigkill_between_its_parts() {
    let (dir, fake, messenger) = one_host().await;
    let ports = Ports::free();
    let scripted = format!("home/shop={}", messenger.base_url());
    let args = ["--scripted-messenger", scripted.as_str()];
    let mut p = start_standalone(dir.path(), &ports, &args);
    messenger.push(vec![text("7001", "1", "Olga", "Send me the full terms")]);
    let lead = note_with(&fake, "full terms", &p).await;
    // The first send passes; the next two fail, so the second part is being retried.
    messenger.inject(crmessenger_fake_messenger::Fault {
        op: "send".into(),
        status: 503,
        times: 2,
        flood_wait_secs: 0,
        skip: 1,
    });
    let terms: String = (0..1000).map(|i| format!("clause{i:03}. ")).collect();
    assert!(terms.chars().count() > 2 * 4096, "three parts");
    fake.add_manager_note(lead, 1001, &format!(">> {terms}"));
    eventually("the first part out and the second failing", 60, || async {
        (messenger.sent().len() == 1 && messenger.send_calls() >= 2).then_some(()).ok_or(p.log_tail(10))
    })
    .await;
    p.kill();
    let p = start_standalone(dir.path(), &ports, &args);
    eventually("all three parts", 90, || async { (messenger.sent().len() >= 3).then_some(()).ok_or(p.log_tail(10)) })
        .await;
    // Give a duplicate every chance to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let sent = messenger.sent();
    assert_eq!(sent.len(), 3, "{:?}", sent.iter().map(|s| s.text.chars().count()).collect::<Vec<_>>());
    assert_eq!(sent.iter().map(|s| s.text.as_str()).collect::<String>(), terms.trim());
    assert!(sent.iter().all(|s| s.text.encode_utf16().count() <= 4096));
    drop(p);
}
