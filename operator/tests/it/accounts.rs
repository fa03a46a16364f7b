//! The operator against a real control plane (with controller-manager, scheduler
//! and kwok): an account, its binding and policy become a connector's children with
//! the right content, and status follows the connector's heartbeat.

use crate::common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn an_account_becomes_a_connector_with_least_privilege() {
    let cp = cp();
    let ns = cp.namespace("children").await.unwrap();
    cp.kubectl_ok(&["label", "namespace", &ns, "pod-security.kubernetes.io/enforce=restricted"]).unwrap();
    apply(cp, &ns, &account_set("sales-tg", "sales", "sales"));

    let sts = eventually("the StatefulSet", 30, || async {
        get(cp, &ns, "statefulset/sales-tg-connector").ok_or_else(|| "absent".to_string())
    })
    .await;
    let spec = &sts["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["podManagementPolicy"], "Parallel");
    let template = &spec["template"];
    let hash = template["metadata"]["annotations"]["crmessenger.io/config-hash"].as_str().unwrap().to_string();
    assert_eq!(hash.len(), 16);
    let pod_spec = &template["spec"];
    assert_eq!(pod_spec["serviceAccountName"], "sales-tg-connector");
    assert_eq!(pod_spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod_spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let containers = pod_spec["containers"].as_array().unwrap();
    assert_eq!(containers.iter().map(|c| c["name"].as_str().unwrap()).collect::<Vec<_>>(), ["connector", "sidecar"]);
    for c in containers {
        let sc = &c["securityContext"];
        assert_eq!(
            (sc["allowPrivilegeEscalation"].clone(), sc["readOnlyRootFilesystem"].clone()),
            (json!(false), json!(true))
        );
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert!(c["readinessProbe"]["httpGet"]["path"].is_string(), "{} has no readiness probe", c["name"]);
    }
    assert_eq!(containers[0]["args"], json!(["run"]));
    assert_eq!(containers[1]["args"], json!(["sidecar"]));
    assert_eq!(sts["metadata"]["ownerReferences"][0]["kind"], "MessengerAccount");

    let svc = get(cp, &ns, "service/sales-tg-connector").expect("service");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert_eq!(svc["spec"]["ports"][1]["port"], 9091);
    // Only scraping over the network; people come through port-forward (loopback).
    let np = get(cp, &ns, "networkpolicy/sales-tg-connector").expect("network policy");
    assert_eq!(np["spec"]["ingress"], json!([{ "ports": [{ "port": 9091, "protocol": "TCP" }] }]));
    // The API token is the connector's alone; the sidecar has no Secret.
    assert_eq!(pod_spec["automountServiceAccountToken"], false);
    assert_eq!(containers[0]["volumeMounts"][1]["mountPath"], "/var/run/secrets/kubernetes.io/serviceaccount");
    assert!(containers[1].get("volumeMounts").is_none(), "{}", containers[1]);
    assert!(!containers[1].to_string().contains("secretKeyRef"), "{}", containers[1]);
    assert!(get(cp, &ns, "serviceaccount/sales-tg-connector").is_some());
    assert!(get(cp, &ns, "lease/sales-tg-connector").is_some());
    let rb = get(cp, &ns, "rolebinding/sales-tg-connector").expect("role binding");
    assert_eq!(rb["subjects"][0]["name"], "sales-tg-connector");

    let role = get(cp, &ns, "role/sales-tg-connector").expect("role");
    let rules = role["rules"].as_array().unwrap();
    let rule = |resource: &str| rules.iter().filter(|r| r["resources"][0] == resource).cloned().collect::<Vec<Value>>();
    assert_eq!(rule("messengeraccounts/status")[0]["resourceNames"], json!(["sales-tg"]));
    assert_eq!(rule("leases")[0]["resourceNames"], json!(["sales-tg-connector"]));
    assert_eq!(rule("configmaps")[0]["resourceNames"], json!(["sales-tg-connector"]));
    let secrets = rule("secrets");
    assert_eq!(secrets[0]["resourceNames"], json!(["sales-crm-token", "tg-api"]));
    assert_eq!(secrets[1]["resourceNames"], json!(["sales-tg-login"]));
    assert!(secrets[1]["verbs"].as_array().unwrap().contains(&json!("delete")));
    assert!(!secrets[0]["verbs"].as_array().unwrap().contains(&json!("delete")));
    for r in rules {
        assert!(r["resourceNames"].as_array().is_some_and(|n| !n.is_empty()), "a rule without resourceNames: {r}");
    }

    let cm = get(cp, &ns, "configmap/sales-tg-connector").expect("config map");
    let config: Value = serde_json::from_str(cm["data"]["connector.json"].as_str().unwrap()).unwrap();
    assert_eq!(config["account"], json!({ "namespace": ns, "name": "sales-tg" }));
    assert_eq!(config["crm"]["token"], json!({ "name": "sales-crm-token", "key": "access_token" }));
    assert_eq!(config["policy"]["escalation"]["after"], "10m");
    let text = cm.to_string();
    assert!(!text.contains("canary"), "a Secret value reached the ConfigMap: {text}");

    // kwok schedules and readies the pod: the restricted Pod Security level admitted it.
    let pod = eventually("the connector pod Ready on the kwok node", 60, || async {
        let p = get(cp, &ns, "pod/sales-tg-connector-0").ok_or("no pod")?;
        if condition(&p, "Ready").is_some_and(|c| c["status"] == "True") { Ok(p) } else { Err(p["status"].to_string()) }
    })
    .await;
    assert_eq!(pod["spec"]["nodeName"], crmessenger_testkit::controlplane::NODE_NAME);
    assert_eq!(pod["metadata"]["annotations"]["crmessenger.io/config-hash"], hash.as_str());

    // No heartbeat yet: not available, not Ready, Pending.
    let account = eventually("the account status", 30, || async {
        let a = get(cp, &ns, "messengeraccount/sales-tg").ok_or("gone")?;
        if a["status"]["phase"] == "Pending" { Ok(a) } else { Err(a["status"].to_string()) }
    })
    .await;
    assert_eq!(condition(&account, "ConfigValid").unwrap()["status"], "True");
    let available = condition(&account, "ConnectorAvailable").unwrap();
    assert_eq!((available["status"].as_str(), available["reason"].as_str()), (Some("False"), Some("NoHeartbeat")));
    assert_eq!(condition(&account, "Ready").unwrap()["status"], "False");
    assert_eq!(account["status"]["observedGeneration"], account["metadata"]["generation"]);
    assert_eq!(account["status"]["binding"]["name"], "sales");
}

#[tokio::test]
async fn a_policy_change_rolls_the_pod_and_a_token_change_does_not() {
    let cp = cp();
    let ns = cp.namespace("rollout").await.unwrap();
    apply(cp, &ns, &account_set("roll", "roll", "roll"));
    let hash_of = || async {
        get(cp, &ns, "statefulset/roll-connector")
            .and_then(|s| {
                s["spec"]["template"]["metadata"]["annotations"]["crmessenger.io/config-hash"]
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| "no StatefulSet yet".to_string())
    };
    let first = eventually("the first hash", 30, hash_of).await;

    // A rotated token lands in the token Secret: no restart.
    apply(
        cp,
        &ns,
        "apiVersion: v1\nkind: Secret\nmetadata: { name: roll-crm-token }\nstringData: { access_token: rotated }\n",
    );
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(hash_of().await.unwrap(), first, "a token change must not roll the pod");

    merge_patch(cp, &ns, "syncpolicy/roll", r#"{"spec":{"media":{"maxSizeMiB":5}}}"#);
    let second = eventually("a new hash", 30, || async {
        let h = hash_of().await?;
        if h != first { Ok(h) } else { Err(h) }
    })
    .await;
    let cm = get(cp, &ns, "configmap/roll-connector").unwrap();
    assert!(cm["data"]["connector.json"].as_str().unwrap().contains("\"maxSizeMiB\": 5"));
    assert_ne!(first, second);
}

#[tokio::test]
async fn suspend_scales_to_zero() {
    let cp = cp();
    let ns = cp.namespace("suspend").await.unwrap();
    apply(cp, &ns, &account_set("sleepy", "sleepy", "sleepy"));
    eventually("the StatefulSet", 30, || async {
        get(cp, &ns, "statefulset/sleepy-connector").ok_or("absent".to_string())
    })
    .await;
    merge_patch(cp, &ns, "messengeraccount/sleepy", r#"{"spec":{"suspend":true}}"#);
    eventually("0 replicas and phase Suspended", 30, || async {
        let sts = get(cp, &ns, "statefulset/sleepy-connector").ok_or("no sts")?;
        let a = get(cp, &ns, "messengeraccount/sleepy").ok_or("no account")?;
        if sts["spec"]["replicas"] == 0 && a["status"]["phase"] == "Suspended" {
            Ok(())
        } else {
            Err(format!("{} / {}", sts["spec"]["replicas"], a["status"]))
        }
    })
    .await;
}

#[tokio::test]
async fn a_heartbeat_makes_it_ready_and_its_absence_takes_that_back() {
    let cp = cp();
    let ns = cp.namespace("heartbeat").await.unwrap();
    apply(cp, &ns, &account_set("beat", "beat", "beat"));
    let hash = eventually("the hash", 30, || async {
        get(cp, &ns, "statefulset/beat-connector")
            .and_then(|s| {
                s["spec"]["template"]["metadata"]["annotations"]["crmessenger.io/config-hash"]
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| "no StatefulSet".to_string())
    })
    .await;
    // Act as the connector: renew the Lease and report status as its field manager.
    let renew = || renew_lease(cp, &ns, "beat");
    renew();
    connector_reports(
        cp,
        &ns,
        "beat",
        json!({
            "connector": { "configHash": hash },
            "conditions": [
                { "type": "LoggedIn", "status": "True", "reason": "LoggedIn", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" },
                { "type": "MessengerConnected", "status": "True", "reason": "Connected", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z" },
            ],
        }),
    );

    eventually("Ready=True while the heartbeat is fresh", 20, || async {
        renew();
        let a = get(cp, &ns, "messengeraccount/beat").ok_or("gone")?;
        let ready = condition(&a, "Ready").ok_or("no Ready")?;
        if ready["status"] == "True" && a["status"]["phase"] == "Running" {
            Ok(())
        } else {
            Err(a["status"].to_string())
        }
    })
    .await;
    let out = cp
        .kubectl_output(&["wait", "--for=condition=Ready", "messengeraccount/beat", "-n", &ns, "--timeout=5s"])
        .unwrap();
    assert!(out.status.success(), "kubectl wait: {}", String::from_utf8_lossy(&out.stderr));

    // The connector dies: its own conditions stay True, but Ready must not.
    let stale = eventually("Ready=False after the heartbeat stops", HEARTBEAT_TIMEOUT_SECS + 25, || async {
        let a = get(cp, &ns, "messengeraccount/beat").ok_or("gone")?;
        let ready = condition(&a, "Ready").ok_or("no Ready")?;
        if ready["status"] == "False" { Ok(a) } else { Err(a["status"].to_string()) }
    })
    .await;
    assert_eq!(condition(&stale, "ConnectorAvailable").unwrap()["reason"], "HeartbeatStale");
    assert_eq!(condition(&stale, "LoggedIn").unwrap()["status"], "True", "the connector's own condition is untouched");
    assert_eq!(stale["status"]["phase"], "Degraded");
}

#[tokio::test]
async fn deletion_waits_for_the_connector_or_times_out_and_children_are_collected() {
    let cp = cp();
    let ns = cp.namespace("delete").await.unwrap();
    apply(cp, &ns, &account_set("gone", "gone", "gone"));
    eventually("the finalizer and the StatefulSet", 30, || async {
        let a = get(cp, &ns, "messengeraccount/gone").ok_or("no account")?;
        let has = a["metadata"]["finalizers"].as_array().is_some_and(|f| f.contains(&json!("crmessenger.io/cleanup")));
        if has && get(cp, &ns, "statefulset/gone-connector").is_some() {
            Ok(())
        } else {
            Err(a["metadata"].to_string())
        }
    })
    .await;
    let started = std::time::Instant::now();
    cp.kubectl_ok(&["delete", "messengeraccount", "gone", "-n", &ns, "--wait=false"]).unwrap();
    eventually("phase Terminating", 15, || async {
        let a = get(cp, &ns, "messengeraccount/gone").ok_or("already gone")?;
        if a["status"]["phase"] == "Terminating" { Ok(()) } else { Err(a["status"].to_string()) }
    })
    .await;
    eventually("the account deleted after the cleanup timeout", CLEANUP_TIMEOUT_SECS + 30, || async {
        if get(cp, &ns, "messengeraccount/gone").is_none() { Ok(()) } else { Err("still there".to_string()) }
    })
    .await;
    assert!(
        started.elapsed().as_secs() + 1 >= CLEANUP_TIMEOUT_SECS,
        "deleted before the timeout with no connector answering"
    );
    let events = cp.kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]).unwrap();
    assert!(events.contains("CleanupTimedOut"), "no Warning event about the timeout: {events}");
    eventually("children garbage-collected", 60, || async {
        let left: Vec<&str> =
            ["statefulset/gone-connector", "configmap/gone-connector", "role/gone-connector", "service/gone-connector"]
                .into_iter()
                .filter(|w| get(cp, &ns, w).is_some())
                .collect();
        if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
    })
    .await;
}

#[tokio::test]
async fn deletion_completes_at_once_when_the_connector_confirms_cleanup() {
    let cp = cp();
    let ns = cp.namespace("confirm").await.unwrap();
    apply(cp, &ns, &account_set("bye", "bye", "bye"));
    eventually("the finalizer", 30, || async {
        let a = get(cp, &ns, "messengeraccount/bye").ok_or("no account")?;
        if a["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty()) {
            Ok(())
        } else {
            Err(a["metadata"].to_string())
        }
    })
    .await;
    cp.kubectl_ok(&["delete", "messengeraccount", "bye", "-n", &ns, "--wait=false"]).unwrap();
    let patch = json!({ "status": { "connector": { "cleanupCompletedAt": "2026-01-01T00:00:00Z" } } });
    cp.kubectl_ok(&[
        "patch",
        "messengeraccount",
        "bye",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch.to_string(),
    ])
    .unwrap();
    eventually("the account deleted", 20, || async {
        if get(cp, &ns, "messengeraccount/bye").is_none() { Ok(()) } else { Err("still there".to_string()) }
    })
    .await;
    // The confirmation released it, not the timeout (which would have said so in
    // an event before removing the finalizer): an outcome, not a wall-clock bound.
    let events = cp.kubectl_ok(&["get", "events", "-n", &ns, "-o", "json"]).unwrap();
    assert!(
        !events.contains("CleanupTimedOut"),
        "deletion waited for the timeout although the connector confirmed: {events}"
    );
}

#[tokio::test]
async fn a_pod_that_never_becomes_ready_does_not_block_the_next_config() {
    let cp = cp();
    let ns = cp.namespace("stuck").await.unwrap();
    apply(cp, &ns, &account_set("stuck", "stuck", "stuck"));
    let pod = eventually("the first pod", 60, || async {
        let p = get(cp, &ns, "pod/stuck-connector-0").ok_or("no pod")?;
        if condition(&p, "Ready").is_some_and(|c| c["status"] == "True") { Ok(p) } else { Err(p["status"].to_string()) }
    })
    .await;
    let old_hash = pod["metadata"]["annotations"]["crmessenger.io/config-hash"].as_str().unwrap().to_string();
    // The connector never gets Ready (say, a crash loop): mark the pod so.
    let not_ready = json!({ "status": { "conditions": [
        { "type": "Ready", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": "2026-01-01T00:00:00Z" },
        { "type": "ContainersReady", "status": "False", "reason": "ContainersNotReady", "lastTransitionTime": "2026-01-01T00:00:00Z" },
    ] } });
    cp.kubectl_ok(&[
        "patch",
        "pod",
        "stuck-connector-0",
        "-n",
        &ns,
        "--subresource=status",
        "--type=strategic",
        "-p",
        &not_ready.to_string(),
    ])
    .unwrap();
    eventually("the pod reported not Ready", 10, || async {
        let p = get(cp, &ns, "pod/stuck-connector-0").ok_or("no pod")?;
        if condition(&p, "Ready").is_some_and(|c| c["status"] == "False") {
            Ok(())
        } else {
            Err(p["status"].to_string())
        }
    })
    .await;
    // A fixed config must still roll out.
    merge_patch(cp, &ns, "syncpolicy/stuck", r#"{"spec":{"media":{"mode":"skip"}}}"#);
    eventually("a pod running the new config", 60, || async {
        let p = get(cp, &ns, "pod/stuck-connector-0").ok_or("no pod")?;
        let hash = p["metadata"]["annotations"]["crmessenger.io/config-hash"].as_str().unwrap_or_default().to_string();
        if hash != old_hash && p["metadata"]["deletionTimestamp"].is_null() {
            Ok(())
        } else {
            Err(format!("still {hash}"))
        }
    })
    .await;
}
