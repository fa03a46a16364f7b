//! The gateway against bad input, over real HTTP with a real PostgreSQL: unknown
//! tokens, malformed bodies and replays get 4xx or are stored once, with no side
//! effect and no crash; a hook for a connector that is down waits in the database.
//! Served as in production ([`crmessenger_connector::http::serve`]): slow clients
//! are cut, the routes whose senders retry are shed when saturated while Chats API
//! hooks (sent once) still land, and a forged media URL writes nothing.

use crmessenger_connector::bridge::chats::ROUTE_CHATS_CONVERSATION;
use crmessenger_connector::gateway::{Gateway, MAX_IN_FLIGHT, ROUTE_BINDING_CRM};
use crmessenger_connector::http::{Limits, serve};
use crmessenger_connector::store::{Conversation, Store};
use crmessenger_testkit::Postgres;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn note_hook(lead: i64, note: i64) -> String {
    format!(
        "leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D={note}&leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Belement_id%5D={lead}&account%5Bid%5D=31000001"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hooks_are_refused_and_good_ones_are_stored_once() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = Postgres::shared().database("gateway").unwrap();
    let store = Store::connect(&url, 2).await.unwrap();
    // What a connector registers: the binding's CRM, a conversation, the token.
    store.put_route(ROUTE_BINDING_CRM, "ns/b", "https://x.amocrm.ru").await.unwrap();
    let conv = Conversation { contact_id: Some(1), lead_id: Some(77), ..Conversation::default() };
    store.put_conversation("ns/acct", "chat-1", "https://x.amocrm.ru", &conv, 0).await.unwrap();
    let token = store.webhook_token("ns/b").await.unwrap();
    assert_eq!(store.webhook_token("ns/b").await.unwrap(), token, "one token per binding");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = Gateway::new(store);
    let metrics = gateway.metrics();
    tokio::spawn(async move { axum::serve(listener, gateway.router()).await });
    let http = reqwest::Client::new();
    let post = |path: String, body: String| {
        let http = http.clone();
        async move {
            let r = http
                .post(format!("http://{addr}{path}"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    assert_eq!(post("/amocrm/webhook/not-a-token".into(), note_hook(77, 1)).await, 404);
    assert_eq!(post(format!("/amocrm/webhook/{token}"), "\u{1}garbage=%zz".into()).await, 400);
    assert_eq!(
        post(format!("/amocrm/webhook/{token}"), "leads%5Bnote%5D%5B0%5D%5Bnote%5D%5Bid%5D=x".into()).await,
        400
    );
    assert_eq!(post(format!("/amocrm/webhook/{token}"), "x".repeat(300 * 1024)).await, 413);
    let check = Store::connect(&url, 1).await.unwrap();
    assert!(check.events_pending("ns/acct", 10).await.unwrap().is_empty(), "bad hooks leave nothing behind");

    // A good hook, twice (amoCRM retries): stored once, for the right account.
    assert_eq!(post(format!("/amocrm/webhook/{token}"), note_hook(77, 5)).await, 200);
    assert_eq!(post(format!("/amocrm/webhook/{token}"), note_hook(77, 5)).await, 200);
    // A lead no connector knows: accepted, nothing stored.
    assert_eq!(post(format!("/amocrm/webhook/{token}"), note_hook(999, 6)).await, 200);
    let rows = check.events_pending("ns/acct", 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kind, "amocrm-note");
    let v: serde_json::Value = serde_json::from_str(&rows[0].payload).unwrap();
    assert_eq!((v["lead_id"].as_i64(), v["note_id"].as_i64()), (Some(77), Some(5)));
    // Still serving after all that.
    let r = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Its metrics port: requests by route pattern and code, never the secret token.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, metrics.router()).await });
    let text = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    for line in [
        r#"crmessenger_gateway_requests_total{route="/amocrm/webhook/{token}",code="200"} 3"#,
        r#"crmessenger_gateway_requests_total{route="/amocrm/webhook/{token}",code="404"} 1"#,
        r#"crmessenger_gateway_requests_total{route="/amocrm/webhook/{token}",code="400"} 2"#,
        r#"crmessenger_gateway_request_seconds_count{route="/readyz"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
    assert!(!text.contains(&token), "the token is not a label:\n{text}");
}

const CHATS_SECRET: &str = "gateway-test-chats-secret";

fn sign_chats(body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(CHATS_SECRET.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A gateway on `store` with the Chats API configured, served as in production.
async fn start_gateway(store: Store) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Gateway::new(store).with_chats_secret(Some(CHATS_SECRET.into())).router();
    tokio::spawn(serve(listener, router, Limits::default()));
    addr
}

/// Sends a request head one byte a second and never finishes it; returns how long
/// the gateway kept the connection, or an error if it still had it after `give_up`.
fn trickle_head(addr: SocketAddr, give_up: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let head = b"POST /amocrm/chats/scope-1 HTTP/1.1\r\nHost: gateway\r\nX-Slow: ";
    for byte in head.iter().copied().chain(std::iter::repeat(b'a')) {
        if stream.write_all(&[byte]).is_err() {
            return Ok(started.elapsed());
        }
        let mut buf = [0u8; 1024];
        match stream.read(&mut buf) {
            // Closed (EOF or reset), or a last word before closing.
            Ok(_) => return Ok(started.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Ok(started.elapsed()),
        }
        if started.elapsed() > give_up {
            return Err(format!("still connected after {:?}", started.elapsed()));
        }
    }
    unreachable!("the head never ends")
}

/// Reads until the gateway answers or closes; how long that took from `since`.
fn answered(mut stream: TcpStream, since: Instant) -> (Duration, String) {
    stream.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    (since.elapsed(), text.lines().next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_and_retried_routes_shed_while_chats_hooks_land() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = Postgres::shared().database("gateway_slow").unwrap();
    let store = Store::connect(&url, 5).await.unwrap();
    store.put_route(ROUTE_BINDING_CRM, "ns/b", "https://x.amocrm.ru").await.unwrap();
    store.put_route(ROUTE_CHATS_CONVERSATION, "conv-1", "ns/acct").await.unwrap();
    let token = store.webhook_token("ns/b").await.unwrap();
    let addr = start_gateway(store.clone()).await;
    let limits = Limits::default();
    let started = Instant::now();

    // Slowloris: heads trickled a byte a second, never finished.
    let slowloris: Vec<_> = (0..4)
        .map(|_| {
            let give_up = limits.header_read + Duration::from_secs(15);
            std::thread::spawn(move || trickle_head(addr, give_up))
        })
        .collect();
    // Every slot of the retried routes held by a REST webhook whose body never comes.
    let holders: Vec<TcpStream> = (0..MAX_IN_FLIGHT)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            let head = format!(
                "POST /amocrm/webhook/{token} HTTP/1.1\r\nHost: gateway\r\n\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 64\r\n\r\nl"
            );
            s.write_all(head.as_bytes()).unwrap();
            s
        })
        .collect();

    let http = reqwest::Client::new();
    let rest = |path: String| {
        let http = http.clone();
        async move {
            let body = note_hook(999, 1);
            let r = http.post(format!("http://{addr}{path}")).body(body).send().await.unwrap();
            r.status().as_u16()
        }
    };
    // Saturated: one more is shed at once instead of waiting.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match rest("/amocrm/webhook/not-a-token".into()).await {
            503 => break,
            404 => assert!(Instant::now() < deadline, "the retried routes never filled up"),
            other => panic!("unexpected {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Chats API hooks are never shed: each lands while the rest is saturated and
    // slow clients hang on.
    let mut sent = 0;
    let chats = |id: String| {
        let http = http.clone();
        async move {
            let body = serde_json::json!({ "message": { "conversation": { "client_id": "conv-1" },
                "message": { "id": id, "text": "still here" } } })
            .to_string();
            let r = http
                .post(format!("http://{addr}/amocrm/chats/scope-1"))
                .header("X-Signature", sign_chats(body.as_bytes()))
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    for _ in 0..5 {
        sent += 1;
        assert_eq!(chats(format!("m-{sent}")).await, 200, "a Chats hook while saturated");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rest("/amocrm/webhook/not-a-token".into()).await, 503, "still saturated during those hooks");
    while slowloris.iter().any(|t| !t.is_finished()) {
        sent += 1;
        assert_eq!(chats(format!("m-{sent}")).await, 200, "a Chats hook while slow clients hang on");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for t in slowloris {
        let held = t.join().unwrap().expect("a slow head is cut");
        // It was kept while it trickled (not refused at once), then cut.
        assert!(held >= Duration::from_secs(3), "cut after only {held:?}");
    }
    // The bodies that never came: each request failed after the body deadline,
    // and the slots are free again.
    let endings = tokio::task::block_in_place(|| holders.into_iter().map(|s| answered(s, started)).collect::<Vec<_>>());
    for (took, status_line) in &endings {
        assert!(*took < limits.body_read + Duration::from_secs(15), "a stalled body held on for {took:?}");
        assert!(!status_line.contains(" 200 "), "a stalled body was accepted: {status_line}");
    }
    assert_eq!(rest(format!("/amocrm/webhook/{token}")).await, 200, "capacity is back");

    // Every Chats hook was stored, once each.
    let rows = store.events_pending("ns/acct", 1000).await.unwrap();
    assert_eq!(rows.len(), sent, "{rows:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_media_url_writes_nothing_and_responses_are_not_sniffed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = Postgres::shared().database("gateway_media").unwrap();
    let store = Store::connect(&url, 2).await.unwrap();
    let addr = start_gateway(store.clone()).await;
    let keys = || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM settings WHERE name = 'media_key'")
            .fetch_one(store.pool())
            .await
            .unwrap();
        n
    };
    let exp = jiff::Timestamp::now().as_millisecond() + 3_600_000;
    let fetch = |path: String| async move { reqwest::get(format!("http://{addr}{path}")).await.unwrap() };

    // No URL was ever signed: a forged one is refused, and nothing is written.
    for sig in ["00", &"ab".repeat(32), "not-hex"] {
        let r = fetch(format!("/media/abc?exp={exp}&sig={sig}")).await;
        assert_eq!(r.status().as_u16(), 403, "sig={sig}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }
    assert_eq!(keys().await, 0, "checking a URL created the signing key");

    // The signing side creates the key; its URL serves the file, a forged one still not.
    let now = jiff::Timestamp::now().as_millisecond();
    let id = store.put_media("ns/acct", "text/html", "page.html", b"<b>hi</b>", now, exp).await.unwrap();
    let key = store.media_key().await.unwrap();
    assert_eq!(keys().await, 1);
    let good = crmessenger_connector::store::media::sign(&key, &id, exp);
    let r = fetch(format!("/media/{id}?exp={exp}&sig={good}")).await;
    assert_eq!(r.status().as_u16(), 200);
    // A file the CRM downloads is never rendered as a page of this origin.
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    assert_eq!(r.bytes().await.unwrap().as_ref(), b"<b>hi</b>");
    let forged = crmessenger_connector::store::media::sign(b"another key", &id, exp);
    assert_eq!(fetch(format!("/media/{id}?exp={exp}&sig={forged}")).await.status().as_u16(), 403);
    for path in ["/healthz", "/no-such-route"] {
        let r = fetch(path.into()).await;
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_stalls_past_the_deadline_is_503_and_the_retry_is_stored_once() {
    use crmessenger_connector::gateway::DEADLINE;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = Postgres::shared().database("gateway_stall").unwrap();
    let store = Store::connect(&url, 2).await.unwrap();
    store.put_route(ROUTE_BINDING_CRM, "ns/b", "https://x.amocrm.ru").await.unwrap();
    let conv = Conversation { contact_id: Some(1), lead_id: Some(77), ..Conversation::default() };
    store.put_conversation("ns/acct", "chat-1", "https://x.amocrm.ru", &conv, 0).await.unwrap();
    let token = store.webhook_token("ns/b").await.unwrap();
    let check = Store::connect(&url, 1).await.unwrap();
    let addr = start_gateway(store).await;
    let post = || async {
        let started = Instant::now();
        let r = reqwest::Client::new()
            .post(format!("http://{addr}/amocrm/webhook/{token}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(note_hook(77, 8))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap(), started.elapsed())
    };
    // The database stalls: another session holds the events table.
    let locker = sqlx::PgPool::connect(&url).await.unwrap();
    let mut tx = locker.begin().await.unwrap();
    sqlx::query("LOCK TABLE events IN ACCESS EXCLUSIVE MODE").execute(&mut *tx).await.unwrap();
    let (status, body, took) = post().await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("not stored in time"), "{body}");
    assert!(took >= DEADLINE, "answered after {took:?}, before the write could have finished");
    // The database is back: amoCRM's retry is stored, once (the stalled write may
    // also land when the lock goes; the replay is recognised either way).
    tx.rollback().await.unwrap();
    let (status, body, _) = post().await;
    assert_eq!(status, 200, "{body}");
    let rows = check.events_pending("ns/acct", 10).await.unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
}
