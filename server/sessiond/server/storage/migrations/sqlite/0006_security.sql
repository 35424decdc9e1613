-- Encryption at rest, tenant lifecycle, retention, quotas (see
-- migrations/postgres/0006_security.sql). Timestamps: INTEGER microseconds.
ALTER TABLE tenants ADD COLUMN wrapped_dek BLOB;
ALTER TABLE tenants ADD COLUMN dek_master_id TEXT;
ALTER TABLE tenants ADD COLUMN deleted_at INTEGER;
ALTER TABLE tenants ADD COLUMN keep_last_snapshots INTEGER CHECK (keep_last_snapshots > 0);
ALTER TABLE tenants ADD COLUMN expire_suspended_days INTEGER CHECK (expire_suspended_days > 0);
ALTER TABLE tenants ADD COLUMN quota_bytes INTEGER CHECK (quota_bytes >= 0);
ALTER TABLE tenants ADD COLUMN quota_sessions INTEGER CHECK (quota_sessions >= 0);

CREATE TABLE tenant_usage (
    tenant_id      TEXT NOT NULL PRIMARY KEY REFERENCES tenants (tenant_id),
    stored_bytes   INTEGER NOT NULL DEFAULT 0 CHECK (stored_bytes >= 0),
    reserved_bytes INTEGER NOT NULL DEFAULT 0 CHECK (reserved_bytes >= 0)
) STRICT;

CREATE TABLE idempotency_keys (
    tenant_id    TEXT NOT NULL REFERENCES tenants (tenant_id),
    method       TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    response     BLOB,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, method, key)
) STRICT;
CREATE INDEX idempotency_keys_age_idx ON idempotency_keys (created_at);
