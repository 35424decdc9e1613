-- Secrets every server replica must share (see migrations/postgres/0005).
CREATE TABLE server_keys (
    name       TEXT NOT NULL PRIMARY KEY,
    key        BLOB NOT NULL CHECK (length(key) >= 32),
    created_at INTEGER NOT NULL
) STRICT;
