//! Dialogs and chat history, paced so backfill and gap recovery never flood.

use super::*;

impl Inner {
    /// A history request, never sooner than the history interval after the
    /// previous one finished (backfill never floods): counted from the answer, not
    /// from when the previous request was handed over, so however long a request
    /// takes to go out, Telegram sees them at least the interval apart.
    async fn history_call<R: RemoteCall>(&self, req: &R) -> Result<R::Return, RpcFailure> {
        let mut last = self.history_at.lock().await;
        if let Some(at) = *last {
            tokio::time::sleep_until(at + self.s.history_interval).await;
        }
        let answer = self.call(None, req).await;
        *last = Some(tokio::time::Instant::now());
        answer
    }

    /// Chats whose last message is newer than `since_ms`, most recent first.
    pub(super) async fn recent_chats(&self, since_ms: i64, limit: u32) -> Result<Vec<String>, MessengerError> {
        let mut out: Vec<String> = Vec::new();
        let (mut offset_date, mut offset_id, mut offset_peer) = (0, 0, tl::enums::InputPeer::Empty);
        loop {
            let req = tl::functions::messages::GetDialogs {
                exclude_pinned: false,
                folder_id: None,
                offset_date,
                offset_id,
                offset_peer: offset_peer.clone(),
                limit: 100,
                hash: 0,
            };
            let (dialogs, messages, users, chats) = match self.history_call(&req).await {
                Ok(tl::enums::messages::Dialogs::Dialogs(d)) => (d.dialogs, d.messages, d.users, d.chats),
                Ok(tl::enums::messages::Dialogs::Slice(d)) => (d.dialogs, d.messages, d.users, d.chats),
                Ok(tl::enums::messages::Dialogs::NotModified(_)) => return Ok(out),
                Err(e) => return Err(self.classify(e).await),
            };
            self.cache(&users, &chats).await;
            let date_of = |peer: &tl::enums::Peer, id: i32| {
                messages.iter().find_map(|m| match m {
                    tl::enums::Message::Message(m) if m.id == id && &m.peer_id == peer => Some(m.date),
                    tl::enums::Message::Service(m) if m.id == id && &m.peer_id == peer => Some(m.date),
                    _ => None,
                })
            };
            let mut last = None;
            for d in &dialogs {
                let tl::enums::Dialog::Dialog(d) = d else { continue };
                let date = date_of(&d.peer, d.top_message).unwrap_or(0);
                if i64::from(date) * 1000 < since_ms && !d.pinned {
                    return Ok(out);
                }
                if out.len() as u32 >= limit {
                    return Ok(out);
                }
                out.push(map::chat_id_of(&d.peer));
                last = Some((date, d.top_message, d.peer.clone()));
            }
            let Some((date, id, peer)) = last else { return Ok(out) };
            if dialogs.len() < 100 {
                return Ok(out);
            }
            offset_date = date;
            offset_id = id;
            offset_peer = self
                .session
                .cached(PeerId::from(&peer))
                .map(|p| tl::enums::InputPeer::from(&PeerRef { id: p.id(), auth: p.auth().unwrap_or_default() }))
                .unwrap_or(tl::enums::InputPeer::Empty);
        }
    }

    /// One page of a chat's history (messages, users, chats), never faster than the
    /// history interval.
    pub(super) async fn history(
        &self,
        peer: tl::enums::InputPeer,
        offset_id: i32,
        limit: i32,
    ) -> Result<HistoryPage, RpcFailure> {
        let req = tl::functions::messages::GetHistory {
            peer,
            offset_id,
            offset_date: 0,
            add_offset: 0,
            limit,
            max_id: 0,
            min_id: 0,
            hash: 0,
        };
        Ok(match self.history_call(&req).await? {
            tl::enums::messages::Messages::Messages(m) => (m.messages, m.users, m.chats),
            tl::enums::messages::Messages::Slice(m) => (m.messages, m.users, m.chats),
            tl::enums::messages::Messages::ChannelMessages(m) => (m.messages, m.users, m.chats),
            tl::enums::messages::Messages::NotModified(_) => Default::default(),
        })
    }
    pub(super) async fn backfill(
        &self,
        chat_id: &str,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Message>, MessengerError> {
        let (_, peer) = self.input_peer(chat_id)?;
        let offset_id = before.and_then(|b| b.parse().ok()).unwrap_or(0);
        let (msgs, users, chats) = match self.history(peer, offset_id, limit.min(100) as i32).await {
            Ok(p) => p,
            Err(e) => return Err(self.classify(e).await),
        };
        self.cache(&users, &chats).await;
        let peers = map::Peers::new(&users, &chats);
        Ok(msgs.iter().filter_map(|m| map::message(m, &peers, false)).collect())
    }
}
