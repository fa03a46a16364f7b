//! Helpers for the contract tests: TLS-aware clients, Chats API signing computed
//! independently of the fake, and a recording HTTP receiver for hooks.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use crmessenger_fake_amocrm::{ChatsChannel, FakeAmo, FakeConfig, TlsIdentity};
use crmessenger_testkit::TestCa;
use hmac::{Hmac, Mac};
use http::{HeaderMap, StatusCode, Uri};
use md5::{Digest, Md5};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use sha1::Sha1;

/// A started fake plus a client that trusts it and a valid access token.
pub struct Env {
    pub fake: FakeAmo,
    pub http: reqwest::Client,
    pub token: String,
}

/// A reqwest client trusting `ca_pem` (if any), with the ring provider.
pub fn client(ca_pem: Option<&str>, timeout: Option<Duration>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("add CA");
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut builder = reqwest::Client::builder().tls_backend_preconfigured(tls);
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    builder.build().expect("client")
}

/// Starts a fake with `config`, and a client trusting `ca_pem` (if any).
async fn started(config: FakeConfig, ca_pem: Option<&str>) -> Env {
    let fake = FakeAmo::start(config).await.expect("start fake");
    let token = fake.issue_token_pair().access_token;
    Env { fake, http: client(ca_pem, Some(Duration::from_secs(10))), token }
}

/// Starts a fake over plain HTTP.
pub async fn start(config: FakeConfig) -> Env {
    started(config, None).await
}

/// Starts a fake over HTTPS with a certificate from a fresh test CA.
pub async fn start_tls(mut config: FakeConfig) -> Env {
    let ca = TestCa::new("contract test CA").expect("CA");
    let cert = ca.issue_server("fake-amocrm", &["127.0.0.1", "localhost"]).expect("server cert");
    config.tls = Some(TlsIdentity { cert_pem: cert.cert_pem, key_pem: cert.key_pem });
    let env = started(config, Some(ca.cert_pem())).await;
    assert!(env.fake.base_url().starts_with("https://127.0.0.1:"));
    env
}

/// The status and JSON body of a response (`Null` when the body is empty or not JSON).
pub async fn status_json(resp: reqwest::Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.fake.base_url(), path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).bearer_auth(&self.token).send().await.expect("GET")
    }

    pub async fn send(&self, method: http::Method, path: &str, body: &Value) -> reqwest::Response {
        self.http.request(method, self.url(path)).bearer_auth(&self.token).json(body).send().await.expect("request")
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send(http::Method::POST, path, body).await
    }

    /// [`Env::get`], read with [`status_json`].
    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        status_json(self.get(path).await).await
    }

    /// [`Env::send`], read with [`status_json`].
    pub async fn send_json(&self, method: http::Method, path: &str, body: &Value) -> (StatusCode, Value) {
        status_json(self.send(method, path, body).await).await
    }

    /// [`Env::post`], read with [`status_json`].
    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send_json(http::Method::POST, path, body).await
    }

    /// Creates one `item` with `POST /api/v4/{entity}` and returns its ID.
    pub async fn create(&self, entity: &str, item: Value) -> i64 {
        let (status, created) = self.post_json(&format!("/api/v4/{entity}"), &Value::Array(vec![item])).await;
        assert_eq!(status, StatusCode::OK, "{created}");
        created["_embedded"][entity][0]["id"].as_i64().expect("created id")
    }

    pub fn channel(&self) -> ChatsChannel {
        self.fake.config().chats.clone().expect("chats channel")
    }

    /// Sends a correctly signed Chats API request, Date from the fake clock.
    pub async fn chats(&self, method: http::Method, path: &str, body: Option<&Value>) -> reqwest::Response {
        let date = rfc2822(self.fake.clock().now_secs());
        let raw = body.map(|b| b.to_string()).unwrap_or_default();
        self.chats_raw(method, path, raw, &date, "application/json", None).await
    }

    /// Sends a Chats API request with explicit Date/Content-Type and an optional forced signature.
    pub async fn chats_raw(
        &self,
        method: http::Method,
        path: &str,
        body: String,
        date: &str,
        content_type: &str,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let secret = self.channel().secret;
        let md5 = hex::encode(Md5::digest(body.as_bytes()));
        let bare_path = path.split('?').next().unwrap_or(path);
        let sig = sign(&secret, method.as_str(), &md5, content_type, date, bare_path);
        self.http
            .request(method, self.url(path))
            .header("Date", date)
            .header("Content-Type", content_type)
            .header("Content-MD5", md5)
            .header("X-Signature", signature.unwrap_or(&sig))
            .body(body)
            .send()
            .await
            .expect("chats request")
    }

    /// Connects the channel and returns the scope ID.
    pub async fn connect(&self) -> String {
        let ch = self.channel();
        let amojo = self.fake.config().amojo_id.clone();
        let resp = self
            .chats(
                http::Method::POST,
                &format!("/v2/origin/custom/{}/connect", ch.channel_id),
                Some(&json!({"account_id": amojo, "hook_api_version": "v2", "title": "Test"})),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::OK);
        let body: Value = resp.json().await.expect("json");
        body["scope_id"].as_str().expect("scope_id").to_string()
    }
}

/// `Mon, 03 Oct 2020 15:11:21 +0000` for a Unix time.
pub fn rfc2822(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).expect("timestamp").strftime("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

/// The documented Chats API signature, computed independently of the fake.
pub fn sign(secret: &str, method: &str, md5: &str, content_type: &str, date: &str, path: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(format!("{method}\n{md5}\n{content_type}\n{date}\n{path}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// HMAC-SHA1 of a hook body.
pub fn body_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("hmac key");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// One request a [`Receiver`] got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A local HTTP server that records requests and answers `statuses[i]` to the
/// i-th request (the last one repeats).
pub struct Receiver {
    pub base: String,
    pub got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(statuses: Vec<u16>) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let recorder = got.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let recorder = recorder.clone();
            let statuses = statuses.clone();
            async move {
                let mut list = recorder.lock().expect("lock");
                list.push(Received { path: uri.path().to_string(), headers, body });
                let i = list.len() - 1;
                let code = statuses.get(i).or(statuses.last()).copied().unwrap_or(200);
                StatusCode::from_u16(code).expect("status")
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { base, got }
    }

    pub fn count(&self) -> usize {
        self.got.lock().expect("lock").len()
    }

    pub fn all(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits (real time) until at least `n` requests arrived.
    pub async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while tokio::time::Instant::now() < deadline {
            if self.count() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.count() >= n
    }
}
