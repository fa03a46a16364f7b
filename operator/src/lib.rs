//! The CRMessenger operator.

pub mod crdgen;
