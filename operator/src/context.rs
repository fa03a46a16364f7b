//! What every reconcile shares: the client, settings, the event recorder, metrics.

use crate::metrics::Metrics;
use crate::settings::Settings;
use crmessenger_api::{CrmBinding, SyncPolicy};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Caches of what reconciles read, fed by watches (so a reconcile costs no lists).
#[derive(Clone)]
pub struct Stores {
    /// Every MessengerAccount.
    pub accounts: Store<crate::run::Guarded<crmessenger_api::MessengerAccount>>,
    /// Every CrmBinding.
    pub bindings: Store<crate::run::Guarded<CrmBinding>>,
    /// Every SyncPolicy.
    pub policies: Store<crate::run::Guarded<SyncPolicy>>,
    /// Connector Leases (those the operator labelled).
    pub leases: Store<Lease>,
}

impl Stores {
    /// The readable CrmBindings of `namespace`.
    pub fn bindings_in(&self, namespace: &str) -> Vec<CrmBinding> {
        readable_in(&self.bindings, namespace)
    }
}

fn readable_in<K: Clone + Resource<DynamicType = ()>>(
    store: &Store<crate::run::Guarded<K>>,
    namespace: &str,
) -> Vec<K> {
    store
        .state()
        .iter()
        .filter_map(|o| o.0.as_ref().ok())
        .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
        .cloned()
        .collect()
}

/// Shared state of the controllers.
pub struct Context {
    /// Watched caches.
    pub stores: Stores,
    /// Recent successful credential checks per binding (and generation):
    /// (when, verdict, token expiry, next check).
    #[allow(clippy::type_complexity)]
    pub credentials:
        Mutex<HashMap<String, (std::time::Instant, crate::conditions::Verdict, Option<i64>, std::time::Duration)>>,
    /// Children last applied per account.
    pub applied: Mutex<HashMap<String, crate::account::children::Applied>>,
    /// The Kubernetes client.
    pub client: Client,
    /// Installation settings.
    pub settings: Settings,
    /// Publishes Events (one recorder for every controller).
    pub recorder: Recorder,
    /// Reconcile counters.
    pub metrics: Arc<Metrics>,
    /// Consecutive failures per object, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When each binding's status was last written (see [`Context::status_write_due`]).
    status_writes: Mutex<HashMap<String, std::time::Instant>>,
    /// The connectors' runtime values, read from the operator's namespace.
    runtime: tokio::sync::Mutex<Option<(std::time::Instant, crate::account::build::RuntimeValues)>>,
}

/// How long the connectors' runtime values are reused before the Secrets are read again.
const RUNTIME_TTL: std::time::Duration = std::time::Duration::from_secs(30);

impl Context {
    /// A context for `client`.
    pub fn new(client: Client, settings: Settings, metrics: Arc<Metrics>, stores: Stores) -> Self {
        let reporter = Reporter { controller: crate::labels::MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
            failures: Mutex::default(),
            stores,
            applied: Mutex::default(),
            credentials: Mutex::default(),
            runtime: tokio::sync::Mutex::default(),
            status_writes: Mutex::default(),
        }
    }

    /// Whether `key`'s status may be written now: at most one write per `every`,
    /// so a burst of changes (hundreds of accounts bound at once) becomes a few
    /// writes. `Err(wait)` says when the next may go; the caller requeues, so the
    /// last change is always written. Reconciles themselves are never delayed.
    pub fn status_write_due(&self, key: &str, every: std::time::Duration) -> Result<(), std::time::Duration> {
        let Ok(mut writes) = self.status_writes.lock() else { return Ok(()) };
        let now = std::time::Instant::now();
        if let Some(last) = writes.get(key)
            && now.duration_since(*last) < every
        {
            return Err(every - now.duration_since(*last));
        }
        writes.insert(key.to_string(), now);
        Ok(())
    }

    /// What every connector pod gets beyond its config: the database URL and session
    /// key (from Secrets in the operator's namespace; a missing one is logged and
    /// left out, and for the database the reason is kept for the account's status)
    /// and the gateway URL. Read at most every 30 s; a failed read is not cached.
    pub async fn runtime_values(&self) -> Result<crate::account::build::RuntimeValues, kube::Error> {
        let mut cached = self.runtime.lock().await;
        if let Some((at, v)) = cached.as_ref()
            && at.elapsed() < RUNTIME_TTL
        {
            return Ok(v.clone());
        }
        let r = &self.settings.connector_runtime;
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(self.client.clone(), &r.namespace);
        // The value, or why there is none.
        let read = |source: Option<(String, String)>| {
            let api = api.clone();
            async move {
                let Some((name, key)) = source else { return Ok(Err(String::new())) };
                let missing = match api.get_opt(&name).await? {
                    Some(secret) => match crmessenger_api::common::secret_strings(&secret).remove(&key) {
                        Some(value) => return Ok(Ok(value)),
                        None => format!("Secret {}/{name} has no key {key}", r.namespace),
                    },
                    None => format!("Secret {}/{name} does not exist", r.namespace),
                };
                tracing::warn!("{missing}; connectors will not get it");
                Ok::<_, kube::Error>(Err(missing))
            }
        };
        let database = match &r.database {
            crate::settings::Database::Secret { name, key } => Some((name.clone(), key.clone())),
            _ => None,
        };
        let database = read(database).await?;
        let values = crate::account::build::RuntimeValues {
            database_missing: database.as_ref().err().filter(|m| !m.is_empty()).cloned(),
            database_url: database.ok(),
            session_key: read(r.session_key.clone()).await?.ok(),
            gateway_url: r.gateway_url.clone(),
            chats_secret: read(r.chats_secret.clone()).await?.ok(),
            chats_channel_id: r.chats_channel_id.clone(),
            chats_base_url: r.chats_base_url.clone(),
            sandbox: r.sandbox.clone(),
        };
        *cached = Some((std::time::Instant::now(), values.clone()));
        Ok(values)
    }

    /// Counts a failed reconcile of `key`.
    pub fn note_failure(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            *f.entry(key.to_string()).or_default() += 1;
        }
    }

    /// Resets the failure count of `key` after a success.
    pub fn forget_failures(&self, key: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(key);
        }
    }

    /// Applies `status` to `obj`'s status subresource with the operator's field
    /// manager (server-side apply, the only way the operator writes status).
    pub async fn apply_status<K>(&self, obj: &K, status: serde_json::Value) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: kube::Api<K> =
            kube::Api::namespaced(self.client.clone(), obj.meta().namespace.as_deref().unwrap_or_default());
        let body = serde_json::json!({ "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status });
        let params = kube::api::PatchParams::apply(crate::labels::MANAGER).force();
        api.patch_status(&obj.name_any(), &params, &kube::api::Patch::Apply(&body)).await.map(drop)
    }

    /// Consecutive failures of the object under `key`.
    pub fn failures(&self, key: &str) -> u32 {
        self.failures.lock().map(|f| f.get(key).copied().unwrap_or(0)).unwrap_or(0)
    }

    /// Publishes a Warning Event on `obj`; failures are logged, never fatal.
    pub async fn warn<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, note: String, action: &str) {
        self.publish(obj, EventType::Warning, reason, note, action).await
    }

    /// Publishes a Normal Event on `obj`.
    pub async fn inform<K: Resource<DynamicType = ()>>(&self, obj: &K, reason: &str, note: String, action: &str) {
        self.publish(obj, EventType::Normal, reason, note, action).await
    }

    /// Publishes a Warning Event on the object `reference` names.
    pub async fn warn_ref(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!("could not publish event {reason}: {e}");
        }
    }

    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(object = obj.name_any(), "could not publish event {reason}: {e}");
        }
    }
}
