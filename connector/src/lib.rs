//! The CRMessenger connector: one messenger account bridged to a CRM.
//!
//! - [`messenger`]: the domain of messages and the `Messenger` trait adapters
//!   implement (the scripted messenger's adapter lives here too);
//! - [`store`]: PostgreSQL / SQLite storage (inbox, outbox, maps, cursors,
//!   sessions, budgets, routes, the account lock);
//! - [`bridge`]: the engine that moves messages both ways;
//! - [`gateway`]: the shared webhook receiver;
//! - [`sidecar`] and [`admin`]: the login and status pages;
//! - [`http`]: how every listener is served (deadlines, headers, peer address);
//! - [`kube`]: the connector's own status, Lease heartbeat and config;
//! - [`app`]: the subcommands put together;
//! - [`standalone`]: every account of a manifest directory in one process.

pub mod admin;
pub mod app;
pub mod bridge;
pub mod gateway;
pub mod http;
pub mod kube;
pub mod messenger;
pub mod metrics;
pub mod qr;
pub mod sidecar;
pub mod standalone;
pub mod state;
pub mod store;
pub mod texts;

/// The API version this connector speaks.
pub fn api_version() -> String {
    format!("{}/{}", crmessenger_api::GROUP, crmessenger_api::VERSION)
}
