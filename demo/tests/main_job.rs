//! The main job with `--once`, as CI runs it: everything runs as pods on the real
//! node, everything arrives, and the summary says what the sandbox CRM recorded and
//! how the accounts stand.

use serde_json::Value;
use std::process::Command;

#[test]
fn the_main_job_plays_the_whole_conversation() {
    // A screenshot of the sandbox CRM as the conversation left it (CI installs Chromium).
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("main-job-amocrm.png");
    let _ = std::fs::remove_file(&shot);
    let with_chromium = crmessenger_testkit::browser::available();
    assert!(with_chromium || std::env::var_os("CI").is_none(), "chromium is missing on CI");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmessenger-demo"));
    cmd.arg("--once");
    if with_chromium {
        cmd.arg("--screenshot").arg(&shot);
    }
    let out = cmd.output().expect("run the main job");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the main job failed:\n{stdout}\n{stderr}");
    let summary: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("demo-summary: "))
        .map(|s| serde_json::from_str(s).expect("the summary is JSON"))
        .unwrap_or_else(|| panic!("no summary:\n{stdout}"));
    // One contact and one lead per customer; each message and each answer once.
    assert_eq!(summary["contacts"], 2, "{summary}");
    assert_eq!(summary["leads"], 2, "{summary}");
    let notes: Vec<&str> = summary["notes"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for text in ["Hello! Is the blue kettle still in stock?", "Hi, can I pick up my order today?"] {
        assert_eq!(notes.iter().filter(|n| n.contains(text)).count(), 1, "{text} once: {notes:?}");
    }
    assert_eq!(summary["telegram_sent"], serde_json::json!(["Yes, two left. Shall I reserve one for you?"]));
    assert_eq!(summary["whatsapp_sent"], serde_json::json!(["Yes, until 8 pm. See you!"]));
    assert_eq!(summary["whatsapp_delivery"], "read");
    for account in summary["accounts"].as_array().unwrap() {
        assert_eq!(account["ready"], "True", "{account}");
    }
    // Everything ran as pods on the real node; the login pages answer through
    // kubectl port-forward.
    for pod in
        ["crmessenger-operator-", "crmessenger-gateway-", "shop-telegram-connector-0", "shop-whatsapp-connector-0"]
    {
        let line = stdout
            .lines()
            .find(|l| l.contains(pod) && l.contains("Running"))
            .unwrap_or_else(|| panic!("no running pod {pod}:\n{stdout}"));
        assert!(line.contains("crmn-"), "{pod} is not on the real node: {line}");
    }
    assert_eq!(stdout.matches("the login page answers 200").count(), 2, "{stdout}");
    // What a person is shown: the cluster's view and where to look.
    assert!(stdout.contains("messengeraccount.crmessenger.io/shop-telegram"), "{stdout}");
    assert!(stdout.contains("login page of shop/shop-telegram: http://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("[sandbox] amoCRM, as a manager sees it"), "{stdout}");
    // The plugin's tree: the binding, both accounts Running and Ready.
    assert!(stdout.contains("== kubectl crmessenger status -n shop"), "{stdout}");
    for account in ["shop/shop-telegram  telegram", "shop/shop-whatsapp  whatsapp"] {
        assert!(stdout.contains(&format!("MessengerAccount {account}  Running  Ready=True")), "{account}:\n{stdout}");
    }
    if with_chromium {
        let png = std::fs::read(&shot).expect("the screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{} bytes", png.len());
        println!("screenshot: {}", shot.display());
    } else {
        eprintln!("no screenshot: Debian's chromium is not installed (tools/test.sh installs it)");
    }
}
