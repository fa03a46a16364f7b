-- Rows of a history import (1) are delivered after the live rows of other chats,
-- so live messages never wait behind an import.
ALTER TABLE inbox ADD COLUMN history INTEGER NOT NULL DEFAULT 0;
