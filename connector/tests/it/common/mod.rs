//! Helpers shared by the connector's tests: the `shop` account set, and running
//! `crmessenger-connector standalone` as a process.

#![allow(dead_code)]

use crmessenger_testkit::checks::http_get;
use crmessenger_testkit::controlplane::free_port;
use crmessenger_testkit::process::Proc;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The account `shop` (Telegram, API credentials in the Secret `tg-api`), the
/// SyncPolicy `shop` with `policy_spec`, and the CrmBinding `shop` selecting the
/// account, for amoCRM at `base_url` with the credentials Secret `amo`;
/// `amocrm_extra` adds fields to `spec.crm.amocrm` (flow style, without braces).
pub fn shop_yaml(base_url: &str, policy_spec: &str, amocrm_extra: &str) -> String {
    let telegram = "{ provider: telegram, telegram: { apiCredentials: { secretName: tg-api } } }";
    shop_yaml_for(telegram, base_url, policy_spec, amocrm_extra)
}

/// [`shop_yaml`] with the account's spec (flow style) given.
pub fn shop_yaml_for(account_spec: &str, base_url: &str, policy_spec: &str, amocrm_extra: &str) -> String {
    let extra = if amocrm_extra.is_empty() { String::new() } else { format!(", {amocrm_extra}") };
    format!(
        r#"apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {{ name: shop }}
spec: {account_spec}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {{ name: shop }}
spec: {policy_spec}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {{ name: shop }}
spec:
  accountNames: [shop]
  policyRef: {{ name: shop }}
  crm: {{ type: amocrm, amocrm: {{ baseUrl: "{base_url}", credentialsSecret: {{ name: amo }}{extra} }} }}
"#
    )
}

/// Registers an account's routes, takes its lock and runs its bridge in the
/// background until the returned sender says stop (then releases the lock).
pub async fn run_bridge(
    parts: &crmessenger_connector::app::AccountParts,
    store: &crmessenger_connector::store::Store,
) -> tokio::sync::watch::Sender<bool> {
    crmessenger_connector::app::register_routes(parts, store, None).await.unwrap();
    let lock = crmessenger_connector::store::lock::AccountLock::acquire(store, &parts.key, |_| {}).await.unwrap();
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let bridge = parts.bridge.clone();
    tokio::spawn(async move {
        bridge.run(&lock, stop_rx).await;
        lock.release().await;
    });
    stop
}

/// Writes `DIR/manifests/`: Secrets `amo` (with `credentials`, YAML `stringData`
/// lines) and `tg-api`, and the account `shop` bound to `base_url` by `shop`.
pub fn write_manifests(dir: &Path, base_url: &str, credentials: &str, api_hash: &str) -> PathBuf {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("secrets.yaml"),
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{ name: amo }}\nstringData:\n{credentials}\n---\n\
             apiVersion: v1\nkind: Secret\nmetadata: {{ name: tg-api }}\nstringData: {{ api_id: \"12345\", api_hash: {api_hash} }}\n"
        ),
    )
    .unwrap();
    // The Telegram id field (201 in the fake) lets a restarted connector find a
    // contact it created just before it was killed.
    let amocrm = "replies: { detection: webhook }, contactFields: { telegramUserId: 201 }";
    std::fs::write(manifests.join("shop.yaml"), shop_yaml(base_url, "{}", amocrm)).unwrap();
    manifests
}

/// The addresses one standalone process listens on.
pub struct Ports {
    /// Admin (status, metrics).
    pub admin: String,
    /// Login pages.
    pub login: String,
    /// Gateway.
    pub gateway: String,
}

impl Ports {
    /// Three free loopback ports.
    pub fn free() -> Ports {
        let p = || format!("127.0.0.1:{}", free_port().unwrap());
        Ports { admin: p(), login: p(), gateway: p() }
    }
}

/// `crmessenger-connector standalone` on `DIR/manifests` with namespace `home`,
/// data in `DIR/data`, listening on `ports`, with `extra` arguments.
pub fn standalone_command(dir: &Path, ports: &Ports, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmessenger-connector"));
    cmd.args(["standalone", "-f"])
        .arg(dir.join("manifests"))
        .args(["-n", "home", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--admin-addr", &ports.admin, "--login-addr", &ports.login, "--gateway-addr", &ports.gateway])
        .args(extra);
    cmd
}

/// Starts `standalone` on `DIR/manifests` with namespace `home`, data in
/// `DIR/data`, and `extra` arguments; returns once its pages answer.
pub fn start_standalone(dir: &Path, ports: &Ports, extra: &[&str]) -> Proc {
    start_standalone_with(dir, ports, extra, &[])
}

/// [`start_standalone`] with environment variables.
pub fn start_standalone_with(dir: &Path, ports: &Ports, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = standalone_command(dir, ports, extra);
    cmd.envs(env.iter().copied());
    let mut p = Proc::start("standalone", cmd, dir).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&ports.login, "/healthz").map(|r| r.0) != Some(200) {
        assert!(p.exited().is_none() && Instant::now() < deadline, "{}", p.log_tail(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

/// Serves `bytes` at `/files/{name}` on loopback (where the CRM keeps a file).
#[allow(dead_code)]
pub async fn file_server(bytes: Vec<u8>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route("/files/{name}", axum::routing::get(move || async move { bytes.clone() }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
