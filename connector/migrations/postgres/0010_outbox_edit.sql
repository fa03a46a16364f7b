-- A manager's edit of a sent reply: the message id it changes (the row's text is the new text).
ALTER TABLE outbox ADD COLUMN edit_of TEXT;
