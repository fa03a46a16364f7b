//! The per-account lock: at most one live messenger connection per account.
//!
//! PostgreSQL: a session advisory lock held on a dedicated connection (never
//! through a transaction-mode pooler such as PgBouncer in transaction mode — the
//! lock would not stay with the session), with server-side TCP keepalives so a
//! vanished connector's lock is freed. The same connection LISTENs for the
//! gateway's notifications. Every few seconds the holder checks, on that
//! connection, that its backend still holds the lock; if the connection dropped
//! (the lock went with it) or the check fails, [`AccountLock::lost`] fires and the
//! connector drops its messenger connection at once.
//!
//! SQLite (standalone, one process): an exclusive `flock` on a file beside the
//! database.

use super::{CHANNEL, Dialect, Store, StoreError};
use sha2::Digest;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How often the holder checks it still holds the lock.
const CHECK_EVERY: Duration = Duration::from_secs(3);
/// How often a waiting connector tries again.
const RETRY_EVERY: Duration = Duration::from_secs(2);

/// The advisory-lock key of a name (first 8 bytes of its SHA-256).
pub fn lock_key(name: &str) -> i64 {
    let d = sha2::Sha256::digest(name.as_bytes());
    i64::from_be_bytes(d[..8].try_into().unwrap_or_default())
}

enum Cmd {
    TryLock(i64, oneshot::Sender<bool>),
    Release(oneshot::Sender<()>),
}

/// A held account lock.
pub struct AccountLock {
    lost: watch::Receiver<bool>,
    cmd: Option<mpsc::Sender<Cmd>>,
    _file: Option<std::fs::File>,
}

impl AccountLock {
    /// Waits until `account`'s lock is held, calling `waiting` with the reason
    /// while another connector holds it.
    pub async fn acquire(store: &Store, account: &str, mut waiting: impl FnMut(&str)) -> Result<Self, StoreError> {
        match store.dialect() {
            Dialect::Postgres => Self::acquire_pg(store, account, &mut waiting).await,
            Dialect::Sqlite => Self::acquire_file(store, account, &mut waiting).await,
        }
    }

    async fn acquire_pg(store: &Store, account: &str, waiting: &mut impl FnMut(&str)) -> Result<Self, StoreError> {
        let key = lock_key(&format!("account:{account}"));
        let options = PgConnectOptions::from_str(store.url())?
            .application_name(&format!("crmessenger-connector {account}"))
            .options([("tcp_keepalives_idle", "10"), ("tcp_keepalives_interval", "5"), ("tcp_keepalives_count", "3")]);
        let pool = PgPoolOptions::new().max_connections(1).connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool).await?;
        loop {
            let held: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut listener).await?;
            if held {
                break;
            }
            let holder = sqlx::query(
                "SELECT a.application_name, a.pid, COALESCE(host(a.client_addr), 'local') AS addr FROM pg_locks l
                 JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                   AND ((l.classid::bigint << 32) | l.objid::bigint) = $1 LIMIT 1",
            )
            .bind(key)
            .fetch_optional(&mut listener)
            .await?
            .map(|r| {
                let app: String = r.try_get("application_name").unwrap_or_default();
                let pid: i32 = r.try_get("pid").unwrap_or_default();
                let addr: String = r.try_get("addr").unwrap_or_default();
                format!("{app} (backend pid {pid}, from {addr})")
            })
            .unwrap_or_else(|| "another connector".into());
            waiting(&format!("the account lock is held by {holder}; waiting for it"));
            tokio::time::sleep(RETRY_EVERY).await;
        }
        listener.listen(CHANNEL).await?;
        let (lost_tx, lost) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        tokio::spawn(hold_pg(listener, key, store.wakeups().clone(), lost_tx, cmd_rx));
        Ok(Self { lost, cmd: Some(cmd_tx), _file: None })
    }

    async fn acquire_file(store: &Store, account: &str, waiting: &mut impl FnMut(&str)) -> Result<Self, StoreError> {
        use std::os::fd::AsRawFd;
        let db = store.url().trim_start_matches("sqlite://").trim_start_matches("sqlite:");
        let db = db.split('?').next().unwrap_or(db);
        let path = format!("{db}.{:016x}.lock", lock_key(account));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Data(format!("open lock file {path}: {e}")))?;
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            waiting(&format!("the account lock file {path} is held by another process; waiting for it"));
            tokio::time::sleep(RETRY_EVERY).await;
        }
        let (_tx, lost) = watch::channel(false);
        // The sender is dropped: a file lock is never lost while the process lives.
        Ok(Self { lost, cmd: None, _file: Some(file) })
    }

    /// Resolves when the lock is lost (never, for a file lock).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        loop {
            if *rx.borrow() {
                return;
            }
            if rx.changed().await.is_err() {
                // The holder task is gone: only a file lock (never lost) or a
                // released lock gets here.
                if self.cmd.is_some() {
                    return;
                }
                std::future::pending::<()>().await;
            }
        }
    }

    /// Whether the lock was lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Tries to take another lock named `name` on the same session (e.g. the one
    /// reply poller per binding); held until this account lock is released.
    /// SQLite: one process, so always granted.
    pub async fn try_lock_also(&self, name: &str) -> bool {
        let Some(cmd) = &self.cmd else { return true };
        let (tx, rx) = oneshot::channel();
        if cmd.send(Cmd::TryLock(lock_key(name), tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Releases the lock (also released when the process exits).
    pub async fn release(mut self) {
        if let Some(cmd) = self.cmd.take() {
            let (tx, rx) = oneshot::channel();
            if cmd.send(Cmd::Release(tx)).await.is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
            }
        }
    }
}

async fn holds(listener: &mut PgListener, key: i64) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()
           AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(key)
    .fetch_one(listener)
    .await?;
    Ok(n > 0)
}

async fn hold_pg(
    mut listener: PgListener,
    key: i64,
    wakeups: std::sync::Arc<super::Wakeups>,
    lost: watch::Sender<bool>,
    mut cmds: mpsc::Receiver<Cmd>,
) {
    let mut check = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::TryLock(k, reply)) => {
                    let ok = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                        .bind(k).fetch_one(&mut listener).await.unwrap_or(false);
                    let _ = reply.send(ok);
                }
                Some(Cmd::Release(reply)) => {
                    let _ = sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut listener).await;
                    let _ = reply.send(());
                    return;
                }
                None => {
                    // The lock handle was dropped: release with it.
                    let _ = sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut listener).await;
                    return;
                }
            },
            _ = check.tick() => {
                match holds(&mut listener, key).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!("the account lock is no longer held (the database connection was replaced)");
                        let _ = lost.send(true);
                        return;
                    }
                    Err(e) => {
                        tracing::error!("cannot confirm the account lock: {e}");
                        let _ = lost.send(true);
                        return;
                    }
                }
            }
            n = listener.try_recv() => match n {
                Ok(Some(n)) => wakeups.wake(n.payload()),
                Ok(None) | Err(_) => {
                    tracing::error!("the lock connection to the database was lost; the account lock went with it");
                    let _ = lost.send(true);
                    return;
                }
            },
        }
    }
}
