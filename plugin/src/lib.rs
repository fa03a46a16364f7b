//! `kubectl crmessenger`: what a platform engineer needs beside `kubectl get` —
//! a status tree, login with the QR code in the terminal, dead letters and their
//! replay, and a doctor. It talks to the API server only (port-forwards it opens
//! itself go through it), never to the database.

pub mod dead;
pub mod doctor;
pub mod forward;
pub mod login;
pub mod qr;
pub mod sidecar;
pub mod status;
