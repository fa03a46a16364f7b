//! The CRMessenger operator: controllers for MessengerAccount, CrmBinding and
//! SyncPolicy. Each reconcile is fetch → validate (pure) → build (pure) → apply →
//! status, with status written only by server-side apply.

pub mod account;
pub mod admin;
pub mod binding;
pub mod conditions;
pub mod controller;
pub mod crdgen;
pub mod error;
pub mod gauges;
pub mod generated;
pub mod labels;
pub mod metrics;
pub mod policy;
pub mod run;
pub use crmessenger_api::selection;
pub mod settings;
pub use crmessenger_telemetry as telemetry;
