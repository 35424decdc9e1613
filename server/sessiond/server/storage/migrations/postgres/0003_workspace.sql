-- sessiond metadata schema, version 3: the workspace store (packs, chunk
-- index, manifests, snapshots). See DESIGN.md "Storage format".
--
-- Write order is the invariant: pack object → packs + chunks rows (one
-- transaction) → manifest blob → manifests row → snapshots row (the commit
-- point, in the transaction that checks the session's fencing epoch). A
-- crash anywhere leaves only rows/blobs that no snapshot references, which
-- GC removes; never a snapshot that points at missing data.
--
-- GC is mark-and-sweep on the DATABASE clock: created_at on packs, chunks
-- and manifests defaults to now() so "created before T and unreferenced" is
-- judged against one clock whatever replica wrote the row. Snapshots take
-- clock_timestamp() inside the commit (after the session row lock), so the
-- session's newest snapshot by created_at is always its latest_snapshot_id.

-- One row per stored pack object (many chunks, ~8-32 MiB).
CREATE TABLE packs (
    tenant_id  text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    pack_id    text COLLATE "C" NOT NULL,
    blob_key   text NOT NULL,
    size       bigint NOT NULL CHECK (size >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, pack_id)
);

-- The chunk index: (tenant, keyed-BLAKE3 id) → where its compressed bytes
-- live. Chunk ids are keyed per tenant, so the tenant is part of the key. A
-- chunk keeps its first location; the same bytes in a later pack are garbage.
-- No foreign key to tenants: packs carries it, and chunks reference packs.
CREATE TABLE chunks (
    tenant_id   text COLLATE "C" NOT NULL,
    chunk_id    bytea NOT NULL CHECK (octet_length(chunk_id) = 32),
    pack_id     text COLLATE "C" NOT NULL,
    pack_offset bigint NOT NULL CHECK (pack_offset >= 0),
    length      bigint NOT NULL CHECK (length > 0),
    raw_length  bigint NOT NULL CHECK (raw_length >= 0),
    kind        text NOT NULL CHECK (kind IN ('data', 'tree')),
    -- Trees only: every chunk and subtree below it is known to be stored, so
    -- PutManifest need not walk it again.
    verified    boolean NOT NULL DEFAULT false CHECK (kind = 'tree' OR NOT verified),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, chunk_id),
    FOREIGN KEY (tenant_id, pack_id) REFERENCES packs (tenant_id, pack_id)
);
-- The chunks of a pack: GC's sweep (repack/delete a pack) and the foreign
-- key's check when a pack row is deleted.
CREATE INDEX chunks_pack_idx ON chunks (tenant_id, pack_id);

-- Manifests are content-addressed blobs (manifest_id is their hash), so a
-- row is immutable once written and a re-put is a no-op.
CREATE TABLE manifests (
    tenant_id      text COLLATE "C" NOT NULL REFERENCES tenants (tenant_id),
    manifest_id    text COLLATE "C" NOT NULL,
    blob_key       text NOT NULL,
    root_tree_id   bytea NOT NULL CHECK (octet_length(root_tree_id) = 32),
    -- Empty when no Claude config state rode along.
    config_tree_id bytea NOT NULL CHECK (octet_length(config_tree_id) IN (0, 32)),
    size           bigint NOT NULL CHECK (size >= 0),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, manifest_id)
);

-- parent_snapshot_id carries no foreign key: it is lineage (possibly into
-- the session a fork came from), and snapshot retention must be free to
-- delete a parent without rewriting its children.
CREATE TABLE snapshots (
    tenant_id             text COLLATE "C" NOT NULL,
    snapshot_id           text COLLATE "C" NOT NULL,
    session_id            text COLLATE "C" NOT NULL,
    parent_snapshot_id    text COLLATE "C",
    manifest_id           text COLLATE "C" NOT NULL,
    trigger               text NOT NULL,
    -- The last transcript entry the workspace state is pinned to.
    transcript_uuid       text,
    transcript_seq        bigint NOT NULL DEFAULT 0 CHECK (transcript_seq >= 0),
    file_history_included boolean NOT NULL DEFAULT false,
    stats                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- A retried commit with the same key returns the snapshot it created.
    idempotency_key       text COLLATE "C",
    created_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, snapshot_id),
    FOREIGN KEY (tenant_id, session_id) REFERENCES sessions (tenant_id, session_id),
    FOREIGN KEY (tenant_id, manifest_id) REFERENCES manifests (tenant_id, manifest_id)
);
CREATE UNIQUE INDEX snapshots_idempotency_idx
    ON snapshots (tenant_id, session_id, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Listing newest first with keyset paging on (created_at, snapshot_id).
CREATE INDEX snapshots_newest_idx
    ON snapshots (tenant_id, session_id, created_at DESC, snapshot_id DESC);
-- covering(): the smallest transcript_seq at or above a given one.
CREATE INDEX snapshots_covering_idx
    ON snapshots (tenant_id, session_id, transcript_seq DESC, created_at DESC, snapshot_id DESC);
-- "Manifests no snapshot references" for GC, and the foreign key's check.
CREATE INDEX snapshots_manifest_idx ON snapshots (tenant_id, manifest_id);
