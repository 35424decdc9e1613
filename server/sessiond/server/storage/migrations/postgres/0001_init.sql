-- sessiond metadata schema, version 1: tenants, sessions, transcripts.
--
-- Applied by PostgresMetadataStore at open, inside one transaction under an
-- advisory lock, into the first schema of the connection's search_path; the
-- version is then recorded in schema_migrations. Never edit an applied
-- migration: add 0002_*.sql (chunk index, packs, manifests, snapshots, leases,
-- idempotency keys come that way).
--
-- Every row carries tenant_id from day one. Identifier columns use
-- COLLATE "C" so comparisons and ORDER BY are by code point: the same order as
-- SQLite's BINARY collation and Python's sorted(), whatever the database
-- locale, and cheaper btree comparisons.

CREATE TABLE tenants (
    tenant_id  text COLLATE "C" PRIMARY KEY,
    name       text NOT NULL,
    -- Key of the tenant's keyed-BLAKE3 chunk ids; never leaves the server.
    chunk_key  bytea NOT NULL CHECK (octet_length(chunk_key) = 32),
    created_at timestamptz NOT NULL DEFAULT now(),
    disabled   boolean NOT NULL DEFAULT false
);

CREATE TABLE sessions (
    tenant_id          text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    session_id         text COLLATE "C" NOT NULL,
    state              text NOT NULL CHECK (state IN
                           ('new', 'hydrating', 'active', 'suspending', 'suspended', 'deleted')),
    labels             jsonb NOT NULL DEFAULT '{}'::jsonb,
    agent_options      jsonb NOT NULL DEFAULT '{}'::jsonb,
    snapshot_policy    jsonb NOT NULL DEFAULT '{}'::jsonb,
    sdk_session_id     text,
    latest_snapshot_id text,
    forked_from        text,
    sandbox_id         text,
    sandbox_cwd        text,
    turn_count         bigint NOT NULL DEFAULT 0,
    -- Fencing epoch: bumped by every takeover and by deletion.
    epoch              bigint NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    last_active_at     timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, session_id)
);

-- Listing is newest first with keyset paging on (created_at, session_id).
CREATE INDEX sessions_newest_idx ON sessions (tenant_id, created_at DESC, session_id DESC);
-- Label selectors are containment queries: labels @> '{"k": "v"}'.
CREATE INDEX sessions_labels_idx ON sessions USING gin (labels jsonb_path_ops);

-- One row per transcript (main: subpath ''; subagents: 'subagents/agent-x').
-- The row is the per-key lock that serializes appends, the seq allocator and
-- the storage mtime that list_sessions reports. A short surrogate key keeps
-- the (much larger) entries table and its indexes narrow.
CREATE TABLE transcript_keys (
    key_id      bigserial PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    project_key text COLLATE "C" NOT NULL,
    session_id  text COLLATE "C" NOT NULL,
    subpath     text COLLATE "C" NOT NULL DEFAULT '',
    -- Every seq handed out so far is <= next_seq (gaps are allowed).
    next_seq    bigint NOT NULL DEFAULT 0,
    -- Storage write time, Unix epoch ms, strictly increasing per key.
    mtime_ms    bigint NOT NULL,
    UNIQUE (tenant_id, project_key, session_id, subpath)
);

-- DESIGN.md says entry JSONB; we deliberately store TEXT instead: the JSON
-- text exactly as the SDK sent it (lossless, byte-exact round trip), it
-- accepts the "\u0000" escape that jsonb rejects, and it skips jsonb's parse
-- on the hot append path. Nothing queries inside entries.
--
-- This is the hot table, so it carries no foreign key: a per-row RI check
-- costs ~15% of append throughput. Integrity is kept by its only two
-- writers instead: append inserts a key row and its entries in one
-- statement; delete locks the key rows (FOR UPDATE) before deleting their
-- entries and then the rows, so no append can slip entries in between.
-- tenant_id is denormalized from transcript_keys (which references tenants)
-- so that every row names its tenant.
CREATE TABLE transcript_entries (
    tenant_id text COLLATE "C" NOT NULL,
    key_id    bigint NOT NULL,
    seq       bigint NOT NULL,
    -- Idempotency key of the SDK's retried batches; NULL entries always append.
    uuid      text COLLATE "C",
    entry     text NOT NULL,
    PRIMARY KEY (key_id, seq)
);
CREATE UNIQUE INDEX transcript_entries_uuid_idx
    ON transcript_entries (key_id, uuid) WHERE uuid IS NOT NULL;

-- Entries over ~2 KB get compressed (TOAST); lz4 costs a fraction of pglz's
-- CPU on the append path (+13% append throughput measured). Servers built without lz4 keep the default.
DO $$
BEGIN
    EXECUTE 'ALTER TABLE transcript_entries ALTER COLUMN entry SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'lz4 unavailable; transcript entries use the default compression';
END
$$;

-- The SDK's SessionSummaryEntry per main transcript, folded inside each append.
-- data is the SDK-owned opaque object as JSON text (TEXT, not jsonb, for the
-- same "\u0000" reason as entries: a prompt may carry it).
CREATE TABLE transcript_summaries (
    tenant_id   text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    project_key text COLLATE "C" NOT NULL,
    session_id  text COLLATE "C" NOT NULL,
    -- Equal to the main transcript_keys.mtime_ms written by the same append.
    mtime_ms    bigint NOT NULL,
    data        text NOT NULL,
    PRIMARY KEY (tenant_id, project_key, session_id)
);
