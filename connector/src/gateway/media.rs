//! Attachments for amoCRM to download, under signed, expiring URLs.

use super::Gateway;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use crmessenger_crm::clock::{Clock, SystemClock};

#[derive(serde::Deserialize)]
pub(super) struct MediaQuery {
    exp: i64,
    sig: String,
}

pub(super) async fn media(
    State(g): State<Gateway>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<MediaQuery>,
) -> Response {
    let work = async {
        // Read only: with no key yet, no URL was ever signed.
        let key = g.store.existing_media_key().await?;
        if !key.is_some_and(|key| crate::store::media::verify(&key, &id, q.exp, &q.sig)) {
            return Ok((StatusCode::FORBIDDEN, "bad signature\n").into_response());
        }
        if q.exp < SystemClock.now_ms() {
            return Ok((StatusCode::GONE, "this link has expired\n").into_response());
        }
        let Some(m) = g.store.media(&id).await? else {
            return Ok((StatusCode::GONE, "no longer available\n").into_response());
        };
        let disposition = format!("attachment; filename=\"{}\"", m.file_name.replace(['"', '\\', '\r', '\n'], "_"));
        Ok::<_, crate::store::StoreError>(
            (
                [
                    (axum::http::header::CONTENT_TYPE, m.content_type),
                    (axum::http::header::CONTENT_DISPOSITION, disposition),
                ],
                m.body,
            )
                .into_response(),
        )
    };
    match work.await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("media: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "try again\n").into_response()
        }
    }
}
