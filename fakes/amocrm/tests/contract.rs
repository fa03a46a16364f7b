//! Contract tests: a real HTTP client against the running fake, checking that the
//! documented amoCRM behaviour is enforced.

#[path = "contract/chats.rs"]
mod chats;
mod common;
#[path = "contract/entities.rs"]
mod entities;
#[path = "contract/hooks.rs"]
mod hooks;
#[path = "contract/page.rs"]
mod page;

use std::time::Duration;

use common::{start, start_tls};
use crmessenger_fake_amocrm::{FakeConfig, Fault, FaultKind};
use http::{Method, StatusCode};
use serde_json::{Value, json};

fn problem_type(resp: &reqwest::Response) -> String {
    resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

#[tokio::test]
async fn rate_limit_gives_429_with_body_then_403_after_abuse_until_reset() {
    let env = start(FakeConfig { rate_limit_per_sec: 7, abuse_threshold: 3, ..FakeConfig::default() }).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(env.get("/api/v4/account").await.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 429]);
    let resp = env.get("/api/v4/account").await;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(problem_type(&resp), "application/problem+json");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["status"], 429);
    assert_eq!(body["title"], "Too Many Requests");
    assert_eq!(body["type"], "https://httpstatus.es/429");
    assert!(body["retry_after"].is_u64(), "{body}");
    // The third 429 within 60 s blocks the account: everything is 403 now,
    // even after the rate window has passed.
    assert_eq!(env.get("/api/v4/account").await.status(), StatusCode::TOO_MANY_REQUESTS);
    env.fake.clock().advance(Duration::from_millis(1100));
    assert_eq!(env.get("/api/v4/account").await.status(), StatusCode::FORBIDDEN);
    assert_eq!(env.get("/api/v4/users").await.status(), StatusCode::FORBIDDEN);
    env.fake.reset_limits();
    assert_eq!(env.get("/api/v4/account").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn missing_unknown_and_expired_tokens_are_401() {
    let env = start(FakeConfig::default()).await;
    let no_token = env.http.get(env.url("/api/v4/account")).send().await.expect("send");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(problem_type(&no_token), "application/problem+json");
    let bogus = env.http.get(env.url("/api/v4/account")).bearer_auth("nope").send().await.expect("send");
    assert_eq!(bogus.status(), StatusCode::UNAUTHORIZED);
    let ok = env.get("/api/v4/account?with=amojo_id").await;
    assert_eq!(ok.status(), StatusCode::OK);
    assert_eq!(problem_type(&ok), "application/hal+json");
    let body: Value = ok.json().await.expect("json");
    assert_eq!(body["amojo_id"], env.fake.config().amojo_id.as_str());
    env.fake.clock().advance(Duration::from_secs(86_400));
    assert_eq!(env.get("/api/v4/account").await.status(), StatusCode::UNAUTHORIZED);
}

async fn token_request(env: &common::Env, body: Value) -> (StatusCode, Value) {
    let resp = env.http.post(env.url("/oauth2/access_token")).json(&body).send().await.expect("oauth");
    let status = resp.status();
    (status, resp.json().await.expect("json"))
}

#[tokio::test]
async fn oauth_codes_and_refresh_tokens_are_single_use_and_expire_on_the_fake_clock() {
    let env = start_tls(FakeConfig::default()).await;
    let cfg = env.fake.config().clone();
    let code = env.fake.issue_authorization_code();
    let grant = |code: &str, redirect: &str| {
        json!({"client_id": cfg.client_id, "client_secret": cfg.client_secret,
               "grant_type": "authorization_code", "code": code, "redirect_uri": redirect})
    };
    let (status, body) = token_request(&env, grant(&code, "https://example.test/other")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["hint"], "Redirect URI is not associated with client");
    let mut wrong_secret = grant(&code, &cfg.redirect_uri);
    wrong_secret["client_secret"] = json!("wrong");
    let (status, body) = token_request(&env, wrong_secret).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["hint"], "Check the `client_secret` parameter");

    let (status, tokens) = token_request(&env, grant(&code, &cfg.redirect_uri)).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    assert_eq!(tokens["expires_in"], 86_400);
    let (status, body) = token_request(&env, grant(&code, &cfg.redirect_uri)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["hint"], "Authorization code has been revoked");

    let refresh = |token: &Value| {
        json!({"client_id": cfg.client_id, "client_secret": cfg.client_secret,
               "grant_type": "refresh_token", "refresh_token": token, "redirect_uri": cfg.redirect_uri})
    };
    let (status, second) = token_request(&env, refresh(&tokens["refresh_token"])).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], tokens["refresh_token"]);
    let (status, body) = token_request(&env, refresh(&tokens["refresh_token"])).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["hint"], "Token has been revoked");
    assert_eq!(env.fake.snapshot().refreshes, 1);

    // The old access token stays valid until it expires; the new one works too.
    for token in [&tokens["access_token"], &second["access_token"]] {
        let resp = env
            .http
            .get(env.url("/api/v4/account"))
            .bearer_auth(token.as_str().expect("token"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), StatusCode::OK);
    }

    // Codes expire after 20 minutes of fake time.
    let late = env.fake.issue_authorization_code();
    env.fake.clock().advance(Duration::from_secs(21 * 60));
    let (status, body) = token_request(&env, grant(&late, &cfg.redirect_uri)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["hint"], "Authorization code has expired");
}

#[tokio::test]
async fn empty_search_is_204_and_query_matches_stored_strings_verbatim() {
    let env = start(FakeConfig::default()).await;
    let id = env.fake.add_contact(
        "Иван Петров",
        json!([{"field_code": "PHONE", "values": [{"value": "8 (999) 123-45-67", "enum_code": "MOB"}]}]),
    );
    let resp = env.get("/api/v4/contacts?query=%2B79991234567").await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.bytes().await.expect("body").is_empty());
    for q in ["999)%20123-45", "%D0%B8%D0%B2%D0%B0%D0%BD"] {
        let resp = env.get(&format!("/api/v4/contacts?query={q}&with=leads")).await;
        assert_eq!(resp.status(), StatusCode::OK, "query {q}");
        let body: Value = resp.json().await.expect("json");
        assert_eq!(body["_embedded"]["contacts"][0]["id"], id);
        assert_eq!(
            body["_embedded"]["contacts"][0]["custom_fields_values"][0]["values"][0]["value"],
            "8 (999) 123-45-67"
        );
        assert!(body["_embedded"]["contacts"][0]["_embedded"]["leads"].is_array());
    }
    assert_eq!(env.get("/api/v4/contacts/999999").await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn validation_errors_name_the_item_and_an_indexed_path() {
    let env = start(FakeConfig::default()).await;
    let resp = env
        .post(
            "/api/v4/contacts",
            &json!([
                {"name": "fine"},
                {"name": "bad", "request_id": "r2", "custom_fields_values": [
                    {"field_code": "PHONE", "values": [{"value": "+7 900", "enum_code": "CELL"}]},
                    {"field_id": 999, "values": [{"value": "x"}]},
                    {"field_code": "NOPE", "values": [{"value": "x"}]}
                ]}
            ]),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem_type(&resp), "application/problem+json");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["detail"], "Request validation failed");
    let item = &body["validation-errors"][0];
    assert_eq!(item["request_id"], "r2");
    let paths: Vec<&str> =
        item["errors"].as_array().expect("errors").iter().map(|e| e["path"].as_str().expect("path")).collect();
    assert_eq!(
        paths,
        [
            "custom_fields_values.0.values.0.enum_code",
            "custom_fields_values.1.field_id",
            "custom_fields_values.2.field_code"
        ]
    );
    assert_eq!(item["errors"][1]["code"], "NotSupportedChoice");
    assert!(env.fake.snapshot().contacts.is_empty(), "a failed batch creates nothing");

    let resp = env.post("/api/v4/tasks", &json!([{"entity_type": "leads"}])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    let paths: Vec<&str> = body["validation-errors"][0]["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["path"].as_str().expect("path"))
        .collect();
    assert!(paths.contains(&"text") && paths.contains(&"complete_till"), "{paths:?}");
}

#[tokio::test]
async fn batches_over_250_are_422_empty_is_400_and_request_ids_are_echoed() {
    let env = start(FakeConfig { rate_limit_per_sec: 1000, ..FakeConfig::default() }).await;
    let many: Vec<Value> = (0..251).map(|i| json!({"name": format!("c{i}")})).collect();
    let resp = env.post("/api/v4/contacts", &Value::Array(many)).await;
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["detail"], "Limit 250 per page");
    let resp = env.post("/api/v4/leads", &json!([])).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["detail"], "Request data can not be empty");
    let resp = env
        .http
        .post(env.url("/api/v4/leads"))
        .bearer_auth(&env.token)
        .header("content-type", "application/json")
        .body("")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["detail"], "Request data can not be empty");
    assert_eq!(env.get("/api/v4/contacts?limit=251").await.status(), StatusCode::BAD_REQUEST);

    let resp =
        env.post("/api/v4/contacts", &json!([{"name": "a", "request_id": "mine"}, {"name": "b"}, {"name": "c"}])).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["_embedded"]["contacts"][0]["request_id"], "mine");
    assert_eq!(body["_embedded"]["contacts"][1]["request_id"], "1");
    // The fake does not de-duplicate on request_id: the same batch again creates more.
    let again = env.post("/api/v4/contacts", &json!([{"name": "a", "request_id": "mine"}])).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(env.fake.snapshot().contacts.len(), 4);

    let (_, first) = env.get_json("/api/v4/contacts?limit=3").await;
    assert!(first["_links"]["next"]["href"].is_string(), "{first}");
    let (_, last) = env.get_json("/api/v4/contacts?limit=3&page=2").await;
    assert_eq!(last["_embedded"]["contacts"].as_array().map(Vec::len), Some(1));
    assert!(last["_links"].get("next").is_none(), "{last}");
}

#[tokio::test]
async fn drop_response_writes_the_entity_but_never_answers() {
    let env = start(FakeConfig::default()).await;
    env.fake.inject(Fault {
        method: Some(Method::POST),
        path_prefix: "/api/v4/leads".into(),
        kind: FaultKind::DropResponse,
        times: 1,
    });
    let impatient = common::client(None, Some(Duration::from_millis(800)));
    let err = impatient
        .post(env.url("/api/v4/leads"))
        .bearer_auth(&env.token)
        .json(&json!([{"name": "in doubt"}]))
        .send()
        .await
        .expect_err("the response must never come");
    assert!(err.is_timeout(), "{err}");
    let snap = env.fake.snapshot();
    assert_eq!(snap.leads.len(), 1);
    assert_eq!(snap.leads[0].name, "in doubt");
    assert!(snap.requests.iter().any(|r| r.dropped && r.path == "/api/v4/leads"));
    // The fault was used up: the next call is answered.
    let resp = env.post("/api/v4/leads", &json!([{"name": "answered"}])).await;
    assert_eq!(resp.status(), StatusCode::OK);

    env.fake.inject(Fault {
        method: None,
        path_prefix: "/api/v4/contacts".into(),
        kind: FaultKind::Status(503),
        times: 1,
    });
    let resp = env.get("/api/v4/contacts").await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_type(&resp), "application/problem+json");
}
