//! The CRM rate budgets in the database, shared by every connector of one CRM
//! integration: the GCRA state of a key is one row, updated under a row lock
//! (PostgreSQL) or the single writer (SQLite).

use super::{Dialect, Store};
use async_trait::async_trait;
use crmessenger_crm::budget::{BudgetStore, Limit, gcra};
use sqlx::Row;
use std::time::Duration;

/// A [`BudgetStore`] kept in the database.
#[derive(Debug, Clone)]
pub struct DbBudgetStore {
    store: Store,
}

impl DbBudgetStore {
    /// Budgets kept in `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

#[async_trait]
impl BudgetStore for DbBudgetStore {
    async fn take(&self, key: &str, limit: Limit, now_ms: i64) -> Result<Result<(), Duration>, String> {
        let run = async {
            let mut tx = self.store.pool.begin().await?;
            sqlx::query("INSERT INTO budgets (key, tat_ms) VALUES ($1, 0) ON CONFLICT (key) DO NOTHING")
                .bind(key)
                .execute(&mut *tx)
                .await?;
            let select = match self.store.dialect {
                Dialect::Postgres => "SELECT tat_ms FROM budgets WHERE key = $1 FOR UPDATE",
                Dialect::Sqlite => "SELECT tat_ms FROM budgets WHERE key = $1",
            };
            let tat: f64 = sqlx::query(select).bind(key).fetch_one(&mut *tx).await?.try_get("tat_ms")?;
            let out = match gcra(Some(tat), limit, now_ms) {
                Ok(new) => {
                    sqlx::query("UPDATE budgets SET tat_ms = $2 WHERE key = $1")
                        .bind(key)
                        .bind(new)
                        .execute(&mut *tx)
                        .await?;
                    Ok(())
                }
                Err(wait) => Err(wait),
            };
            tx.commit().await?;
            Ok::<_, sqlx::Error>(out)
        };
        run.await.map_err(|e| format!("budget {key}: {e}"))
    }

    async fn block_until(&self, key: &str, until_ms: i64) -> Result<(), String> {
        sqlx::query(
            "INSERT INTO budgets (key, tat_ms) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET tat_ms = CASE WHEN budgets.tat_ms > excluded.tat_ms THEN budgets.tat_ms ELSE excluded.tat_ms END",
        )
        .bind(key)
        .bind(until_ms as f64)
        .execute(&self.store.pool)
        .await
        .map(drop)
        .map_err(|e| format!("budget {key}: {e}"))
    }

    async fn peek(&self, key: &str, limit: Limit, now_ms: i64) -> Result<Duration, String> {
        let tat: Option<f64> = sqlx::query("SELECT tat_ms FROM budgets WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.store.pool)
            .await
            .and_then(|r| r.map(|r| r.try_get("tat_ms")).transpose())
            .map_err(|e| format!("budget {key}: {e}"))?;
        Ok(gcra(tat, limit, now_ms).err().unwrap_or_default())
    }
}
