-- Tenant API keys (see migrations/postgres/0002_api_keys.sql). Timestamps are
-- INTEGER microseconds since the epoch.
CREATE TABLE api_keys (
    key_id      TEXT NOT NULL PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (tenant_id),
    secret_hash BLOB NOT NULL CHECK (length(secret_hash) = 32),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER,
    revoked_at  INTEGER
) STRICT;
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant_id, created_at);
