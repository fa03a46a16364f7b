//! A customer's file, fetched in chunks from its datacenter within the size limit.

use super::*;

impl Inner {
    pub(super) async fn fetch_media(&self, media: &MediaRef) -> Result<Vec<u8>, MessengerError> {
        if media.size > self.s.max_media_bytes {
            return Err(MessengerError::Rejected(format!(
                "{} is {} bytes, over the policy's limit of {} bytes",
                media.file_name, media.size, self.s.max_media_bytes
            )));
        }
        let (dc, location) = map::decode_location(&media.id)
            .ok_or_else(|| MessengerError::Rejected(format!("not a Telegram media id: {}", media.id)))?;
        let home = self.session.home_dc_id().map_err(storage)?;
        if dc != home && !self.session.authorized_in(dc) {
            // Files live in their own datacenter: carry the authorization there.
            let exported = match self.call(None, &tl::functions::auth::ExportAuthorization { dc_id: dc }).await {
                Ok(tl::enums::auth::ExportedAuthorization::Authorization(x)) => x,
                Err(e) => return Err(self.classify(e).await),
            };
            let req = tl::functions::auth::ImportAuthorization { id: exported.id, bytes: exported.bytes };
            if let Err(e) = self.call(Some(dc), &req).await {
                return Err(self.classify(e).await);
            }
            self.session.set_authorized_in(dc).await.map_err(storage)?;
        }
        let mut out = Vec::new();
        loop {
            let req = tl::functions::upload::GetFile {
                precise: false,
                cdn_supported: false,
                location: location.clone(),
                offset: out.len() as i64,
                limit: CHUNK,
            };
            let target = if dc == home { None } else { Some(dc) };
            let chunk = match self.call(target, &req).await {
                Ok(tl::enums::upload::File::File(f)) => f.bytes,
                Ok(tl::enums::upload::File::CdnRedirect(_)) => {
                    return Err(MessengerError::Unavailable("Telegram redirected the download to a CDN".into()));
                }
                Err(e) if e.is("FILE_REFERENCE_EXPIRED") => {
                    return Err(MessengerError::Rejected(
                        "the file reference expired; the file is no longer available".into(),
                    ));
                }
                Err(e) => return Err(self.classify(e).await),
            };
            let last = chunk.len() < CHUNK as usize;
            out.extend_from_slice(&chunk);
            if out.len() as u64 > self.s.max_media_bytes {
                return Err(MessengerError::Rejected(format!("{} is over the policy's media limit", media.file_name)));
            }
            if last {
                return Ok(out);
            }
        }
    }
}
