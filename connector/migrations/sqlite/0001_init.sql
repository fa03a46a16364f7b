-- Inbound events from the messenger, written before its cursor is committed.
CREATE TABLE inbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    event_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    attempt_started_ms BIGINT,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    received_ms BIGINT NOT NULL,
    done_ms BIGINT,
    crm_ref TEXT,
    UNIQUE (account, chat_id, event_key)
);
CREATE INDEX inbox_work ON inbox (account, state, seq);

-- Replies to send to the messenger; source_id (the CRM note or chat message) is the idempotency key.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    source_id TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    text TEXT NOT NULL,
    random_id BIGINT NOT NULL,
    crm_message_id TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_ms BIGINT NOT NULL,
    sent_ms BIGINT,
    message_id TEXT,
    UNIQUE (account, source_id)
);
CREATE INDEX outbox_work ON outbox (account, state, seq);

-- Messenger chat -> CRM contact, lead and chat; also the routing key of lead webhooks.
CREATE TABLE conversations (
    account TEXT NOT NULL,
    chat_id TEXT NOT NULL,
    crm TEXT NOT NULL,
    contact_id BIGINT,
    lead_id BIGINT,
    crm_chat_id TEXT,
    unanswered_since_ms BIGINT,
    task_id BIGINT,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (account, chat_id)
);
CREATE INDEX conversations_lead ON conversations (crm, lead_id);

CREATE TABLE cursors (
    scope TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (scope, name)
);

-- Messenger session material, encrypted (ChaCha20-Poly1305) with a key from a Secret.
CREATE TABLE sessions (
    account TEXT PRIMARY KEY,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    updated_ms BIGINT NOT NULL
);

-- GCRA state of the rate budgets shared by every connector of one CRM integration.
CREATE TABLE budgets (
    key TEXT PRIMARY KEY,
    tat_ms REAL NOT NULL
);

-- Gateway routing keys registered by connectors.
CREATE TABLE routes (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    account TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Webhooks the gateway accepted, for the connector of `account`.
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    kind TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_ms BIGINT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    UNIQUE (account, kind, dedup_key)
);
CREATE INDEX events_work ON events (account, state, id);

-- The secret token in each binding's REST webhook URL.
CREATE TABLE webhook_tokens (
    binding TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE
);
