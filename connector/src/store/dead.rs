//! Across both queues: dead letters, their replay, and the counts status shows.

use super::*;

impl Store {
    /// Dead letters of `account` (inbox and outbox).
    pub async fn dead_letters(&self, account: &str) -> Result<Vec<DeadLetter>> {
        let rows = sqlx::query(
            "SELECT 'inbox' AS queue, seq, chat_id, COALESCE(last_error, '') AS reason, received_ms AS queued_ms
               FROM inbox WHERE account = $1 AND state = 'dead'
             UNION ALL
             SELECT 'outbox' AS queue, seq, chat_id, COALESCE(last_error, '') AS reason, created_ms AS queued_ms
               FROM outbox WHERE account = $1 AND state = 'dead'
             ORDER BY queued_ms, seq",
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
                    queued_ms: i64_col(r, "queued_ms")?,
                })
            })
            .collect()
    }

    /// Why the oldest dead letter of `account` failed (by when it was queued), if
    /// there is one.
    pub async fn oldest_dead_reason(&self, account: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT reason FROM (
               SELECT COALESCE(last_error, '') AS reason, received_ms AS at, seq FROM inbox WHERE account = $1 AND state = 'dead'
               UNION ALL
               SELECT COALESCE(last_error, '') AS reason, created_ms AS at, seq FROM outbox WHERE account = $1 AND state = 'dead'
             ) d ORDER BY at, seq LIMIT 1",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get("reason")).transpose().map_err(Into::into)
    }

    /// Puts every dead letter of `account` back in its queue; returns how many.
    pub async fn replay_dead(&self, account: &str) -> Result<u64> {
        self.replay_dead_only(account, None).await
    }

    /// Puts the dead letters of `account` back in their queues — all of them, or
    /// only those named `inbox/SEQ` or `outbox/SEQ` (as [`DeadLetter::id`] names
    /// them); returns how many went back. Ids that name no dead letter are skipped.
    pub async fn replay_dead_only(&self, account: &str, ids: Option<&[String]>) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut replayed = 0;
        for (queue, reset) in [
            ("inbox", "state = 'pending', next_attempt_ms = 0, attempts = 0, attempt_started_ms = NULL"),
            ("outbox", "state = 'pending', next_attempt_ms = 0"),
        ] {
            let base = format!("UPDATE {queue} SET {reset} WHERE account = $1 AND state = 'dead'");
            match ids {
                None => replayed += sqlx::query(&base).bind(account).execute(&mut *tx).await?.rows_affected(),
                Some(ids) => {
                    let prefix = format!("{queue}/");
                    for seq in ids.iter().filter_map(|id| id.strip_prefix(&prefix)?.parse::<i64>().ok()) {
                        let q = format!("{base} AND seq = $2");
                        replayed += sqlx::query(&q).bind(account).bind(seq).execute(&mut *tx).await?.rows_affected();
                    }
                }
            }
        }
        tx.commit().await?;
        self.notify(account).await?;
        Ok(replayed)
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
               (SELECT COUNT(*) FROM outbox WHERE account = $1 AND state = 'sent' AND delivery = 'read') AS replies_read,
               (SELECT done_ms FROM inbox WHERE account = $1 AND state = 'done' ORDER BY seq DESC LIMIT 1) AS last_in,
               (SELECT sent_ms FROM outbox WHERE account = $1 AND state = 'sent' ORDER BY seq DESC LIMIT 1) AS last_out,
               (SELECT COUNT(*) FROM conversations WHERE account = $1 AND unanswered_since_ms IS NOT NULL) AS waiting",
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
            last_inbound_ms: opt_i64(&r, "last_in")?,
            last_outbound_ms: opt_i64(&r, "last_out")?,
            waiting_conversations: i64_col(&r, "waiting")?,
            replies: ReplyCounts {
                sent: i64_col(&r, "replies_sent")?,
                delivered: i64_col(&r, "replies_delivered")?,
                read: i64_col(&r, "replies_read")?,
            },
        })
    }
}
