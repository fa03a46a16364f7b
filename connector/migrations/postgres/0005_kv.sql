-- Keyed session material of messenger libraries (WhatsApp Web's Signal stores), sealed per value.
CREATE TABLE kv (
    account TEXT NOT NULL,
    ns TEXT NOT NULL,
    k TEXT NOT NULL,
    v BYTEA NOT NULL,
    PRIMARY KEY (account, ns, k)
);
