//! The account's own messages: what its owner wrote from their own phone or
//! desktop goes to the CRM as the account's side of the conversation, while the
//! echoes of replies the connector itself sent (which every messenger reports
//! like any other message of the account) are recognised and never written again.

use super::*;
use crate::store::Echo;

impl Bridge {
    /// A chat's due rows without the echoes of our own replies (recorded as done).
    /// The rows from the first account-side message that cannot be told yet (a
    /// send in the chat may have gone out without its id recorded) wait for the
    /// next pass, so the chat's order is kept.
    pub(super) async fn without_echoes(&self, chat: &str, rows: Vec<InboxRow>) -> Result<Vec<InboxRow>, StoreError> {
        let mut keep = Vec::with_capacity(rows.len());
        let mut echoes: Vec<(i64, String)> = Vec::new();
        for row in rows {
            let own = match serde_json::from_str::<Event>(&row.payload) {
                Ok(Event::Message(m)) if m.outgoing => Some(m),
                _ => None,
            };
            let Some(m) = own else {
                keep.push(row);
                continue;
            };
            match self.store.outbox_echo(self.account(), chat, &m.message_id, m.caption()).await? {
                Echo::Ours => echoes.push((row.seq, "echo".to_string())),
                Echo::NotOurs => keep.push(row),
                Echo::Undecided => break,
            }
        }
        if !echoes.is_empty() {
            tracing::debug!(account = self.account(), chat, echoes = echoes.len(), "echoes of our replies dropped");
            self.store.inbox_done(&echoes, self.clock.now_ms()).await?;
        }
        Ok(keep)
    }
}
