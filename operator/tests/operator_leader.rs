//! Two operator processes with leader election against one control plane (their
//! own, in this test binary), and OAuth token ownership against the amoCRM fake:
//! only the leader reconciles and refreshes, once per expiry; the standby takes over
//! when the leader dies.

#[path = "it/common.rs"]
mod common;

use common::{apply, condition, eventually, get, http_get, start_operator};
use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
use crmessenger_testkit::ControlPlane;
use std::sync::OnceLock;
use std::time::Instant;

/// An operator process: admin address and pid.
type Operator = (String, u32);

struct Operators {
    a: Operator,
    b: Operator,
}

fn control_plane() -> &'static ControlPlane {
    let cp = ControlPlane::shared();
    cp.install_crds().expect("install the CRDs");
    cp
}

/// Two operators electing a leader through a Lease in `default`.
fn operators() -> &'static Operators {
    static OPS: OnceLock<Operators> = OnceLock::new();
    OPS.get_or_init(|| {
        let cp = control_plane();
        let start = |id: &str| {
            let args = [
                "--leader-election=true",
                "--lease-namespace",
                "default",
                "--lease-name",
                "crmessenger-operator",
                "--identity",
                id,
            ];
            start_operator(cp, id, &args).expect("start an operator")
        };
        Operators { a: start("op-a"), b: start("op-b") }
    })
}

fn metric(admin: &str, name: &str) -> f64 {
    let Some((200, body)) = http_get(admin, "/metrics") else { return -1.0 };
    body.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

fn leader(ops: &Operators) -> Option<(&Operator, &Operator)> {
    match (metric(&ops.a.0, "crmessenger_operator_leader"), metric(&ops.b.0, "crmessenger_operator_leader")) {
        (a, _) if a >= 1.0 => Some((&ops.a, &ops.b)),
        (_, b) if b >= 1.0 => Some((&ops.b, &ops.a)),
        _ => None,
    }
}

async fn fake_with_ttl(ttl: i64) -> FakeAmo {
    FakeAmo::start(FakeConfig { tls: None, access_token_ttl_secs: ttl, ..FakeConfig::default() })
        .await
        .expect("start the fake")
}

fn binding_yaml(name: &str, fake: &FakeAmo, refresh_token: &str) -> String {
    let c = fake.config();
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{ name: {name}-bootstrap }}
stringData: {{ client_id: "{}", client_secret: "{}", redirect_uri: "{}", refresh_token: "{refresh_token}" }}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {{ name: {name} }}
spec: {{}}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {{ name: {name} }}
spec:
  accountNames: [nobody]
  policyRef: {{ name: {name} }}
  crm: {{ type: amocrm, amocrm: {{ baseUrl: "{}", credentialsSecret: {{ name: {name}-bootstrap }} }} }}
"#,
        c.client_id,
        c.client_secret,
        c.redirect_uri,
        fake.base_url()
    )
}

fn token_in_secret(cp: &ControlPlane, ns: &str, name: &str) -> Option<String> {
    let s = get(cp, ns, &format!("secret/{name}-crm-token"))?;
    let b64 = s["data"]["access_token"].as_str()?;
    let out = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take()?.write_all(b64.as_bytes()).ok()?;
            c.wait_with_output().ok()
        })?;
    String::from_utf8(out.stdout).ok()
}

#[tokio::test]
async fn only_the_leader_refreshes_once_per_expiry_and_the_standby_takes_over() {
    let cp = control_plane();
    let ops = operators();
    let (lead, standby) = eventually("a leader", 30, || async {
        leader(ops).map(|(l, s)| (l.clone(), s.clone())).ok_or("no leader yet".to_string())
    })
    .await;
    let ns = cp.namespace("tokens").await.unwrap();

    // A token that is due for refresh 20 s after it is issued (6 h margin).
    let fake = fake_with_ttl(6 * 3600 + 20).await;
    let issued = fake.issue_token_pair();
    apply(cp, &ns, &binding_yaml("amo", &fake, &issued.refresh_token));
    let first = eventually("the bootstrap refresh", 30, || async {
        let t = token_in_secret(cp, &ns, "amo").ok_or("no token Secret")?;
        if t != issued.access_token { Ok(t) } else { Err(t) }
    })
    .await;
    let b = eventually("CredentialsValid", 20, || async {
        let b = get(cp, &ns, "crmbinding/amo").ok_or("absent")?;
        if condition(&b, "CredentialsValid").is_some_and(|c| c["status"] == "True") {
            Ok(b)
        } else {
            Err(b["status"].to_string())
        }
    })
    .await;
    assert!(b["status"]["tokenExpiresAt"].is_string());
    assert_eq!(fake.snapshot().refreshes, 1);

    let second = eventually("the refresh before expiry", 60, || async {
        let t = token_in_secret(cp, &ns, "amo").ok_or("no token Secret")?;
        if t != first { Ok(t) } else { Err(format!("refreshes so far: {}", fake.snapshot().refreshes)) }
    })
    .await;
    // A change to the binding makes the leader reconcile it once more, after the
    // refresh: once that reconcile is visible (its conditions carry the new
    // generation), a second refresh for the same expiry would have happened.
    cp.kubectl_ok(&[
        "patch",
        "crmbinding",
        "amo",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"accountNames":["nobody","nobody-else"]}}"#,
    ])
    .unwrap();
    eventually("a reconcile of the changed binding", 30, || async {
        let b = get(cp, &ns, "crmbinding/amo").ok_or("absent")?;
        let generation = b["metadata"]["generation"].as_i64().unwrap_or(0);
        let seen = condition(&b, "CredentialsValid").and_then(|c| c["observedGeneration"].as_i64());
        if generation >= 2 && seen == Some(generation) { Ok(()) } else { Err(b["status"].to_string()) }
    })
    .await;
    assert_eq!(fake.snapshot().refreshes, 2, "exactly one refresh per expiry, with two operators running");
    // The Secret connectors read holds a token the CRM accepts.
    let status = reqwest_status(&fake.base_url(), &second).await;
    assert_eq!(status, 200, "the stored token is refused by the CRM");

    assert!(metric(&lead.0, "crmessenger_operator_reconciles_total") > 0.0, "the leader never reconciled");
    assert_eq!(metric(&standby.0, "crmessenger_operator_reconciles_total"), 0.0, "the standby reconciled");

    // Kill the leader: the standby takes over, then reconciles what comes after.
    // (How long that takes is a figure for a benchmark, not a test's threshold: the
    // bounds here only keep a broken failover from hanging the suite.)
    let killed_at = Instant::now();
    let _ = std::process::Command::new("kill").args(["-9", &lead.1.to_string()]).status();
    eventually("the standby to lead", 90, || async {
        if metric(&standby.0, "crmessenger_operator_leader") >= 1.0 { Ok(()) } else { Err("still standby".to_string()) }
    })
    .await;
    apply(
        cp,
        &ns,
        "apiVersion: crmessenger.io/v1alpha1\nkind: SyncPolicy\nmetadata: { name: after-failover }\nspec: {}\n",
    );
    eventually("the new leader reconciles", 60, || async {
        let p = get(cp, &ns, "syncpolicy/after-failover").ok_or("absent")?;
        if condition(&p, "Ready").is_some() { Ok(()) } else { Err(p.to_string()) }
    })
    .await;
    eprintln!("failover, from the kill to the first reconcile by the new leader: {:?}", killed_at.elapsed());
}

#[tokio::test]
async fn a_spent_refresh_token_requires_reauthorization() {
    let cp = control_plane();
    operators();
    let ns = cp.namespace("spent").await.unwrap();
    let fake = fake_with_ttl(86_400).await;
    let issued = fake.issue_token_pair();
    // Someone else already used this refresh token.
    let c = fake.config().clone();
    let body = serde_json::json!({ "client_id": c.client_id, "client_secret": c.client_secret, "redirect_uri": c.redirect_uri, "grant_type": "refresh_token", "refresh_token": issued.refresh_token });
    let spent =
        http_client().post(format!("{}/oauth2/access_token", fake.base_url())).json(&body).send().await.unwrap();
    assert_eq!(spent.status(), 200);
    apply(cp, &ns, &binding_yaml("dead", &fake, &issued.refresh_token));
    let b = eventually("CredentialsValid=False/ReauthorizationRequired", 30, || async {
        let b = get(cp, &ns, "crmbinding/dead").ok_or("absent")?;
        match condition(&b, "CredentialsValid") {
            Some(c) if c["reason"] == "ReauthorizationRequired" => Ok(b),
            _ => Err(b["status"].to_string()),
        }
    })
    .await;
    assert_eq!(condition(&b, "Ready").unwrap()["status"], "False");
    let events = cp.kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]).unwrap();
    assert!(events.contains("ReauthorizationRequired"), "no Warning event");
    assert!(!events.contains(&issued.refresh_token), "a token reached an Event");
}

async fn reqwest_status(base: &str, token: &str) -> u16 {
    http_client()
        .get(format!("{base}/api/v4/account"))
        .bearer_auth(token)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn http_client() -> reqwest::Client {
    crmessenger_crm::tls::client_builder(None)
        .and_then(|b| b.build().map_err(|e| e.to_string()))
        .expect("an HTTP client")
}
