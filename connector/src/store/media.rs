//! Attachments the CRM downloads (Chats API media): kept in the database for a
//! limited time and served by the gateway under URLs signed with a key every
//! connector and gateway of the installation reads from the database.

use super::{Result, Store};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::Row;

/// How long a media URL stays valid (the CRM downloads within minutes).
pub const MEDIA_TTL_MS: i64 = 24 * 3600 * 1000;

/// A stored attachment.
#[derive(Debug, Clone)]
pub struct StoredMedia {
    /// MIME type.
    pub content_type: String,
    /// File name.
    pub file_name: String,
    /// The bytes.
    pub body: Vec<u8>,
    /// When it may no longer be served, Unix ms.
    pub expires_ms: i64,
}

/// `hex(HMAC-SHA256(key, "<id>:<exp>"))`.
pub fn sign(key: &[u8], id: &str, exp_ms: i64) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}:{exp_ms}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `sig` signs `id` until `exp_ms` (constant time).
pub fn verify(key: &[u8], id: &str, exp_ms: i64, sig: &str) -> bool {
    let Ok(expected) = hex::decode(sig) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return false };
    mac.update(format!("{id}:{exp_ms}").as_bytes());
    mac.verify_slice(&expected).is_ok()
}

impl Store {
    /// The installation's media URL key, created on first use: for signing URLs.
    pub async fn media_key(&self) -> Result<Vec<u8>> {
        let fresh = hex::encode(uuid::Uuid::new_v4().into_bytes()) + &hex::encode(uuid::Uuid::new_v4().into_bytes());
        sqlx::query("INSERT INTO settings (name, value) VALUES ('media_key', $1) ON CONFLICT (name) DO NOTHING")
            .bind(&fresh)
            .execute(&self.pool)
            .await?;
        let value: String = sqlx::query("SELECT value FROM settings WHERE name = 'media_key'")
            .fetch_one(&self.pool)
            .await?
            .try_get("value")?;
        Ok(hex::decode(value).unwrap_or_default())
    }

    /// The media URL key if one was ever created: for checking URLs, which must
    /// never write (none yet means no URL was ever signed).
    pub async fn existing_media_key(&self) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = 'media_key'").fetch_optional(&self.pool).await?;
        let Some(row) = row else { return Ok(None) };
        let value: String = row.try_get("value")?;
        // An unreadable or empty key verifies nothing.
        Ok(hex::decode(value).ok().filter(|k| !k.is_empty()))
    }

    /// Stores an attachment until `expires_ms`; returns its id. Expired ones go.
    pub async fn put_media(
        &self,
        account: &str,
        content_type: &str,
        file_name: &str,
        body: &[u8],
        now_ms: i64,
        expires_ms: i64,
    ) -> Result<String> {
        sqlx::query("DELETE FROM media WHERE expires_ms < $1").bind(now_ms).execute(&self.pool).await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        sqlx::query(
            "INSERT INTO media (id, account, content_type, file_name, body, expires_ms) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&id)
        .bind(account)
        .bind(content_type)
        .bind(file_name)
        .bind(body.to_vec())
        .bind(expires_ms)
        .execute(&self.pool)
        .await?;
        Ok(id)
    }

    /// An attachment by id.
    pub async fn media(&self, id: &str) -> Result<Option<StoredMedia>> {
        let row = sqlx::query("SELECT content_type, file_name, body, expires_ms FROM media WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(StoredMedia {
                content_type: r.try_get("content_type")?,
                file_name: r.try_get("file_name")?,
                body: r.try_get("body")?,
                expires_ms: r.try_get("expires_ms")?,
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_the_id_and_the_expiry() {
        let key = b"k";
        let sig = sign(key, "abc", 100);
        assert!(verify(key, "abc", 100, &sig));
        assert!(!verify(key, "abd", 100, &sig));
        assert!(!verify(key, "abc", 101, &sig));
        assert!(!verify(b"other", "abc", 100, &sig));
        assert!(!verify(key, "abc", 100, "zz"));
    }
}
