//! Storage: PostgreSQL in clusters, SQLite for standalone mode, through sqlx's
//! `Any` driver with queries checked at run time. Both dialects run the same
//! queries (positional `$N` parameters, `ON CONFLICT`, `RETURNING`); what differs
//! (migrations, row locks, the account lock, notifications) is chosen by
//! [`Dialect`].
//!
//! Pools are small on purpose: each connector holds one dedicated connection for
//! its lock and LISTEN plus a pool of [`POOL_SIZE`], so PostgreSQL's
//! `max_connections` must be at least `accounts × (1 + POOL_SIZE)` plus the
//! gateway's pools (`GATEWAY_POOL_SIZE` per replica).

pub mod budget;
pub mod crypto;
pub mod fence;
pub mod lock;
pub mod media;

use fence::{FenceCell, FencedWrite};
use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Connections a connector's pool may open (besides its lock connection).
pub const POOL_SIZE: u32 = 3;
/// Connections a gateway replica's pool may open.
pub const GATEWAY_POOL_SIZE: u32 = 5;
/// The NOTIFY channel: the payload is the account key whose rows changed.
pub const CHANNEL: &str = "crmessenger";

static PG_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL (clusters).
    Postgres,
    /// SQLite (standalone, one process).
    Sqlite,
}

/// A storage error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database refused or failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data could not be read.
    #[error("stored data: {0}")]
    Data(String),
    /// The account's lock moved to another connector: this one may not write.
    #[error("fenced: {0}")]
    Fenced(String),
}

/// Result of storage calls.
pub type Result<T> = std::result::Result<T, StoreError>;

/// In-process wake-ups (SQLite has no LISTEN/NOTIFY; in PostgreSQL they carry
/// notifications received on the lock connection).
#[derive(Debug, Default)]
pub struct Wakeups {
    by_account: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakeups {
    /// The notifier of `account`.
    pub fn of(&self, account: &str) -> Arc<Notify> {
        let mut map = self.by_account.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(account.to_string()).or_default().clone()
    }
    /// Wakes whoever waits for `account`.
    pub fn wake(&self, account: &str) {
        self.of(account).notify_one();
    }
}

/// The database.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    url: String,
    wakeups: Arc<Wakeups>,
    fence: FenceCell,
    local_duties: lock::LocalDuties,
}

/// One inbox row.
#[derive(Debug, Clone)]
pub struct InboxRow {
    /// Order of arrival.
    pub seq: i64,
    /// Chat.
    pub chat_id: String,
    /// Event key within the chat.
    pub event_key: String,
    /// The event, as JSON.
    pub payload: String,
    /// Attempts so far (a non-zero count means a write may have happened).
    pub attempts: i64,
    /// When the last attempt started.
    pub attempt_started_ms: Option<i64>,
    /// Not before this time.
    pub next_attempt_ms: i64,
    /// When it was received.
    pub received_ms: i64,
}

/// A reply to queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct NewReply<'a> {
    /// The CRM item it comes from (queued once per item).
    pub source_id: &'a str,
    /// Chat to send to.
    pub chat_id: &'a str,
    /// Text.
    pub text: &'a str,
    /// The CRM chat message id, for delivery status.
    pub crm_message_id: Option<&'a str>,
    /// The file it carries (JSON of [`crate::messenger::OutgoingMedia`]).
    pub media: Option<&'a str>,
}

/// One outbox row.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Order.
    pub seq: i64,
    /// The CRM item it came from.
    pub source_id: String,
    /// Chat to send to.
    pub chat_id: String,
    /// Text.
    pub text: String,
    /// Idempotency key of the send.
    pub random_id: i64,
    /// The CRM chat message id, for delivery status.
    pub crm_message_id: Option<String>,
    /// The file it carries (JSON of [`crate::messenger::OutgoingMedia`]).
    pub media: Option<String>,
    /// Attempts so far.
    pub attempts: i64,
    /// Not before this time.
    pub next_attempt_ms: i64,
}

/// What a chat maps to in the CRM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Contact id.
    pub contact_id: Option<i64>,
    /// Lead id.
    pub lead_id: Option<i64>,
    /// CRM chat id (Chats API).
    pub crm_chat_id: Option<String>,
    /// Since when a customer message waits for an answer.
    pub unanswered_since_ms: Option<i64>,
    /// The open escalation task.
    pub task_id: Option<i64>,
}

/// A webhook accepted by the gateway.
#[derive(Debug, Clone)]
pub struct EventRow {
    /// Id.
    pub id: i64,
    /// Kind (`amocrm-note`, `amocrm-chat`, …).
    pub kind: String,
    /// Body, as JSON.
    pub payload: String,
}

/// Counts for metrics and status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Inbox rows not yet in the CRM.
    pub inbox_pending: i64,
    /// Inbox rows dead-lettered.
    pub inbox_dead: i64,
    /// Outbox rows not yet sent.
    pub outbox_pending: i64,
    /// Outbox rows dead-lettered.
    pub outbox_dead: i64,
    /// Arrival time of the oldest undelivered inbox row.
    pub oldest_pending_ms: Option<i64>,
}

/// A dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// `inbox` or `outbox`.
    pub queue: String,
    /// Row id.
    pub seq: i64,
    /// Chat.
    pub chat_id: String,
    /// Why.
    pub reason: String,
}

fn i64_col(row: &AnyRow, col: &str) -> Result<i64> {
    Ok(row.try_get::<i64, _>(col)?)
}

fn opt_i64(row: &AnyRow, col: &str) -> Result<Option<i64>> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

/// A [`Conversation`] from a row of `conversations`.
fn conversation_of(r: &AnyRow) -> Result<Conversation> {
    Ok(Conversation {
        contact_id: opt_i64(r, "contact_id")?,
        lead_id: opt_i64(r, "lead_id")?,
        crm_chat_id: r.try_get("crm_chat_id")?,
        unanswered_since_ms: opt_i64(r, "unanswered_since_ms")?,
        task_id: opt_i64(r, "task_id")?,
    })
}

impl Store {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) and runs the migrations.
    pub async fn connect(url: &str, pool_size: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") { Dialect::Sqlite } else { Dialect::Postgres };
        let (url, size) = match dialect {
            // One writer: SQLite serialises writes anyway, and one connection never
            // sees "database is locked".
            Dialect::Sqlite => {
                let sep = if url.contains('?') { '&' } else { '?' };
                let url = if url.contains("mode=") { url.to_string() } else { format!("{url}{sep}mode=rwc") };
                (url, 1)
            }
            Dialect::Postgres => (url.to_string(), pool_size.max(1)),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if dialect == Dialect::Sqlite {
                        sqlx::query("PRAGMA journal_mode=WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous=NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout=5000").execute(&mut *conn).await?;
                    } else {
                        // A connector cut off mid-transaction must not hold row locks
                        // (the fencing row among them) for long: the server ends such
                        // sessions, and notices vanished peers by its keepalives.
                        for set in [
                            "SET idle_in_transaction_session_timeout = '15s'",
                            "SET tcp_keepalives_idle = 10",
                            "SET tcp_keepalives_interval = 5",
                            "SET tcp_keepalives_count = 3",
                        ] {
                            sqlx::query(set).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let store = Store {
            pool,
            dialect,
            url: url.clone(),
            wakeups: Arc::default(),
            fence: FenceCell::default(),
            local_duties: Default::default(),
        };
        match dialect {
            Dialect::Postgres => PG_MIGRATIONS.run(&store.pool).await?,
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&store.pool).await?,
        }
        Ok(store)
    }

    /// The dialect.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The URL connected to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// In-process wake-ups.
    pub fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }

    /// Per-binding duties held in this process (SQLite).
    pub(crate) fn local_duties(&self) -> &lock::LocalDuties {
        &self.local_duties
    }

    /// The pool (for checks and tests).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Tells the connector of `account` that rows for it changed.
    pub async fn notify(&self, account: &str) -> Result<()> {
        self.wakeups.wake(account);
        if self.dialect == Dialect::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(account).execute(&self.pool).await?;
        }
        Ok(())
    }

    // ---- inbox -------------------------------------------------------------

    /// Stores events and the messenger cursor after them in one transaction;
    /// events already stored are ignored. Returns how many were new.
    pub async fn ingest(
        &self,
        account: &str,
        events: &[(String, String, String)],
        cursor_name: &str,
        cursor: &str,
        now_ms: i64,
    ) -> Result<u64> {
        let mut tx = self.begin().await?;
        let mut new = 0;
        for (chat_id, key, payload) in events {
            let r = sqlx::query(
                "INSERT INTO inbox (account, chat_id, event_key, payload, received_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (account, chat_id, event_key) DO NOTHING",
            )
            .bind(account)
            .bind(chat_id)
            .bind(key)
            .bind(payload)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            new += r.rows_affected();
        }
        put_cursor(&mut tx, account, cursor_name, cursor).await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Pending inbox rows, oldest first.
    pub async fn inbox_pending(&self, account: &str, limit: i64) -> Result<Vec<InboxRow>> {
        let rows = sqlx::query(
            "SELECT seq, chat_id, event_key, payload, attempts, attempt_started_ms, next_attempt_ms, received_ms
             FROM inbox WHERE account = $1 AND state = 'pending' ORDER BY seq LIMIT $2",
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
               (SELECT MIN(received_ms) FROM inbox WHERE account = $1 AND state = 'pending') AS oldest",
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
        })
    }

    // ---- conversations -----------------------------------------------------

    /// What `chat_id` maps to.
    pub async fn conversation(&self, account: &str, chat_id: &str) -> Result<Option<Conversation>> {
        let row = sqlx::query(
            "SELECT contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id FROM conversations
             WHERE account = $1 AND chat_id = $2",
        )
        .bind(account)
        .bind(chat_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| conversation_of(&r)).transpose()
    }

    /// The account's chats that have a CRM chat (Chats API), most recently active first.
    pub async fn chat_conversations(&self, account: &str, limit: i64) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT chat_id FROM conversations WHERE account = $1 AND crm_chat_id IS NOT NULL
             ORDER BY updated_ms DESC LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get("chat_id")?)).collect()
    }

    /// What each of `chats` maps to (chats never seen are absent), in one query.
    pub async fn conversations(&self, account: &str, chats: &[String]) -> Result<HashMap<String, Conversation>> {
        let mut out = HashMap::new();
        for part in chats.chunks(500) {
            let marks: Vec<String> = (0..part.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!(
                "SELECT chat_id, contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id FROM conversations
                 WHERE account = $1 AND chat_id IN ({})",
                marks.join(", ")
            );
            let mut q = sqlx::query(&sql).bind(account);
            for chat in part {
                q = q.bind(chat);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.insert(r.try_get("chat_id")?, conversation_of(&r)?);
            }
        }
        Ok(out)
    }

    /// Stores what `chat_id` maps to (`crm` names the CRM account, for routing).
    pub async fn put_conversation(
        &self,
        account: &str,
        chat_id: &str,
        crm: &str,
        c: &Conversation,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO conversations (account, chat_id, crm, contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id, updated_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (account, chat_id) DO UPDATE SET crm = excluded.crm, contact_id = excluded.contact_id,
               lead_id = excluded.lead_id, crm_chat_id = excluded.crm_chat_id,
               unanswered_since_ms = excluded.unanswered_since_ms, task_id = excluded.task_id, updated_ms = excluded.updated_ms",
        )
        .bind(account)
        .bind(chat_id)
        .bind(crm)
        .bind(c.contact_id)
        .bind(c.lead_id)
        .bind(c.crm_chat_id.clone())
        .bind(c.unanswered_since_ms)
        .bind(c.task_id)
        .bind(now_ms)
        .run(self)
        .await?;
        Ok(())
    }

    /// The account and chat a manager's reply on `lead_id` goes to. Several chats
    /// can share a lead (the same person on Telegram and WhatsApp, a reused open
    /// lead): the reply goes to the chat of the latest customer message, ties
    /// broken by the last change and then by name, so the choice is deterministic.
    pub async fn chat_of_lead(&self, crm: &str, lead_id: i64) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT account, chat_id FROM conversations WHERE crm = $1 AND lead_id = $2
             ORDER BY COALESCE(last_customer_ms, 0) DESC, updated_ms DESC, account, chat_id LIMIT 1",
        )
        .bind(crm)
        .bind(lead_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| Ok((r.try_get("account")?, r.try_get("chat_id")?))).transpose()
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

    /// Records that the customer of `chat_id` wrote at `at_ms` (only ever forward).
    pub async fn customer_wrote(&self, account: &str, chat_id: &str, at_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE conversations SET last_customer_ms = $3
             WHERE account = $1 AND chat_id = $2 AND (last_customer_ms IS NULL OR last_customer_ms < $3)",
        )
        .bind(account)
        .bind(chat_id)
        .bind(at_ms)
        .run(self)
        .await?;
        Ok(())
    }

    /// Conversations of `account` waiting for an answer since before `before_ms`
    /// without an escalation task.
    pub async fn unanswered(&self, account: &str, before_ms: i64) -> Result<Vec<(String, Conversation)>> {
        let rows = sqlx::query(
            "SELECT chat_id, contact_id, lead_id, crm_chat_id, unanswered_since_ms, task_id FROM conversations
             WHERE account = $1 AND unanswered_since_ms IS NOT NULL AND unanswered_since_ms <= $2 AND task_id IS NULL",
        )
        .bind(account)
        .bind(before_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get("chat_id")?, conversation_of(r)?))).collect()
    }

    /// The oldest unanswered customer message of `account`, if any.
    pub async fn oldest_unanswered_ms(&self, account: &str) -> Result<Option<i64>> {
        let r = sqlx::query("SELECT MIN(unanswered_since_ms) AS m FROM conversations WHERE account = $1")
            .bind(account)
            .fetch_one(&self.pool)
            .await?;
        opt_i64(&r, "m")
    }

    // ---- outbox ------------------------------------------------------------

    /// Queues a reply; returns false when `source_id` was queued before.
    pub async fn outbox_add(&self, account: &str, reply: &NewReply<'_>, now_ms: i64) -> Result<bool> {
        let NewReply { source_id, chat_id, text, crm_message_id, media } = *reply;
        let random_id = random_i64();
        let r = sqlx::query(
            "INSERT INTO outbox (account, source_id, chat_id, text, random_id, crm_message_id, media, created_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (account, source_id) DO NOTHING",
        )
        .bind(account)
        .bind(source_id)
        .bind(chat_id)
        .bind(text)
        .bind(random_id)
        .bind(crm_message_id.map(str::to_string))
        .bind(media.map(str::to_string))
        .bind(now_ms)
        .run(self)
        .await?;
        Ok(r.rows_affected() > 0)
    }

    /// Pending outbox rows, oldest first.
    pub async fn outbox_pending(&self, account: &str, limit: i64) -> Result<Vec<OutboxRow>> {
        let rows = sqlx::query(
            "SELECT seq, source_id, chat_id, text, random_id, crm_message_id, media, attempts, next_attempt_ms
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

    /// Schedules `seq` for another attempt.
    pub async fn outbox_retry(&self, seq: i64, next_attempt_ms: i64, error: &str) -> Result<()> {
        sqlx::query("UPDATE outbox SET next_attempt_ms = $2, last_error = $3 WHERE seq = $1")
            .bind(seq)
            .bind(next_attempt_ms)
            .bind(error)
            .run(self)
            .await?;
        Ok(())
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

    // ---- cursors -----------------------------------------------------------

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

    // ---- gateway events and routes ----------------------------------------

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
    async fn insert_event(
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

    /// Records what the messenger says of a sent reply, forward only (sent →
    /// delivered → read; failed ends it).
    pub async fn outbox_delivery(&self, account: &str, message_id: &str, status: &str) -> Result<DeliveryUpdate> {
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
        sqlx::query("UPDATE outbox SET delivery = $2 WHERE seq = $1").bind(seq).bind(status).run(self).await?;
        Ok(DeliveryUpdate::Moved { seq, crm_message_id: row.try_get("crm_message_id")? })
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

    // ---- sessions and cleanup ---------------------------------------------

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

    // ---- keyed session material ------------------------------------------

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

    /// Deletes every row of `account` (account deletion).
    pub async fn purge(&self, account: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        for table in ["inbox", "outbox", "conversations", "sessions", "routes", "events", "media", "kv"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE account = $1")).bind(account).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM cursors WHERE scope = $1").bind(account).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

async fn put_cursor(conn: &mut sqlx::AnyConnection, scope: &str, name: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO cursors (scope, name, value) VALUES ($1, $2, $3)
         ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value",
    )
    .bind(scope)
    .bind(name)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

/// A random non-zero i64 (Telegram's `random_id`).
pub fn random_i64() -> i64 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let v = i64::from_le_bytes(bytes[..8].try_into().unwrap_or([1; 8]));
    if v == 0 { 1 } else { v }
}

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

/// The order of delivery statuses: sent → delivered → read; failed ends it.
fn delivery_rank(s: Option<&str>) -> u8 {
    match s {
        Some("sent") => 1,
        Some("delivered") => 2,
        Some("read") => 3,
        Some(s) if s.starts_with("failed") => 4,
        _ => 0,
    }
}
