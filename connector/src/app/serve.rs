//! The one sequence that serves an account, in a pod (`run`) or beside others on
//! one host (`standalone`): take the account lock (waiting while another connector
//! holds it), register the webhook routes, run the bridge (the caller's part),
//! then release the lock — or, when it was lost, let go of the messenger.

use super::{AccountParts, register_routes};
use crate::store::Store;
use crate::store::lock::AccountLock;
use std::time::Duration;
use tokio::sync::watch;

/// How long to wait before trying again after the database refused the lock.
const LOCK_RETRY: Duration = Duration::from_secs(5);
/// How long to wait before registering the routes again after a failure.
const ROUTES_RETRY: Duration = Duration::from_secs(10);

/// How a run of the bridge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Asked to stop; the lock was released.
    Stopped,
    /// Another connector took the account; the messenger was disconnected.
    LockLost,
}

/// Takes the account lock and registers the account's routes, retrying both
/// (the wait and its reason show in the account's state). `None` when `stop`
/// turns true first.
pub async fn start(
    parts: &AccountParts,
    store: &Store,
    gateway_url: Option<&str>,
    stop: &mut watch::Receiver<bool>,
) -> Option<AccountLock> {
    let (state, key) = (&parts.state, &parts.key);
    let lock = loop {
        let acquired = tokio::select! {
            lock = AccountLock::acquire(store, key, |why| {
                tracing::warn!(account = key, "{why}");
                state.update(|s| s.waiting = Some(why.to_string()));
            }) => lock,
            _ = stopped(stop) => return None,
        };
        match acquired {
            Ok(lock) => break lock,
            Err(e) => {
                tracing::error!(account = key, "account lock: {e}; retrying in {}s", LOCK_RETRY.as_secs());
                state.update(|s| s.waiting = Some(format!("the database refused the account lock: {e}")));
                tokio::select! {
                    _ = tokio::time::sleep(LOCK_RETRY) => {}
                    _ = stopped(stop) => return None,
                }
            }
        }
    };
    state.update(|s| {
        s.waiting = None;
        s.holds_lock = true;
    });
    tracing::info!(account = key, "holding the account lock");
    while let Err(e) = register_routes(parts, store, gateway_url).await {
        tracing::warn!(account = key, "registering webhook routes: {e:#}; retrying in {}s", ROUTES_RETRY.as_secs());
        state.update(|s| s.waiting = Some(format!("registering webhook routes: {e:#}")));
        tokio::select! {
            _ = tokio::time::sleep(ROUTES_RETRY) => {}
            _ = stopped(stop) => {
                lock.release().await;
                return None;
            }
        }
    }
    state.update(|s| s.waiting = None);
    tracing::info!(account = key, "running");
    Some(lock)
}

/// After the bridge returned: releases the lock, or — when another connector
/// took the account — disconnects the messenger at once (it connects again once
/// this connector holds the lock).
pub async fn finish(parts: &AccountParts, lock: AccountLock) -> Ended {
    if lock.is_lost() {
        tracing::error!(account = parts.key, "the account lock was lost");
        parts.messenger.disconnect().await;
        parts.state.update(|s| s.holds_lock = false);
        return Ended::LockLost;
    }
    lock.release().await;
    tracing::info!(account = parts.key, "stopped");
    Ended::Stopped
}

/// Resolves once `stop` turns true (the guard `wait_for` returns is not held).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
