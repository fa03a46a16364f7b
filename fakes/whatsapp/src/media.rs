//! Media: upload, the media node, and downloads under expiring URLs.

use crate::messages::{authorized, unauthorized};
use crate::*;
use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use std::sync::Arc;

pub(crate) async fn upload(State(s): State<Arc<Shared>>, headers: HeaderMap, mut form: Multipart) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let (mut file, mut mime, mut product) = (None, None, None);
    while let Ok(Some(field)) = form.next_field().await {
        match field.name() {
            Some("file") => {
                let ct = field.content_type().map(str::to_string);
                file = field.bytes().await.ok().map(|b| (ct, b.to_vec()));
            }
            Some("type") => mime = field.text().await.ok(),
            Some("messaging_product") => product = field.text().await.ok(),
            _ => {}
        }
    }
    if product.as_deref() != Some("whatsapp") {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "messaging_product is required");
    }
    let (Some((_, bytes)), Some(mime)) = (file, mime) else {
        return error(StatusCode::BAD_REQUEST, 100, "Invalid parameter", "file and type are required");
    };
    let cap = match mime.split('/').next().unwrap_or_default() {
        "image" => 5 << 20,
        "audio" | "video" => 16 << 20,
        _ => 100 << 20,
    };
    if bytes.len() > cap || mime == "audio/ogg; codecs=vorbis" {
        return error(StatusCode::BAD_REQUEST, 131053, "Media upload error", "file too large or unsupported type");
    }
    let mut w = s.world.lock().unwrap();
    let id = format!("{}", 800_000 + w.media.len());
    w.media.insert(id.clone(), (mime, bytes));
    axum::Json(json!({ "id": id })).into_response()
}

pub(crate) async fn node(
    State(s): State<Arc<Shared>>,
    Path((_, node)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    if node == s.config.phone_number_id {
        return axum::Json(
            json!({ "id": node, "display_phone_number": s.config.display_phone_number, "verified_name": "Shop" }),
        )
        .into_response();
    }
    let mut w = s.world.lock().unwrap();
    let Some((mime, bytes)) = w.media.get(&node).cloned() else {
        return error(StatusCode::NOT_FOUND, 100, "Unsupported get request", "unknown object");
    };
    let token = uuid::Uuid::new_v4().simple().to_string();
    w.urls.insert(token.clone(), (node.clone(), s.clock.now_ms() + MEDIA_URL_TTL_MS));
    axum::Json(json!({ "messaging_product": "whatsapp", "url": format!("{}/download/{token}", s.base_url),
        "mime_type": mime, "sha256": base64_sha(&bytes), "file_size": bytes.len(), "id": node }))
    .into_response()
}

pub(crate) async fn download(State(s): State<Arc<Shared>>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    if !authorized(&s, &headers) {
        return unauthorized();
    }
    let w = s.world.lock().unwrap();
    match w.urls.get(&token) {
        Some((id, exp)) if *exp > s.clock.now_ms() => {
            let (mime, bytes) = w.media[id].clone();
            ([("content-type", mime)], bytes).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
