//! Builds the desired children of a MessengerAccount from its rendered config. Pure:
//! no IO, so every field is tested from fixtures.

use crate::labels::{self, CONFIG_HASH, RUNTIME_HASH};
use crate::settings::{CONNECTOR_COMMAND, Settings};
use crmessenger_api::MessengerAccount;
use crmessenger_api::config::{CONFIG_KEY, ConnectorConfig, config_map_name};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, LocalObjectReference, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use serde_json::{Value, json};

/// The sidecar's port: the login page, reached through `kubectl port-forward` only
/// (the sidecar refuses anything that does not arrive over loopback).
pub const SIDECAR_PORT: u16 = 8080;
/// The connector's health port (probes; status and login for the sidecar on loopback).
pub const HEALTH_PORT: u16 = 9090;
/// The connector's metrics port: the only port the NetworkPolicy admits (scraping).
pub const METRICS_PORT: u16 = 9091;
/// Where the connector container gets its ServiceAccount token (kube-rs reads the
/// in-cluster config from here); no other container gets one.
pub const TOKEN_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// How long a projected ServiceAccount token lives (the kubelet's default).
const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The Lease a connector renews as its heartbeat.
pub const LEASE_SECONDS: i32 = 30;
/// Non-root user the containers run as.
const UID: i64 = 65532;

/// Everything an account needs in the cluster.
#[derive(Debug, Clone)]
pub struct Children {
    /// The connector pod's owner (one replica, Parallel).
    pub stateful_set: StatefulSet,
    /// ClusterIP for the sidecar and the metrics port.
    pub service: Service,
    /// Admits only the metrics port.
    pub network_policy: NetworkPolicy,
    /// The connector's heartbeat.
    pub lease: Lease,
    /// The connector's identity.
    pub service_account: ServiceAccount,
    /// What the connector may do, by name.
    pub role: Role,
    /// Grants the Role to the ServiceAccount.
    pub role_binding: RoleBinding,
    /// The rendered config.
    pub config_map: ConfigMap,
    /// The database URL and session key for the pod's environment, when configured.
    pub runtime_secret: Option<Secret>,
    /// The runtime Secret's name (deleted when there is nothing to put in it).
    pub runtime_secret_name: String,
}

/// What a connector pod gets beyond its config (see [`crate::settings::ConnectorRuntime`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeValues {
    /// PostgreSQL URL.
    pub database_url: Option<String>,
    /// Why the configured database Secret gave no URL (a sentence for the status).
    pub database_missing: Option<String>,
    /// Session key.
    pub session_key: Option<String>,
    /// The gateway's public URL.
    pub gateway_url: Option<String>,
    /// The Chats API channel secret.
    pub chats_secret: Option<String>,
    /// The Chats API channel id.
    pub chats_channel_id: Option<String>,
    /// The Chats API channel bot's amojo id.
    pub chats_bot_id: Option<String>,
    /// The Chats API host.
    pub chats_base_url: Option<String>,
    /// Sandboxes instead of the messenger services.
    pub sandbox: crate::settings::Sandbox,
}

/// The key of the runtime Secret holding the database URL.
pub const DATABASE_URL_KEY: &str = "database_url";
/// The key of the runtime Secret holding the session key.
pub const SESSION_KEY_KEY: &str = "session_key";
/// The key of the runtime Secret holding the Chats API channel secret.
pub const CHATS_SECRET_KEY: &str = "chats_secret";

/// The name of the Secret with an account's runtime values.
pub fn runtime_secret_name(account: &str) -> String {
    format!("{}-runtime", child_name(account))
}

/// The name shared by an account's children.
pub fn child_name(account: &str) -> String {
    config_map_name(account)
}

/// The Secret a person may create with a phone code or a 2FA password.
pub fn login_secret_name(account: &str) -> String {
    format!("{account}-login")
}

/// Builds the children of `account` running `config`.
pub fn build(
    account: &MessengerAccount,
    config: &ConnectorConfig,
    settings: &Settings,
    runtime: &RuntimeValues,
) -> Result<Children, String> {
    let name = account.metadata.name.clone().ok_or("account without a name")?;
    let namespace = account.metadata.namespace.clone().ok_or("account without a namespace")?;
    let owner = owner_reference(account)?;
    let child = child_name(&name);
    let meta = |kind_name: &str| ObjectMeta {
        name: Some(kind_name.to_string()),
        namespace: Some(namespace.clone()),
        labels: Some(labels::account_labels(&name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let config_json = serde_json::to_string_pretty(config).map_err(|e| e.to_string())?;

    let config_map = ConfigMap {
        metadata: meta(&child),
        data: Some([(CONFIG_KEY.to_string(), config_json)].into()),
        ..ConfigMap::default()
    };
    let mut stateful_set: StatefulSet =
        from_json(stateful_set_spec(account, config, settings, runtime, &child, &name))?;
    let runtime_data: std::collections::BTreeMap<String, String> = [
        (DATABASE_URL_KEY, runtime.database_url.clone()),
        (SESSION_KEY_KEY, runtime.session_key.clone()),
        (CHATS_SECRET_KEY, runtime.chats_secret.clone()),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect();
    let runtime_secret = (!runtime_data.is_empty()).then(|| Secret {
        metadata: meta(&runtime_secret_name(&name)),
        type_: Some("Opaque".into()),
        string_data: Some(runtime_data),
        ..Secret::default()
    });
    stateful_set.metadata = meta(&child);
    let mut service: Service = from_json(json!({
        "spec": {
            "type": "ClusterIP",
            "selector": labels::pod_selector(&name),
            "ports": [
                { "name": "http", "port": SIDECAR_PORT, "targetPort": "http", "protocol": "TCP" },
                { "name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP" },
            ],
        }
    }))?;
    service.metadata = meta(&child);
    // Only scraping comes in over the network: people reach the sidecar through
    // `kubectl port-forward`, which arrives on loopback and is not subject to it.
    let mut network_policy: NetworkPolicy = from_json(json!({
        "spec": {
            "podSelector": { "matchLabels": labels::pod_selector(&name) },
            "policyTypes": ["Ingress"],
            "ingress": [{ "ports": [{ "port": METRICS_PORT, "protocol": "TCP" }] }],
        }
    }))?;
    network_policy.metadata = meta(&child);
    let mut lease: Lease = from_json(json!({ "spec": { "leaseDurationSeconds": LEASE_SECONDS } }))?;
    lease.metadata = meta(&child);
    // The pull secrets also on the ServiceAccount, so any pod running as it can pull.
    let service_account = ServiceAccount {
        metadata: meta(&child),
        image_pull_secrets: pull_secrets(settings),
        ..ServiceAccount::default()
    };
    let mut role: Role = from_json(json!({ "rules": role_rules(config, &name, &child) }))?;
    role.metadata = meta(&child);
    let mut role_binding: RoleBinding = from_json(json!({
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": child },
        "subjects": [{ "kind": "ServiceAccount", "name": child, "namespace": namespace }],
    }))?;
    role_binding.metadata = meta(&child);
    Ok(Children {
        stateful_set,
        service,
        network_policy,
        lease,
        service_account,
        role,
        role_binding,
        config_map,
        runtime_secret,
        runtime_secret_name: runtime_secret_name(&name),
    })
}

fn pull_secrets(settings: &Settings) -> Option<Vec<LocalObjectReference>> {
    let refs: Vec<_> =
        settings.image_pull_secrets.iter().map(|name| LocalObjectReference { name: name.clone() }).collect();
    (!refs.is_empty()).then_some(refs)
}

/// `own` followed by the installation's extra variables (`Settings::extra_env`)
/// whose names `own` does not use: the operator's own settings win, and a list-map
/// keyed by name must not repeat a name. Without `secrets`, a variable read from a
/// Secret is left out (the sidecar faces people and gets no Secret).
fn with_extra_env(own: Vec<Value>, settings: &Settings, secrets: bool) -> Value {
    let mut env = own;
    for extra in &settings.extra_env {
        let from_secret = extra.value_from.as_ref().is_some_and(|v| v.secret_key_ref.is_some());
        if (secrets || !from_secret) && !env.iter().any(|e| e["name"] == extra.name.as_str()) {
            env.push(serde_json::to_value(extra).unwrap_or_default());
        }
    }
    Value::Array(env)
}

fn from_json<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, String> {
    serde_json::from_value(v).map_err(|e| e.to_string())
}

fn owner_reference(account: &MessengerAccount) -> Result<OwnerReference, String> {
    Ok(OwnerReference {
        api_version: MessengerAccount::api_version(&()).to_string(),
        kind: MessengerAccount::kind(&()).to_string(),
        name: account.metadata.name.clone().ok_or("account without a name")?,
        uid: account.metadata.uid.clone().ok_or("account without a uid")?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// Least privilege, by name: own status, own Lease, own ConfigMap, the Secrets the
/// config names, and the login Secret (which it deletes after use).
fn role_rules(config: &ConnectorConfig, account: &str, child: &str) -> Value {
    let mut secrets: Vec<String> = config.secret_refs().into_iter().map(|r| r.name).collect();
    secrets.dedup();
    json!([
        { "apiGroups": ["crmessenger.io"], "resources": ["messengeraccounts"], "resourceNames": [account], "verbs": ["get", "list", "watch"] },
        { "apiGroups": ["crmessenger.io"], "resources": ["messengeraccounts/status"], "resourceNames": [account], "verbs": ["get", "patch"] },
        { "apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [child], "verbs": ["get", "update"] },
        { "apiGroups": [""], "resources": ["configmaps"], "resourceNames": [child], "verbs": ["get", "list", "watch"] },
        { "apiGroups": [""], "resources": ["secrets"], "resourceNames": secrets, "verbs": ["get", "list", "watch"] },
        { "apiGroups": [""], "resources": ["secrets"], "resourceNames": [login_secret_name(account)], "verbs": ["get", "list", "watch", "delete"] },
    ])
}

fn stateful_set_spec(
    account: &MessengerAccount,
    config: &ConnectorConfig,
    settings: &Settings,
    runtime: &RuntimeValues,
    child: &str,
    name: &str,
) -> Value {
    let overrides = account.spec.connector.clone().unwrap_or_default();
    let image = overrides.image.clone().unwrap_or_else(|| settings.connector_image.clone());
    let restricted = json!({
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "runAsNonRoot": true,
        "capabilities": { "drop": ["ALL"] },
        "seccompProfile": { "type": "RuntimeDefault" },
    });
    let mut env = vec![
        json!({ "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } }),
        json!({ "name": "POD_NAMESPACE", "valueFrom": { "fieldRef": { "fieldPath": "metadata.namespace" } } }),
        json!({ "name": "CRMESSENGER_ACCOUNT", "value": name }),
        json!({ "name": "CRMESSENGER_CONFIG_MAP", "value": child }),
        json!({ "name": "CRMESSENGER_LEASE", "value": child }),
        json!({ "name": "CRMESSENGER_METRICS_ADDR", "value": format!("0.0.0.0:{METRICS_PORT}") }),
    ];
    // Secret values reach the pod by reference only; their hash in the template
    // rolls the pod when one changes.
    let secret_name = runtime_secret_name(name);
    for (var, key, present) in [
        ("CRMESSENGER_DATABASE_URL", DATABASE_URL_KEY, runtime.database_url.is_some()),
        ("CRMESSENGER_SESSION_KEY", SESSION_KEY_KEY, runtime.session_key.is_some()),
        ("CRMESSENGER_CHATS_SECRET", CHATS_SECRET_KEY, runtime.chats_secret.is_some()),
    ] {
        if present {
            env.push(json!({ "name": var, "valueFrom": { "secretKeyRef": { "name": secret_name, "key": key } } }));
        }
    }
    // Each sandbox stands in for one service: only the accounts of that service use it.
    let provider = account.spec.provider;
    let sandbox_scripted =
        runtime.sandbox.scripted_messenger.clone().filter(|_| provider == crmessenger_api::account::Provider::Telegram);
    let cloud_api = account
        .spec
        .whatsapp
        .as_ref()
        .is_some_and(|w| w.login_method == crmessenger_api::account::WhatsAppLoginMethod::CloudApi);
    let sandbox_graph = runtime
        .sandbox
        .whatsapp_graph_url
        .clone()
        .filter(|_| provider == crmessenger_api::account::Provider::Whatsapp && cloud_api);
    for (var, value) in [
        ("CRMESSENGER_GATEWAY_URL", &runtime.gateway_url),
        ("CRMESSENGER_CHATS_CHANNEL_ID", &runtime.chats_channel_id),
        ("CRMESSENGER_CHATS_BOT_ID", &runtime.chats_bot_id),
        ("CRMESSENGER_CHATS_BASE_URL", &runtime.chats_base_url),
        ("CRMESSENGER_SCRIPTED_MESSENGER", &sandbox_scripted),
        ("CRMESSENGER_WHATSAPP_GRAPH_URL", &sandbox_graph),
    ] {
        if let Some(v) = value {
            env.push(json!({ "name": var, "value": v }));
        }
    }
    let runtime_hash = {
        use sha2::Digest;
        let text = format!("{:?}", (&runtime.database_url, &runtime.session_key, &runtime.chats_secret));
        hex::encode(&sha2::Sha256::digest(text.as_bytes())[..8])
    };
    let resources = overrides
        .resources
        .map(|r| serde_json::to_value(r).unwrap_or_default())
        .unwrap_or_else(|| json!({ "requests": { "cpu": "20m", "memory": "32Mi" }, "limits": { "memory": "256Mi" } }));
    let probe = |path: &str, port: &str| json!({ "httpGet": { "path": path, "port": port }, "periodSeconds": 10, "failureThreshold": 3 });
    // The token is mounted into the connector only: the sidecar faces people and
    // needs no API access, so it gets neither the token nor any Secret.
    let token_volume = json!({
        "name": "kube-api-access",
        "projected": {
            "defaultMode": 0o644,
            "sources": [
                { "serviceAccountToken": { "expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token" } },
                { "configMap": { "name": "kube-root-ca.crt", "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [
                    { "path": "namespace", "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } },
                ] } },
            ],
        },
    });
    let sidecar_env = vec![
        json!({ "name": "CRMESSENGER_ADMIN_URL", "value": format!("http://127.0.0.1:{HEALTH_PORT}") }),
        json!({ "name": "CRMESSENGER_SIDECAR_ADDR", "value": format!("0.0.0.0:{SIDECAR_PORT}") }),
    ];
    let mut pod_spec = json!({
        "serviceAccountName": child,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": true, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [
            {
                "name": "connector",
                "image": image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": [CONNECTOR_COMMAND],
                "args": ["run"],
                "env": with_extra_env(env, settings, true),
                "ports": [
                    { "name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP" },
                    { "name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP" },
                ],
                "livenessProbe": probe("/livez", "health"),
                "readinessProbe": probe("/readyz", "health"),
                "resources": resources,
                "securityContext": restricted,
                "volumeMounts": [
                    { "name": "tmp", "mountPath": "/tmp" },
                    { "name": "kube-api-access", "mountPath": TOKEN_MOUNT_PATH, "readOnly": true },
                ],
            },
            {
                "name": "sidecar",
                "image": image,
                "imagePullPolicy": settings.image_pull_policy,
                "command": [CONNECTOR_COMMAND],
                "args": ["sidecar"],
                "env": with_extra_env(sidecar_env, settings, false),
                "ports": [{ "name": "http", "containerPort": SIDECAR_PORT, "protocol": "TCP" }],
                "livenessProbe": probe("/healthz", "http"),
                "readinessProbe": probe("/healthz", "http"),
                "resources": { "requests": { "cpu": "5m", "memory": "16Mi" }, "limits": { "memory": "64Mi" } },
                "securityContext": restricted,
            },
        ],
        "volumes": [{ "name": "tmp", "emptyDir": { "sizeLimit": "64Mi" } }, token_volume],
    });
    for (key, value) in [
        ("nodeSelector", overrides.node_selector.map(|v| json!(v))),
        ("tolerations", overrides.tolerations.map(|v| json!(v))),
        ("affinity", overrides.affinity.map(|v| json!(v))),
        ("priorityClassName", overrides.priority_class_name.map(|v| json!(v))),
        ("imagePullSecrets", pull_secrets(settings).map(|v| json!(v))),
    ] {
        if let Some(v) = value {
            pod_spec[key] = v;
        }
    }
    let mut pod_labels = labels::account_labels(name);
    pod_labels.extend(labels::pod_selector(name));
    json!({
        "spec": {
            "replicas": if account.spec.suspend { 0 } else { 1 },
            "serviceName": child,
            // Parallel from the start: the field is immutable, and the ordered default
            // lets a pod that never becomes Ready block every later rollout.
            "podManagementPolicy": "Parallel",
            "updateStrategy": { "type": "RollingUpdate" },
            "selector": { "matchLabels": labels::pod_selector(name) },
            "template": {
                "metadata": {
                    "labels": pod_labels,
                    "annotations": { CONFIG_HASH: config.hash(), RUNTIME_HASH: runtime_hash },
                },
                "spec": pod_spec,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crmessenger_api::config::{RuntimeSettings, render};
    use crmessenger_api::{CrmBinding, SyncPolicy};

    /// The account, binding and policy of an example manifest, as the API server
    /// would return them (namespace and uid set).
    fn fixture(file: &str) -> (MessengerAccount, CrmBinding, SyncPolicy) {
        let path = crmessenger_testkit::controlplane::repo_root().join("examples").join(file);
        let text = std::fs::read_to_string(path).unwrap();
        let mut m = crmessenger_api::manifests::parse(&text, "shop").unwrap();
        m.accounts[0].metadata.uid = Some("0000-1111".into());
        (m.accounts.remove(0), m.bindings.remove(0), m.policies.remove(0))
    }

    fn children(file: &str, tweak: impl FnOnce(&mut MessengerAccount)) -> Children {
        let (mut a, b, p) = fixture(file);
        tweak(&mut a);
        let config = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
        build(&a, &config, &Settings::default(), &RuntimeValues::default()).unwrap()
    }

    #[test]
    fn runtime_values_reach_the_pod_only_through_its_secret() {
        let (a, b, p) = fixture("telegram-qr.yaml");
        let config = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
        let runtime = RuntimeValues {
            database_url: Some("postgres://u:canary-pw@db/x".into()),
            session_key: Some("11".repeat(32)),
            gateway_url: Some("https://hooks.example.com".into()),
            chats_secret: Some("canary-chats-secret".into()),
            ..RuntimeValues::default()
        };
        let c = build(&a, &config, &Settings::default(), &runtime).unwrap();
        let secret = c.runtime_secret.as_ref().expect("a runtime Secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("support-telegram-connector-runtime"));
        let data = secret.string_data.as_ref().unwrap();
        assert_eq!(data[DATABASE_URL_KEY], "postgres://u:canary-pw@db/x");
        let sts = serde_json::to_value(&c.stateful_set).unwrap();
        assert!(!sts.to_string().contains("canary-pw"), "the URL is referenced, never inlined");
        assert!(!sts.to_string().contains("canary-chats-secret"), "the channel secret is referenced, never inlined");
        assert_eq!(data[CHATS_SECRET_KEY], "canary-chats-secret");
        let env = &sts["spec"]["template"]["spec"]["containers"][0]["env"];
        let db = env.as_array().unwrap().iter().find(|e| e["name"] == "CRMESSENGER_DATABASE_URL").unwrap();
        assert_eq!(db["valueFrom"]["secretKeyRef"]["name"], "support-telegram-connector-runtime");
        assert!(env.as_array().unwrap().iter().any(|e| e["name"] == "CRMESSENGER_GATEWAY_URL"));
        // The sidecar faces people: no Secret, no database URL, only the admin URL.
        let sidecar = &sts["spec"]["template"]["spec"]["containers"][1];
        assert_eq!(sidecar["name"], "sidecar");
        assert!(!sidecar.to_string().contains("secretKeyRef"), "{sidecar}");
        assert!(!sidecar.to_string().contains("CRMESSENGER_DATABASE_URL"), "{sidecar}");
        assert!(sidecar["env"].as_array().unwrap().iter().any(|e| e["name"] == "CRMESSENGER_ADMIN_URL"));
        // A new database URL rolls the pod; no values, no Secret.
        let hash = |c: &Children| {
            serde_json::to_value(&c.stateful_set).unwrap()["spec"]["template"]["metadata"]["annotations"][RUNTIME_HASH]
                .clone()
        };
        let moved = RuntimeValues { database_url: Some("postgres://u:pw@db2/x".into()), ..runtime.clone() };
        assert_ne!(hash(&c), hash(&build(&a, &config, &Settings::default(), &moved).unwrap()));
        assert!(build(&a, &config, &Settings::default(), &RuntimeValues::default()).unwrap().runtime_secret.is_none());
    }

    #[test]
    fn the_stateful_set_runs_one_restricted_pod_with_the_config_hash() {
        let c = children("telegram-bot.yaml", |_| {});
        let spec = c.stateful_set.spec.unwrap();
        assert_eq!(spec.replicas, Some(1));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        let template = spec.template;
        let hash = template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH].clone();
        assert_eq!(hash.len(), 16);
        let pod = template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("shop-bot-connector"));
        let sc = pod.security_context.unwrap();
        assert_eq!((sc.run_as_non_root, sc.seccomp_profile.unwrap().type_.as_str()), (Some(true), "RuntimeDefault"));
        for c in &pod.containers {
            let sc = c.security_context.clone().unwrap();
            assert_eq!((sc.allow_privilege_escalation, sc.read_only_root_filesystem), (Some(false), Some(true)));
            assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        }
        let owner = &c.config_map.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("MessengerAccount", Some(true)));
    }

    #[test]
    fn only_metrics_are_admitted_and_only_the_connector_gets_a_token() {
        let c = children("telegram-qr.yaml", |_| {});
        let np = serde_json::to_value(&c.network_policy).unwrap();
        assert_eq!(np["spec"]["ingress"], json!([{ "ports": [{ "port": METRICS_PORT, "protocol": "TCP" }] }]));
        let svc = serde_json::to_value(&c.service).unwrap();
        let ports: Vec<_> = svc["spec"]["ports"].as_array().unwrap().iter().map(|p| p["name"].clone()).collect();
        assert_eq!(ports, [json!("http"), json!("metrics")]);

        let pod = serde_json::to_value(&c.stateful_set).unwrap()["spec"]["template"]["spec"].clone();
        assert_eq!(pod["automountServiceAccountToken"], false);
        let (connector, sidecar) = (&pod["containers"][0], &pod["containers"][1]);
        assert!(
            connector["ports"]
                .as_array()
                .unwrap()
                .contains(&json!({ "name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP" }))
        );
        let metrics_env = connector["env"].as_array().unwrap().iter().find(|e| e["name"] == "CRMESSENGER_METRICS_ADDR");
        assert_eq!(metrics_env.unwrap()["value"], format!("0.0.0.0:{METRICS_PORT}"));
        // The token where kube-rs looks for it, read-only, in the connector only.
        let mount = connector["volumeMounts"].as_array().unwrap().iter().find(|m| m["mountPath"] == TOKEN_MOUNT_PATH);
        let mount = mount.expect("the connector mounts its token");
        assert_eq!(mount["readOnly"], true);
        assert!(sidecar.get("volumeMounts").is_none(), "{sidecar}");
        let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == mount["name"]).unwrap();
        let sources = volume["projected"]["sources"].as_array().unwrap();
        assert_eq!(sources[0]["serviceAccountToken"], json!({ "expirationSeconds": 3607, "path": "token" }));
        assert_eq!(sources[1]["configMap"]["name"], "kube-root-ca.crt");
        assert_eq!(sources[1]["configMap"]["items"], json!([{ "key": "ca.crt", "path": "ca.crt" }]));
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["path"], "namespace");
        assert_eq!(sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"], "metadata.namespace");
        // Without a token, the sidecar also has no Secret of any kind.
        assert!(!sidecar.to_string().contains("secretKeyRef"), "{sidecar}");
    }

    #[test]
    fn suspend_scales_to_zero_and_overrides_apply() {
        let c = children("telegram-qr.yaml", |a| {
            a.spec.suspend = true;
            a.spec.connector = Some(crmessenger_api::account::ConnectorOverrides {
                image: Some("registry.example/crm:1".into()),
                priority_class_name: Some("high".into()),
                ..Default::default()
            });
        });
        let spec = c.stateful_set.spec.unwrap();
        assert_eq!(spec.replicas, Some(0));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.containers[0].image.as_deref(), Some("registry.example/crm:1"));
        assert_eq!(pod.priority_class_name.as_deref(), Some("high"));
    }

    #[test]
    fn image_command_pull_secrets_and_extra_env_reach_both_containers() {
        let (a, b, p) = fixture("telegram-qr.yaml");
        let config = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
        let extra: Vec<k8s_openapi::api::core::v1::EnvVar> = serde_json::from_value(json!([
            { "name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel.example:4318" },
            { "name": "OTEL_TOKEN", "valueFrom": { "secretKeyRef": { "name": "otel", "key": "token" } } },
            { "name": "CRMESSENGER_ACCOUNT", "value": "not-this-one" },
        ]))
        .unwrap();
        let settings = Settings {
            connector_image: "registry.example/crm@sha256:0123".into(),
            image_pull_policy: "Always".into(),
            image_pull_secrets: vec!["regcred".into()],
            extra_env: extra,
            ..Settings::default()
        };
        let c = build(&a, &config, &settings, &RuntimeValues::default()).unwrap();
        let pod = serde_json::to_value(&c.stateful_set).unwrap()["spec"]["template"]["spec"].clone();
        assert_eq!(pod["imagePullSecrets"], json!([{ "name": "regcred" }]));
        assert_eq!(
            serde_json::to_value(&c.service_account).unwrap()["imagePullSecrets"],
            json!([{ "name": "regcred" }])
        );
        let env_of = |i: usize| pod["containers"][i]["env"].as_array().unwrap().clone();
        let value_of = |env: &[Value], name: &str| env.iter().find(|e| e["name"] == name).cloned();
        for (i, args) in [(0, "run"), (1, "sidecar")] {
            let container = &pod["containers"][i];
            assert_eq!(container["command"], json!([CONNECTOR_COMMAND]));
            assert_eq!(container["args"], json!([args]));
            assert_eq!(container["image"], "registry.example/crm@sha256:0123");
            assert_eq!(container["imagePullPolicy"], "Always");
            let env = env_of(i);
            assert_eq!(value_of(&env, "OTEL_EXPORTER_OTLP_ENDPOINT").unwrap()["value"], "http://otel.example:4318");
        }
        // The operator's own variables win; the sidecar gets no Secret, not even this way.
        let connector_env = env_of(0);
        assert_eq!(connector_env.iter().filter(|e| e["name"] == "CRMESSENGER_ACCOUNT").count(), 1);
        assert_eq!(value_of(&connector_env, "CRMESSENGER_ACCOUNT").unwrap()["value"], "support-telegram");
        assert!(value_of(&connector_env, "OTEL_TOKEN").is_some());
        assert!(value_of(&env_of(1), "OTEL_TOKEN").is_none());
        // Without pull secrets the fields stay unset.
        let plain = children("telegram-qr.yaml", |_| {});
        assert!(plain.service_account.image_pull_secrets.is_none());
        assert!(plain.stateful_set.spec.unwrap().template.spec.unwrap().image_pull_secrets.is_none());
    }

    #[test]
    fn each_sandbox_reaches_only_the_accounts_of_the_service_it_stands_in_for() {
        let runtime = RuntimeValues {
            sandbox: crate::settings::Sandbox {
                scripted_messenger: Some("http://telegram.sandbox.svc:1".into()),
                whatsapp_graph_url: Some("http://whatsapp.sandbox.svc:2/v21.0".into()),
            },
            ..RuntimeValues::default()
        };
        let env = |file: &str| {
            let (a, b, p) = fixture(file);
            let config = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
            let c = build(&a, &config, &Settings::default(), &runtime).unwrap();
            let pod = serde_json::to_value(&c.stateful_set).unwrap()["spec"]["template"]["spec"].clone();
            let names = |i: usize| -> Vec<String> {
                pod["containers"][i]["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["name"].as_str().unwrap().into())
                    .collect()
            };
            (names(0), names(1))
        };
        let (telegram, sidecar) = env("telegram-qr.yaml");
        assert!(telegram.contains(&"CRMESSENGER_SCRIPTED_MESSENGER".to_string()), "{telegram:?}");
        assert!(!telegram.contains(&"CRMESSENGER_WHATSAPP_GRAPH_URL".to_string()), "{telegram:?}");
        assert!(!sidecar.iter().any(|n| n == "CRMESSENGER_SCRIPTED_MESSENGER"), "{sidecar:?}");
        let (whatsapp, _) = env("whatsapp-cloud.yaml");
        assert!(whatsapp.contains(&"CRMESSENGER_WHATSAPP_GRAPH_URL".to_string()), "{whatsapp:?}");
        assert!(!whatsapp.contains(&"CRMESSENGER_SCRIPTED_MESSENGER".to_string()), "{whatsapp:?}");
        // Without sandbox values, neither.
        let (a, b, p) = fixture("telegram-qr.yaml");
        let config = render(&a, &b, &p, RuntimeSettings::default()).unwrap();
        let plain = serde_json::to_string(
            &build(&a, &config, &Settings::default(), &RuntimeValues::default()).unwrap().stateful_set,
        )
        .unwrap();
        assert!(!plain.contains("CRMESSENGER_SCRIPTED_MESSENGER") && !plain.contains("CRMESSENGER_WHATSAPP_GRAPH_URL"));
    }

    #[test]
    fn the_role_names_only_what_the_connector_may_touch() {
        let c = children("whatsapp-cloud.yaml", |_| {});
        let rules = c.role.rules.unwrap();
        let secrets: Vec<_> = rules.iter().filter(|r| r.resources == Some(vec!["secrets".into()])).collect();
        assert_eq!(
            secrets[0].resource_names,
            Some(vec!["support-crm-token".to_string(), "whatsapp-cloud".to_string()])
        );
        assert_eq!(secrets[1].resource_names, Some(vec!["support-whatsapp-login".to_string()]));
        assert!(rules.iter().all(|r| r.resource_names.as_ref().is_some_and(|n| !n.is_empty())));
        let data = c.config_map.data.unwrap();
        assert!(!data[CONFIG_KEY].contains("replace-with"), "a Secret value in the ConfigMap");
    }
}
