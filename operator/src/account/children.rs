//! Applies an account's children with server-side apply, and keeps a rollout from
//! getting stuck behind a pod that never became Ready.

use super::Context;
use super::build::Children;
use crate::controller::Shared;
use crate::error::Result;
use crate::labels::{self, CONFIG_HASH, MANAGER};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::time::{Duration, Instant};

async fn apply_one<K>(ctx: &Shared, namespace: &str, obj: &K) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Serialize + DeserializeOwned + Clone + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    api.patch(&obj.name_any(), &PatchParams::apply(MANAGER).force(), &Patch::Apply(obj)).await?;
    Ok(())
}

/// Applies every child (one field manager, forced: the operator owns these fields).
pub async fn apply(ctx: &Shared, namespace: &str, c: &Children) -> Result<()> {
    apply_one(ctx, namespace, &c.service_account).await?;
    apply_one(ctx, namespace, &c.role).await?;
    apply_one(ctx, namespace, &c.role_binding).await?;
    apply_one(ctx, namespace, &c.config_map).await?;
    match &c.runtime_secret {
        Some(secret) => apply_one(ctx, namespace, secret).await?,
        // An optional child that is no longer wanted goes (values removed from the
        // operator's settings must not linger in the namespace).
        None => {
            let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ctx.client.clone(), namespace);
            match api.delete(&c.runtime_secret_name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(
                    namespace,
                    secret = c.runtime_secret_name,
                    "deleted a runtime Secret no longer wanted"
                ),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    apply_one(ctx, namespace, &c.lease).await?;
    apply_one(ctx, namespace, &c.service).await?;
    apply_one(ctx, namespace, &c.network_policy).await?;
    apply_one(ctx, namespace, &c.stateful_set).await?;
    Ok(())
}

/// Children are re-applied when they change, and at least this often (to repair
/// drift, e.g. a child deleted by hand).
pub const REAPPLY: Duration = Duration::from_secs(300);
/// While a new config rolls out, a stuck pod is looked for at most this often.
const UNSTICK_EVERY: Duration = Duration::from_secs(20);

/// What was last applied for an account.
#[derive(Debug, Clone)]
pub struct Applied {
    digest: u64,
    at: Instant,
    config_hash: String,
    rollout_since: Option<Instant>,
    pods_checked: Option<Instant>,
}

/// Applies the children unless exactly these were applied less than [`REAPPLY`]
/// ago. While a new config rolls out (and once after a start), replaces a pod that
/// is stuck unready on the old config; otherwise it lists no pods.
pub async fn apply_if_changed(
    ctx: &Context,
    namespace: &str,
    account: &str,
    c: &Children,
    hash: &str,
    new_account: bool,
) -> Result<()> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let all = (
        &c.stateful_set,
        &c.service,
        &c.network_policy,
        &c.lease,
        &c.service_account,
        &c.role,
        &c.role_binding,
        &c.config_map,
        &c.runtime_secret,
    );
    serde_json::to_string(&all)?.hash(&mut hasher);
    let digest = hasher.finish();
    let key = format!("{namespace}/{account}");
    let last = ctx.applied.lock().ok().and_then(|m| m.get(&key).cloned());
    let mut entry = match last {
        Some(e) if e.digest == digest && e.at.elapsed() < REAPPLY => e,
        previous => {
            apply(ctx, namespace, c).await?;
            let rollout_since = match &previous {
                Some(p) if p.config_hash != hash => Some(Instant::now()),
                Some(p) => p.rollout_since,
                None => None,
            };
            // A StatefulSet created just now has no pod on an old config to look for.
            let pods_checked = previous.and_then(|p| p.pods_checked).or(new_account.then(Instant::now));
            Applied { digest, at: Instant::now(), config_hash: hash.to_string(), rollout_since, pods_checked }
        }
    };
    let rolling = entry.rollout_since.is_some_and(|t| t.elapsed() < REAPPLY);
    let due = entry.pods_checked.is_none_or(|t| rolling && t.elapsed() >= UNSTICK_EVERY);
    if due {
        unstick_rollout(ctx, namespace, account, hash).await?;
        entry.pods_checked = Some(Instant::now());
    }
    if let Ok(mut m) = ctx.applied.lock() {
        m.insert(key, entry);
    }
    Ok(())
}

/// A StatefulSet waits for its pod to be Ready before replacing it, so a pod that
/// never becomes Ready would block every later config. Such a pod, running an old
/// config, is deleted; the StatefulSet recreates it from the new template.
pub async fn unstick_rollout(ctx: &Shared, namespace: &str, account: &str, desired_hash: &str) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = labels::pod_selector(account).iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    for pod in pods.list(&ListParams::default().labels(&selector)).await?.items {
        let hash = pod.annotations().get(CONFIG_HASH).cloned().unwrap_or_default();
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        if hash != desired_hash && !ready && pod.metadata.deletion_timestamp.is_none() {
            tracing::info!(pod = pod.name_any(), "replacing a pod that is not Ready and runs an old config");
            pods.delete(&pod.name_any(), &DeleteParams::default()).await?;
        }
    }
    Ok(())
}
