//! Bindings and policies against the real control plane: accounts claimed once,
//! credentials checked, reasons a person can act on, Warning Events.

use crate::common::*;
use serde_json::json;

async fn ready_reason(cp: &crmessenger_testkit::ControlPlane, ns: &str, what: &str, reason: &str) -> serde_json::Value {
    eventually(&format!("{what} Ready=False/{reason}"), 30, || async {
        let o = get(cp, ns, what).ok_or("absent")?;
        match condition(&o, "Ready") {
            Some(c) if c["status"] == "False" && c["reason"] == reason => Ok(o),
            _ => Err(o["status"].to_string()),
        }
    })
    .await
}

fn events(cp: &crmessenger_testkit::ControlPlane, ns: &str) -> String {
    cp.kubectl_ok(&["get", "events", "-n", ns, "-o", "json"]).unwrap_or_default()
}

#[tokio::test]
async fn a_second_binding_for_a_bound_account_is_refused() {
    let cp = cp();
    let ns = cp.namespace("twice").await.unwrap();
    apply(cp, &ns, &account_set("shared", "first", "pol"));
    eventually("the first binding Ready", 30, || async {
        let b = get(cp, &ns, "crmbinding/first").ok_or("absent")?;
        if condition(&b, "Ready").is_some_and(|c| c["status"] == "True") {
            Ok(())
        } else {
            Err(b["status"].to_string())
        }
    })
    .await;
    apply(
        cp,
        &ns,
        r#"
apiVersion: v1
kind: Secret
metadata: { name: amo-second }
stringData: { long_lived_token: t }
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: { name: second }
spec:
  accountSelector: { matchLabels: { team: sales } }
  policyRef: { name: pol }
  crm:
    type: amocrm
    amocrm:
      baseUrl: "https://other.amocrm.ru"
      credentialsSecret: { name: amo-second }
      contactFields: { telegramUserId: 201, telegramUsername: 202, whatsappId: 203 }
      leadSources: false
"#,
    );
    let second = ready_reason(cp, &ns, "crmbinding/second", "AccountAlreadyBound").await;
    crmessenger_testkit::capture::save("crmbinding-degraded-account-already-bound", &second);
    let message = condition(&second, "Ready").unwrap()["message"].as_str().unwrap().to_string();
    assert!(message.contains("shared (bound by first)"), "{message}");
    assert_eq!(second["status"]["boundAccountCount"], 0);
    let first = get(cp, &ns, "crmbinding/first").unwrap();
    assert_eq!(first["status"]["boundAccounts"], json!(["shared"]));
    let account = get(cp, &ns, "messengeraccount/shared").unwrap();
    assert_eq!(account["status"]["binding"]["name"], "first");
    assert!(events(cp, &ns).contains("AccountAlreadyBound"), "no Warning event");
    let policy = eventually("the policy lists both bindings", 30, || async {
        let p = get(cp, &ns, "syncpolicy/pol").ok_or("absent")?;
        if p["status"]["bindingCount"] == 2 { Ok(p) } else { Err(p["status"].to_string()) }
    })
    .await;
    assert_eq!(policy["status"]["bindings"], json!(["first", "second"]));
}

#[tokio::test]
async fn missing_or_incomplete_credentials_and_empty_bindings_say_why() {
    let cp = cp();
    let ns = cp.namespace("creds").await.unwrap();
    apply(cp, &ns, &account_set("acct", "good", "pol"));
    apply(
        cp,
        &ns,
        r#"
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: { name: nosecret }
spec:
  accountNames: [nobody]
  policyRef: { name: pol }
  crm: { type: amocrm, amocrm: { baseUrl: "https://a.amocrm.ru", credentialsSecret: { name: does-not-exist } } }
---
apiVersion: v1
kind: Secret
metadata: { name: half }
stringData: { client_id: id, redirect_uri: "https://x" }
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: { name: halfsecret }
spec:
  accountNames: [nobody]
  policyRef: { name: pol }
  crm: { type: amocrm, amocrm: { baseUrl: "https://b.amocrm.ru", credentialsSecret: { name: half } } }
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: { name: empty }
spec:
  accountNames: [nobody]
  policyRef: { name: pol }
  crm: { type: amocrm, amocrm: { baseUrl: "https://c.amocrm.ru", credentialsSecret: { name: amo-good } } }
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: { name: nopolicy }
spec:
  accountNames: [acct2]
  policyRef: { name: missing-policy }
  crm: { type: amocrm, amocrm: { baseUrl: "https://d.amocrm.ru", credentialsSecret: { name: amo-good } } }
"#,
    );
    let b = ready_reason(cp, &ns, "crmbinding/nosecret", "SecretNotFound").await;
    crmessenger_testkit::capture::save("crmbinding-degraded-credentials-missing", &b);
    assert!(condition(&b, "CredentialsValid").unwrap()["message"].as_str().unwrap().contains("does-not-exist"));
    let b = ready_reason(cp, &ns, "crmbinding/halfsecret", "SecretKeysMissing").await;
    let msg = condition(&b, "CredentialsValid").unwrap()["message"].as_str().unwrap().to_string();
    assert!(msg.contains("client_secret") && msg.contains("authorization_code or refresh_token"), "{msg}");
    ready_reason(cp, &ns, "crmbinding/empty", "NoAccounts").await;
    ready_reason(cp, &ns, "crmbinding/nopolicy", "PolicyNotFound").await;
    crmessenger_testkit::capture::save(
        "crmbinding-degraded-no-accounts",
        &ready_reason(cp, &ns, "crmbinding/empty", "NoAccounts").await,
    );
    let all = events(cp, &ns);
    for reason in ["SecretNotFound", "SecretKeysMissing", "NoAccounts", "PolicyNotFound"] {
        assert!(all.contains(reason), "no Warning event with reason {reason}");
    }
    assert!(!all.contains("canary"), "a Secret value reached an Event");
}

#[tokio::test]
async fn an_account_without_a_binding_is_not_valid_and_says_so() {
    let cp = cp();
    let ns = cp.namespace("unbound").await.unwrap();
    apply(
        cp,
        &ns,
        "apiVersion: crmessenger.io/v1alpha1\nkind: MessengerAccount\nmetadata: { name: lonely }\nspec: { provider: telegram, telegram: { apiCredentials: { secretName: s } } }\n",
    );
    let a = ready_reason(cp, &ns, "messengeraccount/lonely", "NotBound").await;
    assert_eq!(condition(&a, "ConfigValid").unwrap()["status"], "False");
    assert_eq!(a["status"]["phase"], "Degraded");
    assert!(get(cp, &ns, "statefulset/lonely-connector").is_none(), "no connector without a binding");
}

#[tokio::test]
async fn a_policy_with_an_unknown_placeholder_is_not_ready() {
    let cp = cp();
    let ns = cp.namespace("template").await.unwrap();
    apply(
        cp,
        &ns,
        "apiVersion: crmessenger.io/v1alpha1\nkind: SyncPolicy\nmetadata: { name: p }\nspec: { leads: { nameTemplate: '{channel}: {customer}' } }\n",
    );
    let p = ready_reason(cp, &ns, "syncpolicy/p", "InvalidNameTemplate").await;
    crmessenger_testkit::capture::save("syncpolicy-degraded-invalid-template", &p);
    assert!(condition(&p, "Ready").unwrap()["message"].as_str().unwrap().contains("{customer}"));
}

/// A binding that names no identity fields gets them from the operator: found by
/// their codes or created once with the binding's token, recorded in its status
/// and given to its connectors. A token that may not create fields (not an
/// administrator's) leaves the condition False, naming the fields to create.
#[tokio::test]
async fn the_operator_creates_the_identity_fields_or_names_them() {
    use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
    let cp = cp();
    let binding = |name: &str, fake: &FakeAmo| {
        let token = fake.issue_token_pair().access_token;
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{ name: amo-{name} }}
stringData: {{ long_lived_token: {token} }}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {{ name: {name} }}
spec:
  accountNames: [acct-{name}]
  policyRef: {{ name: pol }}
  crm: {{ type: amocrm, amocrm: {{ baseUrl: "{}", credentialsSecret: {{ name: amo-{name} }} }} }}
"#,
            fake.base_url()
        )
    };
    let fields_ready = |ns: String, name: &'static str, status: &'static str| async move {
        eventually(&format!("{name} ContactFieldsReady={status}"), 30, || async {
            let b = get(cp, &ns, &format!("crmbinding/{name}")).ok_or("absent")?;
            match condition(&b, "ContactFieldsReady") {
                Some(c) if c["status"] == status => Ok(b),
                _ => Err(b["status"].to_string()),
            }
        })
        .await
    };

    let admin = FakeAmo::start(FakeConfig { identity_fields: false, ..FakeConfig::default() }).await.unwrap();
    let ns = cp.namespace("fields").await.unwrap();
    apply(cp, &ns, &binding("made", &admin));
    let b = fields_ready(ns.clone(), "made", "True").await;
    assert_eq!(
        b["status"]["contactFields"],
        json!({ "telegramUserId": 301, "telegramUsername": 302, "whatsappId": 303 })
    );
    let created: Vec<String> = admin.snapshot_contact_fields().into_iter().map(|(_, code)| code).collect();
    for code in ["CRMESSENGER_TELEGRAM_ID", "CRMESSENGER_TELEGRAM_USERNAME", "CRMESSENGER_WHATSAPP_ID"] {
        assert_eq!(created.iter().filter(|c| *c == code).count(), 1, "{code} created once: {created:?}");
    }

    let manager = FakeAmo::start(FakeConfig { identity_fields: false, token_is_admin: false, ..FakeConfig::default() })
        .await
        .unwrap();
    apply(cp, &ns, &binding("refused", &manager));
    let b = fields_ready(ns.clone(), "refused", "False").await;
    let c = condition(&b, "ContactFieldsReady").unwrap();
    assert_eq!(c["reason"], "AdminTokenRequired");
    let message = c["message"].as_str().unwrap();
    assert!(
        message.contains("CRMESSENGER_TELEGRAM_ID") && message.contains("spec.crm.amocrm.contactFields"),
        "{message}"
    );
    assert!(b["status"].get("contactFields").is_none(), "nothing recorded: {b}");
    assert!(manager.snapshot_contact_fields().iter().all(|(_, code)| !code.starts_with("CRMESSENGER")));
}

/// Each bound account becomes a lead source in the CRM, recorded in the binding's
/// status; where the CRM refuses (here: the integration has no widget with the
/// lead_sources location) the condition says so and the account's connector is
/// configured to tag its leads with the account's name instead.
#[tokio::test]
async fn each_account_is_a_lead_source_or_its_leads_are_tagged() {
    use crmessenger_fake_amocrm::{FakeAmo, FakeConfig};
    let cp = cp();
    let set = |name: &str, fake: &FakeAmo| {
        let token = fake.issue_token_pair().access_token;
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{ name: amo-{name} }}
stringData: {{ long_lived_token: {token} }}
---
apiVersion: v1
kind: Secret
metadata: {{ name: tg-api }}
stringData: {{ api_id: "12345", api_hash: canary-api-hash-0123456789 }}
---
apiVersion: crmessenger.io/v1alpha1
kind: MessengerAccount
metadata: {{ name: acct-{name} }}
spec: {{ provider: telegram, telegram: {{ apiCredentials: {{ secretName: tg-api }} }} }}
---
apiVersion: crmessenger.io/v1alpha1
kind: SyncPolicy
metadata: {{ name: pol }}
spec: {{}}
---
apiVersion: crmessenger.io/v1alpha1
kind: CrmBinding
metadata: {{ name: {name} }}
spec:
  accountNames: [acct-{name}]
  policyRef: {{ name: pol }}
  crm:
    type: amocrm
    amocrm:
      baseUrl: "{}"
      credentialsSecret: {{ name: amo-{name} }}
      contactFields: {{ telegramUserId: 201, telegramUsername: 202, whatsappId: 203 }}
"#,
            fake.base_url()
        )
    };
    let sources_ready = |ns: String, name: &'static str, status: &'static str| async move {
        eventually(&format!("{name} LeadSourcesReady={status}"), 30, || async {
            let b = get(cp, &ns, &format!("crmbinding/{name}")).ok_or("absent")?;
            match condition(&b, "LeadSourcesReady") {
                Some(c) if c["status"] == status && c["reason"] != "Waiting" => Ok(b),
                _ => Err(b["status"].to_string()),
            }
        })
        .await
    };

    let widget = FakeAmo::start(FakeConfig { sources_widget: true, ..FakeConfig::default() }).await.unwrap();
    let ns = cp.namespace("sources").await.unwrap();
    apply(cp, &ns, &set("src", &widget));
    let b = sources_ready(ns.clone(), "src", "True").await;
    assert_eq!(b["status"]["leadSources"], json!(["acct-src"]));
    let made = widget.snapshot().sources;
    assert_eq!(made.len(), 1, "{made:?}");
    assert_eq!(made[0].external_id, crmessenger_api::config::lead_source_id(&ns, "acct-src"));
    assert_eq!(made[0].name, "acct-src");

    let plain = FakeAmo::start(FakeConfig::default()).await.unwrap();
    let ns2 = cp.namespace("sources-refused").await.unwrap();
    apply(cp, &ns2, &set("tagged", &plain));
    let b = sources_ready(ns2.clone(), "tagged", "False").await;
    let c = condition(&b, "LeadSourcesReady").unwrap();
    assert_eq!(c["reason"], "SourcesUnavailable");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains("lead_sources") && message.contains("tagged"), "{message}");
    assert!(plain.snapshot().sources.is_empty());
}
