//! `kubectl crmessenger status` and `doctor` (the plugin binary) against the real
//! control plane and this binary's operator: what a platform engineer reads for a
//! Ready, a logged-out and a suspended account, and a doctor that fails while the
//! operator has no Deployment and passes once it has one.

use crate::common::*;
use serde_json::{Value, json};
use std::process::Output;

fn plugin(args: &[&str]) -> Output {
    let bin = crmessenger_testkit::process::workspace_binary("crmessenger-kubectl", "kubectl-crmessenger")
        .expect("the plugin binary");
    std::process::Command::new(bin).args(args).env("KUBECONFIG", cp().kubeconfig()).output().expect("run the plugin")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn condition_json(type_: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({ "type": type_, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z" })
}

async fn config_hash(ns: &str, account: &str) -> String {
    eventually("the connector's config hash", 30, || async {
        get(cp(), ns, &format!("statefulset/{account}-connector"))
            .and_then(|s| {
                s["spec"]["template"]["metadata"]["annotations"]["crmessenger.io/config-hash"]
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| "no StatefulSet".to_string())
    })
    .await
}

fn account_of<'a>(tree: &'a Value, name: &str) -> &'a Value {
    tree["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|b| b["accounts"].as_array().into_iter().flatten())
        .chain(tree["unbound"].as_array().into_iter().flatten())
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {tree}"))
}

#[tokio::test]
async fn status_shows_a_ready_a_logged_out_and_a_suspended_account() {
    let cp = cp();
    let ns = cp.namespace("plugin-status").await.unwrap();
    for name in ["shop", "gone", "sleepy"] {
        apply(cp, &ns, &account_set(name, name, name));
    }
    let (shop_hash, gone_hash) = (config_hash(&ns, "shop").await, config_hash(&ns, "gone").await);
    merge_patch(cp, &ns, "messengeraccount/sleepy", r#"{"spec":{"suspend":true}}"#);
    // "shop" works and has one dead letter; "gone" was logged out from the phone.
    connector_reports(
        cp,
        &ns,
        "shop",
        json!({
            "connector": { "configHash": shop_hash },
            "conditions": [condition_json("LoggedIn", true, "LoggedIn", ""), condition_json("MessengerConnected", true, "Connected", "")],
            "identity": { "summary": "@shop_bot +7*******67" },
            "queues": { "inboundPending": 2, "outboundPending": 0, "deadLetters": 1,
                        "oldestDeadLetterReason": "amoCRM refused the note: 400 Bad Request",
                        "lastInboundAt": "2026-12-01T10:00:00Z" },
        }),
    );
    connector_reports(
        cp,
        &ns,
        "gone",
        json!({
            "connector": { "configHash": gone_hash },
            "conditions": [
                condition_json("LoggedIn", false, "LoggedOut", "the session ended: logged out from the phone; scan the new QR code on the login page"),
                condition_json("MessengerConnected", false, "Disconnected", "not connected"),
            ],
        }),
    );
    let tree = eventually("the three phases in `kubectl crmessenger status -o json`", 40, || async {
        renew_lease(cp, &ns, "shop");
        renew_lease(cp, &ns, "gone");
        let out = plugin(&["status", "-n", &ns, "-o", "json"]);
        let tree: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
        let phases: Vec<_> = ["shop", "gone", "sleepy"].iter().map(|n| account_of(&tree, n)["phase"].clone()).collect();
        if phases == [json!("Running"), json!("LoggingIn"), json!("Suspended")] {
            Ok(tree)
        } else {
            Err(format!("{phases:?}"))
        }
    })
    .await;
    for (name, state) in [("gone", "degraded-logged-out"), ("sleepy", "suspended"), ("shop", "healthy")] {
        let object = get(cp, &ns, &format!("messengeraccount/{name}")).unwrap();
        crmessenger_testkit::capture::save(&format!("messengeraccount-{state}"), &object);
    }
    // Each account sits under its binding.
    let shop_binding = tree["bindings"].as_array().unwrap().iter().find(|b| b["name"] == "shop").unwrap();
    assert_eq!(shop_binding["accounts"][0]["name"], "shop");
    let shop = account_of(&tree, "shop");
    assert_eq!(shop["ready"], "True", "{shop}");
    assert_eq!(shop["queues"]["deadLetters"], 1);
    assert_eq!(shop["identity"], "@shop_bot +7*******67");
    assert_eq!(shop["next"], format!("kubectl crmessenger dead-letters shop -n {ns}"));
    let gone = account_of(&tree, "gone");
    assert_eq!(gone["ready"], "False");
    assert!(
        gone["problems"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str().unwrap().starts_with("LoggedIn=False LoggedOut")),
        "{gone}"
    );
    assert_eq!(gone["next"], format!("kubectl crmessenger login gone -n {ns}"));
    let sleepy = account_of(&tree, "sleepy");
    assert!(sleepy["next"].as_str().unwrap().contains(r#"{"spec":{"suspend":false}}"#), "{sleepy}");

    // The same as text, for a terminal; and one account alone.
    renew_lease(cp, &ns, "shop");
    let out = plugin(&["status", "-n", &ns]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for line in [
        &format!("CrmBinding {ns}/shop"),
        &format!("└─ MessengerAccount {ns}/shop  telegram  Running  Ready=True"),
        "queues: 2 to the CRM, 0 to the messenger, 1 dead",
        "oldest dead letter: amoCRM refused the note: 400 Bad Request",
        &format!("└─ MessengerAccount {ns}/gone  telegram  LoggingIn  Ready=False"),
        "LoggedIn=False LoggedOut: the session ended: logged out from the phone",
        &format!("→ kubectl crmessenger login gone -n {ns}"),
        &format!("└─ MessengerAccount {ns}/sleepy  telegram  Suspended"),
    ] {
        assert!(shown.contains(line), "{line:?} in:\n{shown}");
    }
    let out = plugin(&["status", "-n", &ns, "gone"]);
    let shown = text(&out);
    assert!(shown.contains("/gone") && !shown.contains("/shop") && !shown.contains("/sleepy"), "{shown}");
    let out = plugin(&["status", "-n", &ns, "nobody"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no MessengerAccount nobody"), "{}", text(&out));
}

fn verdict(checks: &Value, name: &str) -> String {
    let c = checks.as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name}: {checks}"));
    c["verdict"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn doctor_fails_without_an_operator_deployment_and_passes_with_one() {
    let cp = cp();
    let ns = cp.namespace("plugin-doctor").await.unwrap();
    apply(cp, &ns, &account_set("shop", "shop", "shop"));
    // The connector pod runs (kwok readies it), so the database check can pass.
    eventually("the connector pod Ready", 60, || async {
        let pod = get(cp, &ns, "pod/shop-connector-0").ok_or("no pod")?;
        let ready = pod["status"]["containerStatuses"].as_array().is_some_and(|c| c.iter().all(|c| c["ready"] == true));
        if ready { Ok(()) } else { Err(pod["status"].to_string()) }
    })
    .await;
    // This binary's operator is a process, not the chart's Deployment.
    let out = plugin(&["doctor", "-n", &ns, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(verdict(&checks, "CRDs"), "Ok");
    assert_eq!(verdict(&checks, "operator"), "Fail", "{checks}");
    assert_eq!(verdict(&checks, "database"), "Ok", "{checks}");
    let shown = text(&plugin(&["doctor", "-n", &ns]));
    assert!(shown.contains("[FAIL] operator: no Deployment found"), "{shown}");
    assert!(shown.contains("fix: install the chart"), "{shown}");

    // A Deployment labelled as the chart labels the operator, running on kwok.
    apply(
        cp,
        &ns,
        r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: crmessenger-operator
  labels: { app.kubernetes.io/name: crmessenger, app.kubernetes.io/component: operator }
spec:
  replicas: 1
  selector: { matchLabels: { app: doctor-operator } }
  template:
    metadata: { labels: { app: doctor-operator } }
    spec:
      automountServiceAccountToken: false
      securityContext: { runAsNonRoot: true, runAsUser: 65532, seccompProfile: { type: RuntimeDefault } }
      containers:
        - name: operator
          image: example.invalid/operator:test
          securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: [ALL] } }
"#,
    );
    let checks = eventually("doctor passes", 60, || async {
        let out = plugin(&["doctor", "-n", &ns, "-o", "json"]);
        let checks: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", text(&out)))?;
        if out.status.success() { Ok(checks) } else { Err(checks.to_string()) }
    })
    .await;
    assert_eq!(verdict(&checks, "operator"), "Ok", "{checks}");
    assert_eq!(verdict(&checks, "gateway"), "Ok", "nothing here needs a gateway: {checks}");
    cp.kubectl_ok(&["delete", "deployment", "crmessenger-operator", "-n", &ns]).unwrap();
}
