//! `kubectl crmessenger doctor`: reads what it can from the API server, then
//! checks it — the CRDs, the operator, the database, the gateway and each
//! binding's webhook registration — and says what to fix. Reading ([`gather`])
//! and judging ([`checks`]) are apart, so every check is tested on facts where it
//! fails.

use crate::sidecar::pod_of;
use crmessenger_api::binding::ReplyDetection;
use crmessenger_api::common::conditions;
use crmessenger_api::{CrmBinding, MessengerAccount};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

/// The CRDs the operator serves, and the version it speaks.
pub const CRDS: [&str; 3] =
    ["messengeraccounts.crmessenger.io", "crmbindings.crmessenger.io", "syncpolicies.crmessenger.io"];
/// The API version the operator and this plugin speak.
pub const VERSION: &str = "v1alpha1";

/// A CRD as found.
#[derive(Debug, Clone, Default)]
pub struct CrdFact {
    /// Versions it serves.
    pub served: Vec<String>,
    /// Whether the API server has established it.
    pub established: bool,
}

/// A Deployment of the chart, as found.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFact {
    /// `namespace/name`.
    pub name: String,
    /// Replicas wanted.
    pub desired: i32,
    /// Replicas available.
    pub available: i32,
}

/// A connector pod, as found.
#[derive(Debug, Clone, Default)]
pub struct PodFact {
    /// `namespace/name` of its account.
    pub account: String,
    /// Its name (absent when there is no such pod).
    pub pod: Option<String>,
    /// Its phase.
    pub phase: String,
    /// Containers that are not ready.
    pub unready: Vec<String>,
}

/// Everything the checks look at. A `Err` is a read that failed (say, RBAC).
#[derive(Debug, Clone)]
pub struct Facts {
    /// Each of [`CRDS`]: `None` when absent.
    pub crds: Vec<(String, Option<CrdFact>)>,
    /// The operator's Deployments.
    pub operators: Result<Vec<DeploymentFact>, String>,
    /// The gateway's Deployments.
    pub gateways: Result<Vec<DeploymentFact>, String>,
    /// The accounts in scope.
    pub accounts: Vec<MessengerAccount>,
    /// The bindings in scope.
    pub bindings: Vec<CrmBinding>,
    /// The connector pods of the accounts that are not suspended.
    pub pods: Vec<PodFact>,
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but worth a look.
    Warn,
    /// Broken.
    Fail,
}

/// One check's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// How it came out.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &str, verdict: Verdict, detail: String, fix: Option<String>) -> Check {
    Check { name: name.to_string(), verdict, detail, fix }
}

fn deployments_check(name: &str, found: &Result<Vec<DeploymentFact>, String>, missing_fix: &str) -> Check {
    match found {
        Err(e) => check(name, Verdict::Warn, format!("could not list Deployments: {e}"), None),
        Ok(list) if list.is_empty() => {
            check(name, Verdict::Fail, "no Deployment found".into(), Some(missing_fix.into()))
        }
        Ok(list) => match list.iter().find(|d| d.available > 0) {
            Some(d) => check(name, Verdict::Ok, format!("{} ({}/{} available)", d.name, d.available, d.desired), None),
            None => {
                let d = &list[0];
                let (ns, n) = d.name.split_once('/').unwrap_or(("", &d.name));
                check(
                    name,
                    Verdict::Fail,
                    format!("{}: 0 of {} replicas available", d.name, d.desired),
                    Some(format!("kubectl describe deployment {n} -n {ns}; kubectl logs deployment/{n} -n {ns}")),
                )
            }
        },
    }
}

fn needs_webhooks(b: &CrmBinding) -> bool {
    let crm = b.spec.crm.amocrm.as_ref();
    crm.is_some_and(|a| a.chats_channel || a.replies.detection == ReplyDetection::Webhook)
}

/// Judges the facts.
pub fn checks(f: &Facts) -> Vec<Check> {
    let mut out = Vec::new();
    // The CRDs.
    let mut crd_problems = Vec::new();
    for (name, crd) in &f.crds {
        match crd {
            None => crd_problems.push(format!("{name} is not installed")),
            Some(c) if !c.established => crd_problems.push(format!("{name} is not established yet")),
            Some(c) if !c.served.iter().any(|v| v == VERSION) => {
                crd_problems.push(format!("{name} does not serve {VERSION} (serves {})", c.served.join(", ")))
            }
            Some(_) => {}
        }
    }
    out.push(if crd_problems.is_empty() {
        check("CRDs", Verdict::Ok, format!("the three kinds serve {VERSION}"), None)
    } else {
        check(
            "CRDs",
            Verdict::Fail,
            crd_problems.join("; "),
            Some("install the chart with crds.install=true (the default), or kubectl apply -f crds/".into()),
        )
    });
    // The operator.
    out.push(deployments_check(
        "operator",
        &f.operators,
        "install the chart: helm install crmessenger charts/crmessenger -n crmessenger --create-namespace",
    ));
    let stale: Vec<String> = f
        .accounts
        .iter()
        .filter(|a| a.status.as_ref().and_then(|s| s.observed_generation) != a.metadata.generation)
        .map(|a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()))
        .collect();
    if !stale.is_empty() {
        out.push(check(
            "operator has caught up",
            Verdict::Warn,
            format!("not yet reconciled at their current generation: {}", stale.join(", ")),
            Some("wait a few seconds; if it stays, read the operator's log".into()),
        ));
    }
    // The database: the operator must know one, and every connector's readiness
    // (its /readyz asks the database) must hold.
    let unconfigured: Vec<String> = f
        .accounts
        .iter()
        .filter(|a| {
            let list = a.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            conditions::find(list, conditions::CONFIG_VALID).is_some_and(|c| c.reason == "DatabaseNotConfigured")
        })
        .map(|a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()))
        .collect();
    let unready: Vec<&PodFact> = f.pods.iter().filter(|p| p.pod.is_none() || !p.unready.is_empty()).collect();
    out.push(if !unconfigured.is_empty() {
        check(
            "database",
            Verdict::Fail,
            format!("no database is configured, so no connector starts: {}", unconfigured.join(", ")),
            Some(
                "set postgres.dsnSecret.name (a Secret with a DSN) or postgres.bundled.enabled=true in the chart"
                    .into(),
            ),
        )
    } else if !unready.is_empty() {
        let list: Vec<String> = unready
            .iter()
            .map(|p| match &p.pod {
                None => format!("{}: no connector pod", p.account),
                Some(pod) => format!("{}: pod {pod} is {} with {} not ready", p.account, p.phase, p.unready.join(", ")),
            })
            .collect();
        let first = unready[0];
        let (ns, _) = first.account.split_once('/').unwrap_or(("", ""));
        check(
            "database",
            Verdict::Fail,
            format!("connectors are not ready (their readiness asks the database): {}", list.join("; ")),
            Some(match &first.pod {
                Some(pod) => format!("kubectl logs {pod} -n {ns} -c connector; kubectl describe pod {pod} -n {ns}"),
                None => format!("kubectl get statefulsets -n {ns}; read the operator's log"),
            }),
        )
    } else {
        check("database", Verdict::Ok, format!("{} connector(s) ready", f.pods.len()), None)
    });
    // The gateway: needed by WhatsApp numbers and by webhook or Chats API bindings.
    let needing: Vec<String> = f
        .bindings
        .iter()
        .filter(|b| needs_webhooks(b))
        .map(|b| format!("binding {}", b.name_any()))
        .chain(
            f.accounts
                .iter()
                .filter(|a| a.spec.whatsapp.is_some())
                .map(|a| format!("WhatsApp account {}", a.name_any())),
        )
        .collect();
    if needing.is_empty() {
        out.push(check("gateway", Verdict::Ok, "nothing here needs it (no webhooks, no WhatsApp)".into(), None));
    } else {
        let mut c = deployments_check(
            "gateway",
            &f.gateways,
            "configure a database in the chart (the gateway is rendered with one) and set gateway.publicUrl",
        );
        c.detail = format!("{} (needed by {})", c.detail, needing.join(", "));
        out.push(c);
    }
    // Each binding that takes webhooks: its accounts registered their routes.
    for b in f.bindings.iter().filter(|b| needs_webhooks(b)) {
        let ns = b.namespace().unwrap_or_default();
        let mine: Vec<&MessengerAccount> = f
            .accounts
            .iter()
            .filter(|a| {
                a.namespace().as_deref() == Some(ns.as_str())
                    && a.status.as_ref().and_then(|s| s.binding.as_ref()).is_some_and(|r| r.name == b.name_any())
            })
            .collect();
        let failing: Vec<String> = mine
            .iter()
            .filter_map(|a| {
                let list = a.status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
                let c = conditions::find(list, conditions::MESSENGER_CONNECTED)?;
                (c.status != "True" && c.message.contains("registering webhook routes"))
                    .then(|| format!("{}: {}", a.name_any(), c.message))
            })
            .collect();
        let name = format!("webhooks of binding {ns}/{}", b.name_any());
        out.push(if !failing.is_empty() {
            check(
                &name,
                Verdict::Fail,
                failing.join("; "),
                Some("set gateway.publicUrl to an address amoCRM reaches (HTTPS), check the plan allows webhooks, and read the connector's log".into()),
            )
        } else if mine.is_empty() {
            check(&name, Verdict::Warn, "no account is bound yet, so nothing registered".into(), None)
        } else {
            check(&name, Verdict::Ok, format!("{} account(s) registered their routes", mine.len()), None)
        });
    }
    out
}

/// Reads the facts for `namespace` (every namespace when `None`).
pub async fn gather(client: &Client, namespace: Option<&str>) -> anyhow::Result<Facts> {
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut crds = Vec::new();
    for name in CRDS {
        let found = crd_api.get_opt(name).await?.map(|c| CrdFact {
            served: c.spec.versions.iter().filter(|v| v.served).map(|v| v.name.clone()).collect(),
            established: c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"),
        });
        crds.push((name.to_string(), found));
    }
    let deployments = |component: &'static str| {
        let api: Api<Deployment> = Api::all(client.clone());
        async move {
            let lp = ListParams::default()
                .labels(&format!("app.kubernetes.io/name=crmessenger,app.kubernetes.io/component={component}"));
            api.list(&lp).await.map_err(|e| e.to_string()).map(|l| {
                l.items
                    .iter()
                    .map(|d| DeploymentFact {
                        name: format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any()),
                        desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                        available: d.status.as_ref().and_then(|s| s.available_replicas).unwrap_or(0),
                    })
                    .collect()
            })
        }
    };
    let operators = deployments("operator").await;
    let gateways = deployments("gateway").await;
    let installed = crds.iter().all(|(_, c)| c.is_some());
    let (accounts, bindings) = if installed {
        let (a, b): (Api<MessengerAccount>, Api<CrmBinding>) = match namespace {
            Some(ns) => (Api::namespaced(client.clone(), ns), Api::namespaced(client.clone(), ns)),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        };
        (a.list(&ListParams::default()).await?.items, b.list(&ListParams::default()).await?.items)
    } else {
        (Vec::new(), Vec::new())
    };
    let mut pods = Vec::new();
    for a in accounts.iter().filter(|a| !a.spec.suspend) {
        let ns = a.namespace().unwrap_or_default();
        let name = pod_of(a);
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let account = format!("{ns}/{}", a.name_any());
        pods.push(match api.get_opt(&name).await? {
            None => PodFact { account, ..PodFact::default() },
            Some(p) => {
                let status = p.status.unwrap_or_default();
                PodFact {
                    account,
                    pod: Some(name),
                    phase: status.phase.unwrap_or_default(),
                    unready: status
                        .container_statuses
                        .unwrap_or_default()
                        .iter()
                        .filter(|c| !c.ready)
                        .map(|c| c.name.clone())
                        .collect(),
                }
            }
        });
    }
    Ok(Facts { crds, operators, gateways, accounts, bindings, pods })
}

/// The checks as text, one per line, with the fix under each that is not OK.
pub fn render(list: &[Check]) -> String {
    let mut out = String::new();
    for c in list {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("[{mark}] {}: {}\n", c.name, c.detail));
        if let Some(fix) = c.fix.as_ref().filter(|_| c.verdict != Verdict::Ok) {
            out.push_str(&format!("       fix: {fix}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn account(name: &str, whatsapp: bool, conditions: serde_json::Value) -> MessengerAccount {
        let spec = if whatsapp {
            json!({ "provider": "whatsapp", "whatsapp": {} })
        } else {
            json!({ "provider": "telegram", "telegram": { "apiCredentials": { "secretName": "tg" } } })
        };
        serde_json::from_value(json!({
            "apiVersion": "crmessenger.io/v1alpha1", "kind": "MessengerAccount",
            "metadata": { "name": name, "namespace": "shop", "generation": 1 },
            "spec": spec,
            "status": { "observedGeneration": 1, "binding": { "name": "main" }, "conditions": conditions },
        }))
        .unwrap()
    }

    fn binding(detection: &str) -> CrmBinding {
        serde_json::from_value(json!({
            "apiVersion": "crmessenger.io/v1alpha1", "kind": "CrmBinding",
            "metadata": { "name": "main", "namespace": "shop" },
            "spec": { "accountNames": ["tg"], "policyRef": { "name": "p" }, "crm": { "type": "amocrm", "amocrm": {
                "baseUrl": "https://shop.amocrm.ru", "credentialsSecret": { "name": "amo" }, "responsibleUserIds": [1],
                "replies": { "detection": detection } } } },
        }))
        .unwrap()
    }

    fn cond(type_: &str, ok: bool, reason: &str, message: &str) -> serde_json::Value {
        json!({ "type": type_, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z" })
    }

    fn deployment(name: &str, available: i32) -> DeploymentFact {
        DeploymentFact { name: format!("crmessenger/{name}"), desired: 2, available }
    }

    /// Everything in order: one Telegram account, polling, its pod ready.
    fn healthy() -> Facts {
        Facts {
            crds: CRDS
                .iter()
                .map(|n| (n.to_string(), Some(CrdFact { served: vec![VERSION.into()], established: true })))
                .collect(),
            operators: Ok(vec![deployment("crmessenger-operator", 2)]),
            gateways: Ok(vec![deployment("crmessenger-gateway", 2)]),
            accounts: vec![account("tg", false, json!([cond("ConfigValid", true, "Valid", "")]))],
            bindings: vec![binding("poll")],
            pods: vec![PodFact {
                account: "shop/tg".into(),
                pod: Some("tg-connector-0".into()),
                phase: "Running".into(),
                unready: vec![],
            }],
        }
    }

    fn verdict_of(f: &Facts, name: &str) -> (Verdict, String, Option<String>) {
        let list = checks(f);
        let c = list.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {list:?}"));
        (c.verdict, c.detail.clone(), c.fix.clone())
    }

    #[test]
    fn a_healthy_installation_passes_every_check() {
        let list = checks(&healthy());
        assert!(list.iter().all(|c| c.verdict == Verdict::Ok), "{list:?}");
        assert!(!render(&list).contains("FAIL"));
    }

    #[test]
    fn a_missing_or_old_crd_fails() {
        let mut f = healthy();
        f.crds[1].1 = None;
        let (v, detail, fix) = verdict_of(&f, "CRDs");
        assert_eq!(v, Verdict::Fail);
        assert!(detail.contains("crmbindings.crmessenger.io is not installed"), "{detail}");
        assert!(fix.unwrap().contains("crds.install"));
        let mut f = healthy();
        f.crds[0].1 = Some(CrdFact { served: vec!["v1alpha0".into()], established: true });
        assert!(verdict_of(&f, "CRDs").1.contains("does not serve v1alpha1"));
    }

    #[test]
    fn no_operator_or_none_available_fails() {
        let mut f = healthy();
        f.operators = Ok(vec![]);
        let (v, _, fix) = verdict_of(&f, "operator");
        assert_eq!(v, Verdict::Fail);
        assert!(fix.unwrap().contains("helm install"));
        f.operators = Ok(vec![deployment("crmessenger-operator", 0)]);
        let (v, detail, fix) = verdict_of(&f, "operator");
        assert_eq!(v, Verdict::Fail);
        assert!(detail.contains("0 of 2 replicas available"), "{detail}");
        assert!(fix.unwrap().contains("kubectl logs deployment/crmessenger-operator -n crmessenger"));
    }

    #[test]
    fn no_database_or_an_unready_connector_fails() {
        let mut f = healthy();
        f.accounts =
            vec![account("tg", false, json!([cond("ConfigValid", false, "DatabaseNotConfigured", "no database")]))];
        let (v, detail, fix) = verdict_of(&f, "database");
        assert_eq!(v, Verdict::Fail);
        assert!(detail.contains("shop/tg"), "{detail}");
        assert!(fix.unwrap().contains("postgres.dsnSecret.name"));
        let mut f = healthy();
        f.pods[0].unready = vec!["connector".into()];
        let (v, detail, fix) = verdict_of(&f, "database");
        assert_eq!(v, Verdict::Fail);
        assert!(detail.contains("pod tg-connector-0 is Running with connector not ready"), "{detail}");
        assert!(fix.unwrap().contains("kubectl logs tg-connector-0 -n shop -c connector"));
        f.pods[0].pod = None;
        assert!(verdict_of(&f, "database").1.contains("shop/tg: no connector pod"));
    }

    #[test]
    fn a_whatsapp_number_without_a_gateway_fails() {
        let mut f = healthy();
        f.accounts.push(account("wa", true, json!([])));
        f.pods.push(PodFact { account: "shop/wa".into(), pod: Some("wa-connector-0".into()), ..PodFact::default() });
        f.pods[1].phase = "Running".into();
        f.gateways = Ok(vec![]);
        let (v, detail, _) = verdict_of(&f, "gateway");
        assert_eq!(v, Verdict::Fail);
        assert!(detail.contains("needed by WhatsApp account wa"), "{detail}");
        // Without anything that needs it, no gateway is fine.
        let mut f = healthy();
        f.gateways = Ok(vec![]);
        assert_eq!(verdict_of(&f, "gateway").0, Verdict::Ok);
    }

    #[test]
    fn a_webhook_binding_whose_routes_are_not_registered_fails() {
        let mut f = healthy();
        f.bindings = vec![binding("webhook")];
        let name = "webhooks of binding shop/main";
        assert_eq!(verdict_of(&f, name).0, Verdict::Ok);
        f.accounts = vec![account(
            "tg",
            false,
            json!([cond(
                "MessengerConnected",
                false,
                "WaitingForLock",
                "registering webhook routes: the binding's replies.detection is webhook, but no gateway URL is configured"
            )]),
        )];
        let (v, detail, fix) = verdict_of(&f, name);
        assert_eq!(v, Verdict::Fail);
        assert!(detail.contains("no gateway URL is configured"), "{detail}");
        assert!(fix.unwrap().contains("gateway.publicUrl"));
    }

    #[test]
    fn an_account_the_operator_has_not_caught_up_with_is_a_warning() {
        let mut f = healthy();
        f.accounts[0].metadata.generation = Some(2);
        let (v, detail, _) = verdict_of(&f, "operator has caught up");
        assert_eq!(v, Verdict::Warn);
        assert!(detail.contains("shop/tg"));
    }
}
