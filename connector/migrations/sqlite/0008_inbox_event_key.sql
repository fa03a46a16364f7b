-- A deletion Telegram reports without its chat is matched to the chat of the
-- message it deletes by the message's key.
CREATE INDEX inbox_event_key ON inbox (account, event_key);
