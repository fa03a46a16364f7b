//! The per-account lock: at most one live messenger connection per account.
//!
//! PostgreSQL: a session advisory lock held on a dedicated connection (never
//! through a transaction-mode pooler such as PgBouncer in transaction mode — the
//! lock would not stay with the session), with server-side TCP keepalives so a
//! vanished connector's lock is freed (after about 25 s: idle 10 s, then 3 probes
//! 5 s apart). The same connection LISTENs for the gateway's notifications.
//! Every [`CHECK_EVERY`] the holder checks, on that connection, that its backend
//! still holds the lock, and gives the check at most [`CHECK_TIMEOUT`]: a
//! connection that was cut (not closed) does not answer, and waiting for TCP to
//! give up would outlast the server's keepalives, after which another connector
//! takes the lock. If the check fails or does not finish in time,
//! [`AccountLock::lost`] fires and the connector drops its messenger connection
//! at once (self-fencing), long before the server frees the lock. Each new holder
//! also takes the next fencing epoch and sets it on the store (see
//! [`super::fence`]), so a stale holder's late writes are refused.
//!
//! Per-binding duties (reply polling, webhook subscription) are further advisory
//! locks on the same connection, tried again every interval by every connector
//! of the binding ([`Duties::try_hold`]), so when the holder stops (suspended,
//! deleted, crashed) another takes the duty over within one interval.
//!
//! SQLite (standalone, one process): an exclusive `flock` on a file beside the
//! database; duties are held in process, per account.

use super::{CHANNEL, Dialect, Store, StoreError};
use sha2::Digest;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// How often the holder checks it still holds the lock.
pub const CHECK_EVERY: Duration = Duration::from_secs(3);
/// The longest a check on the lock connection may take. With [`CHECK_EVERY`] a
/// cut connection is noticed within 7 s, well inside the 25 s after which the
/// server's keepalives free the lock for another connector.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(4);
/// The longest taking the next fencing epoch may wait (for a stale holder's
/// write transaction, which the server ends after its idle timeout).
const EPOCH_TIMEOUT: Duration = Duration::from_secs(60);
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

/// Duties held in process (SQLite): duty key → the account holding it.
pub(super) type LocalDuties = Arc<Mutex<HashMap<i64, String>>>;

/// A held account lock.
pub struct AccountLock {
    lost: watch::Receiver<bool>,
    cmd: Option<mpsc::Sender<Cmd>>,
    _file: Option<std::fs::File>,
    epoch: i64,
    duties: Duties,
}

/// The per-binding duties an account lock can hold (cheap to clone into tasks).
#[derive(Clone)]
pub struct Duties(DutiesInner);

#[derive(Clone)]
enum DutiesInner {
    /// Advisory locks on the account lock's connection.
    Pg(mpsc::Sender<Cmd>),
    /// In process, for one account.
    Local { registry: LocalDuties, owner: String },
}

impl Duties {
    /// Whether this connector holds the duty `name` (taking it if it is free).
    /// Call it again every interval: a duty whose holder went away is taken over.
    pub async fn try_hold(&self, name: &str) -> bool {
        let key = lock_key(name);
        match &self.0 {
            DutiesInner::Pg(cmd) => {
                let (tx, rx) = oneshot::channel();
                if cmd.send(Cmd::TryLock(key, tx)).await.is_err() {
                    return false;
                }
                rx.await.unwrap_or(false)
            }
            DutiesInner::Local { registry, owner } => {
                let mut held = registry.lock().unwrap_or_else(|e| e.into_inner());
                held.entry(key).or_insert_with(|| owner.clone()) == owner
            }
        }
    }
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
        let mut listener = bounded(CHECK_TIMEOUT, PgListener::connect_with(&pool)).await?;
        loop {
            let held: bool = bounded(
                CHECK_TIMEOUT,
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut listener),
            )
            .await?;
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
        // The next fencing epoch: from here on the previous holder's writes are refused.
        let epoch: i64 = bounded(
            EPOCH_TIMEOUT,
            sqlx::query_scalar(
                "INSERT INTO account_fences (account, epoch) VALUES ($1, 1)
                 ON CONFLICT (account) DO UPDATE SET epoch = account_fences.epoch + 1 RETURNING epoch",
            )
            .bind(account)
            .fetch_one(&mut listener),
        )
        .await?;
        store.set_fence(account, epoch);
        bounded(CHECK_TIMEOUT, listener.listen(CHANNEL)).await?;
        let (lost_tx, lost) = watch::channel(false);
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        tokio::spawn(hold_pg(listener, key, store.wakeups().clone(), lost_tx, cmd_rx));
        let duties = Duties(DutiesInner::Pg(cmd_tx.clone()));
        Ok(Self { lost, cmd: Some(cmd_tx), _file: None, epoch, duties })
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
        let duties = Duties(DutiesInner::Local { registry: store.local_duties().clone(), owner: account.to_string() });
        Ok(Self { lost, cmd: None, _file: Some(file), epoch: 0, duties })
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

    /// The fencing epoch taken with the lock (0 for a file lock).
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The per-binding duties this lock can hold; they go with it.
    pub fn duties(&self) -> Duties {
        self.duties.clone()
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

impl Drop for AccountLock {
    fn drop(&mut self) {
        // In-process duties go with the lock; advisory locks go with their connection.
        if let DutiesInner::Local { registry, owner } = &self.duties.0 {
            registry.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, holder| holder != owner);
        }
    }
}

/// `f`, or a timeout error after `limit`.
async fn bounded<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(StoreError::Data(format!("the lock connection did not answer within {limit:?}"))),
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
    let mut duties: HashSet<i64> = HashSet::new();
    let unlock_all = |mut listener: PgListener| async move {
        let _ =
            tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut listener))
                .await;
    };
    loop {
        tokio::select! {
            cmd = cmds.recv() => match cmd {
                Some(Cmd::TryLock(k, reply)) => {
                    if duties.contains(&k) {
                        let _ = reply.send(true);
                        continue;
                    }
                    let tried = tokio::time::timeout(
                        CHECK_TIMEOUT,
                        sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(k).fetch_one(&mut listener),
                    )
                    .await;
                    match tried {
                        Ok(Ok(true)) => {
                            duties.insert(k);
                            let _ = reply.send(true);
                        }
                        Ok(Ok(false)) => {
                            let _ = reply.send(false);
                        }
                        Ok(Err(e)) => {
                            tracing::error!("cannot take a duty lock: {e}; the account lock is given up");
                            let _ = reply.send(false);
                            let _ = lost.send(true);
                            return;
                        }
                        Err(_) => {
                            tracing::error!("the lock connection did not answer within {CHECK_TIMEOUT:?}; the account lock is given up");
                            let _ = reply.send(false);
                            let _ = lost.send(true);
                            return;
                        }
                    }
                }
                Some(Cmd::Release(reply)) => {
                    unlock_all(listener).await;
                    let _ = reply.send(());
                    return;
                }
                None => {
                    // The lock handle was dropped: release with it.
                    unlock_all(listener).await;
                    return;
                }
            },
            _ = check.tick() => {
                match tokio::time::timeout(CHECK_TIMEOUT, holds(&mut listener, key)).await {
                    Ok(Ok(true)) => {}
                    Ok(Ok(false)) => {
                        tracing::error!("the account lock is no longer held (the database connection was replaced)");
                        let _ = lost.send(true);
                        return;
                    }
                    Ok(Err(e)) => {
                        tracing::error!("cannot confirm the account lock: {e}");
                        let _ = lost.send(true);
                        return;
                    }
                    Err(_) => {
                        tracing::error!(
                            "the lock connection did not answer within {CHECK_TIMEOUT:?}: the account lock is given up before the database frees it for another connector"
                        );
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
