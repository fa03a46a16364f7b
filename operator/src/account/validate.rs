//! Checks that an account, its binding and the binding's policy make a usable
//! configuration. Pure.

use crate::conditions::Verdict;
use crmessenger_api::common::conditions::CONFIG_VALID;
use crmessenger_api::{CrmBinding, SyncPolicy};
use kube::ResourceExt;

/// The binding and policy an account runs under, or why it cannot run.
pub fn resolve<'a>(
    binding: Option<&'a CrmBinding>,
    policy: Option<&'a SyncPolicy>,
) -> Result<(&'a CrmBinding, &'a SyncPolicy), Verdict> {
    let Some(binding) = binding else {
        return Err(Verdict::no(
            CONFIG_VALID,
            "NotBound",
            "no CrmBinding selects this account: create one that names it in accountNames or matches its labels",
        ));
    };
    let Some(policy) = policy else {
        return Err(Verdict::no(
            CONFIG_VALID,
            "PolicyNotFound",
            format!(
                "CrmBinding {} refers to SyncPolicy {}, which does not exist in this namespace",
                binding.name_any(),
                binding.spec.policy_ref.name
            ),
        ));
    };
    Ok((binding, policy))
}
