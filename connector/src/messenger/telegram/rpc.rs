//! The raw-RPC seam under the Telegram adapter: serialized TL requests in,
//! serialized TL responses (or RPC errors) out, and a stream of raw updates.
//!
//! In production it is grammers' MTProto sender pool ([`GrammersRpc`]); tests put
//! a scripted Telegram behind the same trait and answer with real serialized TL
//! objects, so everything above the wire — login, updates, sending, errors — is
//! the code that runs against Telegram.

use async_trait::async_trait;
use grammers_mtsender::{ConnectionParams, InvocationError, NoRetries, SenderPool, SenderPoolHandle};
use grammers_session::Session;
use grammers_session::updates::UpdatesLike;
use std::num::NonZeroUsize;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};

/// Why a raw call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RpcFailure {
    /// Telegram answered with an RPC error (`FLOOD_WAIT_31` arrives as code 420,
    /// name `FLOOD_WAIT`, value 31).
    #[error("telegram error {code} {name}{}", value.map(|v| format!(" ({v})")).unwrap_or_default())]
    Rpc {
        /// HTTP-like code.
        code: i32,
        /// Name without the number.
        name: String,
        /// The number, when the name carried one.
        value: Option<u32>,
    },
    /// The connection failed; the request may or may not have reached Telegram.
    #[error("telegram connection: {0}")]
    Io(String),
}

impl RpcFailure {
    /// Builds an RPC error from Telegram's message (`FLOOD_WAIT_31` → name and value).
    pub fn from_message(code: i32, message: &str) -> Self {
        // The number, if any, is the part after the last '_' that is all digits.
        let (name, value) = match message.rsplit_once('_') {
            Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                (head.to_string(), tail.parse().ok())
            }
            _ => (message.to_string(), None),
        };
        RpcFailure::Rpc { code, name, value }
    }

    /// Whether this is the RPC error `name`.
    pub fn is(&self, wanted: &str) -> bool {
        matches!(self, RpcFailure::Rpc { name, .. } if name == wanted)
    }
}

/// Serialized TL over some connection to Telegram.
#[async_trait]
pub trait TgRpc: Send + Sync {
    /// Invokes the serialized function `body` in datacenter `dc_id` and returns the
    /// serialized result.
    async fn invoke(&self, dc_id: i32, body: Vec<u8>) -> Result<Vec<u8>, RpcFailure>;
    /// The next batch of updates pushed by Telegram (`None` once the connection is
    /// gone for good).
    async fn next_updates(&self) -> Option<UpdatesLike>;
    /// Closes the connections.
    fn close(&self) {}
}

/// Device identity shown in the account's Telegram device list.
#[derive(Debug, Clone)]
pub struct Device {
    /// Device model, e.g. `CRMessenger connector`.
    pub model: String,
    /// Application version.
    pub app_version: String,
    /// System version.
    pub system_version: String,
}

impl Default for Device {
    fn default() -> Self {
        Self {
            model: "CRMessenger connector".into(),
            app_version: env!("CARGO_PKG_VERSION").into(),
            system_version: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

/// Telegram over MTProto, through grammers' sender pool.
pub struct GrammersRpc {
    handle: SenderPoolHandle,
    updates: Mutex<mpsc::Receiver<UpdatesLike>>,
}

impl GrammersRpc {
    /// Connects lazily (on the first call) with the session's keys and datacenter.
    /// `updates_capacity` is grammers' own update channel, which drops what does
    /// not fit; the adapter drains it at once into its own queue.
    pub fn start<S>(session: Arc<S>, api_id: i32, device: &Device, updates_capacity: usize) -> Self
    where
        S: Session + Sized,
        S::Error: std::error::Error + Send + Sync + 'static,
    {
        let params = ConnectionParams {
            device_model: device.model.clone(),
            system_version: device.system_version.clone(),
            app_version: device.app_version.clone(),
            system_lang_code: "en".into(),
            lang_code: "en".into(),
            // Flood waits and retries are the adapter's decisions, not the pool's.
            retry_policy: Box::new(NoRetries),
            updates_channel_capacity: NonZeroUsize::new(updates_capacity.max(1)).unwrap_or(NonZeroUsize::MIN),
            ..Default::default()
        };
        let pool = SenderPool::with_configuration(session, api_id, params);
        tokio::spawn(pool.runner.run());
        Self { handle: pool.handle.thin.clone(), updates: Mutex::new(pool.updates) }
    }
}

#[async_trait]
impl TgRpc for GrammersRpc {
    async fn invoke(&self, dc_id: i32, body: Vec<u8>) -> Result<Vec<u8>, RpcFailure> {
        self.handle.raw_invoke_in_dc(dc_id, body).await.map_err(|e| match e {
            InvocationError::Rpc(r) => RpcFailure::Rpc { code: r.code, name: r.name, value: r.value },
            other => RpcFailure::Io(other.to_string()),
        })
    }

    async fn next_updates(&self) -> Option<UpdatesLike> {
        self.updates.lock().await.recv().await
    }

    fn close(&self) {
        self.handle.quit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_split_off_their_number() {
        assert_eq!(
            RpcFailure::from_message(420, "FLOOD_WAIT_31"),
            RpcFailure::Rpc { code: 420, name: "FLOOD_WAIT".into(), value: Some(31) }
        );
        assert_eq!(
            RpcFailure::from_message(303, "USER_MIGRATE_4"),
            RpcFailure::Rpc { code: 303, name: "USER_MIGRATE".into(), value: Some(4) }
        );
        assert!(RpcFailure::from_message(401, "AUTH_KEY_UNREGISTERED").is("AUTH_KEY_UNREGISTERED"));
        assert!(!RpcFailure::Io("reset".into()).is("FLOOD_WAIT"));
    }
}
