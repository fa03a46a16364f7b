//! The outbox: replies queued once by their CRM id, sent once (pending → sent,
//! retried, or dead), and their delivery statuses, which only move forward.

use super::*;

/// What recording a messenger's status of a sent reply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryUpdate {
    /// No recorded send has that message id (yet).
    UnknownMessage,
    /// The reply's status is already that far (statuses move forward only).
    Unchanged,
    /// The status moved: the outbox row and the CRM message it answers.
    Moved {
        /// The outbox row.
        seq: i64,
        /// The CRM chat message id, when the reply came from the CRM's chat.
        crm_message_id: Option<String>,
    },
}

/// Whether an account-side message is an echo of a reply the connector sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// A reply from the outbox: already in the CRM, not to be written again.
    Ours,
    /// A send in the chat may have gone out without its message id recorded yet.
    Undecided,
    /// Written by the account's owner outside CRMessenger.
    NotOurs,
}

/// A queued reply as it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedReply {
    /// `pending`, `sent` or `dead`.
    pub state: String,
    /// Its chat.
    pub chat_id: String,
    /// Its text.
    pub text: String,
    /// The id it was sent as.
    pub message_id: Option<String>,
}

/// The order of delivery statuses: sent → delivered → read; failed ends it.
pub(super) fn delivery_rank(s: Option<&str>) -> u8 {
    match s {
        Some("sent") => 1,
        Some("delivered") => 2,
        Some("read") => 3,
        Some(s) if s.starts_with("failed") => 4,
        _ => 0,
    }
}

impl Store {
    /// Queues a reply; returns false when `source_id` was queued before.
    pub async fn outbox_add(&self, account: &str, reply: &NewReply<'_>, now_ms: i64) -> Result<bool> {
        let NewReply { source_id, chat_id, text, crm_message_id, media, edit_of } = *reply;
        let random_id = random_i64();
        let r = sqlx::query(
            "INSERT INTO outbox (account, source_id, chat_id, text, random_id, crm_message_id, media, created_ms, edit_of)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (account, source_id) DO NOTHING",
        )
        .bind(account)
        .bind(source_id)
        .bind(chat_id)
        .bind(text)
        .bind(random_id)
        .bind(crm_message_id.map(str::to_string))
        .bind(media.map(str::to_string))
        .bind(now_ms)
        .bind(edit_of.map(str::to_string))
        .run(self)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// What became of the reply queued as `source_id`.
    pub async fn outbox_of_source(&self, account: &str, source_id: &str) -> Result<Option<QueuedReply>> {
        let row =
            sqlx::query("SELECT state, chat_id, text, message_id FROM outbox WHERE account = $1 AND source_id = $2")
                .bind(account)
                .bind(source_id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| {
            Ok(QueuedReply {
                state: r.try_get("state")?,
                chat_id: r.try_get("chat_id")?,
                text: r.try_get("text")?,
                message_id: r.try_get("message_id")?,
            })
        })
        .transpose()
    }

    /// A reply edited before any attempt to send it goes out as edited; returns
    /// whether there was such a reply.
    pub async fn outbox_retext_unsent(&self, account: &str, source_id: &str, text: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE outbox SET text = $3 WHERE account = $1 AND source_id = $2 AND state = 'pending' AND attempts = 0",
        )
        .bind(account)
        .bind(source_id)
        .bind(text)
        .run(self)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Pending outbox rows, oldest first.
    pub async fn outbox_pending(&self, account: &str, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query(
            "SELECT seq, source_id, chat_id, text, random_id, crm_message_id, media, attempts, next_attempt_ms, edit_of
             FROM outbox WHERE account = $1 AND state = 'pending' ORDER BY seq LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    seq: i64_col(r, "seq")?,
                    source_id: r.try_get("source_id")?,
                    chat_id: r.try_get("chat_id")?,
                    text: r.try_get("text")?,
                    random_id: i64_col(r, "random_id")?,
                    crm_message_id: r.try_get("crm_message_id")?,
                    media: r.try_get("media")?,
                    attempts: i64_col(r, "attempts")?,
                    next_attempt_ms: i64_col(r, "next_attempt_ms")?,
                    edit_of: r.try_get("edit_of")?,
                })
            })
            .collect()
    }

    /// Records that a send of `seq` starts now.
    pub async fn outbox_started(&self, seq: i64) -> Result<()> {
        sqlx::query("UPDATE outbox SET attempts = attempts + 1 WHERE seq = $1").bind(seq).run(self).await?;
        Ok(())
    }

    /// Marks `seq` sent.
    pub async fn outbox_sent(&self, seq: i64, message_id: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET state = 'sent', message_id = $2, sent_ms = $3, last_error = NULL WHERE seq = $1",
        )
        .bind(seq)
        .bind(message_id)
        .bind(now_ms)
        .run(self)
        .await?;
        Ok(())
    }

    /// Schedules `seq` for another attempt at `next_attempt_ms`. When the messenger
    /// refused this turn's send outright (a flood wait, a restricted account),
    /// nothing went out: `undo_attempt` takes the attempt back, so no one looks for
    /// it or waits for its echo.
    pub async fn outbox_retry(&self, seq: i64, next_attempt_ms: i64, error: &str, undo_attempt: bool) -> Result<()> {
        sqlx::query(
            "UPDATE outbox SET next_attempt_ms = $2, last_error = $3,
               attempts = CASE WHEN $4 AND attempts > 0 THEN attempts - 1 ELSE attempts END
             WHERE seq = $1",
        )
        .bind(seq)
        .bind(next_attempt_ms)
        .bind(error)
        .bind(undo_attempt)
        .run(self)
        .await?;
        Ok(())
    }

    /// Whether an account-side message of `chat` is an echo of a reply sent from
    /// the outbox: its message id is a sent reply's (or, for a reply whose id could
    /// not be learnt, its text is); while a send in that chat may have gone out
    /// without its id recorded yet, it cannot be told.
    pub async fn outbox_echo(&self, account: &str, chat: &str, message_id: &str, text: &str) -> Result<Echo> {
        let ours = sqlx::query(
            "SELECT 1 FROM outbox WHERE account = $1 AND chat_id = $2 AND state = 'sent'
               AND (message_id = $3 OR (message_id LIKE 'random:%' AND text = $4)) LIMIT 1",
        )
        .bind(account)
        .bind(chat)
        .bind(message_id)
        .bind(text)
        .fetch_optional(&self.pool)
        .await?;
        if ours.is_some() {
            return Ok(Echo::Ours);
        }
        let in_flight = sqlx::query(
            "SELECT 1 FROM outbox WHERE account = $1 AND chat_id = $2 AND state = 'pending' AND attempts > 0 LIMIT 1",
        )
        .bind(account)
        .bind(chat)
        .fetch_optional(&self.pool)
        .await?;
        Ok(if in_flight.is_some() { Echo::Undecided } else { Echo::NotOurs })
    }

    /// The message ids of the replies sent in `chat` that are not yet read (nor failed).
    pub async fn outbox_unread(&self, account: &str, chat: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT message_id FROM outbox WHERE account = $1 AND chat_id = $2 AND state = 'sent'
               AND message_id IS NOT NULL AND (delivery IS NULL OR (delivery <> 'read' AND delivery NOT LIKE 'failed%'))",
        )
        .bind(account)
        .bind(chat)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("message_id")?)).collect()
    }

    /// Dead-letters `seq`.
    pub async fn outbox_dead(&self, seq: i64, reason: &str) -> Result<()> {
        sqlx::query("UPDATE outbox SET state = 'dead', last_error = $2 WHERE seq = $1")
            .bind(seq)
            .bind(reason)
            .run(self)
            .await?;
        Ok(())
    }

    /// Records what the messenger says of a sent reply, forward only (sent →
    /// delivered → read; failed ends it). Two statuses of one reply may be applied
    /// at once (the intake's and a parked one the send's record claims): the move
    /// is made only from the value it was judged against, and judged again when
    /// the other moved it first, so a lower status never overwrites a higher one.
    pub async fn outbox_delivery(&self, account: &str, message_id: &str, status: &str) -> Result<DeliveryUpdate> {
        loop {
            let row =
                sqlx::query("SELECT seq, crm_message_id, delivery FROM outbox WHERE account = $1 AND message_id = $2")
                    .bind(account)
                    .bind(message_id)
                    .fetch_optional(&self.pool)
                    .await?;
            let Some(row) = row else { return Ok(DeliveryUpdate::UnknownMessage) };
            let seq = i64_col(&row, "seq")?;
            let current: Option<String> = row.try_get("delivery")?;
            if delivery_rank(Some(status)) <= delivery_rank(current.as_deref()) {
                return Ok(DeliveryUpdate::Unchanged);
            }
            let moved = sqlx::query("UPDATE outbox SET delivery = $2 WHERE seq = $1 AND COALESCE(delivery, '') = $3")
                .bind(seq)
                .bind(status)
                .bind(current.unwrap_or_default())
                .run(self)
                .await?;
            if moved.rows_affected() == 1 {
                return Ok(DeliveryUpdate::Moved { seq, crm_message_id: row.try_get("crm_message_id")? });
            }
        }
    }

    /// Keeps a status that names no recorded send — it may have overtaken the
    /// record of its send — until [`Store::take_early_status`] claims it: the
    /// furthest one per message. Statuses no send claimed within a day (not ours)
    /// are dropped.
    pub async fn park_early_status(&self, account: &str, message_id: &str, status: &str, now_ms: i64) -> Result<()> {
        let current: Option<String> =
            sqlx::query("SELECT status FROM early_statuses WHERE account = $1 AND message_id = $2")
                .bind(account)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get("status"))
                .transpose()?;
        if delivery_rank(Some(status)) > delivery_rank(current.as_deref()) {
            sqlx::query(
                "INSERT INTO early_statuses (account, message_id, status, received_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (account, message_id) DO UPDATE SET status = excluded.status, received_ms = excluded.received_ms",
            )
            .bind(account)
            .bind(message_id)
            .bind(status)
            .bind(now_ms)
            .run(self)
            .await?;
        }
        sqlx::query("DELETE FROM early_statuses WHERE account = $1 AND received_ms < $2")
            .bind(account)
            .bind(now_ms - 86_400_000)
            .run(self)
            .await?;
        Ok(())
    }

    /// The status kept for `message_id` by [`Store::park_early_status`], removed.
    pub async fn take_early_status(&self, account: &str, message_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT status FROM early_statuses WHERE account = $1 AND message_id = $2")
            .bind(account)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        sqlx::query("DELETE FROM early_statuses WHERE account = $1 AND message_id = $2")
            .bind(account)
            .bind(message_id)
            .run(self)
            .await?;
        Ok(Some(row.try_get("status")?))
    }

    /// What the messenger last said of the reply sent as `message_id`.
    pub async fn outbox_delivery_of(&self, account: &str, message_id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT delivery FROM outbox WHERE account = $1 AND message_id = $2")
            .bind(account)
            .bind(message_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("delivery")).transpose()?.flatten())
    }
}
