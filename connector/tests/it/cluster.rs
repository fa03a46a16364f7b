//! The thin slice end to end on the real control plane: the operator renders the
//! account; the connector runs out of cluster with the token of the ServiceAccount
//! the operator created (so its Role is what is tested), reads its ConfigMap and
//! Secrets, renews its Lease and reports status, and the account turns Ready. A
//! customer's message reaches the amoCRM fake; a manager's reply comes back through
//! the gateway (an amoCRM REST webhook) to the messenger. The sidecar serves the
//! status. No Secret value shows up in logs, status or ConfigMaps.

use crate::common;

use common::shop_yaml;
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
use crmessenger_fake_messenger::{Options, ScriptedMessenger, text};
use crmessenger_testkit::checks::{condition, eventually, get, http_get};
use crmessenger_testkit::controlplane::free_port;
use crmessenger_testkit::{ControlPlane, Postgres};
use serde_json::Value;
use std::process::Command;
use std::time::{Duration, Instant};

/// `crmessenger-connector run` for the account `shop` in `ns` (its ConfigMap and
/// Lease `shop-connector`) on the database `db`, as the cluster admin unless the
/// caller sets `KUBECONFIG` again; the admin port on `admin`, metrics on any free
/// loopback port.
fn connector_run(cp: &ControlPlane, db: &str, ns: &str, admin: &str) -> Command {
    let mut run = Command::new(env!("CARGO_BIN_EXE_crmessenger-connector"));
    run.args(["run", "--admin-addr", admin, "--metrics-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", cp.kubeconfig())
        .env("CRMESSENGER_DATABASE_URL", db)
        .env("POD_NAMESPACE", ns)
        .env("POD_NAME", "shop-connector-0")
        .env("CRMESSENGER_ACCOUNT", "shop")
        .env("CRMESSENGER_CONFIG_MAP", "shop-connector")
        .env("CRMESSENGER_LEASE", "shop-connector");
    run
}

/// The `shop` account set for amoCRM at `base_url` in `ns` (see [`shop_yaml`]), and
/// the connector config the operator renders from it.
fn rendered_shop(base_url: &str, amocrm_extra: &str, ns: &str) -> (String, crmessenger_api::config::ConnectorConfig) {
    let yaml = shop_yaml(base_url, "{}", amocrm_extra);
    let m = crmessenger_api::manifests::parse(&yaml, ns).unwrap();
    let config = crmessenger_api::config::render(
        &m.accounts[0],
        &m.bindings[0],
        &m.policies[0],
        crmessenger_api::config::RuntimeSettings::default(),
    )
    .unwrap();
    (yaml, config)
}

fn wait_http(cp: &ControlPlane, name: &str, addr: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(addr, path).map(|(s, _)| s) != Some(200) {
        assert!(Instant::now() < deadline, "{name}: {addr}{path} never answered 200:\n{}", cp.log_tail(name, 30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_and_its_reply_cross_the_whole_system() {
    let cp = ControlPlane::shared();
    cp.install_crds().unwrap();
    let pg = Postgres::shared();
    let db = pg.database("cluster").unwrap();
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let messenger = ScriptedMessenger::start(Options::default()).await.unwrap();
    let token = fake.issue_token_pair().access_token;

    // The operator (in process here; its own suite runs it as a process).
    let op_admin = format!("127.0.0.1:{}", free_port().unwrap());
    let settings = crmessenger_operator::settings::Settings {
        connector_image: "example.invalid/crmessenger:test".into(),
        heartbeat_timeout: Duration::from_secs(15),
        ..Default::default()
    };
    let options = crmessenger_operator::run::RunOptions {
        admin_addr: op_admin.parse().unwrap(),
        leader_election: None,
        concurrency: 4,
    };
    let metrics = std::sync::Arc::new(crmessenger_operator::metrics::Metrics::default());
    tokio::spawn(crmessenger_operator::run::run(cp.client().await.unwrap(), settings, options, metrics));
    wait_http(cp, "operator", &op_admin, "/readyz");

    // The gateway, sharing the database.
    let connector_bin = env!("CARGO_BIN_EXE_crmessenger-connector");
    let gw_addr = format!("127.0.0.1:{}", free_port().unwrap());
    let mut gw = Command::new(connector_bin);
    gw.args(["gateway", "--listen", &gw_addr]).env("CRMESSENGER_DATABASE_URL", &db);
    cp.spawn_logged("gateway", gw).unwrap();
    wait_http(cp, "gateway", &gw_addr, "/readyz");

    let ns = cp.namespace("e2e").await.unwrap();
    let manifests = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: tg-api }}\nstringData: {{ api_id: \"12345\", api_hash: canary-api-hash-5e1f }}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: amo }}\nstringData: {{ long_lived_token: {token} }}\n---\n{}",
        shop_yaml(&fake.base_url(), "{}", "replies: { detection: webhook }")
    );
    let out = cp.kubectl_apply_output(&manifests, &["-n", &ns]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The operator created the connector's ServiceAccount; run as it.
    // (and the binding's token Secret: a pod would restart until it exists; this
    // one-shot process is started once it does).
    eventually("the connector's ServiceAccount, ConfigMap and token Secret", 60, || async {
        let sa = get(cp, &ns, "serviceaccount/shop-connector").ok_or("no ServiceAccount")?;
        let cm = get(cp, &ns, "configmap/shop-connector").ok_or("no ConfigMap")?;
        get(cp, &ns, "secret/shop-crm-token").ok_or("no token Secret")?;
        Ok::<_, String>((sa, cm))
    })
    .await;
    let sa_token = cp.kubectl_ok(&["create", "token", "shop-connector", "-n", &ns, "--duration", "1h"]).unwrap();
    let kubeconfig = cp.kubeconfig_for_token(&format!("{ns}-connector"), sa_token.trim()).unwrap();
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let mut run = connector_run(cp, &db, &ns, &admin);
    run.args(["--gateway-url", &format!("http://{gw_addr}"), "--scripted-messenger", &messenger.base_url()])
        .env("KUBECONFIG", &kubeconfig);
    cp.spawn_logged("connector", run).unwrap();

    // Ready: the pod (kwok) runs, the heartbeat is fresh, the hash matches, the
    // connector is logged in and connected.
    let account = eventually("the account to be Ready", 120, || async {
        let a = get(cp, &ns, "messengeraccount/shop").ok_or("no account")?;
        let ready = condition(&a, "Ready").ok_or("no Ready")?;
        (ready["status"] == "True").then_some(a.clone()).ok_or(format!("{ready}\n{}", cp.log_tail("connector", 20)))
    })
    .await;
    for c in ["LoggedIn", "MessengerConnected", "CrmSynced", "ConnectorAvailable"] {
        assert_eq!(condition(&account, c).unwrap()["status"], "True", "{c}");
    }
    assert_eq!(account["status"]["identity"]["maskedPhone"], "+*******1122");
    let hash = account["status"]["connector"]["configHash"].as_str().unwrap().to_string();
    let sts = get(cp, &ns, "statefulset/shop-connector").unwrap();
    assert_eq!(sts["spec"]["template"]["metadata"]["annotations"]["crmessenger.io/config-hash"], hash.as_str());
    let lease = get(cp, &ns, "lease/shop-connector").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "shop-connector-0");

    // A customer writes: a contact, a lead and a note appear in amoCRM.
    messenger.push(vec![text("5001", "1", "Maria", "Do you deliver on Sundays?")]);
    let lead = eventually("the note in amoCRM", 60, || async {
        let s = fake.snapshot();
        s.notes
            .iter()
            .find(|n| n.params["text"].as_str().unwrap_or_default().contains("Sundays"))
            .map(|n| n.entity_id)
            .ok_or(format!("{} notes", s.notes.len()))
    })
    .await;
    // The manager answers in amoCRM; the webhook goes through the gateway.
    fake.add_manager_note(lead, 1001, ">> Yes, every day 9-21");
    let sent = eventually("the reply in the messenger", 60, || async {
        let sent = messenger.sent();
        (!sent.is_empty()).then_some(sent).ok_or(cp.log_tail("connector", 10))
    })
    .await;
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].chat_id.as_str(), sent[0].text.as_str()), ("5001", "Yes, every day 9-21"));
    let deliveries = fake.snapshot().webhook_deliveries;
    assert!(!deliveries.is_empty(), "the reply came by webhook, through the gateway");

    // The sidecar reads the connector's admin port.
    let side = format!("127.0.0.1:{}", free_port().unwrap());
    let mut sidecar = Command::new(connector_bin);
    sidecar.args(["sidecar", "--listen", &side, "--admin-url", &format!("http://{admin}")]);
    cp.spawn_logged("sidecar", sidecar).unwrap();
    wait_http(cp, "sidecar", &side, "/healthz");
    let (status, body) = http_get(&side, "/status").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["accounts"][0]["state"]["account"], format!("{ns}/shop"));
    let (status, page) = http_get(&side, "/login").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("Logged in as"), "{page}");
    // The admin port refuses status to anyone but loopback peers; here the peer is
    // loopback, so it answers (the refusal is unit-tested by address).

    // Secrets canary: no Secret value in logs, status or the ConfigMap.
    let cm = get(cp, &ns, "configmap/shop-connector").unwrap().to_string();
    let status_text = get(cp, &ns, "messengeraccount/shop").unwrap()["status"].to_string();
    let logs = ["connector", "gateway", "sidecar"].map(|c| cp.log_tail(c, 100_000)).join("\n");
    for secret in [token.as_str(), "canary-api-hash-5e1f"] {
        for (what, text) in [("ConfigMap", &cm), ("status", &status_text), ("logs", &logs)] {
            assert!(!text.contains(secret), "a Secret value leaked into the {what}");
        }
    }

    // Deleting the account: the connector logs out, purges and confirms; the
    // finalizer goes away without waiting for the timeout.
    let started = Instant::now();
    let out =
        cp.kubectl_output(&["delete", "messengeraccount/shop", "-n", &ns, "--wait=true", "--timeout=60s"]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(get(cp, &ns, "messengeraccount/shop").is_none());
    assert!(started.elapsed() < Duration::from_secs(60));
    let rows: i64 = {
        let store = crmessenger_connector::store::Store::connect(&db, 1).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE account = $1")
            .bind(format!("{ns}/shop"))
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    assert_eq!(rows, 0, "the account's rows were purged");
}

/// `run` with a ConfigMap that is not a connector config, or naming a Secret key
/// that is not there: a message naming the object, exit 1, no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_1_on_a_malformed_config_or_a_missing_secret_key() {
    let cp = ControlPlane::shared();
    cp.install_crds().unwrap();
    let db = Postgres::shared().database("badcfg").unwrap();
    let ns = cp.namespace("badcfg").await.unwrap();
    let (_, config) = rendered_shop("http://127.0.0.1:9", "", &ns);
    let good = serde_json::to_string(&config).unwrap();
    let cases = [
        ("{not json", "", "is not a connector config"),
        (good.as_str(), "", "shop-crm-token does not exist"),
        (good.as_str(), "{ api_id: \"1\" }", "has no key \"api_hash\""),
    ];
    for (i, (config_text, tg_data, expected)) in cases.into_iter().enumerate() {
        let mut yaml = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: shop-connector }}\ndata:\n  connector.json: {}\n",
            serde_json::to_string(config_text).unwrap()
        );
        if !tg_data.is_empty() {
            yaml.push_str(&format!(
                "---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: tg-api }}\nstringData: {tg_data}\n"
            ));
            yaml.push_str(
                "---\napiVersion: v1\nkind: Secret\nmetadata: { name: shop-crm-token }\nstringData: { access_token: t }\n",
            );
        }
        let out = cp.kubectl_apply_output(&yaml, &["-n", &ns]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = connector_run(cp, &db, &ns, &format!("127.0.0.1:{}", free_port().unwrap())).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "case {i}: {err}");
        assert!(err.contains(expected), "case {i}: expected {expected:?} in:\n{err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
    }
    // A session key that is not 32 bytes: named, exit 1, before anything else.
    let out = connector_run(cp, &db, &ns, &format!("127.0.0.1:{}", free_port().unwrap()))
        .env("CRMESSENGER_SESSION_KEY", "too-short")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("CRMESSENGER_SESSION_KEY") && !err.contains("too-short"), "{err}");
}

/// Login by code and two-factor password through the `<account>-login` Secret: the
/// connector uses each value, deletes the Secret, and the account logs in; the
/// values never reach the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_code_and_password_from_the_login_secret_are_used_and_deleted() {
    let cp = ControlPlane::shared();
    cp.install_crds().unwrap();
    let db = Postgres::shared().database("loginsecret").unwrap();
    let ns = cp.namespace("login").await.unwrap();
    let fake = FakeAmo::start(FakeConfig { chats: None, ..FakeConfig::default() }).await.unwrap();
    let messenger = ScriptedMessenger::start(Options {
        logged_in: false,
        login_code: Some("24680".into()),
        password: Some("canary-2fa-open-sesame".into()),
        ..Options::default()
    })
    .await
    .unwrap();
    let (objects, config) = rendered_shop(&fake.base_url(), "replies: { detection: poll, pollInterval: 10m }", &ns);
    // What the operator would have made. Only the account goes to the cluster (for
    // its status), not the binding: the operator another test runs in this process
    // would otherwise reconcile it too.
    let token = fake.issue_token_pair().access_token;
    let account = objects.split("\n---\n").next().unwrap();
    let children = format!(
        "{account}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: shop-connector }}\ndata:\n  connector.json: {}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: tg-api }}\nstringData: {{ api_id: \"1\", api_hash: h }}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{ name: shop-crm-token }}\nstringData: {{ access_token: {token} }}\n\
         ---\napiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {{ name: shop-connector }}\nspec: {{ leaseDurationSeconds: 30 }}\n",
        serde_json::to_string(&serde_json::to_string(&config).unwrap()).unwrap()
    );
    let out = cp.kubectl_apply_output(&children, &["-n", &ns]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let admin = format!("127.0.0.1:{}", free_port().unwrap());
    let mut run = connector_run(cp, &db, &ns, &admin);
    run.args(["--scripted-messenger", &messenger.base_url()]);
    cp.spawn_logged("login-connector", run).unwrap();
    let login_state = || http_get(&admin, "/login").and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok());
    let wait_state = |want: &'static str| async move {
        eventually(&format!("login state {want}"), 60, || async {
            let v = login_state().ok_or("no admin answer".to_string())?;
            (v["login"]["state"] == want).then_some(()).ok_or(format!("{v}\n{}", cp.log_tail("login-connector", 10)))
        })
        .await
    };
    wait_state("code_required").await;
    let secret =
        |data: &str| format!("apiVersion: v1\nkind: Secret\nmetadata: {{ name: shop-login }}\nstringData: {data}\n");
    assert!(cp.kubectl_apply_output(&secret("{ code: \"24680\" }"), &["-n", &ns]).unwrap().status.success());
    wait_state("password_required").await;
    eventually("the used login Secret deleted", 30, || async {
        get(cp, &ns, "secret/shop-login").is_none().then_some(()).ok_or("still there".to_string())
    })
    .await;
    assert!(
        cp.kubectl_apply_output(&secret("{ password: canary-2fa-open-sesame }"), &["-n", &ns])
            .unwrap()
            .status
            .success()
    );
    wait_state("logged_in").await;
    eventually("the used login Secret deleted", 30, || async {
        get(cp, &ns, "secret/shop-login").is_none().then_some(()).ok_or("still there".to_string())
    })
    .await;
    let log = cp.log_tail("login-connector", 100_000);
    assert!(!log.contains("canary-2fa-open-sesame") && !log.contains("24680"), "a login value reached the log");
}
