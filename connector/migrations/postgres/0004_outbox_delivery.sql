-- What the messenger last said of a sent reply: sent, delivered, read or failed (moves forward only).
ALTER TABLE outbox ADD COLUMN delivery TEXT;
