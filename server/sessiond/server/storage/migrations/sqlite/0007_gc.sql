-- Garbage collection (see migrations/postgres/0007_gc.sql).
ALTER TABLE chunks ADD COLUMN gc_marked_at INTEGER;
CREATE INDEX chunks_marked_idx ON chunks (tenant_id, gc_marked_at)
    WHERE gc_marked_at IS NOT NULL;
CREATE INDEX manifests_age_idx ON manifests (tenant_id, created_at);

CREATE TABLE job_leases (
    name       TEXT NOT NULL PRIMARY KEY,
    owner      TEXT NOT NULL,
    expires_at INTEGER NOT NULL
) STRICT;
