-- sessiond metadata schema, version 4 (SQLite): session leases and the
-- project key. Mirrors migrations/postgres/0004_leases.sql; see there for the
-- reasoning. lease_expires_at is INTEGER microseconds from the server process
-- clock (the embedded store's database clock). SQLite adds one column per
-- statement; the CHECK is tested against existing rows (all NULL).

ALTER TABLE sessions ADD COLUMN project_key TEXT;
ALTER TABLE sessions ADD COLUMN lease_expires_at INTEGER;
ALTER TABLE sessions ADD COLUMN lease_owner TEXT
    CHECK (lease_owner IS NULL OR lease_expires_at IS NOT NULL);

CREATE INDEX sessions_idle_idx ON sessions (last_active_at) WHERE state = 'active';
CREATE INDEX sessions_lease_owner_idx ON sessions (lease_owner) WHERE lease_owner IS NOT NULL;
