//! Test support for CRMessenger: a real Kubernetes control plane on loopback
//! (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and kwok as a
//! fake kubelet), a test certificate authority, and child processes that never
//! outlive the test process, a real PostgreSQL server, and headless Chromium for
//! pages a person looks at, and a reader for QR codes drawn in a terminal.
//!
//! The suite runs under `cargo test`: every test binary is one process, so
//! [`ControlPlane::shared`] starts one control plane per test binary and each test
//! takes a namespace of its own with [`ControlPlane::namespace`].

pub mod browser;
pub mod capture;
pub mod certs;
pub mod checks;
pub mod clock;
pub mod controlplane;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod postgres;
pub mod process;
pub mod qr;
pub mod terminal;

pub use certs::TestCa;
pub use clock::TestClock;
pub use controlplane::ControlPlane;
pub use postgres::Postgres;
