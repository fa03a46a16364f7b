//! The Helm chart for real against the control plane: install (CRDs included),
//! the operator running with the chart's RBAC as its identity (so a missing rule
//! fails here), upgrade, and uninstall keeping the CRDs.

mod common;

use common::{account_set, apply, condition, eventually, get, start_operator_as};
use crmessenger_testkit::ControlPlane;
use crmessenger_testkit::controlplane::repo_root;

const RELEASE_NS: &str = "crmessenger-system";

fn helm(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.helm().args(args).output().expect("run helm");
    assert!(out.status.success(), "helm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_chart_installs_runs_with_its_own_rbac_upgrades_and_uninstalls() {
    let cp = ControlPlane::shared();
    let chart = repo_root().join("charts/crmessenger").display().to_string();
    // Before the chart: the operator refuses to start, and says how to fix it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crmessenger-operator"))
        .args(["run", "--leader-election=false", "--admin-addr", "127.0.0.1:0"])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the operator started without its CRDs");
    assert!(stderr.contains("is not installed") && stderr.contains("crds.install=true"), "{stderr}");
    // An account stored under an older, looser schema that today's types cannot read.
    let legacy = cp.namespace("legacy").await.unwrap();
    let loose = r#"{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition","metadata":{"name":"messengeraccounts.crmessenger.io"},"spec":{"group":"crmessenger.io","scope":"Namespaced","names":{"kind":"MessengerAccount","plural":"messengeraccounts","singular":"messengeraccount"},"versions":[{"name":"v1alpha1","served":true,"storage":true,"subresources":{"status":{}},"schema":{"openAPIV3Schema":{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}]}}"#;
    assert!(cp.kubectl_apply_output(loose, &[]).unwrap().status.success());
    cp.kubectl_ok(&["wait", "--for=condition=Established", "--timeout=60s", "crd/messengeraccounts.crmessenger.io"])
        .unwrap();
    let broken = r#"{"apiVersion":"crmessenger.io/v1alpha1","kind":"MessengerAccount","metadata":{"name":"old"},"spec":{"provider":"signal"}}"#;
    let out = cp.kubectl_apply_output(broken, &["-n", &legacy]).unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The current CRDs replace it; the chart adopts them, as in an upgrade.
    let crds = repo_root().join("crds").display().to_string();
    cp.kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &crds]).unwrap();
    for crd in ["messengeraccounts", "crmbindings", "syncpolicies"] {
        let name = format!("crd/{crd}.crmessenger.io");
        cp.kubectl_ok(&["label", &name, "app.kubernetes.io/managed-by=Helm"]).unwrap();
        cp.kubectl_ok(&[
            "annotate",
            &name,
            "meta.helm.sh/release-name=crmessenger",
            &format!("meta.helm.sh/release-namespace={RELEASE_NS}"),
        ])
        .unwrap();
    }
    let bundled = "postgres.bundled.enabled=true,chats.channelId=3f6e0c1a,chats.secret.name=amo-chats,whatsapp.appSecret.name=meta-app,whatsapp.verifyToken.name=meta-app";
    let ns_yaml = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{ name: {RELEASE_NS} }}\n");
    assert!(cp.kubectl_apply_output(&ns_yaml, &[]).unwrap().status.success());
    let chats_secret =
        "apiVersion: v1\nkind: Secret\nmetadata: { name: amo-chats }\nstringData: { secret: canary-chats-secret-91 }\n";
    assert!(cp.kubectl_apply_output(chats_secret, &["-n", RELEASE_NS]).unwrap().status.success());
    helm(
        cp,
        &["install", "crmessenger", &chart, "-n", RELEASE_NS, "--create-namespace", "--wait=false", "--set", bundled],
    );
    cp.wait_crds_established().expect("the chart's CRDs become Established");
    let deployment = get(cp, RELEASE_NS, "deployment/crmessenger-operator").expect("the operator Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    // The gateway: two replicas on the generated DSN, a Service and a PDB; the
    // evaluation PostgreSQL with its generated password.
    let gateway = get(cp, RELEASE_NS, "deployment/crmessenger-gateway").expect("the gateway Deployment");
    assert_eq!(gateway["spec"]["replicas"], 2);
    let env = &gateway["spec"]["template"]["spec"]["containers"][0]["env"][0];
    assert_eq!(env["valueFrom"]["secretKeyRef"]["name"], "crmessenger-postgres", "{env}");
    assert_eq!(get(cp, RELEASE_NS, "pdb/crmessenger-gateway").unwrap()["spec"]["minAvailable"], 1);
    assert!(get(cp, RELEASE_NS, "service/crmessenger-gateway").is_some());
    assert!(get(cp, RELEASE_NS, "statefulset/crmessenger-postgres").is_some());
    let password = get(cp, RELEASE_NS, "secret/crmessenger-postgres").unwrap()["data"]["password"].clone();
    assert!(password.as_str().is_some_and(|p| p.len() > 20));

    // The operator, out of cluster, authenticated as the chart's ServiceAccount.
    let token = cp.kubectl_ok(&["create", "token", "crmessenger", "-n", RELEASE_NS, "--duration=2h"]).unwrap();
    let kubeconfig = cp.kubeconfig_for_token("chart-operator", token.trim()).unwrap();
    // The chart's arguments that say where connectors find their database and
    // session key (the rest are the test's own, shorter timeouts).
    let chart_args: Vec<String> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| {
            a.starts_with("--database-secret") || a.starts_with("--session-key-secret") || a.starts_with("--chats-")
        })
        .map(str::to_string)
        .collect();
    assert_eq!(chart_args.len(), 8, "{chart_args:?}");
    let gw_env = gateway["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(gw_env.contains("CRMESSENGER_CHATS_SECRET") && gw_env.contains("amo-chats"), "{gw_env}");
    // The Meta app's secret and verify token reach the gateway by reference.
    for name in ["CRMESSENGER_WHATSAPP_APP_SECRET", "CRMESSENGER_WHATSAPP_VERIFY_TOKEN", "meta-app"] {
        assert!(gw_env.contains(name), "{name} missing: {gw_env}");
    }
    let mut args = vec![
        "--leader-election=true",
        "--lease-namespace",
        RELEASE_NS,
        "--lease-name",
        "crmessenger-operator",
        "--identity",
        "chart-operator",
    ];
    args.extend(chart_args.iter().map(String::as_str));
    // The generated session key: base64 of 32 random bytes, kept across upgrades.
    let session_key = get(cp, RELEASE_NS, "secret/crmessenger-session-key").unwrap()["data"]["key"].clone();
    {
        use base64::Engine;
        let text = base64::engine::general_purpose::STANDARD.decode(session_key.as_str().unwrap()).unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(text).unwrap();
        assert_eq!(raw.len(), 32);
    }
    // It also exports traces to an OTLP/HTTP receiver.
    let (otlp, mut spans) = crmessenger_testkit::otlp::receiver().await;
    start_operator_as(cp, "chart-operator", &args, Some(&kubeconfig), &[("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)])
        .expect("start the operator as the chart's ServiceAccount");

    let ns = cp.namespace("chart").await.unwrap();
    apply(cp, &ns, &account_set("via-chart", "via-chart", "via-chart"));
    eventually("children and status, written with the chart's RBAC", 40, || async {
        let a = get(cp, &ns, "messengeraccount/via-chart").ok_or("no account")?;
        let ok = get(cp, &ns, "statefulset/via-chart-connector").is_some()
            && get(cp, &ns, "secret/via-chart-connector-runtime").is_some()
            && get(cp, &ns, "role/via-chart-connector").is_some()
            && get(cp, &ns, "secret/via-chart-crm-token").is_some()
            && condition(&a, "ConnectorAvailable").is_some();
        if ok { Ok(()) } else { Err(a["status"].to_string()) }
    })
    .await;
    // The unreadable account did not stop the watch; it is reported on itself.
    eventually("an InvalidObject event on the unreadable account", 20, || async {
        let events = cp.kubectl_ok(&["get", "events", "-n", &legacy, "-o", "json"]).unwrap_or_default();
        if events.contains("InvalidObject") { Ok(()) } else { Err(events) }
    })
    .await;
    // The pod gets the database URL and session key by reference to a Secret beside it.
    let runtime = get(cp, &ns, "secret/via-chart-connector-runtime").unwrap();
    let keys: Vec<&String> = runtime["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["chats_secret", "database_url", "session_key"]);
    let sts = get(cp, &ns, "statefulset/via-chart-connector").unwrap();
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("CRMESSENGER_DATABASE_URL") && env.contains("via-chart-connector-runtime"), "{env}");
    assert!(!sts.to_string().contains("postgres://"), "the URL is referenced, never inlined");
    assert!(!sts.to_string().contains("canary-chats-secret"), "the channel secret is referenced, never inlined");
    assert!(env.contains("CRMESSENGER_CHATS_CHANNEL_ID"), "{env}");
    let b = get(cp, &ns, "crmbinding/via-chart").unwrap();
    assert!(condition(&b, "CredentialsValid").is_some_and(|c| c["status"] == "True"), "{}", b["status"]);
    let exported = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(body) = spans.recv().await {
            if body.windows(b"reconcile".len()).any(|w| w == b"reconcile") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(exported, Ok(true), "no reconcile span reached the OTLP receiver");
    let log = cp.log_tail("chart-operator", 400);
    assert!(!log.to_lowercase().contains("forbidden"), "the chart's ClusterRole lacks a rule:\n{log}");

    helm(
        cp,
        &[
            "upgrade",
            "crmessenger",
            &chart,
            "-n",
            RELEASE_NS,
            "--set",
            "operator.replicas=1",
            "--set",
            bundled,
            "--wait=false",
        ],
    );
    assert_eq!(get(cp, RELEASE_NS, "deployment/crmessenger-operator").unwrap()["spec"]["replicas"], 1);
    let kept = get(cp, RELEASE_NS, "secret/crmessenger-postgres").unwrap()["data"]["password"].clone();
    assert_eq!(kept, password, "an upgrade keeps the bundled database's password");
    let kept = get(cp, RELEASE_NS, "secret/crmessenger-session-key").unwrap()["data"]["key"].clone();
    assert_eq!(kept, session_key, "an upgrade keeps the session key");

    helm(cp, &["uninstall", "crmessenger", "-n", RELEASE_NS, "--wait"]);
    assert!(get(cp, RELEASE_NS, "deployment/crmessenger-operator").is_none(), "the Deployment survived uninstall");
    assert!(cp.kubectl_ok(&["get", "crd", "messengeraccounts.crmessenger.io"]).is_ok(), "uninstall deleted the CRDs");
    assert!(get(cp, &ns, "messengeraccount/via-chart").is_some(), "uninstall deleted an account");
}
