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
mod conversations;
pub mod crypto;
mod dead;
mod events;
pub mod fence;
mod inbox;
pub mod lock;
pub mod media;
mod outbox;
mod secrets;

pub use outbox::{DeliveryUpdate, Echo, QueuedReply};

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
    /// Wakes whoever waits for `account`: every waiter (the bridge's work loop and
    /// a messenger adapter streaming stored webhooks wait on the same notifier; a
    /// single permit would wake one and leave the other to its timeout), and a
    /// permit for the next one to wait if nobody waits now.
    pub fn wake(&self, account: &str) {
        let n = self.of(account);
        n.notify_waiters();
        n.notify_one();
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
    /// From a history import.
    pub history: bool,
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
    /// For a manager's edit of a sent reply: the message id it changes.
    pub edit_of: Option<&'a str>,
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
    /// For an edit: the message id whose text becomes `text`.
    pub edit_of: Option<String>,
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
    /// Sent replies by what the messenger last said of them: `sent` (nothing
    /// more yet, or a messenger without receipts), `delivered`, `read`.
    pub replies: ReplyCounts,
    /// Arrival time of the oldest undelivered inbox row.
    pub oldest_pending_ms: Option<i64>,
    /// When the last customer message reached the CRM.
    pub last_inbound_ms: Option<i64>,
    /// When the last reply was sent to the messenger.
    pub last_outbound_ms: Option<i64>,
    /// Conversations whose customer waits for an answer.
    pub waiting_conversations: i64,
}

/// Sent replies by delivery state.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ReplyCounts {
    /// Sent, nothing more known.
    pub sent: i64,
    /// Delivered to the customer's device.
    pub delivered: i64,
    /// Read by the customer.
    pub read: i64,
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
    /// When it was queued (Unix ms): the message's arrival or the reply's creation.
    pub queued_ms: i64,
}

impl DeadLetter {
    /// How `replay --id` names it: `inbox/SEQ` or `outbox/SEQ`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.queue, self.seq)
    }
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

    /// Deletes every row of `account` (account deletion).
    pub async fn purge(&self, account: &str) -> Result<()> {
        let mut tx = self.begin().await?;
        // The fence row stays: a new account of the same name goes on from its epoch.
        for table in
            ["inbox", "outbox", "conversations", "sessions", "routes", "events", "media", "kv", "early_statuses"]
        {
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
