//! The Helm chart for real against the control plane: it renders the same twice
//! (no lookup, no random values, no Secret), lints, and passes a server-side dry
//! run; installed with default values, the operator — running with the chart's RBAC
//! as its identity and the chart's arguments, so a missing rule or flag fails here —
//! creates the session key Secret once and starts no connector without a database;
//! an upgrade adds a database, an image digest, pull secrets and extra environment,
//! which reach every pod; uninstall keeps the CRDs, the accounts and the generated
//! Secrets.

#[path = "it/common.rs"]
mod common;

use common::{account_set, apply, condition, eventually, get, start_operator_as};
use crmessenger_testkit::ControlPlane;
use crmessenger_testkit::controlplane::repo_root;
use serde_json::{Value, json};

const RELEASE_NS: &str = "crmessenger-system";
const DIGEST: &str = "sha256:4a0c6f3e1b2d5a7c9e8f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f";

fn helm(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.helm().args(args).output().expect("run helm");
    assert!(out.status.success(), "helm {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chart() -> String {
    repo_root().join("charts/crmessenger").display().to_string()
}

/// `--set` arguments for the values the tests use beyond the defaults.
fn values(extra: &[&str]) -> Vec<String> {
    extra.iter().flat_map(|v| ["--set".to_string(), v.to_string()]).collect()
}

/// Every value the chart has, set.
const EVERYTHING: &[&str] = &[
    "postgres.bundled.enabled=true,chats.channelId=3f6e0c1a,chats.botId=5c2b7f0e,chats.secret.name=amo-chats",
    "whatsapp.appSecret.name=meta-app,whatsapp.verifyToken.name=meta-app,gateway.publicUrl=https://hooks.example.com",
    "imagePullSecrets[0].name=regcred,global.imageRegistry=registry.example",
    "extraEnv[0].name=OTEL_EXPORTER_OTLP_ENDPOINT,extraEnv[0].value=http://127.0.0.1:4318",
];

/// The chart's YAML documents that are of `kind`.
fn documents_of_kind<'a>(rendered: &'a str, kind: &str) -> Vec<&'a str> {
    rendered.split("\n---").filter(|doc| doc.lines().any(|l| l == format!("kind: {kind}"))).collect()
}

/// The dry run creates the CRDs (server side) while the install test may be
/// installing them: one at a time, or the dry run meets `AlreadyExists`.
static CRDS_IN_USE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn the_chart_renders_the_same_twice_lints_and_passes_a_server_side_dry_run() {
    let _one_at_a_time = CRDS_IN_USE.lock().await;
    let cp = ControlPlane::shared();
    let chart = chart();
    // Nothing in the templates asks the cluster or the dice: Argo CD renders without
    // cluster access, and a value that changes per render would change every sync.
    for entry in std::fs::read_dir(repo_root().join("charts/crmessenger/templates")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // The words inside the template actions (`{{ ... }}`), not the YAML around them.
        let actions = text.split("{{").skip(1).filter_map(|a| a.split("}}").next());
        let words: Vec<&str> = actions.flat_map(|a| a.split(|c: char| !c.is_ascii_alphanumeric())).collect();
        for word in ["lookup", "randBytes", "randAlphaNum", "randAlpha", "randNumeric", "randAscii", "uuidv4", "now"] {
            assert!(!words.contains(&word), "{} uses {word}", path.display());
        }
        assert!(!words.contains(&"genPrivateKey") && !words.contains(&"genCA"), "{} generates keys", path.display());
    }
    let ns = cp.namespace("dryrun").await.unwrap();
    let digest = format!("image.digest={DIGEST}");
    let own_secrets = ["sessionKey.secret.name=my-key,postgres.dsnSecret.name=my-db"];
    let mut everything = EVERYTHING.to_vec();
    everything.push(&digest);
    for set in [&[][..], &everything[..], &own_secrets[..]] {
        let set = values(set);
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        let mut lint = vec!["lint", "--strict", &chart];
        lint.extend(&set);
        helm(cp, &lint);
        let mut template = vec!["template", "dryrun", &chart, "-n", &ns];
        template.extend(&set);
        let first = helm(cp, &template);
        let second = helm(cp, &template);
        assert!(first == second, "two renders of {set:?} differ");
        assert!(documents_of_kind(&first, "Secret").is_empty(), "the chart renders a Secret with {set:?}");
        assert_eq!(documents_of_kind(&first, "CustomResourceDefinition").len(), 3);
        // The API server accepts every object (the CRDs among them).
        let out = cp.kubectl_apply_output(&first, &["--dry-run=server", "-n", &ns]).unwrap();
        assert!(out.status.success(), "dry run with {set:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The schema refuses what would break a pod: an env name the chart sets itself,
    // a tag where a digest belongs.
    for bad in ["extraEnv[0].name=RUST_LOG,extraEnv[0].value=debug", "image.digest=latest"] {
        let out = cp.helm().args(["template", "bad", &chart, "--set", bad]).output().unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(String::from_utf8_lossy(&out.stderr).contains("schema"), "{bad}");
    }
}

/// The operator process as the chart's Deployment would run it: its arguments
/// (less the timeouts the test sets shorter), its plain environment values (the
/// chart's `extraEnv` among them), and a pod's name and namespace.
fn run_like_the_chart(cp: &ControlPlane, name: &str, kubeconfig: &std::path::Path) -> (String, u32) {
    let deployment = get(cp, RELEASE_NS, "deployment/crmessenger-operator").expect("the operator Deployment");
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["command"], json!(["/usr/local/bin/crmessenger-operator"]));
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .filter(|a| *a != "run" && !a.starts_with("--heartbeat-timeout") && !a.starts_with("--cleanup-timeout"))
        .map(str::to_string)
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
        .filter(|(name, _)| name != "CRMESSENGER_LOG_JSON")
        .collect();
    env.extend([("POD_NAMESPACE".into(), RELEASE_NS.into()), ("POD_NAME".into(), "chart-operator".into())]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    start_operator_as(cp, name, &args, Some(kubeconfig), &env)
        .expect("start the operator as the chart's ServiceAccount")
}

fn stop(pid: u32) {
    let status = std::process::Command::new("kill").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

/// A Secret's data and resourceVersion: what must not change once generated.
fn generated(cp: &ControlPlane, name: &str) -> Option<(Value, Value)> {
    let s = get(cp, RELEASE_NS, &format!("secret/{name}"))?;
    Some((s["data"].clone(), s["metadata"]["resourceVersion"].clone()))
}

fn decoded(data: &Value, key: &str) -> String {
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD.decode(data[key].as_str().unwrap()).unwrap();
    String::from_utf8(raw).unwrap()
}

fn env_names(container: &Value) -> Vec<String> {
    container["env"].as_array().unwrap().iter().filter_map(|e| e["name"].as_str().map(str::to_string)).collect()
}

#[tokio::test]
async fn the_chart_installs_runs_with_its_own_rbac_upgrades_and_uninstalls() {
    let _one_at_a_time = CRDS_IN_USE.lock().await;
    let cp = ControlPlane::shared();
    let chart = chart();
    // Before the chart: the operator refuses to start without a connector image,
    // then without its CRDs, and says how to fix each.
    let bare = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_crmessenger-operator"))
            .args(["run", "--leader-election=false", "--admin-addr", "127.0.0.1:0"])
            .args(extra)
            .env("KUBECONFIG", cp.kubeconfig())
            .env_remove("CRMESSENGER_CONNECTOR_IMAGE")
            .output()
            .unwrap();
        assert!(!out.status.success(), "the operator started with {extra:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let stderr = bare(&[]);
    assert!(stderr.contains("no connector image") && stderr.contains("--connector-image"), "{stderr}");
    let stderr = bare(&["--connector-image", "example.invalid/crmessenger:test"]);
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

    // Default values: no database, so no gateway; the notes say what to set and how
    // to reach an account's login page.
    let notes = helm(cp, &["install", "crmessenger", &chart, "-n", RELEASE_NS, "--create-namespace", "--wait=false"]);
    for line in [
        "NO DATABASE IS CONFIGURED",
        "postgres.dsnSecret.name",
        "postgres.bundled.enabled=true",
        "kubectl get msgacct -n NAMESPACE -w",
        "kubectl port-forward -n NAMESPACE svc/ACCOUNT-connector 8080:8080",
        "http://localhost:8080/login",
        "crmessenger-session-key",
    ] {
        assert!(notes.contains(line), "{line:?} missing from the notes:\n{notes}");
    }
    cp.wait_crds_established().expect("the chart's CRDs become Established");
    let deployment = get(cp, RELEASE_NS, "deployment/crmessenger-operator").expect("the operator Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--connector-image=ghcr.io/crmessenger/crmessenger:0.1.0"), "{args}");
    assert!(args.contains("--generate-session-key") && !args.contains("--database-secret"), "{args}");
    assert!(get(cp, RELEASE_NS, "deployment/crmessenger-gateway").is_none(), "a gateway without a database");
    let manifest = helm(cp, &["get", "manifest", "crmessenger", "-n", RELEASE_NS]);
    assert!(documents_of_kind(&manifest, "Secret").is_empty(), "the release owns a Secret:\n{manifest}");
    assert!(generated(cp, "crmessenger-session-key").is_none(), "a session key before the operator ran");

    // The operator, out of cluster, authenticated as the chart's ServiceAccount.
    let token = cp.kubectl_ok(&["create", "token", "crmessenger", "-n", RELEASE_NS, "--duration=2h"]).unwrap();
    let kubeconfig = cp.kubeconfig_for_token("chart-operator", token.trim()).unwrap();
    let (_, first) = run_like_the_chart(cp, "chart-operator", &kubeconfig);
    // It created the session key: 32 random bytes in a form the connector reads,
    // owned by nothing (so uninstall keeps it), immutable.
    let session_key = generated(cp, "crmessenger-session-key").expect("the operator created the session key");
    assert_eq!(hex_len(&decoded(&session_key.0, "key")), Some(32));
    let secret = get(cp, RELEASE_NS, "secret/crmessenger-session-key").unwrap();
    assert_eq!(secret["immutable"], true);
    assert!(secret["metadata"]["ownerReferences"].is_null(), "{secret}");
    assert!(secret["metadata"]["annotations"]["meta.helm.sh/release-name"].is_null(), "{secret}");

    // An account with a binding and a policy: valid but for the database, which the
    // status names; no connector is started.
    let ns = cp.namespace("chart").await.unwrap();
    apply(cp, &ns, &account_set("via-chart", "via-chart", "via-chart"));
    let account = eventually("ConfigValid=False for want of a database", 40, || async {
        let a = get(cp, &ns, "messengeraccount/via-chart").ok_or("no account")?;
        let valid = condition(&a, "ConfigValid").ok_or(a["status"].to_string())?;
        if valid["reason"] == "DatabaseNotConfigured" { Ok(a) } else { Err(a["status"].to_string()) }
    })
    .await;
    let valid = condition(&account, "ConfigValid").unwrap();
    let message = valid["message"].as_str().unwrap();
    assert_eq!(valid["status"], "False");
    assert!(
        message.contains("postgres.dsnSecret.name") && message.contains("postgres.bundled.enabled=true"),
        "{message}"
    );
    let ready = condition(&account, "Ready").unwrap();
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("DatabaseNotConfigured")));
    assert!(get(cp, &ns, "statefulset/via-chart-connector").is_none(), "a connector without a database");
    let pods = cp.kubectl_ok(&["get", "pods", "-n", &ns, "-l", "crmessenger.io/account=via-chart", "-o", "name"]);
    assert_eq!(pods.unwrap().trim(), "", "a connector pod without a database");
    // The unreadable account did not stop the watch; it is reported on itself.
    eventually("an InvalidObject event on the unreadable account", 20, || async {
        let events = cp.kubectl_ok(&["get", "events", "-n", &legacy, "-o", "json"]).unwrap_or_default();
        if events.contains("InvalidObject") { Ok(()) } else { Err(events) }
    })
    .await;
    crmessenger_testkit::capture::save("messengeraccount-degraded-no-database", &account);
    stop(first);
    // A change while no operator runs: the status still speaks of the generation before.
    cp.kubectl_ok(&[
        "patch",
        "messengeraccount",
        "via-chart",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"connector":{"resources":{"requests":{"cpu":"10m"}}}}}"#,
    ])
    .unwrap();
    let behind = get(cp, &ns, "messengeraccount/via-chart").unwrap();
    assert_ne!(behind["status"]["observedGeneration"], behind["metadata"]["generation"], "{behind}");
    crmessenger_testkit::capture::save("messengeraccount-progressing-generation", &behind);
    let binding = get(cp, &ns, "crmbinding/via-chart").unwrap();
    crmessenger_testkit::capture::save("crmbinding-healthy", &binding);

    // An upgrade to a bundled database, a pinned digest, a pull secret and extra
    // environment (traces to an OTLP/HTTP receiver, for every pod).
    let chats_secret =
        "apiVersion: v1\nkind: Secret\nmetadata: { name: amo-chats }\nstringData: { secret: canary-chats-secret-91 }\n";
    assert!(cp.kubectl_apply_output(chats_secret, &["-n", RELEASE_NS]).unwrap().status.success());
    let (otlp, mut spans) = crmessenger_testkit::otlp::receiver().await;
    let upgraded = [
        "postgres.bundled.enabled=true,chats.channelId=3f6e0c1a,chats.botId=5c2b7f0e,chats.secret.name=amo-chats"
            .to_string(),
        "whatsapp.appSecret.name=meta-app,whatsapp.verifyToken.name=meta-app".to_string(),
        format!("image.digest={DIGEST},imagePullSecrets[0].name=regcred"),
        format!("extraEnv[0].name=OTEL_EXPORTER_OTLP_ENDPOINT,extraEnv[0].value={otlp}"),
    ];
    let upgrade = |extra: &[&str]| {
        let mut args = vec!["upgrade", "crmessenger", &chart, "-n", RELEASE_NS, "--wait=false"];
        args.extend(extra);
        for v in &upgraded {
            args.extend(["--set", v.as_str()]);
        }
        helm(cp, &args)
    };
    let notes = upgrade(&[]);
    assert!(!notes.contains("NO DATABASE"), "{notes}");
    assert_eq!(generated(cp, "crmessenger-session-key"), Some(session_key.clone()), "an upgrade touched the key");
    let image = format!("ghcr.io/crmessenger/crmessenger@{DIGEST}");
    let otel = json!({ "name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": otlp });
    let pod_spec = |what: &str| get(cp, RELEASE_NS, what).unwrap()["spec"]["template"]["spec"].clone();
    // The operator and the gateway: the digest, the pull secret, the environment,
    // each binary named as the command.
    let operator = pod_spec("deployment/crmessenger-operator");
    let gateway = pod_spec("deployment/crmessenger-gateway");
    for (pod, command) in [(&operator, "crmessenger-operator"), (&gateway, "crmessenger-connector")] {
        assert_eq!(pod["imagePullSecrets"], json!([{ "name": "regcred" }]), "{pod}");
        let c = &pod["containers"][0];
        assert_eq!(c["image"], image.as_str());
        assert_eq!(c["command"], json!([format!("/usr/local/bin/{command}")]));
        assert!(c["env"].as_array().unwrap().contains(&otel), "{}", c["env"]);
    }
    let args = operator["containers"][0]["args"].to_string();
    for arg in [
        format!("--connector-image={image}"),
        "--image-pull-secret=regcred".into(),
        "--connector-extra-env=".into(),
        "--bundled-postgres=crmessenger-postgres".into(),
        "--database-secret=crmessenger-postgres".into(),
    ] {
        assert!(args.contains(&arg), "{arg} missing: {args}");
    }
    // The gateway reads the bundled database's URL, the channel secret and the Meta
    // app's secret and verify token by reference.
    assert_eq!(get(cp, RELEASE_NS, "deployment/crmessenger-gateway").unwrap()["spec"]["replicas"], 2);
    let db_ref = &gateway["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"];
    assert_eq!((db_ref["name"].as_str(), db_ref["key"].as_str()), (Some("crmessenger-postgres"), Some("dsn")));
    let gw_env = gateway["containers"][0]["env"].to_string();
    for name in [
        "CRMESSENGER_CHATS_SECRET",
        "amo-chats",
        "CRMESSENGER_WHATSAPP_APP_SECRET",
        "CRMESSENGER_WHATSAPP_VERIFY_TOKEN",
        "meta-app",
    ] {
        assert!(gw_env.contains(name), "{name} missing: {gw_env}");
    }
    assert_eq!(get(cp, RELEASE_NS, "pdb/crmessenger-gateway").unwrap()["spec"]["minAvailable"], 1);
    assert!(get(cp, RELEASE_NS, "service/crmessenger-gateway").is_some());
    let postgres = pod_spec("statefulset/crmessenger-postgres");
    assert_eq!(postgres["imagePullSecrets"], json!([{ "name": "regcred" }]));
    let password_ref =
        postgres["containers"][0]["env"].as_array().unwrap().iter().find(|e| e["name"] == "POSTGRES_PASSWORD");
    assert_eq!(
        password_ref.unwrap()["valueFrom"]["secretKeyRef"],
        json!({ "name": "crmessenger-postgres", "key": "password" })
    );
    assert!(generated(cp, "crmessenger-postgres").is_none(), "the chart rendered the database's Secret");

    // The upgraded operator creates the database's Secret once and keeps the key.
    let (_, second) = run_like_the_chart(cp, "chart-operator-2", &kubeconfig);
    let database = generated(cp, "crmessenger-postgres").expect("the operator created the database's Secret");
    let password = decoded(&database.0, "password");
    assert_eq!(hex_len(&password), Some(24));
    assert_eq!(
        decoded(&database.0, "dsn"),
        format!("postgres://crmessenger:{password}@crmessenger-postgres.{RELEASE_NS}.svc:5432/crmessenger")
    );
    assert_eq!(generated(cp, "crmessenger-session-key"), Some(session_key.clone()));

    // With a database the account gets its connector, on the pinned image, pulled
    // with the pull secret, with the extra environment in both containers.
    eventually("children and status, written with the chart's RBAC", 60, || async {
        let a = get(cp, &ns, "messengeraccount/via-chart").ok_or("no account")?;
        let ok = get(cp, &ns, "statefulset/via-chart-connector").is_some()
            && get(cp, &ns, "secret/via-chart-connector-runtime").is_some()
            && get(cp, &ns, "role/via-chart-connector").is_some()
            && get(cp, &ns, "secret/via-chart-crm-token").is_some()
            && condition(&a, "ConfigValid").is_some_and(|c| c["status"] == "True")
            && condition(&a, "ConnectorAvailable").is_some();
        if ok { Ok(()) } else { Err(a["status"].to_string()) }
    })
    .await;
    // The pod gets the database URL and session key by reference to a Secret beside it.
    let runtime = get(cp, &ns, "secret/via-chart-connector-runtime").unwrap();
    let keys: Vec<&String> = runtime["data"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["chats_secret", "database_url", "session_key"]);
    assert_eq!(decoded(&runtime["data"], "database_url"), decoded(&database.0, "dsn"));
    assert_eq!(decoded(&runtime["data"], "session_key"), decoded(&session_key.0, "key"));
    let sts = get(cp, &ns, "statefulset/via-chart-connector").unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    assert_eq!(pod["imagePullSecrets"], json!([{ "name": "regcred" }]));
    for c in pod["containers"].as_array().unwrap() {
        assert_eq!(c["image"], image.as_str(), "{}", c["name"]);
        assert_eq!(c["command"], json!(["/usr/local/bin/crmessenger-connector"]), "{}", c["name"]);
        assert!(c["env"].as_array().unwrap().contains(&otel), "{}: {}", c["name"], c["env"]);
    }
    let sa = get(cp, &ns, "serviceaccount/via-chart-connector").unwrap();
    assert_eq!(sa["imagePullSecrets"], json!([{ "name": "regcred" }]));
    let env = env_names(&pod["containers"][0]);
    assert!(env.iter().any(|n| n == "CRMESSENGER_DATABASE_URL"), "{env:?}");
    assert!(
        sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string().contains("via-chart-connector-runtime")
    );
    assert!(!sts.to_string().contains("postgres://"), "the URL is referenced, never inlined");
    assert!(!sts.to_string().contains("canary-chats-secret"), "the channel secret is referenced, never inlined");
    assert!(env.iter().any(|n| n == "CRMESSENGER_CHATS_CHANNEL_ID"), "{env:?}");
    assert!(env.iter().any(|n| n == "CRMESSENGER_CHATS_BOT_ID"), "{env:?}");
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
    assert_eq!(exported, Ok(true), "no reconcile span reached the OTLP receiver through extraEnv");
    for log in ["chart-operator", "chart-operator-2"] {
        let log = cp.log_tail(log, 400);
        assert!(!log.to_lowercase().contains("forbidden"), "the chart's RBAC lacks a rule:\n{log}");
    }

    // A restart and an upgrade without changes create nothing anew.
    stop(second);
    let (_, third) = run_like_the_chart(cp, "chart-operator-3", &kubeconfig);
    stop(third);
    upgrade(&[]);
    upgrade(&["--set", "operator.replicas=1"]);
    assert_eq!(get(cp, RELEASE_NS, "deployment/crmessenger-operator").unwrap()["spec"]["replicas"], 1);
    assert_eq!(generated(cp, "crmessenger-session-key"), Some(session_key.clone()), "the session key changed");
    assert_eq!(generated(cp, "crmessenger-postgres"), Some(database.clone()), "the database's Secret changed");

    helm(cp, &["uninstall", "crmessenger", "-n", RELEASE_NS, "--wait"]);
    assert!(get(cp, RELEASE_NS, "deployment/crmessenger-operator").is_none(), "the Deployment survived uninstall");
    assert!(cp.kubectl_ok(&["get", "crd", "messengeraccounts.crmessenger.io"]).is_ok(), "uninstall deleted the CRDs");
    assert!(get(cp, &ns, "messengeraccount/via-chart").is_some(), "uninstall deleted an account");
    assert_eq!(generated(cp, "crmessenger-session-key"), Some(session_key), "uninstall deleted the session key");
    assert_eq!(generated(cp, "crmessenger-postgres"), Some(database), "uninstall deleted the database's Secret");
}

/// How many bytes `text` holds as hex digits (None if it is not hex).
fn hex_len(text: &str) -> Option<usize> {
    hex::decode(text).ok().map(|bytes| bytes.len())
}

/// The monitoring toggles, all on (with a database, so the gateway is rendered).
const MONITORING: &[&str] = &[
    "postgres.bundled.enabled=true",
    "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
    "metrics.prometheusRule.enabled=true,metrics.grafanaDashboard.enabled=true",
];

#[tokio::test]
async fn the_alert_rules_pass_promtool_and_the_dashboard_queries_parse() {
    let cp = ControlPlane::shared();
    let chart = chart();
    let set = values(MONITORING);
    let mut args = vec!["template", "mon", &chart, "-n", RELEASE_NS];
    args.extend(set.iter().map(String::as_str));
    let rendered = helm(cp, &args);
    let docs: Vec<serde_yaml::Value> = rendered
        .split("\n---")
        .filter_map(|d| serde_yaml::from_str(d).ok())
        .filter(|d: &serde_yaml::Value| !d.is_null())
        .collect();
    let of_kind = |kind: &str| docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).cloned().collect::<Vec<_>>();
    assert_eq!(of_kind("ServiceMonitor").len(), 1);
    assert_eq!(of_kind("PodMonitor").len(), 1);
    let services: Vec<String> =
        of_kind("Service").iter().filter_map(|s| s["metadata"]["name"].as_str().map(str::to_string)).collect();
    assert!(services.contains(&"mon-crmessenger-operator-metrics".to_string()), "{services:?}");
    assert!(services.contains(&"mon-crmessenger-gateway-metrics".to_string()), "{services:?}");

    // Prometheus' own tool checks the rules and runs the unit tests beside them.
    let promtool = std::process::Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        assert!(std::env::var_os("CI").is_none(), "promtool is missing on CI (tools/test.sh installs prometheus)");
        eprintln!("skipped the promtool half: promtool is not installed (Debian's prometheus package has it)");
    } else {
        let rule = &of_kind("PrometheusRule")[0];
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.yaml"), serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
        let tests = crmessenger_testkit::controlplane::repo_root().join("charts/tests/alerts.test.yaml");
        std::fs::copy(&tests, dir.path().join("alerts.test.yaml")).unwrap();
        for args in [&["check", "rules", "rules.yaml"][..], &["test", "rules", "alerts.test.yaml"][..]] {
            let out = std::process::Command::new("promtool").args(args).current_dir(dir.path()).output().unwrap();
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success(), "promtool {args:?}:\n{text}");
            assert!(text.contains("SUCCESS"), "{text}");
        }
        // Every alert of the rules has a test.
        let alerts: Vec<String> = rule["spec"]["groups"][0]["rules"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|r| r["alert"].as_str().map(str::to_string))
            .collect();
        let tested = std::fs::read_to_string(&tests).unwrap();
        assert_eq!(alerts.len(), 8, "{alerts:?}");
        for a in &alerts {
            assert!(tested.contains(&format!("alertname: {a}")), "no test for {a}");
        }
    }

    // The dashboard: a ConfigMap Grafana's sidecar picks up, whose every panel queries.
    let cm = &of_kind("ConfigMap").into_iter().find(|c| c["metadata"]["name"] == "mon-crmessenger-dashboard").unwrap();
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value = serde_json::from_str(cm["data"]["crmessenger.json"].as_str().unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 15, "{} panels", panels.len());
    for p in panels {
        let exprs: Vec<&str> = p["targets"].as_array().unwrap().iter().filter_map(|t| t["expr"].as_str()).collect();
        assert!(!exprs.is_empty() && exprs.iter().all(|e| e.contains("crmessenger_")), "{}", p["title"]);
    }
    for title in [
        "Time to first answer",
        "Conversations waiting for an answer",
        "New leads per channel (per hour)",
        "Customer messages per channel (/s)",
    ] {
        assert!(panels.iter().any(|p| p["title"] == title), "no panel {title}");
    }
}
