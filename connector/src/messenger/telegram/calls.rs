//! Calls to Telegram: the datacenter a call goes to, flood waits, what each
//! error means (logged out, restricted, undeliverable), and the peer cache.

use super::*;

impl Inner {
    /// Invokes `req` (in the home datacenter unless `dc` says otherwise), following
    /// migrations and sleeping through one short flood wait.
    pub(super) async fn call<R: RemoteCall>(&self, dc: Option<i32>, req: &R) -> Result<R::Return, RpcFailure> {
        let body = req.to_bytes();
        let mut dc = dc;
        let mut migrated = false;
        let mut slept = false;
        loop {
            let target = match dc {
                Some(d) => d,
                None => self.session.home_dc_id().unwrap_or(2),
            };
            match self.rpc.invoke(target, body.clone()).await {
                Ok(bytes) => {
                    return R::Return::from_bytes(&bytes)
                        .map_err(|e| RpcFailure::Io(format!("unreadable answer from Telegram: {e}")));
                }
                Err(RpcFailure::Rpc { code: 303, name, value: Some(to) }) if !migrated => {
                    migrated = true;
                    if name == "FILE_MIGRATE" {
                        dc = Some(to as i32);
                    } else {
                        tracing::info!(
                            account = self.s.account,
                            dc = to,
                            "{name}: the account lives in another datacenter"
                        );
                        let _ = self.session.set_home_dc_id(to as i32).await;
                        dc = None;
                    }
                }
                Err(RpcFailure::Rpc { code: 420, name, value: Some(secs) })
                    if !slept && Duration::from_secs(secs.into()) <= self.s.flood_sleep_max =>
                {
                    slept = true;
                    tracing::info!(account = self.s.account, secs, "{name}: waiting as Telegram asks");
                    tokio::time::sleep(Duration::from_secs(secs.into())).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What a failed call means to the bridge; a logged-out session is wiped.
    pub(super) async fn classify(&self, e: RpcFailure) -> MessengerError {
        match &e {
            // Before the 420 arm: a frozen account answers 420 FROZEN_METHOD_INVALID.
            RpcFailure::Rpc { name, .. } if RESTRICTED.iter().any(|(n, _)| n == name) => {
                let why = RESTRICTED.iter().find(|(n, _)| n == name).map(|(_, why)| *why).unwrap_or_default();
                tracing::error!(account = self.s.account, "{why}");
                MessengerError::Restricted(why.to_string())
            }
            RpcFailure::Rpc { code: 420, value, name } => {
                let secs = value.unwrap_or(1).max(1);
                let until = now_ms() + i64::from(secs) * 1000;
                self.flood_until_ms.fetch_max(until, Ordering::Relaxed);
                tracing::warn!(account = self.s.account, secs, "{name}: Telegram asks to wait before sending again");
                MessengerError::FloodWait(Duration::from_secs(secs.into()))
            }
            RpcFailure::Rpc { name, .. } if LOGGED_OUT.contains(&name.as_str()) => {
                self.logged_out(format!("Telegram ended the session ({name}); sign in again")).await
            }
            RpcFailure::Rpc { name, .. } if name == "AUTH_KEY_DUPLICATED" => {
                self.logged_out(
                    "duplicate session (AUTH_KEY_DUPLICATED): the session was used from two places at once and Telegram invalidated it; sign in again".into(),
                )
                .await
            }
            RpcFailure::Rpc { name, .. } if UNDELIVERABLE.contains(&name.as_str()) => {
                MessengerError::Rejected(e.to_string())
            }
            RpcFailure::Rpc { code: 400 | 403 | 406, .. } => MessengerError::Rejected(e.to_string()),
            RpcFailure::Rpc { .. } => MessengerError::Unavailable(e.to_string()),
            RpcFailure::Io(_) => MessengerError::Unavailable(e.to_string()),
        }
    }

    /// The session ended: wipe it, tell the bridge, offer a new login.
    pub(super) async fn logged_out(&self, reason: String) -> MessengerError {
        tracing::warn!(account = self.s.account, "{reason}");
        if let Err(e) = self.session.wipe().await {
            tracing::error!(account = self.s.account, "could not wipe the session: {e}");
        }
        *self.phase.lock().await = Phase::LoggedOut(reason.clone());
        {
            let mut f = lock(&self.feed);
            let generation = f.generation + 1;
            *f = Feed { generation, logged_out: Some(reason.clone()), ..Feed::default() };
        }
        self.fed.notify_one();
        MessengerError::LoggedOut(reason)
    }

    pub(super) fn input_peer(&self, chat_id: &str) -> Result<(PeerRef, tl::enums::InputPeer), MessengerError> {
        let id = map::peer_of(chat_id)
            .ok_or_else(|| MessengerError::Rejected(format!("not a Telegram chat id: {chat_id}")))?;
        let info = self
            .session
            .cached(id)
            .ok_or_else(|| MessengerError::Rejected(format!("chat {chat_id} is unknown to this session")))?;
        let auth = info.auth().unwrap_or_default();
        let r = PeerRef { id, auth };
        Ok((r, tl::enums::InputPeer::from(&r)))
    }

    pub(super) fn flood_gate(&self) -> Result<(), MessengerError> {
        let until = self.flood_until_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if until > now { Err(MessengerError::FloodWait(Duration::from_millis((until - now) as u64))) } else { Ok(()) }
    }

    pub(super) async fn cache(&self, users: &[tl::enums::User], chats: &[tl::enums::Chat]) {
        let peers: Vec<PeerInfo> = users.iter().map(PeerInfo::from).chain(chats.iter().map(PeerInfo::from)).collect();
        if !peers.is_empty()
            && let Err(e) = self.session.cache_peers(peers).await
        {
            tracing::warn!(account = self.s.account, "could not cache peers: {e}");
        }
    }
}
