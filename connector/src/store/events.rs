//! What the gateway stores for connectors: webhook rows (REST, Chats API,
//! WhatsApp), routes from a CRM or a number to an account, webhook tokens; and
//! the named cursors.

use super::*;

impl Store {
    /// A stored cursor.
    pub async fn cursor(&self, scope: &str, name: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM cursors WHERE scope = $1 AND name = $2")
            .bind(scope)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("value")?)).transpose()
    }

    /// Stores a cursor.
    pub async fn set_cursor(&self, scope: &str, name: &str, value: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        put_cursor(&mut tx, scope, name, value).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Registers a routing key for `account`.
    pub async fn put_route(&self, kind: &str, key: &str, account: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO routes (kind, key, account) VALUES ($1, $2, $3)
             ON CONFLICT (kind, key) DO UPDATE SET account = excluded.account",
        )
        .bind(kind)
        .bind(key)
        .bind(account)
        .run(self)
        .await?;
        Ok(())
    }

    /// The account a routing key belongs to.
    pub async fn route(&self, kind: &str, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT account FROM routes WHERE kind = $1 AND key = $2")
            .bind(kind)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("account")?)).transpose()
    }

    /// Stores a webhook for `account` (once per `dedup_key`) and wakes its
    /// connector. Returns false for a replay.
    pub async fn put_event(
        &self,
        account: &str,
        kind: &str,
        dedup_key: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let new = self.insert_event(account, kind, dedup_key, payload, now_ms, "pending").await?;
        self.notify(account).await?;
        Ok(new)
    }

    /// Inserts a webhook row in `state` unless its key is there; whether it was new.
    pub(super) async fn insert_event(
        &self,
        account: &str,
        kind: &str,
        dedup_key: &str,
        payload: &str,
        now_ms: i64,
        state: &str,
    ) -> Result<bool> {
        let r = sqlx::query(
            "INSERT INTO events (account, kind, dedup_key, payload, received_ms, state) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (account, kind, dedup_key) DO NOTHING",
        )
        .bind(account)
        .bind(kind)
        .bind(dedup_key)
        .bind(payload)
        .bind(now_ms)
        .bind(state)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Pending webhooks of `account`, oldest first.
    pub async fn events_pending(&self, account: &str, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT id, kind, payload FROM events WHERE account = $1 AND state = 'pending' ORDER BY id LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(EventRow { id: i64_col(r, "id")?, kind: r.try_get("kind")?, payload: r.try_get("payload")? }))
            .collect()
    }

    /// Marks a webhook handled.
    pub async fn event_done(&self, id: i64, state: &str) -> Result<()> {
        sqlx::query("UPDATE events SET state = $2 WHERE id = $1").bind(id).bind(state).run(self).await?;
        Ok(())
    }

    /// Stores a messenger webhook (WhatsApp) for the account's adapter to stream;
    /// the same `dedup_key` twice is stored once. Returns whether it was new.
    pub async fn put_stream_event(
        &self,
        account: &str,
        kind: &str,
        dedup_key: &str,
        payload: &str,
        now_ms: i64,
    ) -> Result<bool> {
        self.insert_event(account, kind, dedup_key, payload, now_ms, "stream").await
    }

    /// Streamed messenger webhooks after `after_id`, oldest first.
    pub async fn stream_events(&self, account: &str, after_id: i64, limit: i64) -> Result<Vec<EventRow>> {
        let rows = sqlx::query(
            "SELECT id, kind, payload FROM events WHERE account = $1 AND state = 'stream' AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(account)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(EventRow { id: i64_col(r, "id")?, kind: r.try_get("kind")?, payload: r.try_get("payload")? }))
            .collect()
    }

    /// Marks streamed webhooks up to `upto_id` consumed (their effect is stored);
    /// the row stays, so a replay of the same webhook is still recognised.
    pub async fn stream_consumed(&self, account: &str, upto_id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE events SET state = 'streamed', payload = '' WHERE account = $1 AND state = 'stream' AND id <= $2",
        )
        .bind(account)
        .bind(upto_id)
        .run(self)
        .await?;
        Ok(())
    }

    /// The secret token of `binding`'s webhook URL (created on first use; every
    /// connector of the binding reads the same one).
    pub async fn webhook_token(&self, binding: &str) -> Result<String> {
        let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
        sqlx::query("INSERT INTO webhook_tokens (binding, token) VALUES ($1, $2) ON CONFLICT (binding) DO NOTHING")
            .bind(binding)
            .bind(token)
            .run(self)
            .await?;
        let r = sqlx::query("SELECT token FROM webhook_tokens WHERE binding = $1")
            .bind(binding)
            .fetch_one(&self.pool)
            .await?;
        Ok(r.try_get("token")?)
    }

    /// The binding a webhook token belongs to.
    pub async fn binding_of_token(&self, token: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT binding FROM webhook_tokens WHERE token = $1")
            .bind(token)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("binding")?)).transpose()
    }
}
