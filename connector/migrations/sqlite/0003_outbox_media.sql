-- A manager's reply may carry a file (Chats API): kind, URL and name, as JSON.
ALTER TABLE outbox ADD COLUMN media TEXT;
