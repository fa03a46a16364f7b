//! CRMessenger's API: the three custom resources (`MessengerAccount`, `CrmBinding`,
//! `SyncPolicy`) in group `crmessenger.io`, version `v1alpha1`.
//!
//! This crate does no IO. Everything the API server can check is expressed in the
//! schema (CEL rules, defaults, bounds), so a bad object is rejected at admission
//! with a message naming the field.

// kube's derive attributes repeat `type_ = "string"` once per printer column, which
// clippy mistakes for a duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod account;
pub mod binding;
pub mod common;
pub mod config;
pub mod crd;
pub mod manifests;
pub mod policy;
pub mod selection;

pub use account::{MessengerAccount, MessengerAccountSpec, MessengerAccountStatus};
pub use binding::{CrmBinding, CrmBindingSpec, CrmBindingStatus};
pub use policy::{SyncPolicy, SyncPolicySpec, SyncPolicyStatus};

/// Where the repository's `examples/` are, for unit tests: read at run time (cargo
/// sets `CARGO_MANIFEST_DIR` for tests), since a test binary reused from a shared
/// target dir may have been built in another checkout.
#[cfg(test)]
pub(crate) fn examples_dir() -> std::path::PathBuf {
    let crate_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&crate_dir).join("../examples")
}

/// The API group of every CRMessenger resource.
pub const GROUP: &str = "crmessenger.io";
/// The served and stored version.
pub const VERSION: &str = "v1alpha1";
/// The `kubectl get` category that lists all three kinds.
pub const CATEGORY: &str = "crmessenger";
