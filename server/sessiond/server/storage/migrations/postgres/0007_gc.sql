-- Garbage collection: mark-and-sweep with a grace period on the database
-- clock (DESIGN.md "GC").
--
-- A chunk no committed manifest (nor any manifest younger than the grace
-- period) reaches is marked; a marked chunk is reported missing by
-- MissingChunks, so a snapshot that needs it uploads it again, and the
-- re-upload moves the row to the new pack and clears the mark in the same
-- transaction. A later run deletes rows still marked after the grace period,
-- then packs no row references (object first, then row).
ALTER TABLE chunks ADD COLUMN gc_marked_at timestamptz;
CREATE INDEX chunks_marked_idx ON chunks (tenant_id, gc_marked_at)
    WHERE gc_marked_at IS NOT NULL;
CREATE INDEX manifests_age_idx ON manifests (tenant_id, created_at);

-- Leases on cluster-wide jobs (one GC runner at a time): a row, not a host.
CREATE TABLE job_leases (
    name       text COLLATE "C" PRIMARY KEY,
    owner      text NOT NULL,
    expires_at timestamptz NOT NULL
);
