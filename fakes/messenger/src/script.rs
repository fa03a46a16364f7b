//! The script's side of the scripted messenger's HTTP API (`/_script`): what
//! customers write, what was sent, the phone scanning the QR code, faults.

use crate::*;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    Many(Vec<Update>),
    One(Box<Update>),
}

impl OneOrMany {
    /// The updates, as a list.
    pub(crate) fn into_vec(self) -> Vec<Update> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(u) => vec![*u],
        }
    }
}

pub(crate) async fn inbound(State(s): State<Arc<Shared>>, Json(body): Json<OneOrMany>) -> Json<Vec<u64>> {
    Json(push(&s, body.into_vec()))
}

pub(crate) async fn script_sent(State(s): State<Arc<Shared>>) -> Json<Vec<Sent>> {
    Json(s.inner.lock().map(|i| i.sent.clone()).unwrap_or_default())
}

pub(crate) async fn script_scan(State(s): State<Arc<Shared>>) -> StatusCode {
    scan(&s);
    StatusCode::NO_CONTENT
}

pub(crate) async fn script_fault(State(s): State<Arc<Shared>>, Json(f): Json<Fault>) -> StatusCode {
    if let Ok(mut i) = s.inner.lock() {
        i.faults.push(f);
    }
    StatusCode::NO_CONTENT
}
