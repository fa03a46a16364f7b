//! The API against a real kube-apiserver: CRDs install and become Established, the
//! examples apply, invalid objects are rejected at admission with a message naming
//! the field, defaults are applied, `kubectl explain` and `kubectl get` show what
//! the types say, and pods land on the kwok node.

use crate::common::{condition, cp, eventually, get};
use crmessenger_testkit::controlplane::repo_root;
use serde_json::{Value, json};

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "crmessenger.io/v1alpha1",
        "kind": kind,
        "metadata": { "name": name },
        "spec": spec,
    })
}

fn tg() -> Value {
    json!({ "apiCredentials": { "secretName": "tg" } })
}

fn wa() -> Value {
    json!({ "cloudApi": { "phoneNumberId": "1098765", "accessToken": { "name": "wa", "key": "token" } } })
}

fn with(mut base: Value, patch: Value) -> Value {
    merge(&mut base, patch);
    base
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(&k);
                } else {
                    merge(b.entry(k).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p,
    }
}

fn amocrm() -> Value {
    json!({ "baseUrl": "https://example.amocrm.ru", "credentialsSecret": { "name": "amo" } })
}

fn binding(spec: Value) -> Value {
    let base = json!({
        "accountNames": ["a"],
        "policyRef": { "name": "p" },
        "crm": { "type": "amocrm", "amocrm": amocrm() },
    });
    object("CrmBinding", "b", with(base, spec))
}

fn amo(patch: Value) -> Value {
    binding(json!({ "crm": { "amocrm": patch } }))
}

fn policy(spec: Value) -> Value {
    object("SyncPolicy", "p", spec)
}

fn account(spec: Value) -> Value {
    object("MessengerAccount", "a", spec)
}

/// One object the API server must refuse: `before` (if any) is created first, so
/// transition rules see an old object; `object` is then applied and must fail with
/// an error naming `field` and containing `message`.
struct Case {
    what: &'static str,
    before: Option<Value>,
    object: Value,
    field: &'static str,
    message: &'static str,
}

fn case(what: &'static str, object: Value, field: &'static str, message: &'static str) -> Case {
    Case { what, before: None, object, field, message }
}

fn change(what: &'static str, before: Value, object: Value, field: &'static str, message: &'static str) -> Case {
    Case { what, before: Some(before), object, field, message }
}

fn invalid_objects() -> Vec<Case> {
    let tg_acct = |t: Value| account(json!({ "provider": "telegram", "telegram": with(tg(), t) }));
    let wa_acct = |w: Value| account(json!({ "provider": "whatsapp", "whatsapp": with(wa(), w) }));
    vec![
        // MessengerAccount
        case(
            "unknown provider",
            account(json!({ "provider": "signal" })),
            "spec.provider",
            "Unsupported value: \"signal\"",
        ),
        case(
            "telegram without settings",
            account(json!({ "provider": "telegram" })),
            "spec.telegram",
            "telegram settings are required when provider is telegram",
        ),
        case(
            "whatsapp account with telegram settings",
            account(json!({ "provider": "whatsapp", "whatsapp": wa(), "telegram": tg() })),
            "spec.telegram",
            "telegram settings are only allowed when provider is telegram",
        ),
        case(
            "whatsapp without settings",
            account(json!({ "provider": "whatsapp" })),
            "spec.whatsapp",
            "whatsapp settings are required when provider is whatsapp",
        ),
        case(
            "telegram account with whatsapp settings",
            account(json!({ "provider": "telegram", "telegram": tg(), "whatsapp": wa() })),
            "spec.whatsapp",
            "whatsapp settings are only allowed when provider is whatsapp",
        ),
        change(
            "provider changed",
            tg_acct(json!({})),
            account(json!({ "provider": "whatsapp", "whatsapp": wa(), "telegram": null })),
            "spec.provider",
            "provider is immutable",
        ),
        case(
            "bot without token",
            tg_acct(json!({ "loginMethod": "botToken" })),
            "spec.telegram.botToken",
            "botToken is required when loginMethod is botToken",
        ),
        case(
            "token without bot",
            tg_acct(json!({ "botToken": { "name": "bot", "key": "token" } })),
            "spec.telegram.botToken",
            "botToken is only allowed when loginMethod is botToken",
        ),
        case(
            "phone code without phone",
            tg_acct(json!({ "loginMethod": "phoneCode" })),
            "spec.telegram.phoneNumber",
            "phoneNumber is required when loginMethod is phoneCode",
        ),
        case(
            "bot with 2FA password",
            tg_acct(
                json!({ "loginMethod": "botToken", "botToken": { "name": "bot", "key": "token" }, "twoFactorPassword": { "name": "pw", "key": "password" } }),
            ),
            "spec.telegram.twoFactorPassword",
            "a bot has no two-factor password",
        ),
        change(
            "user account turned into a bot",
            tg_acct(json!({})),
            tg_acct(json!({ "loginMethod": "botToken", "botToken": { "name": "bot", "key": "token" } })),
            "spec.telegram.loginMethod",
            "cannot switch between a bot and a user account",
        ),
        change(
            "phone number changed",
            tg_acct(json!({ "phoneNumber": "+79991234567" })),
            tg_acct(json!({ "phoneNumber": "+79997654321" })),
            "spec.telegram.phoneNumber",
            "phoneNumber cannot be changed or removed once set",
        ),
        case(
            "phone number not E.164",
            tg_acct(json!({ "phoneNumber": "89991234567" })),
            "spec.telegram.phoneNumber",
            "must be an E.164 phone number",
        ),
        case(
            "API credentials Secret name",
            tg_acct(json!({ "apiCredentials": { "secretName": "Telegram_API" } })),
            "spec.telegram.apiCredentials.secretName",
            "must be the name of a Secret in this namespace",
        ),
        case(
            "api_id key",
            tg_acct(json!({ "apiCredentials": { "apiIdKey": "api id" } })),
            "spec.telegram.apiCredentials.apiIdKey",
            "must be a Secret data key",
        ),
        case(
            "api_hash key",
            tg_acct(json!({ "apiCredentials": { "apiHashKey": "hash/key" } })),
            "spec.telegram.apiCredentials.apiHashKey",
            "must be a Secret data key",
        ),
        case(
            "cloud API without settings",
            account(json!({ "provider": "whatsapp", "whatsapp": { "loginMethod": "cloudApi" } })),
            "spec.whatsapp.cloudApi",
            "cloudApi settings are required when loginMethod is cloudApi",
        ),
        case(
            "web pairing with cloud API settings",
            wa_acct(json!({ "loginMethod": "qr" })),
            "spec.whatsapp.cloudApi",
            "cloudApi settings are only allowed when loginMethod is cloudApi",
        ),
        change(
            "cloud API number turned into web pairing",
            wa_acct(json!({})),
            account(json!({ "provider": "whatsapp", "whatsapp": { "loginMethod": "qr" } })),
            "spec.whatsapp.loginMethod",
            "loginMethod is immutable",
        ),
        case(
            "phone number instead of its id",
            wa_acct(json!({ "cloudApi": { "phoneNumberId": "+79991234567" } })),
            "spec.whatsapp.cloudApi.phoneNumberId",
            "must be the numeric phone number id",
        ),
        change(
            "phone number id changed",
            wa_acct(json!({})),
            wa_acct(json!({ "cloudApi": { "phoneNumberId": "2000000" } })),
            "spec.whatsapp.cloudApi.phoneNumberId",
            "phoneNumberId is immutable",
        ),
        case(
            "business account id",
            wa_acct(json!({ "cloudApi": { "businessAccountId": "waba-1" } })),
            "spec.whatsapp.cloudApi.businessAccountId",
            "must be the numeric WhatsApp Business Account id",
        ),
        case(
            "access token Secret name",
            wa_acct(json!({ "cloudApi": { "accessToken": { "name": "-wa" } } })),
            "spec.whatsapp.cloudApi.accessToken.name",
            "must be the name of a Secret in this namespace",
        ),
        case(
            "access token key",
            wa_acct(json!({ "cloudApi": { "accessToken": { "key": "access token" } } })),
            "spec.whatsapp.cloudApi.accessToken.key",
            "must be a Secret data key",
        ),
        case(
            "overlong phone number id",
            wa_acct(json!({ "cloudApi": { "phoneNumberId": "1".repeat(40) } })),
            "spec.whatsapp.cloudApi.phoneNumberId",
            "Too long",
        ),
        case(
            "bot token Secret name",
            tg_acct(json!({ "loginMethod": "botToken", "botToken": { "name": "Bot_Token", "key": "token" } })),
            "spec.telegram.botToken.name",
            "must be the name of a Secret in this namespace",
        ),
        case(
            "bot token Secret key",
            tg_acct(json!({ "loginMethod": "botToken", "botToken": { "name": "bot", "key": "the token" } })),
            "spec.telegram.botToken.key",
            "must be a Secret data key",
        ),
        case(
            "two-factor password Secret name",
            tg_acct(json!({ "twoFactorPassword": { "name": "-pw", "key": "password" } })),
            "spec.telegram.twoFactorPassword.name",
            "must be the name of a Secret in this namespace",
        ),
        case(
            "two-factor password Secret key",
            tg_acct(json!({ "twoFactorPassword": { "name": "pw", "key": "pass word" } })),
            "spec.telegram.twoFactorPassword.key",
            "must be a Secret data key",
        ),
        case(
            "account name too long for its pod",
            {
                let mut a = account(json!({ "provider": "telegram", "telegram": tg() }));
                a["metadata"]["name"] = json!("a".repeat(52));
                a
            },
            // A root rule has no field path, so its message names the field.
            "<nil>",
            "metadata.name must be at most 51 characters",
        ),
        // CrmBinding
        case(
            "accounts by name and by selector",
            binding(json!({ "accountSelector": { "matchLabels": { "team": "sales" } } })),
            "spec",
            "exactly one of the two",
        ),
        case("no accounts at all", binding(json!({ "accountNames": null })), "spec", "exactly one of the two"),
        case(
            "account name",
            binding(json!({ "accountNames": ["Sales_Bot"] })),
            "spec.accountNames",
            "every entry must be a MessengerAccount name",
        ),
        case(
            "empty selector",
            binding(json!({ "accountNames": null, "accountSelector": {} })),
            "spec.accountSelector",
            "an empty selector would select every account",
        ),
        case(
            "duplicate account names",
            binding(json!({ "accountNames": ["a", "a"] })),
            "spec.accountNames[1]",
            "Duplicate value",
        ),
        case(
            "policy name",
            binding(json!({ "policyRef": { "name": "Sales Policy" } })),
            "spec.policyRef.name",
            "must be an object name",
        ),
        case(
            "amocrm type without settings",
            binding(json!({ "crm": { "amocrm": null } })),
            "spec.crm.amocrm",
            "amocrm settings are required when type is amocrm",
        ),
        case(
            "stage without pipeline",
            amo(json!({ "statusId": 5 })),
            "spec.crm.amocrm.statusId",
            "statusId needs pipelineId",
        ),
        case(
            "base URL without scheme",
            amo(json!({ "baseUrl": "example.amocrm.ru" })),
            "spec.crm.amocrm.baseUrl",
            "must be an absolute URL",
        ),
        case(
            "plain http to a remote host",
            amo(json!({ "baseUrl": "http://example.amocrm.ru" })),
            "spec.crm.amocrm.baseUrl",
            "must use https",
        ),
        case(
            "shared www host",
            amo(json!({ "baseUrl": "https://www.amocrm.ru" })),
            "spec.crm.amocrm.baseUrl",
            "not the shared www host",
        ),
        case(
            "base URL with a path",
            amo(json!({ "baseUrl": "https://example.amocrm.ru/api/v4" })),
            "spec.crm.amocrm.baseUrl",
            "must be the bare host",
        ),
        change(
            "base URL changed",
            amo(json!({})),
            amo(json!({ "baseUrl": "https://other.amocrm.ru" })),
            "spec.crm.amocrm.baseUrl",
            "baseUrl is immutable",
        ),
        case(
            "responsible user id",
            amo(json!({ "responsibleUserIds": [5, -1] })),
            "spec.crm.amocrm.responsibleUserIds",
            "user ids are positive integers",
        ),
        case(
            "credentials Secret name",
            amo(json!({ "credentialsSecret": { "name": "amo.crm." } })),
            "spec.crm.amocrm.credentialsSecret.name",
            "must be the name of a Secret in this namespace",
        ),
        case(
            "CA Secret key",
            amo(json!({ "caSecret": { "name": "ca", "key": "ca crt" } })),
            "spec.crm.amocrm.caSecret.key",
            "must be a Secret data key",
        ),
        case(
            "CA Secret name",
            amo(json!({ "caSecret": { "name": "Our_CA", "key": "ca.crt" } })),
            "spec.crm.amocrm.caSecret.name",
            "must be the name of a Secret in this namespace",
        ),
        case(
            "blank note prefix",
            amo(json!({ "replies": { "notePrefix": "  " } })),
            "spec.crm.amocrm.replies.notePrefix",
            "must contain a visible character",
        ),
        case(
            "poll interval too short",
            amo(json!({ "replies": { "pollInterval": "1s" } })),
            "spec.crm.amocrm.replies.pollInterval",
            "must be a duration between 2s and 10m",
        ),
        case(
            "poll interval not a duration",
            amo(json!({ "replies": { "pollInterval": "often" } })),
            "spec.crm.amocrm.replies.pollInterval",
            "must be a duration between 2s and 10m",
        ),
        // SyncPolicy
        case(
            "no chat admitted",
            policy(json!({ "chats": { "private": false } })),
            "spec.chats",
            "the policy admits no chat at all",
        ),
        case(
            "chat both allowed and denied",
            policy(json!({ "chats": { "allow": ["@ivan"], "deny": ["@ivan"] } })),
            "spec.chats.deny",
            "a chat cannot be in both allow and deny",
        ),
        case(
            "fixed assignment without user",
            policy(json!({ "assignment": { "strategy": "fixed" } })),
            "spec.assignment.userId",
            "userId is required when strategy is fixed",
        ),
        case(
            "round robin with a user",
            policy(json!({ "assignment": { "userId": 7 } })),
            "spec.assignment.userId",
            "userId is only used when strategy is fixed",
        ),
        case(
            "task deadline before escalation",
            policy(json!({ "escalation": { "after": "2h", "deadline": "30m" } })),
            "spec.escalation.deadline",
            "deadline must not be shorter than after",
        ),
        case(
            "escalation too soon",
            policy(json!({ "escalation": { "after": "30s" } })),
            "spec.escalation.after",
            "must be a duration between 1m and 168h",
        ),
        case(
            "task deadline too far",
            policy(json!({ "escalation": { "deadline": "1000h" } })),
            "spec.escalation.deadline",
            "must be a duration between 5m and 720h",
        ),
        case(
            "per-chat rate above total",
            policy(json!({ "rateLimits": { "messagesPerMinute": 10, "perChatPerMinute": 20 } })),
            "spec.rateLimits.perChatPerMinute",
            "perChatPerMinute cannot exceed messagesPerMinute",
        ),
        case(
            "send rate out of range",
            policy(json!({ "rateLimits": { "messagesPerMinute": 5000 } })),
            "spec.rateLimits.messagesPerMinute",
            "should be less than or equal to 1800",
        ),
        case(
            "media size out of range",
            policy(json!({ "media": { "maxSizeMiB": 0 } })),
            "spec.media.maxSizeMiB",
            "should be greater than or equal to 1",
        ),
        case(
            "template name",
            policy(json!({ "whatsapp": { "outsideWindowTemplate": { "name": "Follow-Up", "language": "en_US" } } })),
            "spec.whatsapp.outsideWindowTemplate.name",
            "template names have lowercase letters",
        ),
        case(
            "template language",
            policy(json!({ "whatsapp": { "outsideWindowTemplate": { "name": "follow_up", "language": "english" } } })),
            "spec.whatsapp.outsideWindowTemplate.language",
            "must be a language code",
        ),
    ]
}

#[tokio::test]
async fn crds_install_and_become_established() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::Api;
    let crds: Api<CustomResourceDefinition> = Api::all(cp().client().await.unwrap());
    for name in ["messengeraccounts", "crmbindings", "syncpolicies"] {
        let crd = crds.get(&format!("{name}.crmessenger.io")).await.unwrap();
        let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
        for wanted in ["Established", "NamesAccepted"] {
            assert!(
                conditions.iter().any(|c| c.type_ == wanted && c.status == "True"),
                "{name}: {wanted} is not True: {conditions:?}"
            );
        }
        assert_eq!(crd.spec.names.categories, Some(vec!["crmessenger".to_string()]));
    }
}

/// Every CEL rule in the CRDs: the field the API server names when it fails (the
/// rule's property path, array items as `[]`, plus its `fieldPath`; `<nil>` for a
/// rule on the root) and its message.
fn crd_rules() -> Vec<(String, String)> {
    fn walk(node: &Value, path: &str, out: &mut Vec<(String, String)>) {
        for rule in node["x-kubernetes-validations"].as_array().into_iter().flatten() {
            let field = format!("{path}{}", rule["fieldPath"].as_str().unwrap_or(""));
            let message = rule["message"].as_str().or(rule["messageExpression"].as_str()).unwrap_or_default();
            out.push((if field.is_empty() { "<nil>".into() } else { field }, message.to_string()));
        }
        for (name, sub) in node["properties"].as_object().into_iter().flatten() {
            walk(sub, &if path.is_empty() { name.clone() } else { format!("{path}.{name}") }, out);
        }
        if node["items"].is_object() {
            walk(&node["items"], &format!("{path}[]"), out);
        }
    }
    let mut rules = Vec::new();
    for file in ["messengeraccounts", "crmbindings", "syncpolicies"] {
        let text = std::fs::read_to_string(repo_root().join(format!("crds/{file}.yaml"))).unwrap();
        let crd: Value = serde_yaml::from_str(&text).unwrap();
        for version in crd["spec"]["versions"].as_array().unwrap() {
            walk(&version["schema"]["openAPIV3Schema"], "", &mut rules);
        }
    }
    rules
}

/// Rules on status, which `kubectl apply` of a spec never reaches: (field, an
/// invalid status as a merge patch of a MessengerAccount's status, message).
fn invalid_statuses() -> Vec<(&'static str, Value, &'static str)> {
    vec![("status.binding.name", json!({ "binding": { "name": "Not_A_Name" } }), "must be an object name")]
}

#[test]
fn every_cel_rule_has_an_object_the_api_server_must_refuse() {
    let rules = crd_rules();
    assert!(rules.len() >= 50, "{} rules read from crds/", rules.len());
    let cases = invalid_objects();
    let statuses = invalid_statuses();
    let unbracket = |f: &str| {
        let mut out = String::new();
        let mut in_index = false;
        for c in f.chars() {
            match c {
                '[' => {
                    in_index = true;
                    out.push_str("[]");
                }
                ']' => in_index = false,
                _ if in_index => {}
                c => out.push(c),
            }
        }
        out
    };
    let missing: Vec<String> = rules
        .iter()
        .filter(|(field, message)| {
            let by_case = cases.iter().any(|c| unbracket(c.field) == *field && message.contains(c.message));
            let by_status = statuses.iter().any(|(f, _, m)| f == field && message.contains(m));
            !by_case && !by_status
        })
        .map(|(field, message)| format!("{field}: {message}"))
        .collect();
    assert!(missing.is_empty(), "rules with no rejected case in invalid_objects():\n{}", missing.join("\n"));
}

#[tokio::test]
async fn invalid_statuses_are_rejected_naming_the_field() {
    let cp = cp();
    let ns = cp.namespace("status").await.unwrap();
    let out = cp
        .kubectl_apply_output(&account(json!({ "provider": "telegram", "telegram": tg() })).to_string(), &["-n", &ns])
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (field, status, message) in invalid_statuses() {
        let patch = json!({ "status": status }).to_string();
        let out = cp
            .kubectl_output(&[
                "patch",
                "messengeraccount",
                "a",
                "-n",
                &ns,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ])
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{field}: accepted");
        assert!(stderr.contains(&format!("{field}: ")) && stderr.contains(message), "{field}: {stderr}");
    }
}

#[tokio::test]
async fn invalid_objects_are_rejected_naming_the_field() {
    let cp = cp();
    let ns = cp.namespace("invalid").await.unwrap();
    let cases = invalid_objects();
    assert!(cases.len() >= 12);
    let mut failures = Vec::new();
    for (i, case) in cases.into_iter().enumerate() {
        let name = format!("c{i}");
        // Each case gets its own name, except one whose name is what is wrong.
        let named = |mut v: Value| {
            if v["metadata"]["name"].as_str().is_some_and(|n| n.len() <= 51) {
                v["metadata"]["name"] = json!(name);
            }
            v.to_string()
        };
        if let Some(before) = case.before {
            let out = cp.kubectl_apply_output(&named(before), &["-n", &ns]).unwrap();
            assert!(
                out.status.success(),
                "{}: the valid object was refused: {}",
                case.what,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let out = cp.kubectl_apply_output(&named(case.object), &["-n", &ns, "--dry-run=server"]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted, expected {}: {}", case.what, case.field, case.message));
        } else if !stderr.contains(&format!("{}: ", case.field)) || !stderr.contains(case.message) {
            failures.push(format!(
                "{}: expected `{}: …{}…`, got: {}",
                case.what,
                case.field,
                case.message,
                stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{} case(s) failed:\n{}", failures.len(), failures.join("\n"));
}

#[tokio::test]
async fn examples_apply_with_server_dry_run_and_for_real() {
    let cp = cp();
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples: {files:?}");
    // The quickstart names its own namespace (`shop`): applied as a set, moved to a
    // namespace of this test's own (its Namespace object left out).
    let quickstart = repo_root().join("examples/quickstart");
    let ns = cp.namespace("quickstart").await.unwrap();
    let set: Vec<String> = ["secrets.yaml", "shop.yaml"]
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(quickstart.join(f)).unwrap();
            text.split("\n---\n").map(str::to_string).collect::<Vec<_>>()
        })
        .filter(|doc| !doc.contains("kind: Namespace"))
        .map(|doc| doc.replace("namespace: shop", &format!("namespace: {ns}")))
        .collect();
    let set = set.join("\n---\n");
    let out = cp.kubectl_apply_output(&set, &["--dry-run=server"]).unwrap();
    assert!(out.status.success(), "quickstart dry run: {}", String::from_utf8_lossy(&out.stderr));
    let out = cp.kubectl_apply_output(&set, &[]).unwrap();
    assert!(out.status.success(), "quickstart: {}", String::from_utf8_lossy(&out.stderr));
    let listed = cp.kubectl_ok(&["get", "crmessenger", "-n", &ns, "-o", "name"]).unwrap();
    assert_eq!(listed.matches("messengeraccount.crmessenger.io/").count(), 2, "{listed}");
    for file in files {
        let ns = cp.namespace("example").await.unwrap();
        let f = file.display().to_string();
        cp.kubectl_ok(&["apply", "-n", &ns, "--dry-run=server", "-f", &f]).unwrap();
        let listed = cp.kubectl_ok(&["get", "crmessenger,secrets", "-n", &ns, "-o", "name"]).unwrap();
        assert!(!listed.contains("crmessenger.io"), "{f}: a dry run persisted objects: {listed}");
        cp.kubectl_ok(&["apply", "-n", &ns, "-f", &f]).unwrap();
        let listed = cp.kubectl_ok(&["get", "crmessenger", "-n", &ns, "-o", "name"]).unwrap();
        for kind in ["messengeraccount", "crmbinding", "syncpolicy"] {
            assert!(listed.contains(&format!("{kind}.crmessenger.io/")), "{f}: no {kind} in {listed}");
        }
    }
}

#[tokio::test]
async fn defaults_are_applied_by_the_api_server() {
    let cp = cp();
    let ns = cp.namespace("defaults").await.unwrap();
    let objects = [
        policy(json!({})),
        account(json!({ "provider": "telegram", "telegram": tg() })),
        object(
            "CrmBinding",
            "b",
            json!({ "accountNames": ["a"], "policyRef": { "name": "p" }, "crm": { "type": "amocrm", "amocrm": amocrm() } }),
        ),
    ];
    for o in objects {
        let out = cp.kubectl_apply_output(&o.to_string(), &["-n", &ns]).unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let get = |what: &str| -> Value {
        serde_json::from_str(&cp.kubectl_ok(&["get", what, "-n", &ns, "-o", "json"]).unwrap()).unwrap()
    };
    let p = get("syncpolicy/p");
    assert_eq!(p["spec"]["chats"]["private"], json!(true));
    assert_eq!(p["spec"]["chats"]["groups"], json!(false));
    assert_eq!(p["spec"]["escalation"]["after"], json!("15m"));
    assert_eq!(p["spec"]["assignment"]["strategy"], json!("roundRobin"));
    assert_eq!(p["spec"]["rateLimits"]["messagesPerMinute"], json!(30));
    assert_eq!(p["spec"]["media"]["maxSizeMiB"], json!(20));
    assert_eq!(p["spec"]["leads"]["deduplicateBy"].as_array().map(Vec::len), Some(4));
    let a = get("messengeraccount/a");
    assert_eq!(a["spec"]["telegram"]["loginMethod"], json!("qr"));
    assert_eq!(a["spec"]["telegram"]["apiCredentials"]["apiIdKey"], json!("api_id"));
    assert_eq!(a["spec"]["suspend"], json!(false));
    let b = get("crmbinding/b");
    assert_eq!(b["spec"]["crm"]["amocrm"]["replies"]["detection"], json!("poll"));
    assert_eq!(b["spec"]["crm"]["amocrm"]["replies"]["pollInterval"], json!("10s"));
    assert_eq!(b["spec"]["crm"]["amocrm"]["chatsChannel"], json!(false));
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() {
    let cp = cp();
    // The API server publishes a new CRD's OpenAPI a moment after it is Established.
    let mut last = String::new();
    for _ in 0..100 {
        let out = cp.kubectl_output(&["explain", "messengeraccount.spec"]).unwrap();
        last = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    for expected in [
        "provider\t<string> -required-",
        "The messenger: `telegram` or `whatsapp`. Immutable",
        "suspend\t<boolean>",
        "Stops the connector (scales it to zero)",
    ] {
        assert!(last.contains(expected), "`kubectl explain messengeraccount.spec` lacks {expected:?}:\n{last}");
    }
    let nested = cp.kubectl_ok(&["explain", "crmbinding.spec.crm.amocrm.replies.notePrefix"]).unwrap();
    assert!(nested.contains("A lead note that starts with this prefix is sent to the customer"), "{nested}");
    let policy = cp.kubectl_ok(&["explain", "syncpolicy.spec.escalation.after"]).unwrap();
    assert!(policy.contains("How long a customer's message may stay unanswered"), "{policy}");
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let cp = cp();
    let ns = cp.namespace("columns").await.unwrap();
    let acct = account(json!({ "provider": "telegram", "telegram": tg() }));
    cp.kubectl_apply_output(&acct.to_string(), &["-n", &ns]).unwrap();
    let pol = policy(json!({ "escalation": { "enabled": true, "after": "20m" } }));
    cp.kubectl_apply_output(&pol.to_string(), &["-n", &ns]).unwrap();
    let bind = object(
        "CrmBinding",
        "b",
        json!({ "accountNames": ["a"], "policyRef": { "name": "p" }, "crm": { "type": "amocrm", "amocrm": amocrm() } }),
    );
    cp.kubectl_apply_output(&bind.to_string(), &["-n", &ns]).unwrap();
    // The identity is the connector's to write (no connector runs here); phase,
    // Ready and the bound count are the operator's, which writes them itself.
    let status = json!({ "status": { "identity": { "summary": "@ivan (+7******4567)" } } });
    cp.kubectl_ok(&[
        "patch",
        "messengeraccount",
        "a",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])
    .unwrap();
    let account = eventually("the operator reports the account and the binding", 30, || async {
        let a = get(cp, &ns, "messengeraccount/a").ok_or("no account")?;
        let b = get(cp, &ns, "crmbinding/b").ok_or("no binding")?;
        // Settled: with no connector to send a heartbeat, the account waits
        // (a moment earlier, before the binding selected it, it was not yet valid).
        let reported = a["status"]["phase"] == "Pending"
            && a["status"]["identity"]["summary"].is_string()
            && condition(&a, "Ready").is_some()
            && b["status"]["boundAccountCount"] == json!(1);
        if reported { Ok(a) } else { Err(format!("{} / {}", a["status"], b["status"])) }
    })
    .await;

    let accounts = cp.kubectl_ok(&["get", "msgacct", "-n", &ns]).unwrap();
    let mut lines = accounts.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(header, ["NAME", "PROVIDER", "PHASE", "READY", "IDENTITY", "AGE"], "{accounts}");
    let row: Vec<&str> = lines.next().unwrap_or_default().split_whitespace().collect();
    let phase = account["status"]["phase"].as_str().unwrap_or_default();
    let ready = condition(&account, "Ready").and_then(|c| c["status"].as_str().map(String::from)).unwrap_or_default();
    assert_eq!(phase, "Pending", "no connector runs here to send a heartbeat");
    assert_eq!(&row[..6], ["a", "telegram", phase, &ready, "@ivan", "(+7******4567)"], "{accounts}");

    let bindings = cp.kubectl_ok(&["get", "crmbind", "-n", &ns]).unwrap();
    assert!(
        bindings.lines().next().unwrap_or_default().split_whitespace().eq(["NAME", "CRM", "ACCOUNTS", "READY", "AGE"]),
        "{bindings}"
    );
    assert!(
        bindings.lines().nth(1).unwrap_or_default().split_whitespace().take(3).eq(["b", "amocrm", "1"]),
        "{bindings}"
    );

    let policies = cp.kubectl_ok(&["get", "syncpol", "-n", &ns]).unwrap();
    assert!(
        policies.lines().next().unwrap_or_default().split_whitespace().eq([
            "NAME",
            "ASSIGNMENT",
            "ESCALATE-AFTER",
            "BINDINGS",
            "READY",
            "AGE"
        ]),
        "{policies}"
    );
    assert!(
        policies.lines().nth(1).unwrap_or_default().split_whitespace().take(3).eq(["p", "roundRobin", "20m"]),
        "{policies}"
    );

    let wide = cp.kubectl_ok(&["get", "crmbind", "-n", &ns, "-o", "wide"]).unwrap();
    assert!(wide.contains("https://example.amocrm.ru"), "{wide}");

    let all = cp.kubectl_ok(&["get", "crmessenger", "-n", &ns, "-o", "name"]).unwrap();
    let mut names: Vec<&str> = all.lines().collect();
    names.sort();
    assert_eq!(
        names,
        ["crmbinding.crmessenger.io/b", "messengeraccount.crmessenger.io/a", "syncpolicy.crmessenger.io/p"]
    );
}

#[tokio::test]
async fn a_pod_is_scheduled_onto_the_kwok_node_and_becomes_ready() {
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, PostParams};
    let cp = cp();
    let ns = cp.namespace("pod").await.unwrap();
    let pods: Api<Pod> = Api::namespaced(cp.client().await.unwrap(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "probe" },
        "spec": { "containers": [{ "name": "c", "image": "example.invalid/none:1" }] },
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let p = pods.get("probe").await.unwrap();
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if ready {
            assert_eq!(node.as_deref(), Some(crmessenger_testkit::controlplane::NODE_NAME));
            assert_eq!(p.status.and_then(|s| s.phase).as_deref(), Some("Running"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "pod never became Ready: {:?}", p.status);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
