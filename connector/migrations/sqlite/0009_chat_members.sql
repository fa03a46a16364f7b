-- The senders of a group chat whose contacts are linked to the group's lead.
CREATE TABLE chat_members (
    account TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    sender_id TEXT NOT NULL,
    contact_id BIGINT NOT NULL,
    PRIMARY KEY (account, chat_id, sender_id)
);
