//! The MessengerAccount controller: fetch → validate → build → apply → status.

pub mod build;
pub mod children;
pub mod runtime;
pub mod status;
pub mod validate;

use crate::conditions::{Verdict, merge};
use crate::controller::{ControllerContext, Shared};
use crate::error::{Error, Result};
use crate::labels::FINALIZER;
use crate::selection;
use crmessenger_api::account::{AccountPhase, MessengerAccountStatus};
use crmessenger_api::common::LocalObjectRef;
use crmessenger_api::common::conditions::{CONFIG_VALID, CONNECTOR_AVAILABLE, READY};
use crmessenger_api::config::{ConnectorConfig, RuntimeSettings, render};
use crmessenger_api::{CrmBinding, MessengerAccount, SyncPolicy};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// How often an account without a heartbeat to watch is looked at anyway.
pub const RESYNC: Duration = Duration::from_secs(300);
/// How often an account waiting for the database Secret is looked at.
const DATABASE_RECHECK: Duration = Duration::from_secs(30);
/// How soon an account waiting for its binding's lookups is looked at again.
const BINDING_RECHECK: Duration = Duration::from_secs(3);

/// The account controller's context: the shared state, plus what it remembers
/// between reconciles.
pub struct Context {
    /// What every controller shares.
    pub shared: Arc<Shared>,
    /// Children last applied per account (`namespace/name`).
    pub applied: std::sync::Mutex<std::collections::HashMap<String, children::Applied>>,
    /// The connectors' runtime values.
    pub runtime: runtime::RuntimeCache,
}

impl Context {
    /// A context over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared, applied: Default::default(), runtime: Default::default() }
    }
}

impl std::ops::Deref for Context {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl ControllerContext for Context {
    fn shared(&self) -> &Shared {
        &self.shared
    }
}

/// Reconciles one account.
#[tracing::instrument(skip_all, fields(account = %account.name_any(), namespace = account.namespace().unwrap_or_default()))]
pub async fn reconcile(account: Arc<MessengerAccount>, ctx: Arc<Context>) -> Result<Action> {
    let namespace = account.namespace().ok_or_else(|| Error::Malformed("account without namespace".into()))?;
    let api: Api<MessengerAccount> = Api::namespaced(ctx.client.clone(), &namespace);
    if account.metadata.deletion_timestamp.is_some() {
        return cleanup(&api, &account, &ctx).await;
    }
    if !account.finalizers().iter().any(|f| f == FINALIZER) {
        let mut finalizers = account.finalizers().to_vec();
        finalizers.push(FINALIZER.to_string());
        set_finalizers(&api, &account, finalizers).await?;
        return Ok(Action::await_change());
    }

    // Fetch (from the watched caches).
    let mut bindings = ctx.stores.bindings_in(&namespace);
    if selection::owner(&account, &bindings).is_none() {
        // The cache may lag behind the event that brought us here: ask the API
        // before reporting the account as unbound.
        bindings = Api::namespaced(ctx.client.clone(), &namespace).list(&Default::default()).await?.items;
    }
    let binding = selection::owner(&account, &bindings);
    let mut policy: Option<SyncPolicy> = binding.and_then(|b| {
        ctx.stores
            .policies
            .get(&ObjectRef::new(&b.spec.policy_ref.name).within(&namespace))
            .and_then(|p| p.0.clone().ok())
    });
    if let (Some(b), None) = (binding, &policy) {
        policy = Api::<SyncPolicy>::namespaced(ctx.client.clone(), &namespace).get_opt(&b.spec.policy_ref.name).await?;
    }
    let lease: Option<Lease> = ctx
        .stores
        .leases
        .get(&ObjectRef::new(&build::child_name(&account.name_any())).within(&namespace))
        .map(|l| (*l).clone());

    // Validate, build, apply.
    let runtime =
        RuntimeSettings { crm_requests_per_second: ctx.settings.crm_requests_per_second, token_version: None };
    let (config_valid, desired_hash) = match validate::resolve(&account.name_any(), binding, policy.as_ref()) {
        Ok((binding, policy)) => match render(&account, binding, policy, runtime) {
            Ok(config) => connector(&ctx, &account, &namespace, binding, &config).await?,
            Err(e) => (Verdict::no(CONFIG_VALID, "InvalidSpec", e.to_string()), None),
        },
        Err(verdict) => (verdict, None),
    };

    // Status.
    let status = account.status.clone().unwrap_or_default();
    let observed = status::Observed {
        lease: lease.as_ref(),
        running_hash: status.connector.as_ref().and_then(|c| c.config_hash.as_deref()),
        desired_hash: desired_hash.as_deref(),
        connector_conditions: &status.conditions,
        suspended: account.spec.suspend,
        now: Timestamp::now(),
        heartbeat_timeout: ctx.settings.heartbeat_timeout,
    };
    let available = status::connector_available(&observed);
    let ready = status::ready(&config_valid, &available, &observed);
    let phase = status::phase(&config_valid, &available, &ready, account.spec.suspend, false);
    let binding_ref = binding.map(|b| LocalObjectRef { name: b.name_any() });
    if crate::conditions::newly_failed(&status.conditions, &config_valid) {
        ctx.warn(account.as_ref(), &config_valid.reason, config_valid.message.clone(), "Reconcile").await;
    }
    // Secrets in the operator's namespace are not watched: while the database Secret
    // is missing, look again soon, so one created by hand is noticed.
    let waiting_for_secret = config_valid.reason == validate::DATABASE_SECRET_MISSING;
    // The binding's status change wakes this reconcile, but the binding read here
    // comes from another watch, which may not have that change yet: look again soon.
    let waiting_for_binding = config_valid.reason == validate::WAITING_FOR_BINDING;
    write_status(&ctx, &account, &[config_valid, available, ready], phase, binding_ref).await?;
    if waiting_for_secret {
        return Ok(Action::requeue(DATABASE_RECHECK));
    }
    if waiting_for_binding {
        return Ok(Action::requeue(BINDING_RECHECK));
    }
    Ok(Action::requeue(next_check(lease.as_ref(), ctx.settings.heartbeat_timeout)))
}

/// Builds and applies the connector of a valid config, and says so — unless the
/// installation has no database for it (a connector without one exits at once):
/// then that is the verdict, and children already running are left as they are.
async fn connector(
    ctx: &Context,
    account: &MessengerAccount,
    namespace: &str,
    binding: &CrmBinding,
    config: &ConnectorConfig,
) -> Result<(Verdict, Option<String>)> {
    let runtime = ctx.runtime.get(&ctx.shared).await?;
    if let Err(verdict) = validate::database(&ctx.settings.connector_runtime.database, &runtime) {
        return Ok((verdict, None));
    }
    let hash = config.hash();
    let children = build::build(account, config, &ctx.settings, &runtime).map_err(Error::Malformed)?;
    let created = account.metadata.creation_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    let new_account = Timestamp::now().duration_since(created).as_secs_f64() < 60.0;
    children::apply_if_changed(ctx, namespace, &account.name_any(), &children, &hash, new_account).await?;
    let bound = format!("bound by CrmBinding {}", binding.name_any());
    Ok((Verdict::yes(CONFIG_VALID, "Valid", bound), Some(hash)))
}

/// When to look again: just after the heartbeat would go stale (renewals change
/// only the Lease, not the account, so nothing else would wake us), or after
/// [`RESYNC`] when there is no heartbeat to watch.
fn next_check(lease: Option<&Lease>, timeout: Duration) -> Duration {
    let renewed = lease.and_then(|l| l.spec.as_ref()).and_then(|s| s.renew_time.as_ref()).map(|t| t.0);
    match renewed {
        Some(at) => {
            let stale_at = at.as_millisecond() + timeout.as_millis() as i64 + 500;
            let left = stale_at - Timestamp::now().as_millisecond();
            if left > 0 { Duration::from_millis(left as u64).min(RESYNC) } else { RESYNC }
        }
        None => RESYNC,
    }
}

/// Applies the operator-owned part of the status (server-side apply), only when it
/// changed.
async fn write_status(
    ctx: &Context,
    account: &MessengerAccount,
    verdicts: &[Verdict],
    phase: AccountPhase,
    binding: Option<LocalObjectRef>,
) -> Result<()> {
    let status = account.status.clone().unwrap_or_default();
    let conditions = merge(&status.conditions, verdicts, account.metadata.generation, Timestamp::now());
    let unchanged = status.phase == Some(phase)
        && status.observed_generation == account.metadata.generation
        && status.binding == binding
        && crate::conditions::unchanged(&status.conditions, &conditions);
    if unchanged {
        return Ok(());
    }
    let owned = MessengerAccountStatus {
        phase: Some(phase),
        observed_generation: account.metadata.generation,
        conditions,
        binding,
        ..Default::default()
    };
    ctx.apply_status(account, &owned).await?;
    Ok(())
}

/// The operator-owned part of the status as it stands, with `phase`: what a write
/// that changes only the phase sends (server-side apply removes owned fields
/// that a write leaves out).
fn owned_with_phase(status: &MessengerAccountStatus, phase: AccountPhase) -> MessengerAccountStatus {
    MessengerAccountStatus {
        phase: Some(phase),
        observed_generation: status.observed_generation,
        conditions: status
            .conditions
            .iter()
            .filter(|c| OPERATOR_CONDITIONS.contains(&c.type_.as_str()))
            .cloned()
            .collect(),
        binding: status.binding.clone(),
        ..Default::default()
    }
}

/// The conditions the operator owns; the connector owns the others.
const OPERATOR_CONDITIONS: [&str; 3] = [CONFIG_VALID, CONNECTOR_AVAILABLE, READY];

/// Deletion: the connector sees the deletion timestamp, logs the session out,
/// purges the account's data and sets `status.connector.cleanupCompletedAt`. The
/// finalizer is removed then, or after the cleanup timeout with a Warning Event, so
/// a dead connector cannot block deletion forever.
async fn cleanup(api: &Api<MessengerAccount>, account: &MessengerAccount, ctx: &Context) -> Result<Action> {
    if !account.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Action::await_change());
    }
    let done = account
        .status
        .as_ref()
        .and_then(|s| s.connector.as_ref())
        .and_then(|c| c.cleanup_completed_at.as_ref())
        .is_some();
    let started = account.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or_else(Timestamp::now);
    let waited = Timestamp::now().duration_since(started).as_secs_f64();
    let timeout = ctx.settings.cleanup_timeout.as_secs_f64();
    if !done && waited < timeout {
        let status = account.status.clone().unwrap_or_default();
        if status.phase != Some(AccountPhase::Terminating) {
            ctx.apply_status(account, &owned_with_phase(&status, AccountPhase::Terminating)).await?;
        }
        let left = Duration::from_secs_f64((timeout - waited).max(1.0));
        return Ok(Action::requeue(left.min(Duration::from_secs(5))));
    }
    if done {
        ctx.inform(
            account,
            "CleanedUp",
            "the connector logged the session out and purged the account's data".into(),
            "Delete",
        )
        .await;
    } else {
        ctx.warn(
            account,
            "CleanupTimedOut",
            format!("no connector confirmed logout and purge within {timeout:.0}s; the account is deleted without it (the messenger session may stay listed among the account's devices)"),
            "Delete",
        )
        .await;
    }
    let finalizers: Vec<String> = account.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(api, account, finalizers).await?;
    Ok(Action::await_change())
}

/// Replaces the account's finalizers, guarded by its resourceVersion so a list that
/// changed meanwhile is never overwritten.
async fn set_finalizers(
    api: &Api<MessengerAccount>,
    account: &MessengerAccount,
    finalizers: Vec<String>,
) -> Result<()> {
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": account.resource_version() } });
    api.patch(&account.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}
