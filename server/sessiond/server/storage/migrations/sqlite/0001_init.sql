-- sessiond metadata schema, version 1 (SQLite, the embedded single-replica
-- default): tenants, sessions, transcripts. Mirrors migrations/postgres/0001_init.sql;
-- see there for the reasoning. Differences:
--   * timestamps are INTEGER microseconds since the Unix epoch, from the
--     server process clock (one replica, so the process is the database clock);
--   * JSON columns are TEXT holding JSON; label selectors use json_each();
--   * STRICT tables (SQLite >= 3.37) so a type slip fails loudly;
--   * TEXT compares with the BINARY collation: code point order, like "C".
-- Applied by SqliteMetadataStore at open inside BEGIN IMMEDIATE and recorded
-- in schema_migrations. Never edit an applied migration: add 0002_*.sql.

CREATE TABLE tenants (
    tenant_id  TEXT NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    chunk_key  BLOB NOT NULL CHECK (length(chunk_key) = 32),
    created_at INTEGER NOT NULL,
    disabled   INTEGER NOT NULL DEFAULT 0
) STRICT;

CREATE TABLE sessions (
    tenant_id          TEXT NOT NULL REFERENCES tenants (tenant_id),
    session_id         TEXT NOT NULL,
    state              TEXT NOT NULL CHECK (state IN
                           ('new', 'hydrating', 'active', 'suspending', 'suspended', 'deleted')),
    labels             TEXT NOT NULL DEFAULT '{}',
    agent_options      TEXT NOT NULL DEFAULT '{}',
    snapshot_policy    TEXT NOT NULL DEFAULT '{}',
    sdk_session_id     TEXT,
    latest_snapshot_id TEXT,
    forked_from        TEXT,
    sandbox_id         TEXT,
    sandbox_cwd        TEXT,
    turn_count         INTEGER NOT NULL DEFAULT 0,
    epoch              INTEGER NOT NULL DEFAULT 0,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL,
    last_active_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
) STRICT;

CREATE INDEX sessions_newest_idx ON sessions (tenant_id, created_at DESC, session_id DESC);

-- AUTOINCREMENT: a deleted key's id is never reused, so a reader still paging
-- through a deleted transcript cannot wander into a new one.
CREATE TABLE transcript_keys (
    key_id      INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   TEXT NOT NULL REFERENCES tenants (tenant_id),
    project_key TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    subpath     TEXT NOT NULL DEFAULT '',
    next_seq    INTEGER NOT NULL DEFAULT 0,
    mtime_ms    INTEGER NOT NULL,
    UNIQUE (tenant_id, project_key, session_id, subpath)
) STRICT;

-- entry is the JSON text exactly as received (TEXT, not parsed JSON).
CREATE TABLE transcript_entries (
    tenant_id TEXT NOT NULL,
    key_id    INTEGER NOT NULL REFERENCES transcript_keys (key_id) ON DELETE CASCADE,
    seq       INTEGER NOT NULL,
    uuid      TEXT,
    entry     TEXT NOT NULL,
    PRIMARY KEY (key_id, seq)
) STRICT;
CREATE UNIQUE INDEX transcript_entries_uuid_idx
    ON transcript_entries (key_id, uuid) WHERE uuid IS NOT NULL;

CREATE TABLE transcript_summaries (
    tenant_id   TEXT NOT NULL REFERENCES tenants (tenant_id),
    project_key TEXT NOT NULL,
    session_id  TEXT NOT NULL,
    mtime_ms    INTEGER NOT NULL,
    data        TEXT NOT NULL,
    PRIMARY KEY (tenant_id, project_key, session_id)
) STRICT;
