//! The GitOps health checks (`integrations/`) against objects captured from the
//! end-to-end tests (`tools/capture-health.sh`): Argo CD's Lua checks run in Lua
//! 5.1, as Argo CD runs them, with the cases of each kind's `health_test.yaml`
//! (Argo CD's own test format); and the ready-made `argocd-cm` snippet carries
//! each script unchanged.

use crmessenger_testkit::controlplane::repo_root;
use mlua::{Lua, LuaSerdeExt, SerializeOptions};
use std::path::PathBuf;

const KINDS: [&str; 3] = ["MessengerAccount", "CrmBinding", "SyncPolicy"];

fn dir(kind: &str) -> PathBuf {
    repo_root().join("integrations/argocd/crmessenger.io").join(kind)
}

/// What `health.lua` says of `object`: (status, message).
fn health(script: &str, object: &serde_json::Value) -> (String, String) {
    let lua = Lua::new();
    // As Argo CD hands objects over: absent fields are nil, not a null value.
    let options = SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    lua.globals().set("obj", lua.to_value_with(object, options).unwrap()).unwrap();
    let hs: mlua::Table = lua.load(script).eval().unwrap();
    (hs.get("status").unwrap(), hs.get::<Option<String>>("message").unwrap().unwrap_or_default())
}

#[test]
fn argo_cd_health_checks_pass_their_tests_on_captured_objects() {
    let mut seen = std::collections::BTreeSet::new();
    for kind in KINDS {
        let script = std::fs::read_to_string(dir(kind).join("health.lua")).unwrap();
        let tests: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(dir(kind).join("health_test.yaml")).unwrap()).unwrap();
        let cases = tests["tests"].as_sequence().unwrap();
        assert!(!cases.is_empty(), "{kind}");
        for case in cases {
            let path = case["inputPath"].as_str().unwrap();
            let object: serde_json::Value =
                serde_yaml::from_str(&std::fs::read_to_string(dir(kind).join(path)).unwrap()).unwrap();
            assert_eq!(object["kind"], kind, "{path}");
            assert!(object["status"].is_object(), "{kind} {path} was captured with a status");
            let want = (
                case["healthStatus"]["status"].as_str().unwrap().to_string(),
                case["healthStatus"]["message"].as_str().unwrap_or_default().to_string(),
            );
            assert_eq!(health(&script, &object), want, "{kind} {path}");
            seen.insert(format!("{kind}/{}", want.0));
        }
        // Every captured object of the kind is a case.
        for entry in std::fs::read_dir(dir(kind).join("testdata")).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(
                cases.iter().any(|c| c["inputPath"].as_str() == Some(&format!("testdata/{name}"))),
                "{kind}: {name} has no case"
            );
        }
    }
    for state in [
        "MessengerAccount/Healthy",
        "MessengerAccount/Progressing",
        "MessengerAccount/Degraded",
        "MessengerAccount/Suspended",
        "CrmBinding/Healthy",
        "CrmBinding/Degraded",
        "SyncPolicy/Healthy",
        "SyncPolicy/Degraded",
    ] {
        assert!(seen.contains(state), "no case for {state}: {seen:?}");
    }
}

#[test]
fn without_a_status_or_before_the_operator_acts_a_resource_is_progressing() {
    let account = serde_json::json!({
        "apiVersion": "crmessenger.io/v1alpha1", "kind": "MessengerAccount",
        "metadata": { "name": "tg", "namespace": "shop", "generation": 1 },
        "spec": { "provider": "telegram", "telegram": { "apiCredentials": { "secretName": "tg" } } },
    });
    for kind in KINDS {
        let script = std::fs::read_to_string(dir(kind).join("health.lua")).unwrap();
        assert_eq!(health(&script, &account).0, "Progressing", "{kind}");
    }
}

#[test]
fn the_argocd_cm_snippet_carries_each_script_unchanged() {
    let snippet = std::fs::read_to_string(repo_root().join("integrations/argocd/argocd-cm.yaml")).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&snippet).unwrap();
    for kind in KINDS {
        let script = std::fs::read_to_string(dir(kind).join("health.lua")).unwrap();
        let key = format!("resource.customizations.health.crmessenger.io_{kind}");
        assert_eq!(doc["data"][key.as_str()].as_str(), Some(script.as_str()), "{key}");
    }
}

/// Flux's `healthCheckExprs` use CEL features (`.?`, `orValue`) Rust CEL crates
/// lack: a small Go program evaluates them with Flux's own evaluator.
#[test]
fn flux_health_expressions_agree_with_every_captured_case() {
    let program = repo_root().join("integrations/flux/check");
    let out = std::process::Command::new("go")
        .args(["run", "."])
        .current_dir(&program)
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .env("GOTOOLCHAIN", "local")
        .output()
        .expect("run go (the control plane's build needs it too)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let cases: usize = KINDS
        .iter()
        .map(|k| {
            let tests: serde_yaml::Value =
                serde_yaml::from_str(&std::fs::read_to_string(dir(k).join("health_test.yaml")).unwrap()).unwrap();
            tests["tests"].as_sequence().unwrap().len()
        })
        .sum();
    assert_eq!(text.lines().filter(|l| l.starts_with("ok ")).count(), cases, "{text}");
}
