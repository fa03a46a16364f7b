//! Objects captured from the end-to-end tests, for the GitOps health checks' test
//! data (`tools/capture-health.sh` runs the tests with `CRMESSENGER_CAPTURE_DIR`
//! set and copies what they saved beside the checks).

use serde_json::Value;

/// Saves `object` as `NAME.yaml` in `$CRMESSENGER_CAPTURE_DIR`, when that is set,
/// without what only the API server's bookkeeping needs (managedFields, uid,
/// resourceVersion) and with the namespace made stable.
pub fn save(name: &str, object: &Value) {
    let Some(dir) = std::env::var_os("CRMESSENGER_CAPTURE_DIR") else { return };
    let mut o = object.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in ["managedFields", "uid", "resourceVersion", "creationTimestamp", "annotations"] {
            meta.remove(key);
        }
        meta.insert("namespace".into(), Value::String("shop".into()));
    }
    let path = std::path::Path::new(&dir).join(format!("{name}.yaml"));
    let text = serde_yaml::to_string(&o).expect("an object as YAML");
    std::fs::create_dir_all(&dir).expect("the capture directory");
    std::fs::write(&path, text).expect("write a captured object");
}
