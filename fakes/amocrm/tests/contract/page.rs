//! The sandbox's web page, looked at as a person would: rendered by headless
//! Chromium (Debian's `chromium`), with a screenshot, and answered through its form.

use crate::common::start;
use crmessenger_fake_amocrm::FakeConfig;
use crmessenger_testkit::browser;
use http::StatusCode;
use serde_json::json;

// Chromium is run blocking: the fake's server needs a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sandbox_page_shows_what_a_manager_sees_and_takes_a_reply() {
    if !browser::available() {
        // CI installs it (tools/test.sh); elsewhere say why this check did not run.
        assert!(std::env::var_os("CI").is_none(), "chromium is missing on CI");
        eprintln!("skipped: Debian's chromium is not installed (tools/test.sh installs it)");
        return;
    }
    let env = start(FakeConfig { rate_limit_per_sec: 1000, ..FakeConfig::default() }).await;
    let (status, created) = env
        .post_json(
            "/api/v4/leads/complex",
            &json!([{"name": "Telegram · Olga", "_embedded": {"contacts": [{"name": "Olga Petrova"}]}}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let lead = created[0]["id"].as_i64().expect("lead id");
    let note = json!([{"entity_id": lead, "note_type": "common", "params": {"text": "Telegram · Olga:\nIs the blue kettle in stock? <b>not bold</b>"}}]);
    let (status, _) = env.post_json("/api/v4/leads/notes", &note).await;
    assert_eq!(status, StatusCode::OK);
    env.create(
        "tasks",
        json!({"text": "Answer Olga", "complete_till": 1_900_000_000_i64, "entity_type": "leads", "entity_id": lead}),
    )
    .await;

    // What Chromium renders: the sandbox label, the contact, the lead with its note
    // (markup in a message shown as text) and task, and a reply box.
    let url = env.url("/");
    let dom = browser::run(&url, &["--dump-dom".into()]).expect("run chromium");
    let dom = String::from_utf8_lossy(&dom.stdout);
    for shown in [
        "SANDBOX",
        "Olga Petrova",
        "Telegram · Olga",
        "Is the blue kettle in stock?",
        "&lt;b&gt;not bold",
        "Answer Olga",
    ] {
        assert!(dom.contains(shown), "{shown:?} is not on the page:\n{dom}");
    }
    assert!(dom.contains(&format!("action=\"/sandbox/leads/{lead}/reply\"")), "no reply box:\n{dom}");
    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("amocrm-sandbox.png");
    browser::screenshot(&url, &shot).expect("a screenshot");
    let png = std::fs::read(&shot).expect("the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "a rendered page, {} bytes", png.len());
    println!("screenshot: {}", shot.display());

    // The reply box, as the browser posts it: a note with the reply prefix, and
    // back to the page (303, which the client follows).
    let http = &env.http;
    let resp = http
        .post(env.url(&format!("/sandbox/leads/{lead}/reply")))
        .form(&[("text", "Yes, two left")])
        .send()
        .await
        .expect("post the form");
    assert_eq!((resp.status(), resp.url().path()), (StatusCode::OK, "/sandbox"));
    let notes = env.fake.snapshot().notes;
    assert!(notes.iter().any(|n| n.entity_id == lead && n.params["text"] == ">> Yes, two left"), "{notes:?}");
    // An empty reply or an unknown lead changes nothing.
    for (path, text) in [(format!("/sandbox/leads/{lead}/reply"), " "), ("/sandbox/leads/999/reply".into(), "hi")] {
        let resp = http.post(env.url(&path)).form(&[("text", text)]).send().await.expect("post");
        assert!(resp.status().is_client_error(), "{path}: {}", resp.status());
    }
    assert_eq!(env.fake.snapshot().notes.len(), notes.len());
}
