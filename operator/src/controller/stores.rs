//! The watched caches reconciles read (so a reconcile costs no lists).

use crmessenger_api::{CrmBinding, MessengerAccount, SyncPolicy};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};

/// Objects are watched through this guard: one that does not deserialize (say,
/// stored under an older schema) becomes an error on that object — a Warning Event
/// — instead of a watch that fails for every object.
pub type Guarded<K> = kube::core::DeserializeGuard<K>;

/// Caches of what reconciles read, fed by watches.
#[derive(Clone)]
pub struct Stores {
    /// Every MessengerAccount.
    pub accounts: Store<Guarded<MessengerAccount>>,
    /// Every CrmBinding.
    pub bindings: Store<Guarded<CrmBinding>>,
    /// Every SyncPolicy.
    pub policies: Store<Guarded<SyncPolicy>>,
    /// Connector Leases (those the operator labelled).
    pub leases: Store<Lease>,
}

impl Stores {
    /// Starts the watches and waits for their first full lists (each store has
    /// exactly one waiter: this function).
    pub async fn start(client: &Client) -> anyhow::Result<Self> {
        let managed = format!("{}={}", crate::labels::MANAGED_BY, crate::labels::MANAGER);
        let all = watcher::Config::default;
        let stores = Stores {
            accounts: spawn_reflector(Api::all(client.clone()), all()),
            bindings: spawn_reflector(Api::all(client.clone()), all()),
            policies: spawn_reflector(Api::all(client.clone()), all()),
            leases: spawn_reflector(Api::all(client.clone()), all().labels(&managed)),
        };
        stores.accounts.wait_until_ready().await?;
        stores.bindings.wait_until_ready().await?;
        stores.policies.wait_until_ready().await?;
        stores.leases.wait_until_ready().await?;
        Ok(stores)
    }

    /// The readable CrmBindings of `namespace`.
    pub fn bindings_in(&self, namespace: &str) -> Vec<CrmBinding> {
        self.bindings
            .state()
            .iter()
            .filter_map(|o| o.0.as_ref().ok())
            .filter(|o| o.meta().namespace.as_deref() == Some(namespace))
            .cloned()
            .collect()
    }
}

fn spawn_reflector<K>(api: Api<K>, wc: watcher::Config) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, wc).default_backoff().reflect(writer).applied_objects();
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                tracing::warn!("watch error (retrying): {e}");
            }
        }
    });
    reader
}
