//! The inbox: customer events stored with the messenger's cursor, then delivered
//! to the CRM (pending → started → done, retried, or dead).

use super::*;

impl Store {
    /// Stores events and the messenger cursor after them in one transaction;
    /// events already stored are ignored. Returns how many were new. `history`
    /// marks the rows of a history import.
    pub async fn ingest(
        &self,
        account: &str,
        events: &[(String, String, String)],
        cursor_name: &str,
        cursor: &str,
        now_ms: i64,
        history: bool,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut new = 0;
        for (chat_id, key, payload) in events {
            let r = sqlx::query(
                "INSERT INTO inbox (account, chat_id, event_key, payload, received_ms, history)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (account, chat_id, event_key) DO NOTHING",
            )
            .bind(account)
            .bind(chat_id)
            .bind(key)
            .bind(payload)
            .bind(now_ms)
            .bind(i64::from(history))
            .execute(&mut *tx)
            .await?;
            new += r.rows_affected();
        }
        put_cursor(&mut tx, account, cursor_name, cursor).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Pending inbox rows: first every row of the chats with a live row pending
    /// (a chat's history comes before its live rows, in arrival order), then the
    /// chats with only imported history, oldest first.
    pub async fn inbox_pending(&self, account: &str, limit: i64) -> Result<Vec<InboxRow>> {
        let rows = sqlx::query(
            "SELECT seq, chat_id, event_key, payload, attempts, attempt_started_ms, next_attempt_ms, received_ms,
                    history
             FROM inbox i WHERE account = $1 AND state = 'pending'
             ORDER BY CASE WHEN EXISTS (SELECT 1 FROM inbox j WHERE j.account = i.account
                 AND j.chat_id = i.chat_id AND j.state = 'pending' AND j.history = 0) THEN 0 ELSE 1 END, seq
             LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(InboxRow {
                    seq: i64_col(r, "seq")?,
                    chat_id: r.try_get("chat_id")?,
                    event_key: r.try_get("event_key")?,
                    payload: r.try_get("payload")?,
                    attempts: i64_col(r, "attempts")?,
                    attempt_started_ms: opt_i64(r, "attempt_started_ms")?,
                    next_attempt_ms: i64_col(r, "next_attempt_ms")?,
                    received_ms: i64_col(r, "received_ms")?,
                    history: i64_col(r, "history")? != 0,
                })
            })
            .collect()
    }

    /// Records that a write of these rows starts now (before it is sent, so a
    /// crash leaves a trace that the write may have happened).
    pub async fn inbox_started(&self, seqs: &[i64], now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        for seq in seqs {
            sqlx::query("UPDATE inbox SET attempts = attempts + 1, attempt_started_ms = $2 WHERE seq = $1")
                .bind(seq)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Marks rows delivered, with the CRM's reference of each.
    pub async fn inbox_done(&self, done: &[(i64, String)], now_ms: i64) -> Result<()> {
        let mut tx = self.begin().await?;
        for (seq, crm_ref) in done {
            sqlx::query(
                "UPDATE inbox SET state = 'done', done_ms = $2, crm_ref = $3, last_error = NULL WHERE seq = $1",
            )
            .bind(seq)
            .bind(now_ms)
            .bind(crm_ref)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Schedules rows for another attempt.
    pub async fn inbox_retry(&self, seqs: &[i64], next_attempt_ms: i64, error: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        for seq in seqs {
            sqlx::query("UPDATE inbox SET next_attempt_ms = $2, last_error = $3 WHERE seq = $1")
                .bind(seq)
                .bind(next_attempt_ms)
                .bind(error)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Dead-letters a row with its reason.
    pub async fn inbox_dead(&self, seq: i64, reason: &str, now_ms: i64) -> Result<()> {
        sqlx::query("UPDATE inbox SET state = 'dead', last_error = $2, done_ms = $3 WHERE seq = $1")
            .bind(seq)
            .bind(reason)
            .bind(now_ms)
            .run(self)
            .await?;
        Ok(())
    }

    /// The chat of `account`'s stored message `message_id` (its inbox key), if any.
    pub async fn chat_of_message(&self, account: &str, message_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT chat_id FROM inbox WHERE account = $1 AND event_key = $2 ORDER BY seq DESC LIMIT 1",
        )
        .bind(account)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The stored event of message `message_id` in `chat` (what a reply quotes).
    pub async fn message_payload(&self, account: &str, chat: &str, message_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT payload FROM inbox WHERE account = $1 AND chat_id = $2 AND event_key = $3 LIMIT 1",
        )
        .bind(account)
        .bind(chat)
        .bind(message_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}
