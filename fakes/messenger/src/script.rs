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

pub(crate) async fn inbound(State(s): State<Arc<Shared>>, Json(body): Json<OneOrMany>) -> Json<Vec<u64>> {
    let updates = match body {
        OneOrMany::Many(v) => v,
        OneOrMany::One(u) => vec![*u],
    };
    Json(push(&s, updates))
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
