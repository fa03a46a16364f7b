//! Assembles the operator: CRD check, admin server, leader election, and the three
//! controllers, with graceful shutdown on SIGTERM.

use crate::admin::{self, Readiness};
use crate::controller::wrap::{error_policy, guarded};
use crate::controller::{Guarded, Shared, Stores};
use crate::metrics::Metrics;
use crate::settings::Settings;
use crate::{account, binding, policy, selection};
use crmessenger_api::{CrmBinding, MessengerAccount, SyncPolicy};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::controller::Config as ControllerConfig;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Client, ResourceExt};
use std::net::SocketAddr;
use std::sync::Arc;

/// How the operator process runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where `/livez`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
    /// Lease-based leader election: (namespace, lease name, identity). `None` runs
    /// as the only instance.
    pub leader_election: Option<(String, String, String)>,
    /// Reconciles at once per controller.
    pub concurrency: u16,
}

/// Runs until SIGTERM/SIGINT (or until leadership is lost, which exits so that a
/// fresh process competes again).
pub async fn run(client: Client, settings: Settings, options: RunOptions, metrics: Arc<Metrics>) -> anyhow::Result<()> {
    check_settings(&settings)?;
    check_crds(&client).await?;
    // Before the election, by every replica: the bundled database and the gateway
    // wait for these Secrets, and a standby may be the first to start.
    crate::generated::ensure(&client, &settings.connector_runtime).await?;
    let ready = Readiness::default();
    let bound = admin::serve(options.admin_addr, ready.clone(), metrics.clone()).await?;
    tracing::info!(%bound, "admin server listening");

    let mut lost_leadership = None;
    if let Some((namespace, name, identity)) = &options.leader_election {
        let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), name)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_duration(10)
            .with_grace(3)
            .with_field_manager(crate::labels::MANAGER)
            .build()
            .await?;
        let (mut is_leader, task) = manager.watch().await;
        // A standby is ready: it serves its purpose by waiting.
        ready.set(true);
        tracing::info!(identity, "waiting to become the leader");
        while !*is_leader.borrow_and_update() {
            tokio::select! {
                changed = is_leader.changed() => changed?,
                _ = shutdown_signal() => return Ok(()),
            }
        }
        tracing::info!(identity, "became the leader");
        metrics.leader.set(1);
        lost_leadership = Some((is_leader, task));
    }

    let stores = Stores::start(&client).await?;
    let shared = Arc::new(Shared::new(client.clone(), settings, metrics.clone(), stores));
    tokio::spawn(crate::gauges::run(shared.clone()));
    let shutdown = async move {
        match lost_leadership {
            Some((mut is_leader, _task)) => {
                tokio::select! {
                    _ = shutdown_signal() => {}
                    _ = async { while is_leader.changed().await.is_ok() { if !*is_leader.borrow() { break; } } } => {
                        tracing::warn!("lost leadership; stopping");
                    }
                }
            }
            None => shutdown_signal().await,
        }
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let config = ControllerConfig::default().concurrency(options.concurrency);
    let wc = watcher::Config::default();

    let accounts = Controller::new(Api::<Guarded<MessengerAccount>>::all(client.clone()), wc.clone())
        .with_config(config.clone())
        .owns(Api::<StatefulSet>::all(client.clone()), wc.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), wc.clone());
    let account_store = accounts.store();
    let store = account_store.clone();
    let accounts = accounts
        .watches(Api::<Guarded<CrmBinding>>::all(client.clone()), wc.clone(), move |b| {
            let Ok(b) = b.0 else { return Vec::new() };
            store
                .state()
                .into_iter()
                .filter(|a| a.0.as_ref().is_ok_and(|a| selection::selects(&b, a)))
                .map(|a| ObjectRef::from(a.as_ref()))
                .collect::<Vec<_>>()
        })
        // Heartbeats: a renewal changes only the Lease, so watch Leases too (cheap:
        // nothing is written unless the status changes).
        .watches(
            Api::<k8s_openapi::api::coordination::v1::Lease>::all(client.clone()),
            watcher::Config::default().labels(&format!("{}={}", crate::labels::MANAGED_BY, crate::labels::MANAGER)),
            |lease| {
                let account = lease.labels().get(crate::labels::ACCOUNT).cloned();
                account.zip(lease.namespace()).map(|(name, ns)| ObjectRef::new(&name).within(&ns))
            },
        )
        .watches(Api::<Guarded<SyncPolicy>>::all(client.clone()), wc.clone(), {
            let store = account_store.clone();
            move |p| {
                store
                    .state()
                    .into_iter()
                    .filter(|a| a.namespace() == p.namespace())
                    .map(|a| ObjectRef::from(a.as_ref()))
                    .collect::<Vec<_>>()
            }
        })
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(
            guarded("messengeraccount", account::reconcile),
            error_policy,
            Arc::new(account::Context::new(shared.clone())),
        )
        .for_each(|_| async {});

    let bindings =
        Controller::new(Api::<Guarded<CrmBinding>>::all(client.clone()), wc.clone()).with_config(config.clone());
    let binding_store = bindings.store();
    let bindings = bindings
        .watches(Api::<Guarded<MessengerAccount>>::all(client.clone()), wc.clone(), {
            let store = binding_store.clone();
            // Only the bindings that select the account, or list it as bound (it
            // may have left them), need to look again.
            move |a| {
                let name = a.name_any();
                let account = a.0.ok();
                store
                    .state()
                    .into_iter()
                    .filter(|b| {
                        b.0.as_ref().is_ok_and(|b| {
                            let listed = b.status.as_ref().is_some_and(|s| s.bound_accounts.contains(&name));
                            listed || account.as_ref().is_some_and(|a| selection::selects(b, a))
                        })
                    })
                    .map(|b| ObjectRef::from(b.as_ref()))
                    .collect::<Vec<_>>()
            }
        })
        .watches(Api::<Guarded<SyncPolicy>>::all(client.clone()), wc.clone(), {
            let store = binding_store.clone();
            move |p| {
                store
                    .state()
                    .into_iter()
                    .filter(|b| {
                        b.namespace() == p.namespace()
                            && b.0.as_ref().is_ok_and(|b| b.spec.policy_ref.name == p.name_any())
                    })
                    .map(|b| ObjectRef::from(b.as_ref()))
                    .collect::<Vec<_>>()
            }
        })
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(guarded("crmbinding", binding::reconcile), error_policy, Arc::new(binding::Context::new(shared.clone())))
        .for_each(|_| async {});

    let policies = Controller::new(Api::<Guarded<SyncPolicy>>::all(client.clone()), wc.clone())
        .with_config(config)
        .watches(Api::<Guarded<CrmBinding>>::all(client.clone()), wc.clone(), |b| {
            let ns = b.namespace();
            b.0.ok().zip(ns).map(|(b, ns)| ObjectRef::new(&b.spec.policy_ref.name).within(&ns))
        })
        .graceful_shutdown_on(stopped(stop_rx.clone()))
        .run(guarded("syncpolicy", policy::reconcile), error_policy, shared)
        .for_each(|_| async {});

    // Ready once every kind can be listed (the watches start from the same lists).
    // Waiting on the controller's own store would steal its wake-up: its readiness
    // signal wakes a single waiter.
    let lists = (
        Api::<MessengerAccount>::all(client.clone()).list_metadata(&kube::api::ListParams::default().limit(1)).await,
        Api::<CrmBinding>::all(client.clone()).list_metadata(&kube::api::ListParams::default().limit(1)).await,
        Api::<SyncPolicy>::all(client.clone()).list_metadata(&kube::api::ListParams::default().limit(1)).await,
    );
    if let (Ok(_), Ok(_), Ok(_)) = lists {
        ready.set(true);
    }
    tokio::join!(accounts, bindings, policies);
    tracing::info!("controllers stopped");
    Ok(())
}

/// A client from the environment (in-cluster or `KUBECONFIG`) whose requests are
/// counted in `metrics`.
pub async fn counted_client(metrics: Arc<Metrics>) -> anyhow::Result<Client> {
    let config = kube::Config::infer().await?;
    let layer = tower::util::MapRequestLayer::new(move |req: http::Request<kube::client::Body>| {
        metrics.api_requests.inc();
        req
    });
    Ok(kube::client::ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// Refuses settings no connector could run with.
fn check_settings(settings: &Settings) -> anyhow::Result<()> {
    if settings.connector_image.trim().is_empty() {
        anyhow::bail!(
            "no connector image: pass --connector-image (or set CRMESSENGER_CONNECTOR_IMAGE) to the image that holds {} (the chart passes its own image)",
            crate::settings::CONNECTOR_COMMAND
        );
    }
    if let Some(e) = settings.extra_env.iter().find(|e| crate::settings::reserved_env_name(&e.name)) {
        anyhow::bail!(
            "the extra connector environment sets {}, which the operator sets itself (names starting with CRMESSENGER_, POD_NAME and POD_NAMESPACE are reserved)",
            e.name
        );
    }
    Ok(())
}

async fn check_crds(client: &Client) -> anyhow::Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["messengeraccounts.crmessenger.io", "crmbindings.crmessenger.io", "syncpolicies.crmessenger.io"] {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!(
                "the CustomResourceDefinition {name} is not installed: install the chart with crds.install=true, or run `kubectl apply --server-side -f crds/`"
            ),
            Err(e) => anyhow::bail!(
                "cannot read CustomResourceDefinition {name} (does the operator's ServiceAccount have get on customresourcedefinitions?): {e}"
            ),
        }
    }
    Ok(())
}

pub use crmessenger_telemetry::shutdown_signal;
