//! The CustomResourceDefinitions generated from the Rust types.

use crate::{CrmBinding, MessengerAccount, SyncPolicy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

/// Every CRD of the API, with the file name it is written to under `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("messengeraccounts.yaml", tidy(MessengerAccount::crd())),
        ("crmbindings.yaml", tidy(CrmBinding::crd())),
        ("syncpolicies.yaml", tidy(SyncPolicy::crd())),
    ]
}

/// Doc comments are hard-wrapped in the source; `kubectl explain` wraps text itself,
/// so single line breaks inside a paragraph become spaces (paragraphs stay apart).
fn tidy(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    unwrap_descriptions(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

fn unwrap_descriptions(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    Value::String(s) if key == "description" => *s = unwrap_paragraphs(s),
                    _ => unwrap_descriptions(v),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn unwrap_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split('\n').map(str::trim).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paragraphs_are_unwrapped_but_kept_apart() {
        assert_eq!(unwrap_paragraphs("one\ntwo\n\nthree\n four"), "one two\n\nthree four");
    }

    #[test]
    fn every_field_is_documented() {
        fn check(path: &str, schema: &Value, missing: &mut Vec<String>) {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (name, sub) in props {
                    let p = format!("{path}.{name}");
                    let top = matches!(name.as_str(), "apiVersion" | "kind" | "metadata");
                    if !top && sub.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                        missing.push(p.clone());
                    }
                    check(&p, sub, missing);
                }
            }
            if let Some(items) = schema.get("items") {
                check(&format!("{path}[]"), items, missing);
            }
        }
        let mut missing = Vec::new();
        for (file, crd) in all() {
            let v = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
            check(file, &v["openAPIV3Schema"], &mut missing);
        }
        assert!(missing.is_empty(), "fields without a description: {missing:#?}");
    }
}
