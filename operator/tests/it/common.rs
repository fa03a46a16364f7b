//! Shared by the operator's end-to-end tests: the control plane with the CRDs, the
//! operator binary running against it, and small helpers.

#![allow(dead_code)]

use crmessenger_testkit::ControlPlane;
pub use crmessenger_testkit::checks::{condition, eventually, get, http_get};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Heartbeat timeout the test operator runs with.
pub const HEARTBEAT_TIMEOUT_SECS: u64 = 6;
/// Cleanup timeout the test operator runs with.
pub const CLEANUP_TIMEOUT_SECS: u64 = 8;

/// The control plane with CRDs installed and one operator process running.
pub fn cp() -> &'static ControlPlane {
    static OPERATOR: OnceLock<Result<(String, u32), String>> = OnceLock::new();
    let cp = ControlPlane::shared();
    cp.install_crds().expect("install the CRDs");
    OPERATOR
        .get_or_init(|| start_operator(cp, "operator", &[]).map_err(|e| format!("{e:#}")))
        .as_ref()
        .expect("start the operator");
    cp
}

/// The database Secret [`start_operator`] gives the operator: a URL on a loopback
/// port nothing listens on (kwok runs no connector that would use it).
pub const TEST_DATABASE_SECRET: &str = "crmessenger-test-database";

/// Starts an operator process with the test timeouts and a database Secret in its
/// namespace (else every account is `DatabaseNotConfigured`), as the admin; returns
/// its admin address and pid.
pub fn start_operator(cp: &ControlPlane, name: &str, extra: &[&str]) -> anyhow::Result<(String, u32)> {
    let namespace = extra
        .iter()
        .position(|a| *a == "--lease-namespace")
        .and_then(|i| extra.get(i + 1))
        .copied()
        .unwrap_or("default");
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{ name: {TEST_DATABASE_SECRET} }}\nstringData: {{ dsn: \"postgres://crmessenger@127.0.0.1:9/unused\" }}\n"
    );
    let out = cp.kubectl_apply_output(&secret, &["-n", namespace])?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut args = vec!["--database-secret", TEST_DATABASE_SECRET];
    args.extend_from_slice(extra);
    start_operator_as(cp, name, &args, None, &[])
}

/// Starts an operator process with the test timeouts and exactly `extra` besides
/// (plus a connector image unless `extra` names one), authenticated by
/// `kubeconfig` instead of the admin when given.
pub fn start_operator_as(
    cp: &ControlPlane,
    name: &str,
    extra: &[&str],
    kubeconfig: Option<&std::path::Path>,
    env: &[(&str, &str)],
) -> anyhow::Result<(String, u32)> {
    let port = crmessenger_testkit::controlplane::free_port()?;
    let admin = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmessenger-operator"));
    cmd.args(["run", "--admin-addr", &admin]);
    if !extra.iter().any(|a| a.starts_with("--connector-image")) {
        cmd.args(["--connector-image", "example.invalid/crmessenger:test"]);
    }
    cmd.args(["--heartbeat-timeout", &HEARTBEAT_TIMEOUT_SECS.to_string()])
        .args(["--cleanup-timeout", &CLEANUP_TIMEOUT_SECS.to_string()])
        .env("RUST_LOG", "info,kube=warn");
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    cmd.envs(env.iter().copied());
    if !extra.iter().any(|a| a.starts_with("--leader-election")) {
        cmd.arg("--leader-election=false");
    }
    cmd.args(extra);
    let pid = cp.spawn_logged(name, cmd)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(&admin, "/readyz").map(|(s, _)| s) != Some(200) {
        if Instant::now() > deadline {
            anyhow::bail!("the operator never became ready:\n{}", cp.log_tail(name, 40));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((admin, pid))
}

/// `kubectl apply -n ns` of `yaml`, which must succeed.
pub fn apply(cp: &ControlPlane, ns: &str, yaml: &str) {
    let out = cp.kubectl_apply_output(yaml, &["-n", ns]).expect("run kubectl");
    assert!(out.status.success(), "kubectl apply failed: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
}

/// The manifests of one account with its binding, policy and Secrets.
pub fn account_set(account: &str, binding: &str, policy: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{ name: tg-api }}
stringData: {{ api_id: "12345", api_hash: canary-api-hash-0123456789 }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: amo-{binding} }}
stringData: {{ long_lived_token: canary-long-lived-token }}
---
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {{ name: {account}, labels: {{ team: sales }} }}
spec:
  provider: telegram
  telegram: {{ apiCredentials: {{ secretName: tg-api }} }}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {{ name: {policy} }}
spec: {{ escalation: {{ enabled: true, after: 10m }} }}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {{ name: {binding} }}
spec:
  accountNames: [{account}]
  policyRef: {{ name: {policy} }}
  crm:
    type: amocrm
    amocrm:
      baseUrl: https://example.amocrm.ru
      credentialsSecret: {{ name: amo-{binding} }}
      responsibleUserIds: [1001, 1002]
      # Named here: the host is not a CRM this machine can reach, so the operator
      # must not look the fields up there.
      contactFields: {{ telegramUserId: 201, telegramUsername: 202, whatsappId: 203 }}
      leadSources: false
"#
    )
}

/// Renews the connector Lease of `account` as its connector would.
pub fn renew_lease(cp: &ControlPlane, ns: &str, account: &str) {
    let now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    let patch = serde_json::json!({ "spec": { "holderIdentity": format!("{account}-connector-0"), "renewTime": now } });
    merge_patch(cp, ns, &format!("lease/{account}-connector"), &patch.to_string());
}

/// `kubectl patch KIND/NAME -n ns --type=merge -p patch`, which must succeed.
pub fn merge_patch(cp: &ControlPlane, ns: &str, object: &str, patch: &str) {
    cp.kubectl_ok(&["patch", object, "-n", ns, "--type=merge", "-p", patch]).unwrap();
}

/// Writes `status` into the account's status as the connector does: server-side
/// apply with the connector's field manager.
pub fn connector_reports(cp: &ControlPlane, ns: &str, account: &str, status: serde_json::Value) {
    let doc = serde_json::json!({
        "apiVersion": "crmessenger.io/v1alpha1", "kind": "MessengerAccount", "metadata": { "name": account },
        "status": status,
    });
    let out = cp
        .kubectl_apply_output(
            &doc.to_string(),
            &["--server-side", "--field-manager=crmessenger-connector", "--subresource=status", "-n", ns],
        )
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
