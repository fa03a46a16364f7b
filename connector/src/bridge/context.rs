//! A message's context: what a reply answers is quoted from the stored message
//! when the messenger gave only its id.

use super::*;

/// The most of a quoted message that goes with a reply.
const QUOTE_CHARS: usize = 300;

impl Bridge {
    /// Fills in the text a reply answers (the messenger's own quote is kept): the
    /// stored message's content, cut at [`QUOTE_CHARS`].
    pub(super) async fn quote(&self, chat: &str, m: &mut Message) -> Result<(), StoreError> {
        let Some(reply) = m.reply_to.as_mut().filter(|r| r.quote.is_none()) else { return Ok(()) };
        let stored = self.store.message_payload(self.account(), chat, &reply.message_id).await?;
        if let Some(Event::Message(quoted)) = stored.and_then(|p| serde_json::from_str::<Event>(&p).ok()) {
            let text = quoted.content_summary(self.s.texts);
            let cut: String = text.chars().take(QUOTE_CHARS).collect();
            reply.quote = Some(if cut.len() < text.len() { format!("{cut}…") } else { cut });
        }
        Ok(())
    }
}
