//! The CrmBinding controller: resolves the accounts it selects and its policy,
//! checks its credentials Secret, owns the live OAuth token pair, and reports.

pub mod credentials;
pub mod fields;
pub mod sources;
pub mod status;
pub mod token;

use crate::conditions::Verdict;
use crate::controller::{ControllerContext, Shared};
use crate::error::{Error, Result};
use crmessenger_api::CrmBinding;
use crmessenger_api::common::conditions::CREDENTIALS_VALID;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;
use token::Outcome;

/// The shortest time between two status writes of one binding.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// The binding controller's context: the shared state, plus what it remembers
/// between reconciles.
pub struct Context {
    /// What every controller shares.
    pub shared: Arc<Shared>,
    /// Recent successful credential checks, per `namespace/name/generation`.
    credentials: Mutex<HashMap<String, Checked>>,
    /// When each binding's status was last written (see [`Context::status_write_due`]).
    status_writes: Mutex<HashMap<String, Instant>>,
    /// Recent failed CRM lookups (identity fields, lead sources), per key: when,
    /// the verdict, and how many failed in a row.
    failed_lookups: Mutex<HashMap<String, (Instant, Verdict, u32)>>,
}

/// How long the first failed CRM lookup is trusted before the CRM is asked again;
/// each further failure in a row doubles it, up to [`LOOKUP_RETRY`].
const LOOKUP_FIRST_RETRY: Duration = Duration::from_secs(10);
/// The longest a failed CRM lookup is trusted.
const LOOKUP_RETRY: Duration = Duration::from_secs(300);

/// How long a lookup that failed `failures` times in a row is not repeated.
fn lookup_wait(failures: u32) -> Duration {
    LOOKUP_FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(10)).min(LOOKUP_RETRY)
}

#[cfg(test)]
mod lookup_tests {
    use super::*;

    #[test]
    fn a_failed_lookup_is_asked_again_sooner_the_first_times() {
        let waits: Vec<u64> = (1..=7).map(|n| lookup_wait(n).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(lookup_wait(1000), LOOKUP_RETRY);
    }
}

/// A successful credentials check.
#[derive(Clone)]
struct Checked {
    at: Instant,
    verdict: Verdict,
    token_expires_at: Option<i64>,
    next_check: Duration,
}

impl Context {
    /// A context over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            credentials: Mutex::default(),
            status_writes: Mutex::default(),
            failed_lookups: Mutex::default(),
        }
    }

    /// Whether `key`'s status may be written now: at most one write per `every`,
    /// so a burst of changes (hundreds of accounts bound at once) becomes a few
    /// writes. `Err(wait)` says when the next may go; the caller requeues, so the
    /// last change is always written. Reconciles themselves are never delayed.
    fn status_write_due(&self, key: &str, every: Duration) -> Result<(), Duration> {
        let Ok(mut writes) = self.status_writes.lock() else { return Ok(()) };
        let now = Instant::now();
        if let Some(last) = writes.get(key)
            && now.duration_since(*last) < every
        {
            return Err(every - now.duration_since(*last));
        }
        writes.insert(key.to_string(), now);
        Ok(())
    }
}

impl Context {
    /// The verdict of a CRM lookup under `key` that failed too recently to ask
    /// again ([`lookup_wait`]).
    fn recent_failure(&self, key: &str) -> Option<Verdict> {
        let m = self.failed_lookups.lock().ok()?;
        m.get(key).filter(|(at, _, n)| at.elapsed() < lookup_wait(*n)).map(|(_, v, _)| v.clone())
    }

    /// Remembers a failed CRM lookup's verdict under `key`.
    fn remember_failure(&self, key: String, verdict: &Verdict) {
        if let Ok(mut m) = self.failed_lookups.lock() {
            let failures = m.get(&key).map_or(0, |(_, _, n)| *n) + 1;
            m.insert(key, (Instant::now(), verdict.clone(), failures));
        }
    }

    /// How soon a failed lookup of binding `ns/name` may be asked again, if one waits.
    fn next_lookup(&self, ns: &str, name: &str) -> Option<Duration> {
        let me = format!("{ns}/{name}");
        let m = self.failed_lookups.lock().ok()?;
        m.iter()
            .filter(|(k, _)| {
                k.split_once(':').is_some_and(|(_, rest)| rest == me || rest.starts_with(&format!("{me}/")))
            })
            .map(|(_, (at, _, n))| lookup_wait(*n).saturating_sub(at.elapsed()))
            .min()
    }

    /// A REST client for the binding's CRM with its stored access token (for the
    /// operator's few lookups: a budget of its own, amoCRM's rate).
    async fn crm_rest(
        &self,
        binding: &CrmBinding,
        base_url: &str,
        ca_pem: Option<&str>,
    ) -> std::result::Result<crmessenger_crm::amocrm::Transport, crmessenger_crm::CrmError> {
        use crmessenger_crm::CrmError;
        use crmessenger_crm::budget::{Budget, Limit};
        let stored = token::load(self, binding)
            .await
            .map_err(|e| CrmError::Config(e.to_string()))?
            .ok_or_else(|| CrmError::Config("no token stored yet".into()))?;
        let clock = Arc::new(crmessenger_crm::clock::SystemClock);
        let budget = Budget::in_memory(clock, format!("operator:{base_url}"), Limit::AMOCRM_REST);
        let tokens = Arc::new(crmessenger_crm::amocrm::StaticToken(stored.pair.access_token));
        crmessenger_crm::amocrm::Transport::new(base_url, ca_pem, budget, tokens, Duration::from_secs(10))
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

/// Reconciles one binding.
#[tracing::instrument(skip_all, fields(binding = %binding.name_any(), namespace = binding.namespace().unwrap_or_default()))]
pub async fn reconcile(binding: Arc<CrmBinding>, ctx: Arc<Context>) -> Result<Action> {
    let ns = binding.namespace().ok_or_else(|| Error::Malformed("binding without namespace".into()))?;
    let name = binding.name_any();

    // Accounts: the ones this binding selects, split into owned and refused.
    // Borrowed from the cache, not cloned: a namespace may hold thousands.
    let snapshot = ctx.stores.accounts.state();
    let accounts = snapshot.iter().filter_map(|a| a.0.as_ref().ok()).filter(|a| a.namespace().as_deref() == Some(&ns));
    let selection = status::select(&binding, accounts, &ctx.stores.bindings_in(&ns));
    let policy_found = ctx
        .stores
        .policies
        .get(&kube::runtime::reflector::ObjectRef::new(&binding.spec.policy_ref.name).within(&ns))
        .is_some_and(|p| p.0.is_ok());
    let (credentials, expires_at, mut requeue) = credentials(&binding, &ctx, &ns).await?;
    // An unreadable CA is CredentialsValid's to report; the lookup then goes without it.
    let ca: Option<String> = ca_pem(&binding, &ctx, &ns).await?.unwrap_or_default();
    let (fields, contact_fields) = fields::ensure(&binding, &ctx, &ns, credentials.ok, ca.as_deref()).await;
    let (sources, lead_sources) =
        sources::ensure(&binding, &ctx, &ns, &selection.bound, credentials.ok, ca.as_deref()).await;
    // A failed lookup is asked again when its wait ends, not at the next token check.
    if let Some(wait) = ctx.next_lookup(&ns, &name) {
        requeue = requeue.min(wait + Duration::from_millis(200));
    }
    let ready = status::ready(&binding, &credentials, policy_found, &selection);
    let previous = binding.status.clone().unwrap_or_default();
    if crate::conditions::newly_failed(&previous.conditions, &ready) {
        ctx.warn(binding.as_ref(), &ready.reason, ready.message.clone(), "Reconcile").await;
    }
    let observed =
        status::Observed { bound: selection.bound, token_expires_at: expires_at, contact_fields, lead_sources };
    let verdicts = [credentials, fields, sources, ready];
    let Some(next) = status::status(&binding, &verdicts, observed, jiff::Timestamp::now()) else {
        return Ok(Action::requeue(requeue));
    };
    // While accounts keep arriving, the list changes on every one of them: write it
    // at most every 2 s (the last change is written on the requeue).
    if let Err(wait) = ctx.status_write_due(&format!("{ns}/{name}"), STATUS_EVERY) {
        return Ok(Action::requeue(wait.min(requeue)));
    }
    ctx.apply_status(binding.as_ref(), &next).await?;
    Ok(Action::requeue(requeue))
}

/// A credentials check is reused this long when it succeeded (the token is far
/// from expiry), so account churn does not re-read Secrets for every reconcile.
const CREDENTIALS_TTL: Duration = Duration::from_secs(60);

/// CredentialsValid, the token's expiry and when to look again — from a recent
/// successful check, or checked now.
async fn credentials(binding: &CrmBinding, ctx: &Context, ns: &str) -> Result<(Verdict, Option<i64>, Duration)> {
    let key = format!("{ns}/{}/{}", binding.name_any(), binding.metadata.generation.unwrap_or_default());
    let cached = ctx.credentials.lock().ok().and_then(|m| m.get(&key).cloned());
    if let Some(c) = cached
        && c.at.elapsed() < CREDENTIALS_TTL.min(c.next_check)
    {
        let left = c.next_check.saturating_sub(c.at.elapsed()).max(Duration::from_secs(1));
        return Ok((c.verdict, c.token_expires_at, left));
    }
    let checked = check_credentials(binding, ctx, ns).await?;
    if checked.0.ok
        && let Ok(mut m) = ctx.credentials.lock()
    {
        let (verdict, token_expires_at, next_check) = checked.clone();
        m.insert(key, Checked { at: Instant::now(), verdict, token_expires_at, next_check });
    }
    Ok(checked)
}

/// The extra CA certificate the binding names (`spec.crm.amocrm.caSecret`), or
/// why it cannot be read.
async fn ca_pem(binding: &CrmBinding, ctx: &Context, ns: &str) -> Result<std::result::Result<Option<String>, Verdict>> {
    let Some(r) = binding.spec.crm.amocrm.as_ref().and_then(|a| a.ca_secret.as_ref()) else { return Ok(Ok(None)) };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    Ok(match secrets.get_opt(&r.name).await? {
        Some(s) => match credentials::decode(&s).get(&r.key) {
            Some(pem) => Ok(Some(pem.clone())),
            None => {
                let msg = format!("Secret {} (spec.crm.amocrm.caSecret) has no key {}", r.name, r.key);
                Err(Verdict::no(CREDENTIALS_VALID, "SecretKeysMissing", msg))
            }
        },
        None => {
            let msg = format!("Secret {} (spec.crm.amocrm.caSecret) does not exist", r.name);
            Err(Verdict::no(CREDENTIALS_VALID, "SecretNotFound", msg))
        }
    })
}

/// Reads the Secrets and makes sure a current token is stored.
async fn check_credentials(binding: &CrmBinding, ctx: &Context, ns: &str) -> Result<(Verdict, Option<i64>, Duration)> {
    let Some(amo) = &binding.spec.crm.amocrm else {
        return Ok((
            Verdict::no(CREDENTIALS_VALID, "InvalidSpec", "no amocrm settings"),
            None,
            Duration::from_secs(300),
        ));
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let Some(secret) = secrets.get_opt(&amo.credentials_secret.name).await? else {
        let msg = format!("Secret {} (spec.crm.amocrm.credentialsSecret) does not exist", amo.credentials_secret.name);
        return Ok((Verdict::no(CREDENTIALS_VALID, "SecretNotFound", msg), None, Duration::from_secs(30)));
    };
    let bootstrap = match credentials::read(&amo.credentials_secret.name, &credentials::decode(&secret)) {
        Ok(b) => b,
        Err(v) => return Ok((v, None, Duration::from_secs(30))),
    };
    let ca_pem = match ca_pem(binding, ctx, ns).await? {
        Ok(ca) => ca,
        Err(v) => return Ok((v, None, Duration::from_secs(30))),
    };
    let version = secret.resource_version().unwrap_or_default();
    Ok(match token::ensure(ctx, binding, &bootstrap, &version, ca_pem.as_deref()).await? {
        Outcome::Valid(stored) => {
            let now = jiff::Timestamp::now().as_second();
            let next =
                stored.pair.expires_at.saturating_sub(token::REFRESH_MARGIN.as_secs() as i64).saturating_sub(now);
            let expires = (stored.pair.expires_at != i64::MAX).then_some(stored.pair.expires_at);
            let requeue = Duration::from_secs(next.clamp(5, 300) as u64);
            (Verdict::yes(CREDENTIALS_VALID, "TokenValid", "the CRM accepted the credentials"), expires, requeue)
        }
        Outcome::Refused(e) => {
            let (reason, retry) = match &e {
                crmessenger_crm::CrmError::ReauthorizationRequired(_) => ("ReauthorizationRequired", 300),
                crmessenger_crm::CrmError::Config(_) => ("InvalidClientCredentials", 300),
                _ => ("TokenEndpointUnavailable", 30),
            };
            let msg = match reason {
                "ReauthorizationRequired" => format!(
                    "the CRM refused the grant ({e}); grant access again and put the new authorization_code in Secret {}",
                    amo.credentials_secret.name
                ),
                _ => e.to_string(),
            };
            (Verdict::no(CREDENTIALS_VALID, reason, msg), None, Duration::from_secs(retry))
        }
    })
}
