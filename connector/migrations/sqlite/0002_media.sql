-- Attachments served to the CRM under signed, expiring URLs (Chats API media).
CREATE TABLE media (
    id TEXT PRIMARY KEY,
    account TEXT NOT NULL,
    content_type TEXT NOT NULL,
    file_name TEXT NOT NULL,
    body BLOB NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX media_expiry ON media (expires_ms);

-- Installation-wide values shared by connectors and gateways (the media URL key).
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
