-- A messenger's status of a sent reply that came before the reply's send was
-- recorded (WhatsApp may report `read` before its API answers the send): kept here,
-- the furthest one per message, and applied when the send is recorded.
CREATE TABLE early_statuses (
    account TEXT NOT NULL,
    message_id TEXT NOT NULL,
    status TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    PRIMARY KEY (account, message_id)
);
