//! Across both queues: dead letters, their replay, and the counts status shows.

use super::*;

impl Store {
    /// Dead letters of `account` (inbox and outbox).
    pub async fn dead_letters(&self, account: &str) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT 'inbox' AS queue, seq, chat_id, COALESCE(last_error, '') AS reason FROM inbox WHERE account = $1 AND state = 'dead'
             UNION ALL
             SELECT 'outbox' AS queue, seq, chat_id, COALESCE(last_error, '') AS reason FROM outbox WHERE account = $1 AND state = 'dead'
             ORDER BY seq",
        )
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetter {
                    queue: r.try_get("queue")?,
                    seq: i64_col(r, "seq")?,
                    chat_id: r.try_get("chat_id")?,
                    reason: r.try_get("reason")?,
                })
            })
            .collect()
    }

    /// Puts every dead letter of `account` back in its queue; returns how many.
    pub async fn replay_dead(&self, account: &str) -> Result<u64> {
        let mut tx = self.begin().await?;
        let a = sqlx::query(
            "UPDATE inbox SET state = 'pending', next_attempt_ms = 0, attempts = 0, attempt_started_ms = NULL
             WHERE account = $1 AND state = 'dead'",
        )
        .bind(account)
        .execute(&mut *tx)
        .await?;
        let b = sqlx::query(
            "UPDATE outbox SET state = 'pending', next_attempt_ms = 0 WHERE account = $1 AND state = 'dead'",
        )
        .bind(account)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.notify(account).await?;
        Ok(a.rows_affected() + b.rows_affected())
    }

    /// Queue sizes of `account`.
    pub async fn counts(&self, account: &str) -> Result<Counts> {
        let r = sqlx::query(
            "SELECT
               (SELECT COUNT(*) FROM inbox WHERE account = $1 AND state = 'pending') AS inbox_pending,
               (SELECT COUNT(*) FROM inbox WHERE account = $1 AND state = 'dead') AS inbox_dead,
               (SELECT COUNT(*) FROM outbox WHERE account = $1 AND state = 'pending') AS outbox_pending,
               (SELECT COUNT(*) FROM outbox WHERE account = $1 AND state = 'dead') AS outbox_dead,
               (SELECT MIN(received_ms) FROM inbox WHERE account = $1 AND state = 'pending') AS oldest,
               (SELECT COUNT(*) FROM outbox WHERE account = $1 AND state = 'sent'
                  AND (delivery IS NULL OR delivery = 'sent')) AS replies_sent,
               (SELECT COUNT(*) FROM outbox WHERE account = $1 AND state = 'sent' AND delivery = 'delivered')
                  AS replies_delivered,
               (SELECT COUNT(*) FROM outbox WHERE account = $1 AND state = 'sent' AND delivery = 'read') AS replies_read",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?;
        Ok(Counts {
            inbox_pending: i64_col(&r, "inbox_pending")?,
            inbox_dead: i64_col(&r, "inbox_dead")?,
            outbox_pending: i64_col(&r, "outbox_pending")?,
            outbox_dead: i64_col(&r, "outbox_dead")?,
            oldest_pending_ms: opt_i64(&r, "oldest")?,
            replies: ReplyCounts {
                sent: i64_col(&r, "replies_sent")?,
                delivered: i64_col(&r, "replies_delivered")?,
                read: i64_col(&r, "replies_read")?,
            },
        })
    }
}
