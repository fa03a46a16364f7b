//! Sealed session material: the messenger session and keyed records (the
//! caller seals them; this stores ciphertext only).

use super::*;

impl Store {
    /// Stores encrypted session material.
    pub async fn put_session(&self, account: &str, nonce: &[u8], ciphertext: &[u8], now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (account, nonce, ciphertext, updated_ms) VALUES ($1, $2, $3, $4)
             ON CONFLICT (account) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext, updated_ms = excluded.updated_ms",
        )
        .bind(account)
        .bind(nonce.to_vec())
        .bind(ciphertext.to_vec())
        .bind(now_ms)
        .run(self)
        .await?;
        Ok(())
    }

    /// Encrypted session material.
    pub async fn session(&self, account: &str) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let row = sqlx::query("SELECT nonce, ciphertext FROM sessions WHERE account = $1")
            .bind(account)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((r.try_get("nonce")?, r.try_get("ciphertext")?))).transpose()
    }

    /// Deletes stored session material (a messenger logged the session out).
    pub async fn delete_session(&self, account: &str) -> Result<()> {
        sqlx::query("DELETE FROM sessions WHERE account = $1").bind(account).run(self).await?;
        Ok(())
    }

    /// A value of namespace `ns`.
    pub async fn kv_get(&self, account: &str, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT v FROM kv WHERE account = $1 AND ns = $2 AND k = $3")
            .bind(account)
            .bind(ns)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("v")?)).transpose()
    }

    /// Sets a value.
    pub async fn kv_put(&self, account: &str, ns: &str, key: &str, value: &[u8]) -> Result<()> {
        sqlx::query(
            "INSERT INTO kv (account, ns, k, v) VALUES ($1, $2, $3, $4)
             ON CONFLICT (account, ns, k) DO UPDATE SET v = excluded.v",
        )
        .bind(account)
        .bind(ns)
        .bind(key)
        .bind(value.to_vec())
        .run(self)
        .await?;
        Ok(())
    }

    /// Deletes a value.
    pub async fn kv_delete(&self, account: &str, ns: &str, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM kv WHERE account = $1 AND ns = $2 AND k = $3")
            .bind(account)
            .bind(ns)
            .bind(key)
            .run(self)
            .await?;
        Ok(())
    }

    /// Every (key, value) of a namespace, by key.
    pub async fn kv_list(&self, account: &str, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let rows = sqlx::query("SELECT k, v FROM kv WHERE account = $1 AND ns = $2 ORDER BY k")
            .bind(account)
            .bind(ns)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("k")?, r.try_get("v")?))).collect()
    }

    /// Deletes a namespace (or, with `None`, everything of the account).
    pub async fn kv_clear(&self, account: &str, ns: Option<&str>) -> Result<()> {
        match ns {
            Some(ns) => sqlx::query("DELETE FROM kv WHERE account = $1 AND ns = $2").bind(account).bind(ns),
            None => sqlx::query("DELETE FROM kv WHERE account = $1").bind(account),
        }
        .run(self)
        .await?;
        Ok(())
    }
}
