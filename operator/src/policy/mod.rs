//! The SyncPolicy controller: validates what CEL cannot, lists the bindings that use
//! the policy, and reports Ready.

use crate::conditions::{Verdict, merge};
use crate::controller::Shared;
use crate::error::{Error, Result};
use crmessenger_api::SyncPolicy;
use crmessenger_api::common::conditions::READY;
use crmessenger_api::policy::SyncPolicySpec;
use crmessenger_api::policy::SyncPolicyStatus;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use std::sync::Arc;
use std::time::Duration;

/// Placeholders a lead name template may use.
pub const PLACEHOLDERS: [&str; 4] = ["name", "channel", "phone", "username"];

/// What CEL cannot check: the lead name template's placeholders. Pure.
pub fn validate(spec: &SyncPolicySpec) -> Verdict {
    let template = &spec.leads.name_template;
    let mut unknown = Vec::new();
    let mut rest = template.as_str();
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            return Verdict::no(
                READY,
                "InvalidNameTemplate",
                format!("spec.leads.nameTemplate {template:?} has an unclosed '{{'"),
            );
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            unknown.push(format!("{{{name}}}"));
        }
        rest = &after[close + 1..];
    }
    if !unknown.is_empty() {
        return Verdict::no(
            READY,
            "InvalidNameTemplate",
            format!(
                "spec.leads.nameTemplate uses unknown placeholder(s) {}; known: {{name}}, {{channel}}, {{phone}}, {{username}}",
                unknown.join(", ")
            ),
        );
    }
    Verdict::yes(READY, "Valid", "the policy is valid")
}

/// Reconciles one policy.
#[tracing::instrument(skip_all, fields(policy = %policy.name_any()))]
pub async fn reconcile(policy: Arc<SyncPolicy>, ctx: Arc<Shared>) -> Result<Action> {
    let ns = policy.namespace().ok_or_else(|| Error::Malformed("policy without namespace".into()))?;
    let name = policy.name_any();
    let bindings = ctx.stores.bindings_in(&ns);
    let mut users: Vec<String> =
        bindings.iter().filter(|b| b.spec.policy_ref.name == name).map(|b| b.name_any()).collect();
    users.sort();
    let verdict = validate(&policy.spec);
    let previous = policy.status.clone().unwrap_or_default();
    if crate::conditions::newly_failed(&previous.conditions, &verdict) {
        ctx.warn(policy.as_ref(), &verdict.reason, verdict.message.clone(), "Reconcile").await;
    }
    let conditions = merge(&previous.conditions, &[verdict], policy.metadata.generation, jiff::Timestamp::now());
    let same = previous.observed_generation == policy.metadata.generation
        && previous.bindings == users
        && previous.binding_count == Some(users.len() as i32)
        && crate::conditions::unchanged(&previous.conditions, &conditions);
    if same {
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let status = SyncPolicyStatus {
        observed_generation: policy.metadata.generation,
        conditions,
        binding_count: Some(users.len() as i32),
        bindings: users,
    };
    ctx.apply_status(policy.as_ref(), &status).await?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_template_placeholders_are_checked() {
        let mut spec = SyncPolicySpec::default();
        assert!(validate(&spec).ok);
        spec.leads.name_template = "{channel} / {nmae}".into();
        let v = validate(&spec);
        assert!(!v.ok && v.message.contains("{nmae}"), "{}", v.message);
        spec.leads.name_template = "{channel".into();
        assert_eq!(validate(&spec).reason, "InvalidNameTemplate");
    }
}
