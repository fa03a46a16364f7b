//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

/// Labels of reconcile counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `messengeraccount`, `crmbinding` or `syncpolicy`.
    pub kind: String,
    /// `ok` or an error's metric label.
    pub result: String,
}

/// An account, `namespace/name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AccountLabel {
    /// `namespace/name`.
    pub account: String,
}

/// An account's condition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    /// `namespace/name`.
    pub account: String,
    /// The condition type.
    pub condition: String,
    /// Its reason.
    pub reason: String,
}

/// A binding's condition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BindingConditionLabels {
    /// `namespace/name`.
    pub binding: String,
    /// The condition type.
    pub condition: String,
    /// Its reason.
    pub reason: String,
}

/// The operator's metrics.
pub struct Metrics {
    /// 1 while an account's condition is True (Ready, ConnectorAvailable,
    /// LoggedIn, CrmSynced), labelled with its reason; suspended accounts have none.
    pub account_condition: Family<ConditionLabels, Gauge>,
    /// Seconds since each connector last renewed its heartbeat Lease.
    pub heartbeat_age: Family<AccountLabel, Gauge<f64, AtomicU64>>,
    /// 1 while a binding's condition is True (Ready, CredentialsValid), with its reason.
    pub binding_condition: Family<BindingConditionLabels, Gauge>,
    registry: Mutex<Registry>,
    /// Reconciles by kind and result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// OAuth token refreshes done by this process.
    pub token_refreshes: Counter,
    /// 1 while this process is the leader.
    pub leader: Gauge,
    /// Requests this process sent to the Kubernetes API.
    pub api_requests: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("crmessenger_operator");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let token_refreshes = Counter::default();
        let leader = Gauge::default();
        let api_requests = Counter::default();
        registry.register("api_requests", "Requests sent to the Kubernetes API", api_requests.clone());
        registry.register("reconciles", "Reconciles by kind and result", reconciles.clone());
        registry.register("token_refreshes", "OAuth token refreshes", token_refreshes.clone());
        registry.register("leader", "1 while this process is the leader", leader.clone());
        let account_condition = Family::<ConditionLabels, Gauge>::default();
        let heartbeat_age = Family::<AccountLabel, Gauge<f64, AtomicU64>>::default();
        let binding_condition = Family::<BindingConditionLabels, Gauge>::default();
        registry.register("account_condition", "1 while the account's condition is True", account_condition.clone());
        registry.register(
            "connector_heartbeat_age_seconds",
            "Seconds since the connector last renewed its heartbeat",
            heartbeat_age.clone(),
        );
        registry.register("binding_condition", "1 while the binding's condition is True", binding_condition.clone());
        Self {
            registry: Mutex::new(registry),
            reconciles,
            token_refreshes,
            leader,
            api_requests,
            account_condition,
            heartbeat_age,
            binding_condition,
        }
    }
}

impl Metrics {
    /// Counts one reconcile.
    pub fn reconciled(&self, kind: &str, result: &str) {
        self.reconciles.get_or_create(&ReconcileLabels { kind: kind.into(), result: result.into() }).inc();
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        }
        out
    }
}
