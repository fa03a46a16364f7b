//! The CRMessenger connector: one messenger account bridged to a CRM.
//!
//! Its subcommands (`run`, `sidecar`, `gateway`, `standalone`) arrive with the
//! connector core; this crate currently holds the shared library surface.

/// The API version this connector speaks.
pub fn api_version() -> String {
    format!("{}/{}", crmessenger_api::GROUP, crmessenger_api::VERSION)
}
