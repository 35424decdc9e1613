-- sessiond metadata schema, version 3 (SQLite): packs, chunk index,
-- manifests, snapshots. Mirrors migrations/postgres/0003_workspace.sql; see
-- there for the reasoning. Timestamps are INTEGER microseconds from the
-- server process clock (the embedded store's database clock), booleans
-- INTEGER 0/1, stats TEXT holding a JSON object.

CREATE TABLE packs (
    tenant_id  TEXT NOT NULL REFERENCES tenants (tenant_id),
    pack_id    TEXT NOT NULL,
    blob_key   TEXT NOT NULL,
    size       INTEGER NOT NULL CHECK (size >= 0),
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, pack_id)
) STRICT;

-- WITHOUT ROWID: the primary key is the only lookup path, so the table is
-- the PK b-tree itself (no second copy of the 32-byte id).
CREATE TABLE chunks (
    tenant_id   TEXT NOT NULL,
    chunk_id    BLOB NOT NULL CHECK (length(chunk_id) = 32),
    pack_id     TEXT NOT NULL,
    pack_offset INTEGER NOT NULL CHECK (pack_offset >= 0),
    length      INTEGER NOT NULL CHECK (length > 0),
    raw_length  INTEGER NOT NULL CHECK (raw_length >= 0),
    kind        TEXT NOT NULL CHECK (kind IN ('data', 'tree')),
    verified    INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1) AND (kind = 'tree' OR verified = 0)),
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, chunk_id),
    FOREIGN KEY (tenant_id, pack_id) REFERENCES packs (tenant_id, pack_id)
) STRICT, WITHOUT ROWID;
CREATE INDEX chunks_pack_idx ON chunks (tenant_id, pack_id);

CREATE TABLE manifests (
    tenant_id      TEXT NOT NULL REFERENCES tenants (tenant_id),
    manifest_id    TEXT NOT NULL,
    blob_key       TEXT NOT NULL,
    root_tree_id   BLOB NOT NULL CHECK (length(root_tree_id) = 32),
    config_tree_id BLOB NOT NULL CHECK (length(config_tree_id) IN (0, 32)),
    size           INTEGER NOT NULL CHECK (size >= 0),
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, manifest_id)
) STRICT;

CREATE TABLE snapshots (
    tenant_id             TEXT NOT NULL,
    snapshot_id           TEXT NOT NULL,
    session_id            TEXT NOT NULL,
    parent_snapshot_id    TEXT,
    manifest_id           TEXT NOT NULL,
    trigger               TEXT NOT NULL,
    transcript_uuid       TEXT,
    transcript_seq        INTEGER NOT NULL DEFAULT 0 CHECK (transcript_seq >= 0),
    file_history_included INTEGER NOT NULL DEFAULT 0 CHECK (file_history_included IN (0, 1)),
    stats                 TEXT NOT NULL DEFAULT '{}',
    idempotency_key       TEXT,
    created_at            INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, snapshot_id),
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, session_id),
    FOREIGN KEY (tenant_id, manifest_id) REFERENCES manifests (tenant_id, manifest_id)
) STRICT;
CREATE UNIQUE INDEX snapshots_idempotency_idx
    ON snapshots (tenant_id, session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX snapshots_newest_idx
    ON snapshots (tenant_id, session_id, created_at DESC, snapshot_id DESC);
CREATE INDEX snapshots_covering_idx
    ON snapshots (tenant_id, session_id, transcript_seq DESC, created_at DESC, snapshot_id DESC);
CREATE INDEX snapshots_manifest_idx ON snapshots (tenant_id, manifest_id);
