//! Connector benchmarks (outside the test suite). Build in release and run:
//!
//! ```sh
//! cargo build --release -p crmessenger-connector --examples --bins
//! $HOME/.cache/crmessenger/target/release/examples/bench_connector [throughput|latency|rss|commits|all]
//! ```
//!
//! - `throughput`: messages per second into the amoCRM fake at its real limit of 7
//!   requests/s, against the ceiling batching allows for the workload;
//! - `latency`: p50/p99 from the messenger event to the CRM write at 20 msg/s;
//! - `rss`: idle RSS of `gateway`, `sidecar`, a one-account `standalone`, and the
//!   RSS each further account adds to `standalone` (100 accounts);
//! - `commits`: inbox and outbox commits per second on PostgreSQL and SQLite;
//! - `backfill`: the `latency` figures for one chat with and without a
//!   2,000-message history import running beside the live messages.
//!
//! Needs the binaries beside this example (`--bins` above) and PostgreSQL installed
//! (as for the tests). PostgreSQL runs durable here (its defaults: `fsync`,
//! `synchronous_commit`, `full_page_writes` on), unlike the test server. Each
//! figure is the median of several runs with the range beside it; latency is
//! stamped by the amoCRM fake when it writes the note, not by polling it.

use crmessenger_api::config::{RuntimeSettings, render};
use crmessenger_connector::app::{build_account, register_routes};
use crmessenger_connector::metrics::Metrics;
use crmessenger_connector::store::lock::AccountLock;
use crmessenger_connector::store::{POOL_SIZE, Store};
use crmessenger_crm::amocrm::StaticToken;
use crmessenger_crm::clock::SystemClock;
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
use crmessenger_testkit::Postgres;
use crmessenger_testkit::controlplane::free_port;
use crmessenger_testkit::process::Proc;
use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const AMO_RPS: f64 = 7.0;
const NOTES_PER_REQUEST: usize = 250;
/// Runs per figure.
const RUNS: usize = 3;

/// A PostgreSQL server with the durable defaults, shared by the benchmarks.
fn durable() -> &'static Postgres {
    static PG: std::sync::OnceLock<Postgres> = std::sync::OnceLock::new();
    PG.get_or_init(|| Postgres::start_durable().expect("start a durable PostgreSQL"))
}

/// "median (min–max)" of `xs`, each formatted with `digits` decimals.
fn spread(xs: &[f64], digits: usize) -> String {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let median = if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    format!("{median:.digits$} ({:.digits$}–{:.digits$})", v[0], v[v.len() - 1])
}

struct Rig {
    fake: FakeAmo,
    messenger: ScriptedMessenger,
    _stop: watch::Sender<bool>,
}

fn account_yaml(name: &str, binding_selects: &str, base_url: &str) -> String {
    account_yaml_with(name, binding_selects, base_url, "{}")
}

fn account_yaml_with(name: &str, binding_selects: &str, base_url: &str, policy: &str) -> String {
    format!(
        r#"
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {{ name: {name}, labels: {{ bench: "yes" }} }}
spec: {{ provider: telegram, telegram: {{ apiCredentials: {{ secretName: tg-api }} }} }}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {{ name: p }}
spec: {policy}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {{ name: b }}
spec:
  {binding_selects}
  policyRef: {{ name: p }}
  crm: {{ type: amocrm, amocrm: {{ baseUrl: "{base_url}", credentialsSecret: {{ name: amo }}, replies: {{ detection: webhook }} }} }}
"#
    )
}

/// One account bridged in process, on `db_url`, to a fresh fake at 7 requests/s.
async fn rig(db_url: &str) -> Rig {
    rig_with(db_url, "{}", Vec::new()).await
}

/// [`rig`] with the policy's spec and `history`: messages from before the account
/// was connected, which the policy's backfill imports beside the live stream.
async fn rig_with(db_url: &str, policy: &str, history: Vec<crmessenger_fake_messenger::Update>) -> Rig {
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    messenger.push_history(history);
    let yaml = account_yaml_with("shop", "accountNames: [shop]", &fake.base_url(), policy);
    let mut m = crmessenger_api::manifests::parse(&yaml, "bench").unwrap();
    let config =
        render(&m.accounts.remove(0), &m.bindings.remove(0), &m.policies.remove(0), RuntimeSettings::default())
            .unwrap();
    let store = Store::connect(db_url, POOL_SIZE).await.unwrap();
    let parts = build_account(
        &config,
        &store,
        Arc::new(StaticToken(fake.issue_token_pair().access_token)),
        None,
        Arc::new(crmessenger_connector::messenger::scripted::Scripted::new(&messenger.base_url()).unwrap()),
        None,
        Arc::new(SystemClock),
        Arc::new(Metrics::default()),
    )
    .unwrap();
    register_routes(&parts, &store, Some("http://127.0.0.1:9")).await.unwrap();
    let lock = AccountLock::acquire(&store, &parts.key, |_| {}).await.unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let bridge = parts.bridge.clone();
    tokio::spawn(async move {
        bridge.run(&lock, stop_rx).await;
        lock.release().await;
    });
    Rig { fake, messenger, _stop: stop }
}

fn common_notes(fake: &FakeAmo) -> usize {
    fake.snapshot().notes.iter().filter(|n| n.note_type == "common").count()
}

/// Waits until the fake holds `n` common notes (not a timing: the times come
/// from the fake's own stamps).
async fn wait_notes(fake: &FakeAmo, n: usize, limit: Duration) -> Option<()> {
    let t0 = Instant::now();
    while common_notes(fake) < n {
        if t0.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Some(())
}

async fn throughput() {
    println!("== throughput at amoCRM's 7 requests/s (PostgreSQL, durable)");
    println!("(ceiling: 7 requests/s x 250 notes; the connector's budget keeps a 10% margin under 7/s,");
    println!(
        " so {:.0} msg/s is the most it sends by design)",
        crmessenger_crm::budget::Limit::AMOCRM_REST.rate * NOTES_PER_REQUEST as f64
    );
    println!(
        "| chats | messages | ceiling msg/s | measured msg/s, median (range) of {RUNS} | fraction of the ceiling |"
    );
    println!("|---|---|---|---|---|");
    for (chats, per_chat) in [(1usize, 5000usize), (20, 250), (200, 25)] {
        let (mut rates, mut total, mut ceiling) = (Vec::new(), 0, 0.0);
        for _ in 0..RUNS {
            let (t, c, rate) = throughput_run(chats, per_chat).await;
            (total, ceiling) = (t, c);
            rates.push(rate);
        }
        let fractions: Vec<f64> = rates.iter().map(|r| 100.0 * r / ceiling).collect();
        println!("| {chats} | {total} | {ceiling:.0} | {} | {}% |", spread(&rates, 0), spread(&fractions, 0));
    }
}

/// One throughput run: (messages, ceiling msg/s, measured msg/s).
async fn throughput_run(chats: usize, per_chat: usize) -> (usize, f64, f64) {
    let r = rig(&durable().database("benchtp").unwrap()).await;
    // Warm-up: each chat's contact and lead exist, so what follows is notes only.
    r.messenger.push((0..chats).map(|c| text(&format!("c{c}"), "w", "Bench", "warm-up")).collect());
    wait_notes(&r.fake, chats, Duration::from_secs(600)).await.expect("warm-up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let batch: Vec<_> = (0..per_chat)
        .flat_map(|i| {
            (0..chats).map(move |c| text(&format!("c{c}"), &format!("m{i}"), "Bench", &format!("message {i}")))
        })
        .collect();
    let total = batch.len();
    let pushed_at = Instant::now();
    r.messenger.push(batch);
    wait_notes(&r.fake, chats + total, Duration::from_secs(600)).await.expect("delivery");
    // Until the fake wrote the last note (its own stamp).
    let last = r.fake.snapshot().notes.iter().map(|n| n.written_us).max().unwrap_or_default();
    let took = (r.fake.started_at() + Duration::from_micros(last)).saturating_duration_since(pushed_at);
    // The fewest requests that carry the backlog: one per 250 notes (the notes
    // of many leads share a request).
    let requests = total.div_ceil(NOTES_PER_REQUEST);
    let ceiling = total as f64 / (requests as f64 / AMO_RPS);
    (total, ceiling, total as f64 / took.as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latency() {
    println!("== latency from messenger event to CRM write at 20 msg/s (PostgreSQL, durable)");
    println!("(the write is stamped by the amoCRM fake as it stores the note)");
    println!("| chats | messages per run | p50 ms | p99 ms | max ms |  (median (range) of {RUNS} runs)");
    println!("|---|---|---|---|---|");
    for chats in [1usize, 5] {
        let (mut p50, mut p99, mut max) = (Vec::new(), Vec::new(), Vec::new());
        let total = 600;
        for _ in 0..RUNS {
            let ms = latency_run(chats, total).await;
            p50.push(percentile(&ms, 0.5));
            p99.push(percentile(&ms, 0.99));
            max.push(ms[ms.len() - 1]);
        }
        println!("| {chats} | {total} | {} | {} | {} |", spread(&p50, 0), spread(&p99, 0), spread(&max, 0));
    }
}

/// One latency run: each message's milliseconds from the push into the messenger
/// to the fake's write of its note, sorted.
async fn latency_run(chats: usize, total: usize) -> Vec<f64> {
    let r = rig(&durable().database("benchlat").unwrap()).await;
    r.messenger.push((0..chats).map(|c| text(&format!("c{c}"), "w", "Bench", "warm-up")).collect());
    wait_notes(&r.fake, chats, Duration::from_secs(120)).await.expect("warm-up");
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    for next in 0..total {
        tokio::time::sleep_until((start + Duration::from_millis(50 * next as u64)).into()).await;
        let marker = format!("lat-{next:04}");
        r.messenger.push(vec![text(&format!("c{}", next % chats), &format!("m{next}"), "Bench", &marker)]);
        pushed.insert(marker, Instant::now());
    }
    wait_notes(&r.fake, chats + total, Duration::from_secs(300)).await.expect("every message written");
    let origin = r.fake.started_at();
    let mut ms: Vec<f64> = r
        .fake
        .snapshot()
        .notes
        .iter()
        .filter_map(|n| {
            let t = n.params["text"].as_str().unwrap_or_default();
            let i = t.find("lat-")?;
            let written = origin + Duration::from_micros(n.written_us);
            Some(written.saturating_duration_since(pushed[&t[i..i + 8]]).as_secs_f64() * 1000.0)
        })
        .collect();
    assert_eq!(ms.len(), total);
    if std::env::var_os("BENCH_DEBUG").is_some() {
        let reqs = r.fake.snapshot().requests;
        for w in reqs.windows(2).skip(reqs.len().saturating_sub(12)) {
            eprintln!("{} {} {} +{}ms", w[1].method, w[1].path, w[1].status, w[1].real_ms - w[0].real_ms);
        }
    }
    ms.sort_by(f64::total_cmp);
    ms
}

/// Notes whose text contains `marker`.
fn marked_notes(fake: &FakeAmo, marker: &str) -> usize {
    fake.snapshot().notes.iter().filter(|n| n.params["text"].as_str().is_some_and(|t| t.contains(marker))).count()
}

async fn backfill() {
    const HISTORY: usize = 2000;
    println!("== live latency with and without a {HISTORY}-message history import (PostgreSQL, durable)");
    println!("(20 msg/s live in one chat; the history: 40 chats of 50 messages, imported by the policy's backfill)");
    println!("| run | p50 ms | p99 ms | max ms | history written after s |  (median (range) of {RUNS} runs)");
    println!("|---|---|---|---|---|");
    for history in [0usize, HISTORY] {
        let (mut p50, mut p99, mut max, mut import) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let (ms, imported) = backfill_run(history).await;
            p50.push(percentile(&ms, 0.5));
            p99.push(percentile(&ms, 0.99));
            max.push(ms[ms.len() - 1]);
            import.push(imported);
        }
        let label = if history == 0 { "live only".to_string() } else { format!("live + {history} history") };
        let import = if history == 0 { "-".to_string() } else { spread(&import, 1) };
        println!("| {label} | {} | {} | {} | {import} |", spread(&p50, 0), spread(&p99, 0), spread(&max, 0));
    }
}

/// Live messages at 20/s for 30 s, after a first one shows the connector up,
/// while `history` older messages are imported; returns the live messages'
/// latencies (ms, sorted) and when the last history note was written (s after
/// the connector started).
async fn backfill_run(history: usize) -> (Vec<f64>, f64) {
    let hour_ago = jiff::Timestamp::now().as_millisecond() - 3_600_000;
    let past: Vec<_> = (0..history)
        .map(|i| {
            let mut u = text(&format!("h{}", i % 40), &format!("h{i}"), "Past", &format!("hist-{i:05}"));
            u.sent_at_ms = hour_ago + i as i64;
            u
        })
        .collect();
    let policy = "{ backfill: { days: 1, maxChats: 100 } }";
    let r = rig_with(&durable().database("benchbackfill").unwrap(), policy, past).await;
    // The connector is up once a first live message is written (the import has
    // begun by then: it starts with the stream).
    let start = Instant::now();
    r.messenger.push(vec![text("live", "w", "Bench", "warm-up")]);
    while marked_notes(&r.fake, "warm-up") == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "the connector did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut pushed: HashMap<String, Instant> = HashMap::new();
    let total = 600;
    let live = Instant::now();
    for next in 0..total {
        tokio::time::sleep_until((live + Duration::from_millis(50 * next as u64)).into()).await;
        let marker = format!("lat-{next:04}");
        r.messenger.push(vec![text("live", &format!("m{next}"), "Bench", &marker)]);
        pushed.insert(marker, Instant::now());
    }
    let t0 = Instant::now();
    while marked_notes(&r.fake, "lat-") < total || marked_notes(&r.fake, "hist-") < history {
        assert!(t0.elapsed() < Duration::from_secs(600), "not everything was written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let origin = r.fake.started_at();
    let notes = r.fake.snapshot().notes;
    let written = |n: &crmessenger_fake_amocrm::Note| origin + Duration::from_micros(n.written_us);
    let mut ms: Vec<f64> = notes
        .iter()
        .filter_map(|n| {
            let t = n.params["text"].as_str().unwrap_or_default();
            let i = t.find("lat-")?;
            Some(written(n).saturating_duration_since(pushed[&t[i..i + 8]]).as_secs_f64() * 1000.0)
        })
        .collect();
    let last_history = notes
        .iter()
        .filter(|n| n.params["text"].as_str().is_some_and(|t| t.contains("hist-")))
        .map(|n| written(n).saturating_duration_since(start).as_secs_f64())
        .fold(0.0, f64::max);
    ms.sort_by(f64::total_cmp);
    (ms, last_history)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn bin(name: &str) -> std::path::PathBuf {
    std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join(name)
}

fn wait_up(addr: &str, p: &mut Proc) {
    let t0 = Instant::now();
    while crmessenger_testkit::checks::http_get(addr, "/healthz").map(|r| r.0) != Some(200) {
        assert!(p.exited().is_none() && t0.elapsed() < Duration::from_secs(60), "{}", p.log_tail(20));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `standalone` with `n` accounts (each with its own scripted messenger) and
/// returns its RSS in KiB after it settles.
async fn standalone_rss(n: usize, fake: &FakeAmo, dir: &std::path::Path) -> u64 {
    let mut messengers = Vec::new();
    let manifests = dir.join(format!("m{n}"));
    std::fs::create_dir_all(&manifests).unwrap();
    let mut yaml = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: amo }}\nstringData: {{ long_lived_token: {} }}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {{ name: tg-api }}\nstringData: {{ api_id: \"1\", api_hash: h }}\n",
        fake.issue_token_pair().access_token
    );
    let mut args = Vec::new();
    for i in 0..n {
        let m = ScriptedMessenger::start(Options::default()).await.unwrap();
        args.push("--scripted-messenger".to_string());
        args.push(format!("bench/a{i}={}", m.base_url()));
        messengers.push(m);
        let doc =
            account_yaml(&format!("a{i}"), "accountSelector: { matchLabels: { bench: \"yes\" } }", &fake.base_url());
        // One binding and policy are enough; keep only the account document after the first.
        let doc = if i == 0 { doc } else { doc.split("\n---\n").next().unwrap_or_default().to_string() };
        yaml.push_str("---\n");
        yaml.push_str(&doc);
        yaml.push('\n');
    }
    std::fs::write(manifests.join("all.yaml"), yaml).unwrap();
    let p = |_: ()| format!("127.0.0.1:{}", free_port().unwrap());
    let (admin, login, gateway) = (p(()), p(()), p(()));
    let mut cmd = Command::new(bin("crmessenger-connector"));
    cmd.args(["standalone", "-f"])
        .arg(&manifests)
        .args(["-n", "bench", "--data-dir"])
        .arg(dir.join(format!("data{n}")))
        .args(["--admin-addr", &admin, "--login-addr", &login, "--gateway-addr", &gateway])
        .args(&args)
        .env("RUST_LOG", "warn");
    let mut proc = Proc::start(&format!("standalone{n}"), cmd, dir).unwrap();
    wait_up(&login, &mut proc);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut samples: Vec<u64> = Vec::new();
    for _ in 0..5 {
        samples.push(rss_kib(proc.id()));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    samples.sort();
    samples[samples.len() / 2]
}

async fn rss() {
    println!("== idle RSS (median of 5 samples after 5 s idle)");
    let dir = tempfile::tempdir().unwrap();
    let db = durable().database("benchrss").unwrap();
    let mut rows = Vec::new();
    let gw_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let mut cmd = Command::new(bin("crmessenger-connector"));
    cmd.args(["gateway", "--listen", &gw_addr]).env("CRMESSENGER_DATABASE_URL", &db).env("RUST_LOG", "warn");
    let mut gw = Proc::start("gateway", cmd, dir.path()).unwrap();
    wait_up(&gw_addr, &mut gw);
    let side_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let mut cmd = Command::new(bin("crmessenger-connector"));
    cmd.args(["sidecar", "--listen", &side_addr, "--admin-url", "http://127.0.0.1:9"]).env("RUST_LOG", "warn");
    let mut side = Proc::start("sidecar", cmd, dir.path()).unwrap();
    wait_up(&side_addr, &mut side);
    tokio::time::sleep(Duration::from_secs(5)).await;
    rows.push(("gateway", rss_kib(gw.id())));
    rows.push(("sidecar", rss_kib(side.id())));
    let fake =
        FakeAmo::start(FakeConfig { chats: None, rate_limit_per_sec: 10_000, ..FakeConfig::default() }).await.unwrap();
    let one = standalone_rss(1, &fake, dir.path()).await;
    rows.push(("standalone, 1 account (run + gateway + login pages)", one));
    let hundred = standalone_rss(101, &fake, dir.path()).await;
    rows.push(("standalone, 101 accounts", hundred));
    println!("| process | RSS MiB |");
    println!("|---|---|");
    for (what, kib) in rows {
        println!("| {what} | {:.1} |", kib as f64 / 1024.0);
    }
    println!("RSS per added account: {:.0} KiB", (hundred as f64 - one as f64) / 100.0);
}

async fn commits() {
    println!("== commits per second (one row per transaction; PostgreSQL durable)");
    println!("| store | inbox commits/s | outbox commits/s |  (median (range) of 5 runs of 2 s)");
    println!("|---|---|---|");
    let dir = tempfile::tempdir().unwrap();
    let urls = [
        ("PostgreSQL", durable().database("benchcommit").unwrap()),
        ("SQLite", format!("sqlite://{}", dir.path().join("bench.db").display())),
    ];
    for (name, url) in urls {
        let store = Store::connect(&url, POOL_SIZE).await.unwrap();
        let (mut inbox, mut outbox) = (Vec::new(), Vec::new());
        let mut n = 0u64;
        for _ in 0..5 {
            let t0 = Instant::now();
            let mut k = 0u64;
            while t0.elapsed() < Duration::from_secs(2) {
                let row = ("chat".to_string(), format!("k{n}"), "{}".to_string());
                store.ingest("bench/a", &[row], "messenger", &n.to_string(), 0, false).await.unwrap();
                n += 1;
                k += 1;
            }
            inbox.push(k as f64 / t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            let mut k = 0u64;
            while t0.elapsed() < Duration::from_secs(2) {
                let reply = crmessenger_connector::store::NewReply {
                    source_id: &format!("s{n}"),
                    chat_id: "chat",
                    text: "text",
                    ..Default::default()
                };
                store.outbox_add("bench/a", &reply, 0).await.unwrap();
                n += 1;
                k += 1;
            }
            outbox.push(k as f64 / t0.elapsed().as_secs_f64());
        }
        println!("| {name} | {} | {} |", spread(&inbox, 0), spread(&outbox, 0));
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let all = what == "all";
    if all || what == "commits" {
        commits().await;
    }
    if all || what == "throughput" {
        throughput().await;
    }
    if all || what == "latency" {
        latency().await;
    }
    if all || what == "rss" {
        rss().await;
    }
    if all || what == "backfill" {
        backfill().await;
    }
}
