//! grammers' [`Session`] kept in the connector's database (PostgreSQL or SQLite,
//! through the same store as everything else), sealed with the session key:
//! the auth keys never touch the disk in clear. Reads are served from memory
//! (grammers asks for the datacenter on every request); every change is written
//! through before the call returns, so a restart resumes without a new login.

use crate::messenger::Identity;
use crate::store::Store;
use crate::store::crypto::SessionKey;
use grammers_session::types::{DcOption, PeerId, PeerInfo, UpdateState, UpdatesState};
use grammers_session::{BoxFuture, Session, SessionData};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Why the session store failed.
#[derive(Debug, thiserror::Error)]
#[error("telegram session storage: {0}")]
pub struct SessionError(pub String);

/// What is sealed into the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    home_dc: i32,
    dc_options: BTreeMap<i32, DcOption>,
    peers: BTreeMap<i64, PeerInfo>,
    /// Who is signed in, for the status (names are not part of grammers' peers).
    #[serde(default)]
    identity: Option<Identity>,
    /// Datacenters whose auth key carries our authorization (media downloads).
    #[serde(default)]
    authorized_dcs: Vec<i32>,
}

impl Default for Stored {
    fn default() -> Self {
        let d = SessionData::default();
        Self {
            home_dc: d.home_dc,
            dc_options: d.dc_options.into_iter().collect(),
            peers: BTreeMap::new(),
            identity: None,
            authorized_dcs: Vec::new(),
        }
    }
}

/// A Telegram session in the database.
pub struct DbSession {
    account: String,
    store: Store,
    key: SessionKey,
    data: Mutex<Stored>,
    now_ms: fn() -> i64,
}

impl std::fmt::Debug for DbSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbSession").field("account", &self.account).finish_non_exhaustive()
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// The session row of an account: its key, `namespace/name` (so account deletion
/// purges it with the rest).
pub fn row_key(account: &str) -> String {
    account.to_string()
}

impl DbSession {
    /// Loads the account's session (a fresh one when none is stored).
    pub async fn load(store: Store, key: SessionKey, account: &str) -> Result<Self, SessionError> {
        let row = row_key(account);
        let data = match store.session(&row).await.map_err(|e| SessionError(e.to_string()))? {
            Some((nonce, ct)) => {
                let plain = key.open(&row, &nonce, &ct).map_err(SessionError)?;
                serde_json::from_slice(&plain)
                    .map_err(|e| SessionError(format!("stored session is unreadable: {e}")))?
            }
            None => Stored::default(),
        };
        Ok(Self { account: row, store, key, data: Mutex::new(data), now_ms: wall_ms })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn save(&self) -> Result<(), SessionError> {
        let plain = serde_json::to_vec(&*self.lock()).map_err(|e| SessionError(e.to_string()))?;
        let (nonce, ct) = self.key.seal(&self.account, &plain).map_err(SessionError)?;
        self.store
            .put_session(&self.account, &nonce, &ct, (self.now_ms)())
            .await
            .map_err(|e| SessionError(e.to_string()))
    }

    /// Who is signed in, as stored at login.
    pub fn identity(&self) -> Option<Identity> {
        self.lock().identity.clone()
    }

    /// Records the signed-in user (with grammers' self peer).
    pub async fn set_identity(&self, identity: Identity, me: PeerInfo) -> Result<(), SessionError> {
        {
            let mut d = self.lock();
            d.identity = Some(identity);
            let home = d.home_dc;
            if !d.authorized_dcs.contains(&home) {
                d.authorized_dcs.push(home);
            }
            d.peers.insert(key_of(PeerId::self_user()), me.clone());
            d.peers.insert(key_of(me.id()), me);
        }
        self.save().await
    }

    /// Whether our authorization was imported into `dc`.
    pub fn authorized_in(&self, dc: i32) -> bool {
        self.lock().authorized_dcs.contains(&dc)
    }

    /// Records that our authorization was imported into `dc`.
    pub async fn set_authorized_in(&self, dc: i32) -> Result<(), SessionError> {
        self.lock().authorized_dcs.push(dc);
        self.save().await
    }

    /// Forgets everything (logged out): new auth keys, no user, no peers.
    pub async fn wipe(&self) -> Result<(), SessionError> {
        *self.lock() = Stored::default();
        self.store.delete_session(&self.account).await.map_err(|e| SessionError(e.to_string()))
    }

    /// A cached peer by id, without going through a future.
    pub fn cached(&self, id: PeerId) -> Option<PeerInfo> {
        self.lock().peers.get(&key_of(id)).cloned()
    }
}

/// Peers are keyed by their Bot API dialog id, which keeps users, small groups
/// and channels apart; the self marker has none and is keyed 0 (never a dialog).
fn key_of(id: PeerId) -> i64 {
    id.bot_api_dialog_id().unwrap_or(0)
}

impl Session for DbSession {
    type Error = SessionError;

    fn home_dc_id(&self) -> Result<i32, SessionError> {
        Ok(self.lock().home_dc)
    }

    fn set_home_dc_id(&self, dc_id: i32) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let changed = {
                let mut d = self.lock();
                std::mem::replace(&mut d.home_dc, dc_id) != dc_id
            };
            if changed { self.save().await } else { Ok(()) }
        })
    }

    fn dc_option(&self, dc_id: i32) -> Result<Option<DcOption>, SessionError> {
        Ok(self.lock().dc_options.get(&dc_id).cloned())
    }

    fn set_dc_option(&self, dc_option: &DcOption) -> BoxFuture<'_, Result<(), SessionError>> {
        let dc_option = dc_option.clone();
        Box::pin(async move {
            let changed = self.lock().dc_options.insert(dc_option.id, dc_option.clone()).as_ref() != Some(&dc_option);
            if changed { self.save().await } else { Ok(()) }
        })
    }

    fn peer(&self, peer: PeerId) -> BoxFuture<'_, Result<Option<PeerInfo>, SessionError>> {
        Box::pin(async move { Ok(self.cached(peer)) })
    }

    fn cache_peer(&self, peer: PeerInfo) -> BoxFuture<'_, Result<(), SessionError>> {
        self.cache_peers(vec![peer])
    }

    fn cache_peers(&self, peers: Vec<PeerInfo>) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let mut changed = false;
            {
                let mut d = self.lock();
                for peer in peers {
                    let k = key_of(peer.id());
                    match d.peers.get_mut(&k) {
                        Some(known) => {
                            let before = known.clone();
                            known.extend_info(&peer);
                            changed |= *known != before;
                        }
                        None => {
                            // Without an access hash a peer is of no use to us.
                            if peer.auth().is_some() || matches!(peer, PeerInfo::Chat { .. }) {
                                d.peers.insert(k, peer);
                                changed = true;
                            }
                        }
                    }
                }
            }
            if changed { self.save().await } else { Ok(()) }
        })
    }

    fn updates_state(&self) -> BoxFuture<'_, Result<UpdatesState, SessionError>> {
        // The update state is the bridge's cursor, committed with the inbox; grammers'
        // own copy is never used.
        Box::pin(async { Ok(UpdatesState::default()) })
    }

    fn set_update_state(&self, _update: UpdateState) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async { Ok(()) })
    }
}
