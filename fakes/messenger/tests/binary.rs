//! The `fake-messenger` process keeps its log across a SIGKILL: what was scripted
//! before is served again after a restart, from the same sequence numbers, and a
//! send repeated with the same `random_id` is not delivered twice.

use crmessenger_fake_messenger::text;
use crmessenger_testkit::process::{Proc, workspace_bin};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

fn start(dir: &std::path::Path, port: u16) -> Proc {
    let mut cmd = Command::new(workspace_bin("fake-messenger"));
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--dir"]).arg(dir.join("log"));
    Proc::start("fake-messenger", cmd, dir).unwrap()
}

async fn until_up(http: &reqwest::Client, base: &str, proc: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(format!("{base}/v1/session")).send().await.is_err() {
        assert!(Instant::now() < deadline, "{}", proc.log_tail(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_log_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let port = crmessenger_testkit::controlplane::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::new();
    let mut p = start(dir.path(), port);
    until_up(&http, &base, &p).await;
    let batch: Vec<_> = (1..=3).map(|i| text("c1", &i.to_string(), "Ann", &format!("m{i}"))).collect();
    let seqs: Vec<u64> =
        http.post(format!("{base}/_script/inbound")).json(&batch).send().await.unwrap().json().await.unwrap();
    assert_eq!(seqs, vec![1, 2, 3]);
    let send = json!({ "chat_id": "c1", "text": "hi", "random_id": 77 });
    let first: Value = http.post(format!("{base}/v1/send")).json(&send).send().await.unwrap().json().await.unwrap();
    assert_eq!(first["duplicate"], false);

    p.kill();
    let p = start(dir.path(), port);
    until_up(&http, &base, &p).await;
    let got: Value =
        http.get(format!("{base}/v1/updates?after=1&timeout_ms=0")).send().await.unwrap().json().await.unwrap();
    let texts: Vec<&str> = got["updates"].as_array().unwrap().iter().map(|u| u["text"].as_str().unwrap()).collect();
    // The log kept the customer's messages and the account's own: the echo of
    // what the connector sent, as every messenger reports it.
    assert_eq!(texts, ["m2", "m3", "hi"], "{got}");
    assert_eq!(got["updates"][2]["outgoing"], true, "{got}");
    assert_eq!(got["updates"][2]["message_id"], first["message_id"], "{got}");
    assert_eq!(got["last_seq"], 4);
    let again: Value = http.post(format!("{base}/v1/send")).json(&send).send().await.unwrap().json().await.unwrap();
    assert_eq!((again["duplicate"].clone(), again["message_id"].clone()), (json!(true), first["message_id"].clone()));
    let sent: Vec<Value> = http.get(format!("{base}/_script/sent")).send().await.unwrap().json().await.unwrap();
    assert_eq!(sent.len(), 1);
}
