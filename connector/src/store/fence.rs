//! Fencing: a connector that lost its account lock without knowing it (its
//! database connection was cut, not closed) must not write after another
//! connector took the lock over.
//!
//! Each holder of an account's lock takes the next epoch in `account_fences`
//! when it gets the lock ([`super::lock::AccountLock::epoch`]) and sets it on its
//! store ([`Store::set_fence`]). From then on every write of that store runs in a
//! transaction that first reads the account's epoch `FOR SHARE`: a newer epoch
//! means the lock moved on, and the write is refused with
//! [`StoreError::Fenced`]. The new holder's epoch update waits for the row
//! lock, so a stale write either commits before the takeover or not at all.
//!
//! SQLite (standalone, one process, a file lock that cannot be lost) needs no
//! fence: there the check is skipped.

use super::{Dialect, Result, Store, StoreError};
use sqlx::Any;
use sqlx::any::{AnyArguments, AnyQueryResult};
use std::sync::{Arc, RwLock};

/// The epoch a store writes under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// `namespace/name` of the account.
    pub account: String,
    /// The epoch taken with the lock.
    pub epoch: i64,
}

/// Shared by the clones of one store (the bridge, the messenger's session).
pub(super) type FenceCell = Arc<RwLock<Option<Fence>>>;

impl Store {
    /// A clone of this store with a fence of its own (standalone mode serves
    /// several accounts from one pool; each fences its own writes).
    pub fn with_own_fence(&self) -> Store {
        Store { fence: FenceCell::default(), ..self.clone() }
    }

    /// From now on, writes of this store (and its clones) are refused once
    /// `account`'s lock has moved past `epoch`. A no-op on SQLite.
    pub fn set_fence(&self, account: &str, epoch: i64) {
        if self.dialect == Dialect::Sqlite {
            return;
        }
        let mut f = self.fence.write().unwrap_or_else(|e| e.into_inner());
        *f = Some(Fence { account: account.to_string(), epoch });
    }

    /// The fence writes are checked against, if any.
    pub fn fence(&self) -> Option<Fence> {
        self.fence.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A write transaction, its fence checked first.
    pub(super) async fn begin(&self) -> Result<sqlx::Transaction<'static, Any>> {
        let mut tx = self.pool.begin().await?;
        if let Some(f) = self.fence() {
            let current: Option<i64> =
                sqlx::query_scalar("SELECT epoch FROM account_fences WHERE account = $1 FOR SHARE")
                    .bind(&f.account)
                    .fetch_optional(&mut *tx)
                    .await?;
            if current != Some(f.epoch) {
                return Err(StoreError::Fenced(format!(
                    "the lock of {} moved to epoch {} (this connector holds epoch {}); its writes are refused",
                    f.account,
                    current.map(|e| e.to_string()).unwrap_or_else(|| "none".into()),
                    f.epoch
                )));
            }
        }
        Ok(tx)
    }
}

/// One write statement, under the store's fence.
pub(super) trait FencedWrite {
    /// Runs the statement in a fenced transaction (or directly when unfenced).
    async fn run(self, store: &Store) -> Result<AnyQueryResult>;
}

impl<'q> FencedWrite for sqlx::query::Query<'q, Any, AnyArguments<'q>> {
    async fn run(self, store: &Store) -> Result<AnyQueryResult> {
        if store.fence().is_none() {
            return Ok(self.execute(&store.pool).await?);
        }
        let mut tx = store.begin().await?;
        let r = self.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(r)
    }
}
