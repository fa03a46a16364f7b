//! The update stream: the pump drains the connection into the adapter's queue,
//! fills gaps with getDifference (or from the history, for a gap Telegram calls
//! too long), and hands batches to the bridge with the state to commit.

use super::*;

impl Inner {
    pub(super) async fn pump(self: Arc<Self>, mut local: mpsc::UnboundedReceiver<UpdatesLike>) {
        let mut boxes: Option<MessageBoxes> = None;
        let mut generation = 0;
        let mut failures = 0u32;
        loop {
            {
                let f = lock(&self.feed);
                if f.generation != generation {
                    generation = f.generation;
                    boxes = None;
                }
            }
            let Some(b) = boxes.as_mut() else {
                let start = lock(&self.feed).start.take();
                match start {
                    Some(cursor) => match self.open(cursor.clone()).await {
                        Ok(b) => {
                            boxes = Some(b);
                            failures = 0;
                        }
                        Err(e) => {
                            lock(&self.feed).start = Some(cursor);
                            failures += 1;
                            if self.failed(e, failures).await {
                                return;
                            }
                        }
                    },
                    // Not streaming yet: only a login token update matters.
                    None => tokio::select! {
                        u = self.rpc.next_updates() => match u {
                            Some(u) => self.before_login(u),
                            None => return,
                        },
                        _ = local.recv() => {}
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    },
                }
                continue;
            };
            {
                let mut f = lock(&self.feed);
                if f.overflowed && f.queue.len() <= self.s.queue_capacity / 2 {
                    // Room again: fetch what was skipped from the last queued state.
                    f.overflowed = false;
                    if let Some(state) = f.running.clone() {
                        *b = MessageBoxes::load(state);
                    }
                }
            }
            let deadline = b.check_deadlines();
            if let Some(req) = b.get_difference() {
                match self.call(None, &req).await {
                    Ok(tl::enums::updates::Difference::TooLong(d)) => {
                        // Too far behind for getDifference: what happened meanwhile is
                        // refetched from the chats' history, and only then does the
                        // state move past the gap (a failure asks again, and refetches).
                        match self.recover_gap(d.pts).await {
                            Ok(()) => {
                                failures = 0;
                                b.apply_difference(tl::enums::updates::Difference::TooLong(d));
                            }
                            Err(e) => {
                                failures += 1;
                                tracing::warn!(account = self.s.account, "refetching a long gap failed: {e}");
                                tokio::time::sleep(crate::bridge::retry::backoff(
                                    failures,
                                    Duration::from_millis(500),
                                    Duration::from_secs(60),
                                ))
                                .await;
                            }
                        }
                    }
                    Ok(diff) => {
                        failures = 0;
                        let got = b.apply_difference(diff);
                        self.enqueue(got).await;
                    }
                    Err(e) => {
                        failures += 1;
                        if self.failed(e, failures).await {
                            return;
                        }
                    }
                }
                continue;
            }
            if let Some(mut req) = b.get_channel_difference() {
                let tl::enums::InputChannel::Channel(c) = &req.channel else {
                    b.end_channel_difference(PrematureEndReason::Banned);
                    continue;
                };
                let id = PeerId::channel_unchecked(c.channel_id);
                let Some(auth) = self.session.cached(id).and_then(|p| p.auth()) else {
                    b.end_channel_difference(PrematureEndReason::Banned);
                    continue;
                };
                req.channel = tl::enums::InputChannel::Channel(tl::types::InputChannel {
                    channel_id: c.channel_id,
                    access_hash: auth.hash(),
                });
                req.limit = 100;
                match self.call(None, &req).await {
                    Ok(diff) => {
                        failures = 0;
                        let got = b.apply_channel_difference(diff);
                        self.enqueue(got).await;
                    }
                    Err(e)
                        if e.is("PERSISTENT_TIMESTAMP_OUTDATED") || matches!(e, RpcFailure::Rpc { code: 500, .. }) =>
                    {
                        b.end_channel_difference(PrematureEndReason::TemporaryServerIssues);
                    }
                    Err(e) if e.is("CHANNEL_PRIVATE") || e.is("CHANNEL_INVALID") => {
                        b.end_channel_difference(PrematureEndReason::Banned);
                    }
                    Err(e) => {
                        failures += 1;
                        if self.failed(e, failures).await {
                            return;
                        }
                    }
                }
                continue;
            }
            let wait = deadline.saturating_duration_since(std::time::Instant::now());
            let got = tokio::select! {
                u = self.rpc.next_updates() => match u {
                    Some(u) => b.process_updates(u).ok(),
                    None => return,
                },
                Some(u) = local.recv() => b.process_updates(u).ok(),
                _ = self.drained.notified() => None,
                _ = tokio::time::sleep(wait) => None,
            };
            if let Some(got) = got {
                self.enqueue(got).await;
            }
        }
    }

    /// A failed call in the pump: logged out stops the stream (the pump waits for
    /// a new start), anything else waits a little. Returns whether to stop for good.
    pub(super) async fn failed(&self, e: RpcFailure, failures: u32) -> bool {
        let err = self.classify(e).await;
        match err {
            MessengerError::LoggedOut(_) => false,
            MessengerError::FloodWait(d) => {
                tokio::time::sleep(d).await;
                false
            }
            other => {
                tracing::warn!(account = self.s.account, "fetching updates failed: {other}");
                tokio::time::sleep(crate::bridge::retry::backoff(
                    failures.min(6),
                    Duration::from_millis(500),
                    Duration::from_secs(30),
                ))
                .await;
                false
            }
        }
    }

    pub(super) fn before_login(&self, u: UpdatesLike) {
        if let UpdatesLike::Updates(tl::enums::Updates::UpdateShort(s)) = &u
            && matches!(s.update, tl::enums::Update::LoginToken)
        {
            // Scanned: the next export returns the authorization.
            self.token_updated.store(true, Ordering::SeqCst);
        }
    }

    /// The message boxes to stream from: the committed state (catching up on
    /// what happened since), or the account's current state on a first start.
    pub(super) async fn open(&self, cursor: Option<String>) -> Result<MessageBoxes, RpcFailure> {
        if let Some(state) = cursor.as_deref().and_then(map::state_of) {
            lock(&self.feed).running = Some(state.clone());
            return Ok(MessageBoxes::load(state));
        }
        let tl::enums::updates::State::State(s) = self.call(None, &tl::functions::updates::GetState {}).await?;
        let state = UpdatesState { pts: s.pts, qts: s.qts, date: s.date, seq: s.seq, channels: Vec::new() };
        let mut b = MessageBoxes::new();
        b.set_state(s);
        let mut f = lock(&self.feed);
        // Nothing to deliver, but the bridge records where the stream starts.
        f.queue.push_back(Item { event: None, cursor: map::cursor_of(&state) });
        f.running = Some(state);
        drop(f);
        self.fed.notify_one();
        Ok(b)
    }

    /// Refetches a gap Telegram called too long for getDifference: every chat with a
    /// message since the last state's date, its messages since then from the
    /// history, oldest first, queued under one cursor that moves the state to
    /// `pts` (so they are committed together; a crash before that refetches them,
    /// and the inbox keeps each message once). Edits and deletions inside such a
    /// gap are not in any history and stay unknown.
    pub(super) async fn recover_gap(&self, pts: i32) -> Result<(), MessengerError> {
        let since = lock(&self.feed).running.as_ref().map_or(0, |s| s.date);
        tracing::warn!(
            account = self.s.account,
            since,
            "the update gap is too long for getDifference: refetching the chats' history since then"
        );
        let since_ms = i64::from(since) * 1000;
        let chat_ids = self.recent_chats(since_ms, GAP_CHATS).await?;
        // Each chat's messages since then, paged back as the history import does.
        let mut found: Vec<Message> = Vec::new();
        for chat in &chat_ids {
            let mut before: Option<String> = None;
            loop {
                let page = self.backfill(chat, before.as_deref(), 100).await?;
                let Some(last) = page.last() else { break };
                before = Some(last.message_id.clone());
                let older = page.iter().any(|m| m.sent_at_ms < since_ms);
                found.extend(page.into_iter().filter(|m| m.sent_at_ms >= since_ms));
                if older {
                    break;
                }
            }
        }
        let id_of = |m: &Message| m.message_id.parse::<i32>().unwrap_or_default();
        found.sort_by_key(|m| (m.sent_at_ms, id_of(m)));
        let mut f = lock(&self.feed);
        let Some(running) = f.running.as_mut() else { return Ok(()) };
        let date = running.date.max(found.last().map_or(0, |m| (m.sent_at_ms / 1000) as i32));
        map::advance(running, &State { date, seq: 0, message_box: Some(MessageBox::Common { pts }) });
        let cursor = map::cursor_of(running);
        let mut recent = lock(&self.recent);
        let recovered = found.len();
        for m in found {
            // Only the account-wide box's ids name a deletion's chat (as `enqueue`).
            if m.chat_kind != ChatKind::Channel {
                recent.remember(id_of(&m), m.chat_id.clone());
            }
            f.queue.push_back(Item { event: Some(Event::Message(Box::new(m))), cursor: cursor.clone() });
        }
        f.queue.push_back(Item { event: None, cursor });
        drop(recent);
        drop(f);
        self.fed.notify_one();
        tracing::info!(account = self.s.account, chats = chat_ids.len(), recovered, "long gap refetched from history");
        Ok(())
    }

    pub(super) async fn enqueue(&self, (updates, users, chats): UpdateAndPeers) {
        if updates.is_empty() {
            return;
        }
        self.cache(&users, &chats).await;
        let peers = map::Peers::new(&users, &chats);
        let mut f = lock(&self.feed);
        for (update, _) in &updates {
            if let tl::enums::Update::MessageId(m) = update {
                lock(&self.sent).insert(m.random_id, m.id);
            }
        }
        // A batch is taken whole or not at all: the updates of a difference share
        // its final state, so a part of one cannot be committed safely.
        if f.overflowed || f.queue.len() >= self.s.queue_capacity {
            if !f.overflowed {
                tracing::warn!(
                    account = self.s.account,
                    capacity = self.s.queue_capacity,
                    "update queue full: pausing intake, will catch up with getDifference"
                );
            }
            // Skipped without moving the state: getDifference brings them back
            // once the bridge has caught up.
            f.overflowed = true;
            f.skipped += updates.len() as u64;
            return;
        }
        let mut recent = lock(&self.recent);
        for (update, state) in updates {
            let Some(running) = f.running.as_mut() else { continue };
            map::advance(running, &state);
            let cursor = map::cursor_of(running);
            if let tl::enums::Update::NewMessage(u) = &update
                && let tl::enums::Message::Message(m) = &u.message
            {
                recent.remember(m.id, map::chat_id_of(&m.peer_id));
            }
            let events = map::event(&update, &peers, |id| recent.chat_of.get(&id).cloned());
            if events.is_empty() {
                f.queue.push_back(Item { event: None, cursor });
            } else {
                for event in events {
                    f.queue.push_back(Item { event: Some(event), cursor: cursor.clone() });
                }
            }
        }
        drop(recent);
        drop(f);
        self.fed.notify_one();
    }

    pub(super) async fn updates(&self, cursor: Option<&str>, wait: Duration) -> Result<Batch, MessengerError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            {
                let mut f = lock(&self.feed);
                if let Some(reason) = f.logged_out.take() {
                    return Err(MessengerError::LoggedOut(reason));
                }
                if !f.started {
                    f.started = true;
                    f.start = Some(cursor.map(str::to_string));
                }
                if let Some((handed, n)) = f.inflight.take()
                    && cursor == Some(handed.as_str())
                {
                    // Committed: drop what it covered.
                    let n = n.min(f.queue.len());
                    f.queue.drain(..n);
                    if f.overflowed && f.queue.len() <= self.s.queue_capacity / 2 {
                        self.drained.notify_one();
                    }
                }
                if !f.queue.is_empty() {
                    let mut n = f.queue.len().min(PAGE);
                    // Never split items that share a state (one difference).
                    while n < f.queue.len() && f.queue[n].cursor == f.queue[n - 1].cursor {
                        n += 1;
                    }
                    let events: Vec<Event> = f.queue.iter().take(n).filter_map(|i| i.event.clone()).collect();
                    let next = f.queue[n - 1].cursor.clone();
                    f.inflight = Some((next.clone(), n));
                    return Ok(Batch { events, cursor: next });
                }
            }
            if tokio::time::timeout_at(deadline, self.fed.notified()).await.is_err() {
                let same = cursor.map(str::to_string).or_else(|| lock(&self.feed).running.as_ref().map(map::cursor_of));
                return Ok(Batch { events: Vec::new(), cursor: same.unwrap_or_default() });
            }
        }
    }
}
