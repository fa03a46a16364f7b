//! What surrounds every reconcile: unreadable objects become a Warning Event,
//! outcomes are counted, failures back off per object.

use super::{ControllerContext, Guarded};
use crate::error::Error;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type ReconcileFuture = Pin<Box<dyn Future<Output = Result<Action, Error>> + Send>>;

/// Reconciles the object inside a [`Guarded`] with `f` (its outcome counted under
/// `kind`), or reports why it cannot be read.
pub fn guarded<K, C, F, Fut>(kind: &'static str, f: F) -> impl Fn(Arc<Guarded<K>>, Arc<C>) -> ReconcileFuture
where
    K: Clone + Send + Sync + 'static + kube::Resource<DynamicType = ()>,
    C: ControllerContext,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    let inner = counted(kind, f);
    move |obj, ctx| match &obj.0 {
        Ok(k) => inner(Arc::new(k.clone()), ctx),
        Err(invalid) => {
            let invalid = invalid.clone();
            Box::pin(async move {
                tracing::warn!(kind, object = invalid.metadata.name, "cannot read object: {}", invalid.error);
                let reference = k8s_openapi::api::core::v1::ObjectReference {
                    api_version: Some(K::api_version(&()).to_string()),
                    kind: Some(K::kind(&()).to_string()),
                    name: invalid.metadata.name.clone(),
                    namespace: invalid.metadata.namespace.clone(),
                    uid: invalid.metadata.uid.clone(),
                    ..Default::default()
                };
                let note = format!("the operator cannot read this object: {}", invalid.error);
                let shared = ctx.shared();
                shared.publish(&reference, EventType::Warning, "InvalidObject", note, "Reconcile").await;
                shared.metrics.reconciled(kind, "invalid");
                Ok(Action::await_change())
            })
        }
    }
}

/// Wraps a reconcile function so its outcome is counted and its backoff reset.
fn counted<K, C, F, Fut>(kind: &'static str, f: F) -> impl Fn(Arc<K>, Arc<C>) -> ReconcileFuture
where
    K: Send + Sync + 'static + kube::Resource<DynamicType = ()>,
    C: ControllerContext,
    F: Fn(Arc<K>, Arc<C>) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    move |obj, ctx| {
        Box::pin(async move {
            let key = failure_key(obj.as_ref());
            let result = f(obj, ctx.clone()).await;
            let shared = ctx.shared();
            match &result {
                Ok(_) => {
                    shared.metrics.reconciled(kind, "ok");
                    shared.forget_failures(&key);
                }
                Err(e) => {
                    shared.metrics.reconciled(kind, e.metric_label());
                    shared.note_failure(&key);
                }
            }
            result
        })
    }
}

/// Per-object exponential backoff: 2 s, 4 s, … up to 5 minutes, jittered.
pub fn error_policy<K: kube::Resource<DynamicType = ()>, C: ControllerContext>(
    obj: Arc<K>,
    error: &Error,
    ctx: Arc<C>,
) -> Action {
    let key = failure_key(obj.as_ref());
    let failures = ctx.shared().failures(&key);
    let delay =
        crmessenger_crm::backoff::backoff(failures.max(1) - 1, Duration::from_secs(2), Duration::from_secs(300));
    tracing::warn!(object = key, ?delay, "reconcile failed: {error}");
    Action::requeue(delay)
}

/// The key an object's consecutive failures are counted under: `Kind/namespace/name`
/// (a guarded object has the kind of what it guards, so both sides agree).
fn failure_key<K: kube::Resource<DynamicType = ()>>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}/{}",
        K::kind(&()),
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}
