//! What the three controllers share, and nothing more: the client, the settings,
//! the event recorder, the metrics and the watched caches ([`Shared`]); the guard
//! around objects that do not deserialize, outcome counting and the error policy
//! ([`wrap`]). A leaf: it imports no controller, so each controller's own state
//! lives beside its reconcile (`account::Context`, `binding::Context`).

pub mod stores;
pub mod wrap;

pub use stores::{Guarded, Stores};

use crate::metrics::Metrics;
use crate::settings::Settings;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The state every controller reads.
pub struct Shared {
    /// The Kubernetes client.
    pub client: Client,
    /// Installation settings.
    pub settings: Settings,
    /// Publishes Events (one recorder for every controller).
    pub recorder: Recorder,
    /// Reconcile counters.
    pub metrics: Arc<Metrics>,
    /// Watched caches.
    pub stores: Stores,
    /// Consecutive failures per object, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
}

/// A controller's context: the shared state, plus whatever the controller keeps.
pub trait ControllerContext: Send + Sync + 'static {
    /// The shared part.
    fn shared(&self) -> &Shared;
}

impl ControllerContext for Shared {
    fn shared(&self) -> &Shared {
        self
    }
}

impl Shared {
    /// The shared state for `client`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, stores: Stores) -> Self {
        let reporter = Reporter { controller: crate::labels::MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            stores,
            failures: Mutex::default(),
        }
    }

    /// Applies `status` (a typed status struct: fields left out are not owned) to
    /// `obj`'s status subresource with the operator's field manager. Server-side
    /// apply is the only way the operator writes status, so a field it stops
    /// sending is removed and fields another manager owns are left alone.
    pub async fn apply_status<K, S>(&self, obj: &K, status: &S) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize,
    {
        let api: kube::Api<K> =
            kube::Api::namespaced(self.client.clone(), obj.meta().namespace.as_deref().unwrap_or_default());
        let body = serde_json::json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
        let params = kube::api::PatchParams::apply(crate::labels::MANAGER).force();
        api.patch_status(&obj.name_any(), &params, &kube::api::Patch::Apply(&body)).await.map(drop)
    }

    /// Publishes a Warning Event on `obj`; failures are logged, never fatal.
    pub async fn warn<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, note: String, action: &str) {
        self.publish(&obj.object_ref(&()), EventType::Warning, reason, note, action).await
    }

    /// Publishes a Normal Event on `obj`.
    pub async fn inform<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, note: String, action: &str) {
        self.publish(&obj.object_ref(&()), EventType::Normal, reason, note, action).await
    }

    /// Publishes an Event on the object `reference` names.
    pub async fn publish(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(object = reference.name, "could not publish event {reason}: {e}");
        }
    }

    fn note_failure(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(key.to_string()).or_default() += 1;
        }
    }

    fn forget_failures(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    fn failures(&self, key: &str) -> u32 {
        self.failures.lock().map(|f| f.get(key).copied().unwrap_or(0)).unwrap_or(0)
    }
}
