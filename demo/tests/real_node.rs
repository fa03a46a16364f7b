//! The chart on a real node, from the project's image: the operator and the gateway
//! become Ready, each account's connector pod runs, logs in and carries a
//! conversation, the login page answers through `kubectl port-forward`, the pods
//! run as 65532 with a read-only root filesystem in namespaces that enforce the
//! `restricted` Pod Security level, and deleting a connector pod in the middle of a
//! conversation brings a new one without losing or repeating anything. A person
//! signs the Telegram account in with `kubectl crmessenger login` in a terminal,
//! and lists and replays a dead letter with the plugin.

use crmessenger_demo::{Demo, RELEASE_NS, SHOP, TELEGRAM, TG_CUSTOMER, WHATSAPP, get, telegram_message, until};
use crmessenger_fake_amocrm::{Fault, FaultKind};
use crmessenger_testkit::metrics;
use crmessenger_testkit::qr::decode_terminal;
use crmessenger_testkit::terminal::Terminal;
use serde_json::Value;
use std::path::PathBuf;

/// The `kubectl-crmessenger` binary.
fn plugin() -> PathBuf {
    crmessenger_testkit::process::workspace_binary("crmessenger-kubectl", "kubectl-crmessenger").unwrap()
}

/// Runs the plugin against the cluster; its output (it must succeed).
fn run_plugin(d: &Demo, args: &[&str]) -> String {
    let out = std::process::Command::new(plugin()).args(args).env("KUBECONFIG", d.cp.kubeconfig()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "kubectl crmessenger {args:?}: {text}");
    text
}

/// The processes of this node's containers whose command starts with `prefix`:
/// (pid, command line).
fn node_processes(cgroup_root: &str, prefix: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        if !cgroup.contains(&format!("/{cgroup_root}/")) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with(prefix) {
            found.push((pid, cmdline));
        }
    }
    found
}

fn status_field(pid: u32, field: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" ")))
        .unwrap_or_default()
}

/// The mount options of `/` as the process sees it.
fn root_mount_options(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&"/")).then(|| f[5].to_string())
        })
        .unwrap_or_default()
}

fn notes_with(d: &Demo, text: &str) -> usize {
    d.amo.snapshot().notes.iter().filter(|n| n.params["text"].as_str().is_some_and(|t| t.contains(text))).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_runs_from_the_image_on_a_real_node() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    sqlx::any::install_default_drivers();
    let mut d = Demo::start().await.unwrap();
    d.install_chart().unwrap();
    d.wait_operator_and_gateway().await.unwrap();
    d.apply_quickstart().unwrap();
    d.wait_connectors().await.unwrap();

    // The login page, through kubectl port-forward to the sidecar.
    for (account, url, _) in &d.login_pages {
        let addr = url.trim_start_matches("http://").trim_end_matches("/login");
        let (status, body) = crmessenger_testkit::checks::http_get(addr, "/login").expect("the login page answers");
        assert_eq!(status, 200, "{account}: {body}");
        assert!(body.contains("<title>CRMessenger login"), "{account}: {body}");
    }

    // A person signs the Telegram account in with `kubectl crmessenger login` in a
    // terminal: the QR code it draws reads back as the account's login URL; once
    // the phone scans it, the plugin says so and exits 0.
    let kubeconfig = d.cp.kubeconfig().display().to_string();
    let login = Terminal::start(
        &plugin(),
        &["login", TELEGRAM, "-n", SHOP, "--timeout", "300"],
        &[("KUBECONFIG", &kubeconfig)],
        120,
        60,
    )
    .unwrap();
    let url = until("a QR code in the terminal that reads as the account's login URL", 180, || {
        let screen = login.screen();
        let drawn = decode_terminal(&screen, true).ok_or_else(|| format!("no QR code on the screen:\n{screen}"))?;
        let account = get(&d.cp, SHOP, &format!("messengeraccount/{TELEGRAM}"))?;
        let wanted = account["status"]["login"]["qrUrl"].as_str().unwrap_or_default().to_string();
        (drawn == wanted).then_some(drawn.clone()).ok_or(format!("drawn {drawn}, status {wanted}"))
    })
    .await
    .unwrap();
    assert!(url.contains("://login?token="), "{url}");
    let waiting = get(&d.cp, SHOP, &format!("messengeraccount/{TELEGRAM}")).unwrap();
    crmessenger_testkit::capture::save("messengeraccount-progressing-waiting-for-qr-scan", &waiting);
    d.telegram.scan();
    until("the plugin to say the account is signed in and exit 0", 120, || {
        let screen = login.screen();
        (screen.contains(&format!("{SHOP}/{TELEGRAM} is signed in as")) && login.exit_code() == Some(0))
            .then_some(())
            .ok_or(screen)
    })
    .await
    .unwrap();
    drop(login);
    d.wait_ready().await.unwrap();
    let summary = d.conversation().await.unwrap();
    assert_eq!(summary["contacts"], 2, "{summary}");
    assert_eq!(summary["whatsapp_delivery"], "read", "{summary}");
    for (what, state) in [
        (format!("messengeraccount/{TELEGRAM}"), "messengeraccount-healthy-on-a-node"),
        (format!("crmbinding/{SHOP}"), "crmbinding-healthy-on-a-node"),
        ("syncpolicy/shop".to_string(), "syncpolicy-healthy"),
    ] {
        crmessenger_testkit::capture::save(state, &get(&d.cp, SHOP, &what).unwrap());
    }
    let status = run_plugin(&d, &["status", "-n", SHOP]);
    assert!(status.contains(&format!("MessengerAccount {SHOP}/{TELEGRAM}  telegram  Running  Ready=True")), "{status}");
    assert!(status.contains(&format!("MessengerAccount {SHOP}/{WHATSAPP}  whatsapp  Running  Ready=True")), "{status}");

    // Every metric the chart's alerts and dashboard use is served by the running
    // operator, gateway or connector (their /metrics, through port-forward).
    let mut exposed = std::collections::BTreeSet::new();
    let connector = format!("pod/{TELEGRAM}-connector-0");
    for (ns, target, port) in [
        (RELEASE_NS, "deployment/crmessenger-operator", 8080),
        (RELEASE_NS, "deployment/crmessenger-gateway", 9091),
        (SHOP, connector.as_str(), 9091),
    ] {
        let (addr, _forward) = d.port_forward(ns, target, port).unwrap();
        let (status, page) = crmessenger_testkit::checks::http_get(&addr, "/metrics").unwrap();
        assert_eq!(status, 200, "{target}: {page}");
        let names = metrics::exposed(&page);
        assert!(!names.is_empty(), "{target} serves no metrics: {page}");
        exposed.extend(names);
    }
    let chart = crmessenger_testkit::controlplane::repo_root().join("charts/crmessenger");
    let out =
        d.cp.helm()
            .args(["template", "mon", &chart.display().to_string(), "--show-only", "templates/monitoring.yaml"])
            .args(["--set", "metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true"])
            .output()
            .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let used = metrics::used(&String::from_utf8_lossy(&out.stdout));
    assert!(used.len() >= 15, "{used:?}");
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(missing.is_empty(), "used by the rules or the dashboard but served by nothing: {missing:?}");
    // Labels name the account, never a chat or a person.
    let (addr, _forward) = d.port_forward(SHOP, &connector, 9091).unwrap();
    let (_, page) = crmessenger_testkit::checks::http_get(&addr, "/metrics").unwrap();
    for sample in page.lines().filter(|l| !l.starts_with('#')) {
        let labels =
            sample.split_once('{').map(|(_, rest)| rest.split('}').next().unwrap_or_default()).unwrap_or_default();
        for label in labels.split(',').filter(|l| !l.is_empty()) {
            let name = label.split('=').next().unwrap_or_default();
            assert!(["account", "channel", "status", "le"].contains(&name), "label {name} in {sample}");
        }
        assert!(!sample.contains(TG_CUSTOMER), "a customer in {sample}");
    }

    // amoCRM refuses a note for good: the message becomes a dead letter, which
    // `kubectl crmessenger` lists and replays (through the sidecar, no database
    // credentials); the replayed message reaches the CRM once.
    d.amo.inject(Fault {
        method: Some(http::Method::POST),
        path_prefix: "/api/v4/leads/notes".into(),
        kind: FaultKind::Status(400),
        times: 1,
    });
    let refused = "Please call me back after six";
    d.telegram.push(vec![telegram_message("dead-1", "Olga", refused)]);
    let listed = until("one dead letter in `kubectl crmessenger dead-letters`", 120, || {
        let v: Value = serde_json::from_str(&run_plugin(&d, &["dead-letters", TELEGRAM, "-n", SHOP, "-o", "json"]))
            .map_err(|e| e.to_string())?;
        (v["deadLetters"].as_array().map(Vec::len) == Some(1)).then_some(v.clone()).ok_or(v.to_string())
    })
    .await
    .unwrap();
    let id = listed["deadLetters"][0]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("inbox/"), "{listed}");
    assert!(listed["deadLetters"][0]["reason"].as_str().unwrap().contains("400"), "{listed}");
    until("the dead letter in the account's status", 60, || {
        let shown = run_plugin(&d, &["status", "-n", SHOP, TELEGRAM]);
        (shown.contains(", 1 dead") && shown.contains("oldest dead letter:")).then_some(()).ok_or(shown)
    })
    .await
    .unwrap();
    assert_eq!(notes_with(&d, refused), 0);
    let replayed = run_plugin(&d, &["replay", TELEGRAM, "-n", SHOP, "--id", &id]);
    assert!(replayed.contains("1 dead letter(s) put back"), "{replayed}");
    until("the replayed message in the CRM", 60, || (notes_with(&d, refused) == 1).then_some(()).ok_or(String::new()))
        .await
        .unwrap();
    until("no dead letters in the status", 60, || {
        let shown = run_plugin(&d, &["status", "-n", SHOP, TELEGRAM]);
        shown.contains(", 0 dead").then_some(()).ok_or(shown)
    })
    .await
    .unwrap();

    // Every process of the project runs from the image as 65532, with no
    // capabilities, no new privileges and a read-only root filesystem.
    let root = d.cp.link().unwrap().name.clone();
    let operator = node_processes(&root, "/usr/local/bin/crmessenger-operator");
    let connectors = node_processes(&root, "/usr/local/bin/crmessenger-connector");
    assert_eq!(operator.len(), 1, "{operator:?}");
    // Gateway; connector and sidecar of each account.
    assert_eq!(connectors.len(), 5, "{connectors:?}");
    for (pid, cmdline) in operator.iter().chain(&connectors) {
        assert_eq!(status_field(*pid, "Uid"), "65532 65532 65532 65532", "{cmdline}");
        assert_eq!(status_field(*pid, "Gid"), "65532 65532 65532 65532", "{cmdline}");
        assert_eq!(status_field(*pid, "CapEff"), "0000000000000000", "{cmdline}");
        assert_eq!(status_field(*pid, "NoNewPrivs"), "1", "{cmdline}");
        assert!(root_mount_options(*pid).split(',').any(|o| o == "ro"), "{cmdline}: {}", root_mount_options(*pid));
    }
    // The namespaces enforce the restricted level: the pods were admitted under it.
    for ns in [SHOP, crmessenger_demo::RELEASE_NS] {
        let label = d
            .cp
            .kubectl_ok(&["get", "ns", ns, "-o", "jsonpath={.metadata.labels.pod-security\\.kubernetes\\.io/enforce}"])
            .unwrap();
        assert_eq!(label, "restricted", "{ns}");
    }

    // The Telegram connector's pod is deleted while customers write.
    let pod = format!("{TELEGRAM}-connector-0");
    let uid_of = |d: &Demo| {
        d.cp.kubectl_ok(&["get", "pod", &pod, "-n", SHOP, "-o", "jsonpath={.metadata.uid}"]).unwrap_or_default()
    };
    let before = uid_of(&d);
    let texts: Vec<String> = (1..=6).map(|i| format!("Question {i} about my order")).collect();
    for (i, t) in texts.iter().take(3).enumerate() {
        d.telegram.push(vec![telegram_message(&format!("restart-{i}"), "Olga", t)]);
    }
    d.cp.kubectl_ok(&["delete", "pod", &pod, "-n", SHOP, "--wait=false"]).unwrap();
    for (i, t) in texts.iter().enumerate().skip(3) {
        d.telegram.push(vec![telegram_message(&format!("restart-{i}"), "Olga", t)]);
    }
    until("a new connector pod", 180, || {
        let uid = uid_of(&d);
        let ready =
            d.cp.kubectl_ok(&["get", "pod", &pod, "-n", SHOP, "-o", "jsonpath={.status.containerStatuses[*].ready}"])
                .unwrap_or_default();
        (!uid.is_empty() && uid != before && ready == "true true").then_some(()).ok_or(format!("{uid} {ready}"))
    })
    .await
    .unwrap();
    until("every message in the CRM", 120, || {
        let missing: Vec<&String> = texts.iter().filter(|t| notes_with(&d, t) == 0).collect();
        missing.is_empty().then_some(()).ok_or(format!("missing {missing:?}"))
    })
    .await
    .unwrap();
    // The manager answers after the restart; the answer goes out once.
    let lead = d.lead_of(&texts[5]).unwrap();
    let answer = "All six noted, thank you!";
    d.amo.add_manager_note(lead, 1001, &format!(">> {answer}"));
    until("the answer in Telegram", 120, || {
        d.telegram
            .sent()
            .iter()
            .any(|s| s.chat_id == TG_CUSTOMER && s.text == answer)
            .then_some(())
            .ok_or_else(|| "not yet".to_string())
    })
    .await
    .unwrap();
    // A last message, after everything before it: once it is in the CRM, nothing
    // earlier can still be on its way.
    d.telegram.push(vec![telegram_message("restart-marker", "Olga", "Thanks, bye")]);
    until("the last message in the CRM", 60, || {
        (notes_with(&d, "Thanks, bye") == 1).then_some(()).ok_or_else(|| "not yet".to_string())
    })
    .await
    .unwrap();
    for t in &texts {
        assert_eq!(notes_with(&d, t), 1, "{t} once");
    }
    assert_eq!(d.telegram.sent().iter().filter(|s| s.text == answer).count(), 1, "the answer once");
}
