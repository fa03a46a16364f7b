//! The live OAuth token pair of a binding, kept in a Secret the operator owns (so a
//! GitOps tool never reverts a rotated single-use refresh token). Bootstrapped from
//! the user's Secret, refreshed before expiry, by the leader only.

use super::credentials::{Bootstrap, decode};
use crate::controller::Shared;
use crate::error::Result;
use crate::labels::{self, MANAGER};
use crmessenger_api::CrmBinding;
use crmessenger_api::config::{ACCESS_TOKEN_KEY, token_secret_name};
use crmessenger_crm::CrmError;
use crmessenger_crm::amocrm::grant::{self, Renewal};
use crmessenger_crm::amocrm::{OAuthClient, TokenPair};
use crmessenger_crm::clock::SystemClock;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use crmessenger_crm::amocrm::grant::REFRESH_MARGIN;

/// The stored pair and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Current pair.
    pub pair: TokenPair,
    /// resourceVersion of the bootstrap Secret it was obtained from; a newer
    /// bootstrap Secret (a person granted access again) starts over.
    pub bootstrap_version: String,
}

/// Reads the operator-owned token Secret.
pub async fn load(ctx: &Shared, binding: &CrmBinding) -> Result<Option<Stored>> {
    let ns = binding.namespace().unwrap_or_default();
    let Some(secret) =
        Api::<Secret>::namespaced(ctx.client.clone(), &ns).get_opt(&token_secret_name(&binding.name_any())).await?
    else {
        return Ok(None);
    };
    let d = decode(&secret);
    let Some(access) = d.get(ACCESS_TOKEN_KEY) else { return Ok(None) };
    Ok(Some(Stored {
        pair: TokenPair {
            access_token: access.clone(),
            refresh_token: d.get("refresh_token").cloned().filter(|s| !s.is_empty()),
            expires_at: d.get("expires_at").and_then(|s| s.parse().ok()).unwrap_or(i64::MAX),
        },
        bootstrap_version: d.get("bootstrap_version").cloned().unwrap_or_default(),
    }))
}

/// Writes the token Secret (owned by the binding, garbage-collected with it).
pub async fn store(ctx: &Shared, binding: &CrmBinding, stored: &Stored) -> Result<()> {
    let ns = binding.namespace().unwrap_or_default();
    let name = token_secret_name(&binding.name_any());
    let mut data = BTreeMap::from([
        (ACCESS_TOKEN_KEY.to_string(), ByteString(stored.pair.access_token.clone().into_bytes())),
        ("expires_at".to_string(), ByteString(stored.pair.expires_at.to_string().into_bytes())),
        ("bootstrap_version".to_string(), ByteString(stored.bootstrap_version.clone().into_bytes())),
    ]);
    if let Some(r) = &stored.pair.refresh_token {
        data.insert("refresh_token".into(), ByteString(r.clone().into_bytes()));
    }
    let mut secret = Secret { data: Some(data), type_: Some("Opaque".into()), ..Secret::default() };
    secret.metadata.name = Some(name.clone());
    secret.metadata.namespace = Some(ns.clone());
    secret.metadata.labels = Some(BTreeMap::from([
        (labels::MANAGED_BY.to_string(), MANAGER.to_string()),
        (labels::BINDING.to_string(), binding.name_any()),
    ]));
    secret.metadata.owner_references = binding.controller_owner_ref(&()).map(|o| vec![o]);
    Api::<Secret>::namespaced(ctx.client.clone(), &ns)
        .patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret))
        .await?;
    Ok(())
}

/// What became of the token.
pub enum Outcome {
    /// A usable pair is stored.
    Valid(Stored),
    /// The CRM refused the grant; the error says whether a person must act.
    Refused(CrmError),
}

/// Makes sure a current pair is stored: bootstraps from the user's Secret when there
/// is none (or the user's Secret changed), refreshes when it nears expiry.
pub async fn ensure(
    ctx: &Shared,
    binding: &CrmBinding,
    bootstrap: &Bootstrap,
    bootstrap_version: &str,
    ca_pem: Option<&str>,
) -> Result<Outcome> {
    let base = binding.spec.crm.amocrm.as_ref().map(|a| a.base_url.clone()).unwrap_or_default();
    let clock = Arc::new(SystemClock);
    let oauth = match OAuthClient::new(
        &base,
        ca_pem,
        &bootstrap.client_id,
        &bootstrap.client_secret,
        &bootstrap.redirect_uri,
        clock,
    ) {
        Ok(o) => o,
        Err(e) => return Ok(Outcome::Refused(e)),
    };
    let now = jiff::Timestamp::now().as_second();
    let current = load(ctx, binding).await?.filter(|s| s.bootstrap_version == bootstrap_version);
    match grant::renew(&oauth, bootstrap, current.as_ref().map(|s| &s.pair), now).await {
        Renewal::Keep => Ok(Outcome::Valid(current.unwrap_or_else(|| unreachable!("Keep needs a current pair")))),
        Renewal::New(pair) => {
            if pair.refresh_token.is_some() {
                ctx.metrics.token_refreshes.inc();
            }
            // Store at once: the old refresh token is already spent.
            let stored = Stored { pair, bootstrap_version: bootstrap_version.to_string() };
            store(ctx, binding, &stored).await?;
            ctx.inform(
                binding,
                "TokenRefreshed",
                format!("new access token, valid until {}", stored.pair.expires_at),
                "Refresh",
            )
            .await;
            Ok(Outcome::Valid(stored))
        }
        // A refresh that failed for a passing reason leaves the current token usable
        // until it expires; the next reconcile tries again.
        Renewal::KeepAfterFailure(e) => {
            tracing::warn!(binding = binding.name_any(), "token refresh failed, keeping the current token: {e}");
            Ok(Outcome::Valid(current.unwrap_or_else(|| unreachable!("only with a current pair"))))
        }
        Renewal::Refused(e) => Ok(Outcome::Refused(e)),
    }
}
